"""Running a campaign's runs concurrently on Ray.

Each run executes in its own trainer actor (:class:`RunActor`), which calls
:func:`pipeline.runner.execute_run` with Ray-backed services: energies from the campaign's
:class:`~pipeline.distributed.evaluators.EvaluatorPool` and, for biased methods, a
:class:`~pipeline.distributed.bias_server.BiasServer` that owns V(s).  Runs that compare
against an unbiased reference at their temperature (sw, metropolis), or start from the
previous temperature's sampler, start once those runs have finished, as in the inline order.
Seeds are the inline ones (``Campaign.seed_of``), so results equal ``--executor inline`` runs.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import ray
import torch
from tqdm.auto import tqdm

from pipeline.config import ConfigError, RunSpec
from pipeline.distributed.bias_server import BiasClient
from pipeline.distributed.evaluators import EvaluatorPool, PoolEnergy
from pipeline.distributed.progress import ProgressBars, ProgressBoard, reporter
from pipeline.distributed.session import cluster_cpus, cluster_gpus
from pipeline.distributed.walkers import walker_factory
from pipeline.campaign import UNBIASED_REFERENCES, Campaign
from pipeline.registry import METHODS
from pipeline.runner import RunResult, RunServices, execute_run


PROGRESS_POLL_S = 0.5
"""Seconds between the driver's looks at the training progress of running runs."""


@ray.remote(max_restarts=0)
class RunActor:
    """Trainer actor: executes one run of a campaign in its own process."""

    def execute(self, campaign: Campaign, spec: RunSpec, pool, board, threads: int,
                walker_resources: tuple[float, float]) -> RunResult:
        """``walker_resources``: (CPUs, GPUs) each walker actor of a multiple-walker run asks for."""
        torch.set_num_threads(threads)
        biases: list[BiasClient] = []
        walkers: list = []

        def make_bias(bias):
            biases.append(BiasClient.start(bias))
            return biases[-1]

        raylet = os.getppid()  # Ray's worker processes are children of their node's raylet
        report = reporter(board, spec.run_name)

        def report_or_stop(trainer) -> None:
            # A killed driver takes the local raylet with it, but this process may live on
            # for seconds; it must not keep training and checkpointing into a run folder
            # that a resumed driver is about to use.
            if os.getppid() != raylet:
                os._exit(1)
            report(trainer)

        services = RunServices(energy=PoolEnergy(pool) if pool is not None else None, make_bias=make_bias,
                               report_progress=report_or_stop,
                               make_walkers=walker_factory(pool, *walker_resources, threads, walkers))
        try:
            result = execute_run(campaign, spec, progress=False, services=services)
        finally:
            for walker in walkers:
                ray.kill(walker)
        for client in biases:
            client.checkpoint(result.run_dir / "checkpoints" / "bias_server.pt")
        result.node = ray.get_runtime_context().get_node_id()
        return result


@dataclass
class _Job:
    """One run of one campaign (grid point) and the jobs that must finish before it starts."""

    campaign: Campaign
    spec: RunSpec
    needs: set[str] = field(default_factory=set)

    @property
    def key(self) -> str:
        return str(self.campaign.root / self.spec.run_name)


def _jobs(campaigns: list[Campaign]) -> list[_Job]:
    """All runs with their dependencies: the unbiased reference runs at the same temperature
    (comparisons read them), and with ``training.initialise_from: previous_temperature`` the
    same method's run at the preceding temperature."""
    jobs = []
    for campaign in campaigns:
        references: dict[str, set[str]] = {}
        for spec in campaign.runs:
            if spec.method in UNBIASED_REFERENCES:
                references.setdefault(spec.temperature_tag, set()).add(str(campaign.root / spec.run_name))
        for spec in campaign.runs:
            needs = set() if spec.method in UNBIASED_REFERENCES else set(references.get(spec.temperature_tag, ()))
            if campaign.config.training.initialise_from == "previous_temperature" and METHODS[spec.method].traits["trained"]:
                previous = campaign.previous_temperature(spec)
                if previous is not None:
                    needs.add(str(campaign.root / previous.run_name))
            jobs.append(_Job(campaign, spec, needs))
    return jobs


