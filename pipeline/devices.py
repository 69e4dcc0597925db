"""Which device a run trains on, what it records about it, and the numerics set there.

The rule (docs/architecture.md, "Devices"):

* ``training.device: cpu`` trains on the CPU.
* ``training.device: cuda`` trains on the first visible CUDA device, and fails if there is none.
* ``training.device: auto`` trains on CUDA when it is usable. Otherwise it trains on the CPU and
  says so, unless the process was *given* GPUs: by Ray (an actor that asked for GPUs) or by
  Slurm (``SLURM_GPUS_ON_NODE`` > 0). Then CUDA should work, and the run fails before it
  writes anything instead of training on the CPU in a GPU job.
* Inside a Ray actor the device follows what Ray assigned. An actor that asked for no GPU trains
  on the CPU even where CUDA is visible, so no GPU is ever used without Ray counting it.

Generation and ``log_prob`` stay in float32 without TF32 (:func:`configure_numerics`): their log q
feeds importance weights and Metropolis–Hastings ratios, and these need the probability each
sample was actually drawn with.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from dataclasses import dataclass

import torch

from pipeline.config import ConfigError

__all__ = ["DeviceChoice", "choose_device", "check_energy_device", "gpus_given", "device_report", "device_usage", "configure_numerics",
           "keep_freed_host_memory"]


@dataclass(frozen=True)
class DeviceChoice:
    """The device a run trains on and a sentence saying why (printed and kept in summary.json)."""

    device: torch.device
    reason: str

    @property
    def fell_back(self) -> bool:
        """True when ``auto`` found no usable CUDA and chose the CPU."""
        return self.reason.startswith("training.device: auto, but")


def _ray_gpu_ids() -> list | None:
    """The GPU ids Ray assigned to this actor, or None outside a Ray actor."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return None
    if ray.get_runtime_context().get_actor_id() is None:
        return None
    return list(ray.get_gpu_ids())


def gpus_given() -> str | None:
    """Why this process should have GPUs (Ray assigned some, or the Slurm job allocated some on
    this node), or None when nobody gave it any."""
    ray_ids = _ray_gpu_ids()
    if ray_ids:
        return f"Ray assigned this actor GPU(s) {ray_ids}"
    slurm = os.environ.get("SLURM_GPUS_ON_NODE", "").strip()
    if ray_ids is None and slurm not in ("", "0"):
        return f"the Slurm job allocated GPUs on this node (SLURM_GPUS_ON_NODE={slurm})"
    return None


def _cuda_problem() -> str:
    """Why CUDA is not usable here, in words."""
    if torch.version.cuda is None:
        return f"this torch build ({torch.__version__}) has no CUDA support; install a CUDA build of PyTorch"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    hidden = f" (CUDA_VISIBLE_DEVICES={visible!r})" if visible is not None else ""
    return f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no usable GPU{hidden}; check the driver"


def choose_device(requested: str) -> DeviceChoice:
    """The device for ``training.device`` = ``requested`` ("auto", "cpu" or "cuda") in this process.

    Raises ConfigError naming ``training.device`` where CUDA is needed but not usable: it was asked
    for, or the process was given GPUs (see the module docstring).
    """
    if requested == "cpu":
        return DeviceChoice(torch.device("cpu"), "training.device: cpu")
    ray_ids = _ray_gpu_ids()
    if ray_ids is not None and not ray_ids:
        if requested == "cuda":
            raise ConfigError("training.device", "is cuda but this Ray actor was assigned no GPU; give trained "
                                                 "runs GPUs (distributed.gpus_per_run: auto or > 0) or use auto")
        return DeviceChoice(torch.device("cpu"), "training.device: auto, but Ray assigned this actor no GPU: "
                                                 "training on the CPU")
    if torch.cuda.is_available():
        return DeviceChoice(torch.device("cuda"), f"training.device: {requested}, CUDA is usable")
    if requested == "cuda":
        raise ConfigError("training.device", f"is cuda but CUDA is not usable in this process: {_cuda_problem()}; "
                                             "use auto or cpu, or run on a GPU node")
    given = gpus_given()
    if given is not None:
        raise ConfigError("training.device", f"is auto and {given}, but CUDA is not usable: {_cuda_problem()}. "
                                             "Fix the CUDA installation, or request no GPUs for this job "
                                             "(or set training.device: cpu)")
    return DeviceChoice(torch.device("cpu"), "training.device: auto, but no CUDA device is visible: training "
                                             "on the CPU")


