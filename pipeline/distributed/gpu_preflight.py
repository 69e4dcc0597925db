"""The CUDA check that the Slurm job of ``metadns submit --gpus-per-node`` runs on every node
before it starts Ray: ``python -m pipeline.distributed.gpu_preflight COUNT``.

It prints one line naming the node: ``gpu-preflight ok NODE: ...`` and exits 0 when PyTorch
sees at least COUNT CUDA devices there, else ``gpu-preflight FAILED NODE: <why>`` and exits 1
(a CPU-only torch build, no driver, or a step whose cgroup hides the GPUs), so the job stops
before it trains on the CPU by mistake.  The node is Slurm's name for it (``SLURMD_NODENAME``).
"""

from __future__ import annotations

import os
import socket
import sys

__all__ = ["check", "main"]


def check(count: int) -> tuple[bool, str]:
    """(passed, one-line report naming this node) for a node that should have ``count`` GPUs."""
    node = os.environ.get("SLURMD_NODENAME") or socket.gethostname()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "unset")
    try:
        import torch  # noqa: PLC0415 - imported here so that a broken install is reported, not raised
    except ImportError as error:
        return False, f"gpu-preflight FAILED {node}: torch cannot be imported ({error})"
    build = f"torch {torch.__version__}, CUDA build {torch.version.cuda or 'none (CPU-only torch)'}"
    if not torch.cuda.is_available():
        return False, (f"gpu-preflight FAILED {node}: torch.cuda.is_available() is False ({build}; "
                       f"CUDA_VISIBLE_DEVICES={visible})")
    found = torch.cuda.device_count()
    if found < count:
        return False, (f"gpu-preflight FAILED {node}: {found} CUDA device(s) visible, {count} requested "
                       f"({build}; CUDA_VISIBLE_DEVICES={visible})")
    names = ", ".join(torch.cuda.get_device_name(i) for i in range(found))
    return True, f"gpu-preflight ok {node}: {found} CUDA device(s) ({names}); {build}"


def main(argv: list[str] | None = None) -> int:
    """``python -m pipeline.distributed.gpu_preflight COUNT``: print the report, 0 passed, 1 failed."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or not args[0].isdigit() or int(args[0]) < 1:
        print(f"usage: python -m pipeline.distributed.gpu_preflight COUNT (GPUs each node must show, ≥ 1); "
              f"got {args}", file=sys.stderr)
        return 2
    passed, report = check(int(args[0]))
    print(report, flush=True)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
