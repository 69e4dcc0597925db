"""Walkers of a multiple-walker run as Ray actors (training.walkers > 1).

The run's trainer actor coordinates: it owns the shared bias (through its bias server) and
drives a :class:`~pipeline.training.MultiWalkerTrainer` whose walkers are
:class:`WalkerActor` handles, so the walkers draw and train in parallel while hills are
still deposited in walker order — the result equals the single-process run.
"""

from __future__ import annotations

import ray
import torch

from pipeline.distributed.evaluators import PoolEnergy
from pipeline.config import Config, RunSpec
from pipeline.build import build_system, build_walker
from pipeline.devices import choose_device, configure_numerics, keep_freed_host_memory
from pipeline.runner import RunContext


@ray.remote(max_restarts=0)
class WalkerActor:
    """One walker (a DualLoopTrainer with its own copy of the bias) in its own process."""

    def __init__(self, config: Config, spec: RunSpec, run_seed: int, index: int, pool, threads: int):
        torch.set_num_threads(threads)
        keep_freed_host_memory()
        device = choose_device(config.training.device).device   # the GPU Ray assigned, or the CPU
        configure_numerics(device, config.training.deterministic)
        system = build_system(config)  # built here: energy backends may not pickle
        energy_fn = PoolEnergy(pool) if pool is not None else system.energy
        self._trainer = build_walker(config, spec, system, run_seed, index, energy_fn, device)

    def draw(self):
        return self._trainer.draw()

    def learn(self, deposits, values):
        return self._trainer.learn(deposits, values)

    def sample_final(self, n: int, batch_size: int | None):
        return self._trainer.sample_final(n, batch_size)

    def score_final(self, x, order, batch_size: int | None):
        return self._trainer.score_final(x, order, batch_size)

    def device_name(self) -> str:
        return self._trainer.device_name()

    def start_from(self, ema_state: dict) -> None:
        self._trainer.start_from(ema_state)

    def state_dict(self) -> dict:
        return self._trainer.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self._trainer.load_state_dict(state)


def call_in_parallel(walkers: list, method: str, per_walker_args=None) -> list:
    """``walker.method(*args)`` on every walker actor at once; results in walker order."""
    args = per_walker_args if per_walker_args is not None else [()] * len(walkers)
    return ray.get([getattr(walker, method).remote(*a) for walker, a in zip(walkers, args)])


def walker_factory(pool, cpus: float, gpus: float, threads: int, started: list):
    """The runner's ``make_walkers`` hook: starts ``training.walkers`` WalkerActors (each
    asking for ``cpus``/``gpus``), appends them to ``started`` (the caller stops them)."""

    def make_walkers(ctx: RunContext):
        walkers = [WalkerActor.options(num_cpus=cpus, num_gpus=gpus).remote(ctx.config, ctx.spec, ctx.seed, w, pool,
                                                                            threads)
                   for w in range(ctx.config.training.walkers)]
        started.extend(walkers)
        return walkers, call_in_parallel

    return make_walkers
