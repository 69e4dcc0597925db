"""Running a campaign's runs concurrently on Ray.

Each run executes in its own trainer actor (:class:`RunActor`), which calls
:func:`pipeline.runner.execute_run` with Ray-backed services: energies from the campaign's
:class:`~pipeline.distributed.evaluators.EvaluatorPool` and, for biased methods, a
:class:`~pipeline.distributed.bias_server.BiasServer` that owns V(s).  Runs that compare
against an unbiased reference at their temperature (sw, metropolis) start once that
reference has finished, as in the inline order.  Seeds are the inline ones
(``derive_seed(config.seed, run name)``), so results equal ``--executor inline`` runs.
"""

from __future__ import annotations

import os
import time

import ray
import torch
from tqdm.auto import tqdm

from pipeline.config import ConfigError
from pipeline.distributed.bias_server import BiasClient
from pipeline.distributed.evaluators import EvaluatorPool, PoolEnergy
from pipeline.distributed.progress import ProgressBars, ProgressBoard, reporter
from pipeline.distributed.session import cluster_cpus, cluster_gpus
from pipeline.runner import UNBIASED_REFERENCES, Campaign, RunResult, RunServices, execute_run


PROGRESS_POLL_S = 0.5
"""Seconds between the driver's looks at the training progress of running runs."""


@ray.remote(max_restarts=0)
class RunActor:
    """Trainer actor: executes one run of a campaign in its own process."""

    def execute(self, campaign: Campaign, spec, pool, board, threads: int) -> RunResult:
        torch.set_num_threads(threads)
        biases: list[BiasClient] = []

        def make_bias(bias):
            biases.append(BiasClient.start(bias))
            return biases[-1]

        services = RunServices(energy=PoolEnergy(pool) if pool is not None else None, make_bias=make_bias,
                               report_progress=reporter(board, spec.run_name))
        result = execute_run(campaign, spec, progress=False, services=services)
        for client in biases:
            client.checkpoint(result.run_dir / "checkpoints" / "bias_server.pt")
        return result

    def pid(self) -> int:
        return os.getpid()


def _dependencies(campaign: Campaign) -> dict[str, set[str]]:
    """Run name → names of the reference runs at its temperature that must finish first."""
    references: dict[str, set[str]] = {}
    for spec in campaign.runs:
        if spec.method in UNBIASED_REFERENCES:
            references.setdefault(spec.temperature_tag, set()).add(spec.run_name)
    return {spec.run_name: (set() if spec.method in UNBIASED_REFERENCES
                            else references.get(spec.temperature_tag, set()))
            for spec in campaign.runs}


def _resources(campaign: Campaign) -> tuple[float, float]:
    """(CPUs, GPUs) one trainer actor asks for; ConfigError if the cluster can never grant them."""
    d = campaign.config.distributed
    gpus = (1.0 if cluster_gpus() >= 1 else 0.0) if d.gpus_per_run == "auto" else float(d.gpus_per_run)
    needed = d.cpus_per_run + d.evaluators * d.cpus_per_evaluator
    available = cluster_cpus()
    if needed > available + 1e-9:
        raise ConfigError("distributed.cpus_per_run",
                          f"a run needs {d.cpus_per_run} CPU plus {d.evaluators} evaluator(s) × "
                          f"{d.cpus_per_evaluator} CPU = {needed:g}, but the Ray cluster has {available:g}; "
                          "lower distributed.cpus_per_run / cpus_per_evaluator / evaluators")
    if gpus > cluster_gpus() + 1e-9:
        raise ConfigError("distributed.gpus_per_run", f"asks for {gpus:g} GPU per run but the Ray cluster has "
                          f"{cluster_gpus():g}; use gpus_per_run: auto or 0")
    return d.cpus_per_run, gpus


def start_evaluator_pool(campaign: Campaign):
    """The campaign's EvaluatorPool actor, or None with ``distributed.evaluators: 0``."""
    d = campaign.config.distributed
    if d.evaluators == 0:
        return None
    return EvaluatorPool.remote(campaign.config.to_dict(), d.evaluators, d.cpus_per_evaluator, d.max_batch,
                                d.max_in_flight)


def run_campaign_on_ray(campaign: Campaign, progress: bool = True, pool=None) -> list[RunResult]:
    """Execute every run of the campaign in trainer actors, as many at once as the cluster
    fits; returns results in the campaign's run order.  Needs a connected Ray (see
    :func:`~pipeline.distributed.session.ray_session`).  A failed run raises after the
    runs already started have ended; finished runs keep their outputs (``--resume``).
    """
    cpus, gpus = _resources(campaign)
    campaign.root.mkdir(parents=True, exist_ok=True)
    threads = campaign.config.training.threads or max(1, int(cpus))
    if pool is None:
        pool = start_evaluator_pool(campaign)
    waiting = {spec.run_name: spec for spec in campaign.runs}
    needs = _dependencies(campaign)
    running: dict[ray.ObjectRef, tuple] = {}
    results: dict[str, RunResult] = {}
    failure: BaseException | None = None
    board = ProgressBoard.remote()
    training_bars = ProgressBars(enabled=progress)
    bar = tqdm(total=len(campaign.runs), desc=f"{campaign.config.name}: runs", disable=not progress,
               dynamic_ncols=True, position=0)
    with bar:
        while waiting or running:
            ready = [n for n in waiting if needs[n] <= results.keys()] if failure is None else []
            for name in ready:
                spec = waiting.pop(name)
                actor = RunActor.options(num_cpus=cpus, num_gpus=gpus).remote()
                running[actor.execute.remote(campaign, spec, pool, board, threads)] = (spec, actor, time.perf_counter())
                bar.write(f"== {campaign.config.name}: {spec.run_name} started")
            if not running:
                break
            done, _ = ray.wait(list(running), num_returns=1, timeout=PROGRESS_POLL_S)
            training_bars.update(ray.get(board.snapshot.remote()))
            if not done:
                continue
            spec, actor, start = running.pop(done[0])
            try:
                results[spec.run_name] = ray.get(done[0])
                bar.write(f"== {campaign.config.name}: {spec.run_name} finished in {time.perf_counter() - start:.1f} s")
            except Exception as error:  # noqa: BLE001 - re-raised once running runs have ended
                failure = failure or error
                bar.write(f"== {campaign.config.name}: {spec.run_name} FAILED: {error}")
            ray.kill(actor)
            bar.update(1)
    training_bars.close()
    if failure is not None:
        raise failure
    if waiting:
        raise RuntimeError(f"runs {sorted(waiting)} could not start: their reference runs did not finish")
    return [results[spec.run_name] for spec in campaign.runs]