def _resources(campaign: Campaign) -> tuple[float, float, float, float]:
    """(CPUs, GPUs) of one trainer actor, CPUs of a run's walker actors (0 with one walker:
    the trainer actor trains), and CPUs of the campaign's evaluator pool.  A multiple-walker
    run's walkers each ask for the trainer's CPUs and GPUs; its trainer actor then only
    coordinates, yet keeps its request (it samples at the end).  ConfigError if the cluster
    can never grant a run, its walkers and its pool together."""
    d = campaign.config.distributed
    walkers = campaign.config.training.walkers
    gpus = (1.0 if cluster_gpus() >= 1 else 0.0) if d.gpus_per_run == "auto" else float(d.gpus_per_run)
    walker_cpus = d.cpus_per_run * walkers if walkers > 1 else 0.0
    pool_cpus = d.evaluators * d.cpus_per_evaluator
    needed = d.cpus_per_run + walker_cpus + pool_cpus
    available = cluster_cpus()
    if needed > available + 1e-9:
        raise ConfigError("distributed.cpus_per_run",
                          f"a run needs {d.cpus_per_run} CPU for its trainer, {walker_cpus:g} for its "
                          f"{walkers} walker(s) and {d.evaluators} evaluator(s) × {d.cpus_per_evaluator} CPU: "
                          f"{needed:g} in all, but the Ray cluster has {available:g}; lower "
                          "distributed.cpus_per_run / cpus_per_evaluator / evaluators or training.walkers")
    gpus_needed = gpus * (1 + (walkers if walkers > 1 else 0))
    if gpus_needed > cluster_gpus() + 1e-9:
        raise ConfigError("distributed.gpus_per_run", f"a run needs {gpus_needed:g} GPU(s) but the Ray cluster "
                          f"has {cluster_gpus():g}; use gpus_per_run: auto or 0")
    return d.cpus_per_run, gpus, walker_cpus, pool_cpus


def start_evaluator_pool(campaign: Campaign):
    """The campaign's EvaluatorPool actor, or None with ``distributed.evaluators: 0``."""
    d = campaign.config.distributed
    if d.evaluators == 0:
        return None
    return EvaluatorPool.remote(campaign.config.to_dict(), d.evaluators, d.cpus_per_evaluator, d.max_batch,
                                d.max_in_flight)


def run_campaign_on_ray(campaign: Campaign, progress: bool = True, pool=None) -> list[RunResult]:
    """One campaign on Ray (see :func:`run_campaigns_on_ray`); ``pool``: an EvaluatorPool
    to use instead of starting one."""
    return run_campaigns_on_ray([campaign], progress, pools={str(campaign.root): pool} if pool else None)[0]


def run_campaigns_on_ray(campaigns: list[Campaign], progress: bool = True,
                         pools: dict[str, object] | None = None) -> list[list[RunResult]]:
    """Execute every run of every campaign (e.g. the points of a grid) in trainer actors, as
    many at once as the cluster fits; returns each campaign's results in its run order.

    Each campaign gets its own evaluator pool (its system and Δμ), started with its first run
    and stopped after its last (``pools`` maps a campaign root to a pool to use instead).  A
    run starts when its dependencies have finished and the CPUs beside running runs and live
    pools admit it (and its pool); trainer actors are reused for later runs, which saves
    their start-up.  Needs a connected Ray (:func:`~pipeline.distributed.session.ray_session`).
    A failed run raises once the runs already started have ended; finished runs keep their
    outputs (``--resume``).
    """
    return _Scheduler(campaigns, progress, pools or {}).run()


