"""Where one MetaDNS outer iteration of a config spends its time (CPU or GPU).

Usage (from the repository root):
    python workflows/benchmarks/training_step.py workflows/quickstart.yaml --iterations 20 --threads 1

Builds the config's first trained run exactly as ``metadns run`` does (pipeline.build),
trains ``--warmup`` outer iterations (so the replay buffer is full and the bias has hills),
then times ``--iterations`` more, split into: generation of the fresh batch, energies and
CVs, the bias deposition, and the inner loop's WDCE forward/backward, optimiser step and EMA
update (summed over inner steps).  Prints seconds per iteration for each part, the share of
the total and the page faults of the timed iterations.  On CUDA every part ends with a
``torch.cuda.synchronize()`` so the split is real.
"""

from __future__ import annotations

import argparse
import os
import resource
import time
from contextlib import contextmanager

import torch

from pipeline.build import build_bias, build_system, build_trainer
from pipeline.config import expand_runs, load_config
from pipeline.devices import choose_device, configure_numerics, keep_freed_host_memory
from pipeline.registry import METHODS


class Stopwatch:
    """Accumulates wall seconds per named part (synchronising CUDA before each reading)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.seconds: dict[str, float] = {}

    @contextmanager
    def part(self, name: str):
        self._sync()
        start = time.perf_counter()
        yield
        self._sync()
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def timed_iteration(trainer, watch: Stopwatch) -> None:
    """One outer iteration of DualLoopTrainer.step, with each part timed (same calls, same order)."""
    original_sample, original_energy = trainer.ema_sampler.sample, trainer.energy_fn
    original_loss, original_step = trainer.sampler.loss_backward, trainer.optimizer.step
    original_ema = trainer._ema_update

    def wrap(name, function):
        def wrapped(*args, **kwargs):
            with watch.part(name):
                return function(*args, **kwargs)
        return wrapped

    trainer.ema_sampler.sample = wrap("generation", original_sample)
    trainer.energy_fn = wrap("energies", original_energy)
    trainer.sampler.loss_backward = wrap("wdce forward+backward", original_loss)
    trainer.optimizer.step = wrap("optimiser step", original_step)
    trainer._ema_update = wrap("ema update", original_ema)
    try:
        with watch.part("total"):
            cv = trainer.draw()
            if trainer.bias_active_at(trainer.iteration):
                with watch.part("bias deposition"):
                    trainer.bias.deposit(cv)
            trainer.learn()
    finally:
        trainer.ema_sampler.sample, trainer.energy_fn = original_sample, original_energy
        trainer.sampler.loss_backward, trainer.optimizer.step = original_loss, original_step
        trainer._ema_update = original_ema


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("--method", default="metadns", help="trained method of the config to profile")
    parser.add_argument("--warmup", type=int, default=40, help="untimed outer iterations first")
    parser.add_argument("--iterations", type=int, default=20, help="timed outer iterations")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--no-allocator-tuning", action="store_true",
                        help="leave glibc's allocator at its defaults (to measure keep_freed_host_memory)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    config = load_config(args.config, overrides=args.set)
    spec = next(s for s in expand_runs(config) if s.method == args.method)
    system = build_system(config)
    bias = build_bias(config, system, spec.beta, config.training.batch_size) if METHODS[spec.method].traits["bias"] \
        else None
    if not args.no_allocator_tuning:
        keep_freed_host_memory()
    device = choose_device(config.training.device).device
    configure_numerics(device, config.training.deterministic)
    trainer = build_trainer(config, spec, system, 0, system.energy, bias, device)
    for _ in range(args.warmup):
        trainer.step()
    watch = Stopwatch(device)
    faults = resource.getrusage(resource.RUSAGE_SELF)
    for _ in range(args.iterations):
        timed_iteration(trainer, watch)
    after = resource.getrusage(resource.RUSAGE_SELF)
    total = watch.seconds.pop("total") / args.iterations
    print(f"{args.config} [{spec.run_name}] on {device}, allocator tuning {not args.no_allocator_tuning}, {torch.get_num_threads()} torch thread(s), "
          f"load average {os.getloadavg()[0]:.2f}; {args.iterations} iterations after {args.warmup} warm-up")
    print(f"{'part':<24}{'s/iteration':>12}{'share':>8}")
    for name, seconds in sorted(watch.seconds.items(), key=lambda item: -item[1]):
        per_iteration = seconds / args.iterations
        print(f"{name:<24}{per_iteration:>12.4f}{per_iteration / total:>8.1%}")
    accounted = sum(watch.seconds.values()) / args.iterations
    print(f"{'other (weights, buffer)':<24}{total - accounted:>12.4f}{(total - accounted) / total:>8.1%}")
    print(f"{'total':<24}{total:>12.4f}")
    print(f"page faults per iteration: minor {(after.ru_minflt - faults.ru_minflt) / args.iterations:.0f}, "
          f"major {(after.ru_majflt - faults.ru_majflt) / args.iterations:.0f}")


if __name__ == "__main__":
    main()