def check_energy_device(device: str) -> None:
    """Refuse an energy backend on CUDA (``system.energy.device``) where this process cannot use
    it: CUDA not usable, or a Ray actor that was assigned no GPU (it would use one unaccounted)."""
    if not device.startswith("cuda"):
        return
    ray_ids = _ray_gpu_ids()
    if ray_ids is not None and not ray_ids:
        raise ConfigError("system.energy.device", f"is {device} but this Ray actor was assigned no GPU; with "
                                                  "distributed.evaluators > 0 set distributed.gpus_per_evaluator "
                                                  "(e.g. 0.5 or 1), otherwise the run's own actor needs a GPU")
    if not torch.cuda.is_available():
        raise ConfigError("system.energy.device", f"is {device} but CUDA is not usable in this process: "
                                                  f"{_cuda_problem()}; use device: cpu or run on a GPU node")


def device_report(choice: DeviceChoice) -> dict[str, str]:
    """What a run records about its device (summary.json and Parquet metadata; all strings):
    device, device_reason, torch (version and build), torch_cuda (CUDA version torch was built
    with, "none" for CPU builds), cuda_available, and on CUDA gpu_name and gpu_memory_total_bytes."""
    report = {"device": str(choice.device), "device_reason": choice.reason, "torch_build": torch.__version__,
              "torch_cuda": str(torch.version.cuda or "none"), "cuda_available": str(torch.cuda.is_available())}
    if choice.device.type == "cuda":
        properties = torch.cuda.get_device_properties(choice.device)
        report["gpu_name"] = properties.name
        report["gpu_memory_total_bytes"] = str(properties.total_memory)
    return report


def device_usage(device: torch.device) -> dict[str, str]:
    """GPU memory used so far by this process: gpu_memory_peak_bytes (empty on the CPU)."""
    if device.type != "cuda":
        return {}
    return {"gpu_memory_peak_bytes": str(torch.cuda.max_memory_allocated(device))}


def configure_numerics(device: torch.device, deterministic: bool) -> None:
    """Numerics of a run on ``device``: float32 matrix products at full precision (no TF32), and
    with ``deterministic`` torch's deterministic algorithms (needed for bitwise-repeatable CUDA
    training; atomics in embedding and gather backward otherwise reorder float sums)."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    if device.type == "cuda":   # set both ways: a reused actor may have run a deterministic run before
        if deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(deterministic)


_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3   # glibc mallopt parameters


def keep_freed_host_memory() -> bool:
    """Ask glibc's allocator to keep freed memory for reuse instead of returning it to the system.

    Training allocates and frees the same few MB activation buffers hundreds of times per
    outer iteration. By default glibc serves them with fresh ``mmap`` pages and unmaps them on
    ``free``, so every buffer is page-faulted and zeroed again: tens of thousands of minor faults
    per iteration, measured at 13 % of a quickstart iteration (BENCHMARKS.md). Returns False
    where the C library is not glibc (nothing changes there). Process RSS then stays at its peak.
    """
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    libc = ctypes.CDLL(name)
    if not hasattr(libc, "mallopt") or not hasattr(libc, "gnu_get_libc_version"):
        return False
    large = 1 << 30
    return all(libc.mallopt(option, value) == 1 for option, value in
               ((_M_MMAP_THRESHOLD, large), (_M_TRIM_THRESHOLD, large), (_M_TOP_PAD, 1 << 26)))