class _Scheduler:
    """State of one run_campaigns_on_ray call: waiting jobs, running and idle trainer actors,
    live pools and the CPUs they hold (Ray would queue actors it cannot place; counting here
    keeps a run from waiting forever for its own pool)."""

    def __init__(self, campaigns: list[Campaign], progress: bool, given_pools: dict[str, object]):
        self.campaigns = campaigns
        self.needs = {str(c.root): _resources(c) for c in campaigns}
        self.given_pools = given_pools
        self.live_pools: dict[str, object] = {}
        self.waiting = {job.key: job for job in _jobs(campaigns)}
        self.remaining = {str(c.root): len(c.runs) for c in campaigns}
        self.running: dict[ray.ObjectRef, tuple[_Job, object, float]] = {}
        self.idle: list[tuple[tuple[float, float], object]] = []   # ((cpus, gpus), actor)
        self.results: dict[str, RunResult] = {}
        self.failure: BaseException | None = None
        self.free_cpus = cluster_cpus()
        self.board = ProgressBoard.remote()
        self.training_bars = ProgressBars(enabled=progress)
        self.bar = tqdm(total=len(self.waiting), desc="runs", disable=not progress, dynamic_ncols=True, position=0)

    def run(self) -> list[list[RunResult]]:
        for campaign in self.campaigns:
            campaign.root.mkdir(parents=True, exist_ok=True)
        try:
            while self.waiting or self.running:
                if self.failure is None:
                    for key in [k for k, job in self.waiting.items() if job.needs <= self.results.keys()]:
                        self._try_launch(self.waiting[key])
                if not self.running:
                    break
                done, _ = ray.wait(list(self.running), num_returns=1, timeout=PROGRESS_POLL_S)
                self.training_bars.update(ray.get(self.board.snapshot.remote()))
                if done:
                    self._collect(done[0])
        finally:
            self.bar.close()
            self.training_bars.close()
            for _, actor in self.idle:
                ray.kill(actor)
            for pool in self.live_pools.values():
                _stop_pool(pool)
        if self.failure is not None:
            raise self.failure
        if self.waiting:
            raise RuntimeError(f"runs {sorted(self.waiting)} could not start: runs they depend on did not finish")
        return [[self.results[str(c.root / spec.run_name)] for spec in c.runs] for c in self.campaigns]

    def _try_launch(self, job: _Job) -> None:
        root = str(job.campaign.root)
        cpus, gpus, walker_cpus, pool_cpus = self.needs[root]
        starts_pool = root not in self.live_pools and root not in self.given_pools and pool_cpus > 0
        actor = next((a for shape, a in self.idle if shape == (cpus, gpus)), None)
        cost = (pool_cpus if starts_pool else 0.0) + (0.0 if actor is not None else cpus) + walker_cpus
        while cost > self.free_cpus + 1e-9 and any(a is not actor for _, a in self.idle):
            (shape, spare) = next((shape, a) for shape, a in self.idle if a is not actor)
            self.idle.remove((shape, spare))
            ray.kill(spare)
            self.free_cpus += shape[0]
        if self.running and cost > self.free_cpus + 1e-9:
            return  # wait for a run to end
        if actor is None:
            actor = RunActor.options(num_cpus=cpus, num_gpus=gpus).remote()
        else:
            self.idle.remove(((cpus, gpus), actor))
        if starts_pool:
            self.live_pools[root] = start_evaluator_pool(job.campaign)
        self.free_cpus -= cost
        pool = self.given_pools.get(root, self.live_pools.get(root))
        threads = job.campaign.config.training.threads or max(1, int(cpus))
        ref = actor.execute.remote(job.campaign, job.spec, pool, self.board, threads, (cpus, gpus))
        self.running[ref] = (job, actor, time.perf_counter())
        del self.waiting[job.key]
        self.bar.write(f"== {_label(job)} started")

    def _collect(self, ref: ray.ObjectRef) -> None:
        job, actor, start = self.running.pop(ref)
        root = str(job.campaign.root)
        cpus, gpus, walker_cpus, pool_cpus = self.needs[root]
        self.free_cpus += walker_cpus
        try:
            self.results[job.key] = ray.get(ref)
            self.bar.write(f"== {_label(job)} finished in {time.perf_counter() - start:.1f} s "
                           f"on node {self.results[job.key].node[:8]}")
            self.idle.append(((cpus, gpus), actor))
        except Exception as error:  # noqa: BLE001 - re-raised once running runs have ended
            self.failure = self.failure or error
            self.bar.write(f"== {_label(job)} FAILED: {error}")
            ray.kill(actor)
            self.free_cpus += cpus
        self.remaining[root] -= 1
        if self.remaining[root] == 0 and root in self.live_pools:
            _stop_pool(self.live_pools.pop(root))
            self.free_cpus += pool_cpus
        self.bar.update(1)


def _stop_pool(pool) -> None:
    ray.get(pool.close.remote())
    ray.kill(pool)


def _label(job: _Job) -> str:
    point = f"/{job.campaign.point}" if job.campaign.point else ""
    return f"{job.campaign.config.name}{point}: {job.spec.run_name}"
