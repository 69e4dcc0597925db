"""Running a campaign's runs concurrently on Ray.

Each run executes in its own trainer actor (:class:`RunActor`), which calls
:func:`pipeline.runner.execute_run` with Ray-backed services: energies from the campaign's
:class:`~pipeline.distributed.evaluators.EvaluatorPool` and, for biased methods, a
:class:`~pipeline.distributed.bias_server.BiasServer` that owns V(s).  Runs that compare
against an unbiased reference at their temperature (sw, metropolis), or start from the
previous temperature's sampler, start once those runs have finished, as in the inline order.
Seeds are the inline ones (``Campaign.seed_of``), so results equal ``--executor inline`` runs.

A run lost with its node (or its actor process) is retried, up to ``distributed.run_retries``
times, on what is left of the cluster: it continues from its last checkpoint, so a retried run
gives the numbers it would have given uninterrupted.  The driver's own actors (progress board,
evaluator pool) live on the driver's node; losing that node ends the campaign, as it would
end the driver.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import ray
import torch
from ray.exceptions import (ActorUnavailableError, LocalRayletDiedError, NodeDiedError, ObjectLostError,
                            RayActorError, WorkerCrashedError)
from tqdm.auto import tqdm

from pipeline.build import energy_on_cuda
from pipeline.config import ConfigError, RunSpec
from pipeline.distributed.bias_server import BiasClient
from pipeline.distributed.evaluators import EvaluatorPool, PoolEnergy
from pipeline.distributed.progress import ProgressBars, ProgressBoard, reporter
from pipeline.distributed.session import alive_nodes, cluster_cpus, cluster_gpus, on_this_node
from pipeline.distributed.walkers import walker_factory
from pipeline.campaign import UNBIASED_REFERENCES, Campaign
from pipeline.registry import METHODS
from pipeline.runner import RunResult, RunServices, execute_run


PROGRESS_POLL_S = 0.5
"""Seconds between the driver's looks at the training progress of running runs."""
LOST_TO_THE_CLUSTER = (RayActorError, NodeDiedError, ObjectLostError, WorkerCrashedError, LocalRayletDiedError)
"""Errors of a run whose process, node or actors died under it (rather than a run that failed)."""
NODE_VERDICT_S = 120.0
"""Seconds a run whose actor became unreachable waits for Ray to declare a node dead before it
is retried anyway (Ray's health checks take about 15 s by default)."""


@ray.remote(max_restarts=0)
class RunActor:
    """Trainer actor: executes one run of a campaign in its own process.

    When its node's raylet dies (a killed driver takes the local one with it; a lost node takes
    its own), this process may live on for seconds and even receive a run, since calls come
    straight from the driver.  It must not train or checkpoint then: a retry elsewhere, or a
    resumed driver, uses the same run folder.  So it exits at the start of a run and after every
    outer iteration once it is orphaned."""

    def __init__(self):
        self._raylet = os.getppid()  # Ray's worker processes are children of their node's raylet

    def _exit_if_orphaned(self) -> None:
        if os.getppid() != self._raylet:
            os._exit(1)

    def execute(self, campaign: Campaign, spec: RunSpec, pool, board, threads: int,
                walker_resources: tuple[float, float]) -> RunResult:
        """``walker_resources``: (CPUs, GPUs) each walker actor of a multiple-walker run asks for.
        The run's device follows the GPUs Ray assigned this actor (pipeline.devices)."""
        self._exit_if_orphaned()
        torch.set_num_threads(threads)
        biases: list[BiasClient] = []
        walkers: list = []

        def make_bias(bias):
            biases.append(BiasClient.start(bias))
            return biases[-1]

        report = reporter(board, f"{campaign.point}/{spec.run_name}" if campaign.point else spec.run_name)

        def report_or_stop(trainer) -> None:
            self._exit_if_orphaned()
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


@dataclass(frozen=True)
class RunResources:
    """What one run asks Ray for: its trainer actor, and for a multiple-walker run its walker
    actors (``walkers`` of them, each ``walker_cpus``/``walker_gpus``; the trainer actor then
    only coordinates and gets no GPU)."""

    cpus: float
    gpus: float
    walkers: int = 0
    walker_cpus: float = 0.0
    walker_gpus: float = 0.0

    @property
    def total_cpus(self) -> float:
        return self.cpus + self.walkers * self.walker_cpus

    @property
    def total_gpus(self) -> float:
        return self.gpus + self.walkers * self.walker_gpus


def sampler_gpus(config) -> float:
    """GPUs of one trained sampler (a trainer or walker actor): ``distributed.gpus_per_run``,
    ``auto`` being one when the cluster has GPUs and ``training.device`` is not cpu."""
    d, device = config.distributed, config.training.device
    if d.gpus_per_run == "auto":
        return 1.0 if device != "cpu" and cluster_gpus() >= 1 else 0.0
    if device == "cpu" and d.gpus_per_run > 0:
        raise ConfigError("distributed.gpus_per_run", f"is {d.gpus_per_run:g} but training.device is cpu, so the "
                                                      "GPUs would sit idle; use gpus_per_run: auto or 0, or "
                                                      "training.device: auto")
    return float(d.gpus_per_run)


def run_resources(campaign: Campaign, method: str) -> RunResources:
    """The Ray request of a run of ``method``: GPUs go to trained samplers only — one per
    trainer actor, or one per walker actor and none to the coordinator — and to a reference
    run only when its energies run in-process on CUDA (``system.energy.device: cuda`` without
    evaluators)."""
    config = campaign.config
    d, walkers = config.distributed, config.training.walkers
    if not METHODS[method].traits["trained"]:
        in_process_cuda = d.evaluators == 0 and energy_on_cuda(config)
        return RunResources(d.cpus_per_run, 1.0 if in_process_cuda else 0.0)
    gpus = sampler_gpus(config)
    if config.training.device == "cuda" and gpus == 0:
        raise ConfigError("distributed.gpus_per_run", f"training.device is cuda but trained runs get no GPU (the "
                                                      f"Ray cluster has {cluster_gpus():g}); use a cluster with "
                                                      "GPUs and gpus_per_run: auto or > 0")
    if walkers > 1:
        return RunResources(d.cpus_per_run, 0.0, walkers, d.cpus_per_run, gpus)
    return RunResources(d.cpus_per_run, gpus)


def pool_resources(campaign: Campaign) -> tuple[float, float]:
    """(CPUs, GPUs) of the campaign's evaluator pool (one pool per campaign, shared by its runs)."""
    d = campaign.config.distributed
    if d.evaluators and energy_on_cuda(campaign.config) and d.gpus_per_evaluator == 0:
        raise ConfigError("distributed.gpus_per_evaluator", "is 0 but system.energy.device is cuda: evaluator actors "
                                                            "need GPUs (e.g. gpus_per_evaluator: 0.5), or use "
                                                            "distributed.evaluators: 0")
    return d.evaluators * d.cpus_per_evaluator, d.evaluators * d.gpus_per_evaluator


def check_fits(campaign: Campaign) -> dict[str, RunResources]:
    """The request of each method of the campaign (:func:`run_resources`); ConfigError if the
    cluster can never grant one of them together with the campaign's pool."""
    d, walkers = campaign.config.distributed, campaign.config.training.walkers
    pool_cpus, pool_gpus = pool_resources(campaign)
    needs = {method: run_resources(campaign, method) for method in dict.fromkeys(s.method for s in campaign.runs)}
    for method, need in needs.items():
        if need.total_cpus + pool_cpus > cluster_cpus() + 1e-9:
            raise ConfigError("distributed.cpus_per_run",
                              f"a {method} run needs {need.total_cpus:g} CPU for its trainer and {need.walkers} "
                              f"walker(s), and {d.evaluators} evaluator(s) × {d.cpus_per_evaluator} CPU: "
                              f"{need.total_cpus + pool_cpus:g} in all, but the Ray cluster has {cluster_cpus():g}; "
                              "lower distributed.cpus_per_run / cpus_per_evaluator / evaluators or training.walkers")
        if need.total_gpus + pool_gpus > cluster_gpus() + 1e-9:
            key = "distributed.gpus_per_run" if need.total_gpus else "distributed.gpus_per_evaluator"
            raise ConfigError(key, f"a {method} run needs {need.total_gpus:g} GPU(s) "
                                   f"({max(walkers, 1)} sampler(s) × {need.gpus + need.walker_gpus:g}) and its "
                                   f"evaluators {pool_gpus:g}, but the Ray cluster has {cluster_gpus():g}; use "
                                   "fractional GPUs (gpus_per_run: 0.5), fewer training.walkers or more GPUs")
    return needs


def start_evaluator_pool(campaign: Campaign):
    """The campaign's EvaluatorPool actor, or None with ``distributed.evaluators: 0``."""
    d = campaign.config.distributed
    if d.evaluators == 0:
        return None
    return EvaluatorPool.options(scheduling_strategy=on_this_node()).remote(
        campaign.config.to_dict(), d.evaluators, d.cpus_per_evaluator, d.max_batch, d.max_in_flight,
        gpus_per_evaluator=d.gpus_per_evaluator)


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
    live pools and the CPUs and GPUs they hold (Ray would queue actors it cannot place;
    counting here keeps a run from waiting forever for its own pool or walkers).  Idle actors
    are reused by runs of the same shape and killed when a launch needs what they hold.  What
    is free is the live cluster's resources less what is held, so a lost node shrinks it."""

    def __init__(self, campaigns: list[Campaign], progress: bool, given_pools: dict[str, object]):
        self.campaigns = campaigns
        self.needs = {(str(c.root), method): need for c in campaigns for method, need in check_fits(c).items()}
        self.pool_needs = {str(c.root): pool_resources(c) for c in campaigns}
        self.given_pools = given_pools
        self.live_pools: dict[str, object] = {}
        self.waiting = {job.key: job for job in _jobs(campaigns)}
        self.remaining = {str(c.root): len(c.runs) for c in campaigns}
        self.running: dict[ray.ObjectRef, tuple[_Job, object, float]] = {}
        self.idle: list[tuple[tuple[float, float], object]] = []   # ((cpus, gpus), actor)
        self.retries: dict[str, int] = {}
        self.lost: dict[str, tuple[_Job, set[str], float]] = {}   # key → (job, live nodes when lost, deadline)
        self.results: dict[str, RunResult] = {}
        self.failure: BaseException | None = None
        self.held = [0.0, 0.0]   # CPUs, GPUs of running runs, idle actors and live pools
        self.capacity = [cluster_cpus(), cluster_gpus()]   # of the live cluster, renewed each round
        self.board = ProgressBoard.options(scheduling_strategy=on_this_node()).remote()
        self.training_bars = ProgressBars(enabled=progress)
        self.bar = tqdm(total=len(self.waiting), desc="runs", disable=not progress, dynamic_ncols=True, position=0)

    def run(self) -> list[list[RunResult]]:
        for campaign in self.campaigns:
            campaign.root.mkdir(parents=True, exist_ok=True)
        try:
            while self.waiting or self.running or self.lost:
                if self.failure is None:
                    self._take_stock()
                    for key in [k for k, job in self.waiting.items() if job.needs <= self.results.keys()]:
                        self._try_launch(self.waiting[key])
                if not self.running:
                    if self.lost and self.failure is None:
                        time.sleep(PROGRESS_POLL_S)   # waiting for Ray's verdict on a node
                        continue
                    break
                done, _ = ray.wait(list(self.running), num_returns=1, timeout=PROGRESS_POLL_S)
                self.training_bars.update(ray.get(self.board.snapshot.remote()))
                if done:
                    self._collect(done[0])
        finally:
            self.bar.close()
            self.training_bars.close()
            self._release_idle()
            for pool in self.live_pools.values():
                _stop_pool(pool)
        if self.failure is not None:
            raise self.failure
        if self.waiting:
            raise RuntimeError(f"runs {sorted(self.waiting)} could not start: runs they depend on did not finish")
        return [[self.results[str(c.root / spec.run_name)] for spec in c.runs] for c in self.campaigns]

    def _take_stock(self) -> None:
        """Renew the live cluster's capacity; after a node loss, release idle actors when more
        is held than the cluster now has (runs retried elsewhere need it), and queue lost runs
        again once Ray has declared a node dead (or waited long enough)."""
        self.capacity = [cluster_cpus(), cluster_gpus()]
        if any(h > c + 1e-9 for h, c in zip(self.held, self.capacity)):
            self._release_idle()
        if self.lost:
            alive = alive_nodes()
            for key, (job, alive_then, deadline) in list(self.lost.items()):
                if alive != alive_then or time.monotonic() > deadline:
                    del self.lost[key]
                    self.waiting[key] = job

    def _release_idle(self) -> None:
        """Kill the idle trainer actors and release what they held."""
        for shape, actor in self.idle:
            ray.kill(actor)
            self._take(shape, +1.0)
        self.idle.clear()

    def _fits(self, cost: tuple[float, float]) -> bool:
        return all(c <= cap - h + 1e-9 for c, cap, h in zip(cost, self.capacity, self.held))

    def _take(self, amount: tuple[float, float], sign: float = -1.0) -> None:
        """Hold (sign -1) or release (+1) ``amount`` = (CPUs, GPUs)."""
        self.held = [h - sign * a for h, a in zip(self.held, amount)]

    def _try_launch(self, job: _Job) -> None:
        root = str(job.campaign.root)
        need = self.needs[(root, job.spec.method)]
        shape = (need.cpus, need.gpus)
        pool_cpus, pool_gpus = self.pool_needs[root]
        starts_pool = root not in self.live_pools and root not in self.given_pools and (pool_cpus or pool_gpus) > 0
        actor = next((a for s, a in self.idle if s == shape), None)
        cost = (need.total_cpus - (need.cpus if actor is not None else 0.0) + (pool_cpus if starts_pool else 0.0),
                need.total_gpus - (need.gpus if actor is not None else 0.0) + (pool_gpus if starts_pool else 0.0))
        while not self._fits(cost) and any(a is not actor for _, a in self.idle):
            spare_shape, spare = next((s, a) for s, a in self.idle if a is not actor)
            self.idle.remove((spare_shape, spare))
            ray.kill(spare)
            self._take(spare_shape, +1.0)
        if self.running and not self._fits(cost):
            return  # wait for a run to end
        if actor is None:
            actor = RunActor.options(num_cpus=need.cpus, num_gpus=need.gpus).remote()
        else:
            self.idle.remove((shape, actor))
        if starts_pool:
            self.live_pools[root] = start_evaluator_pool(job.campaign)
        self._take(cost)
        pool = self.given_pools.get(root, self.live_pools.get(root))
        threads = job.campaign.config.training.threads or max(1, int(need.cpus))
        ref = actor.execute.remote(job.campaign, job.spec, pool, self.board, threads,
                                   (need.walker_cpus, need.walker_gpus))
        self.running[ref] = (job, actor, time.perf_counter())
        del self.waiting[job.key]
        self.bar.write(f"== {_label(job)} started")

    def _collect(self, ref: ray.ObjectRef) -> None:
        job, actor, start = self.running.pop(ref)
        root = str(job.campaign.root)
        need = self.needs[(root, job.spec.method)]
        self._take((need.total_cpus - need.cpus, need.total_gpus - need.gpus), +1.0)   # its walkers are gone
        try:
            self.results[job.key] = ray.get(ref)
        except Exception as error:  # noqa: BLE001 - retried, or re-raised once running runs have ended
            ray.kill(actor)
            self._take((need.cpus, need.gpus), +1.0)
            if self._retry(job, error):
                return
            self.failure = self.failure or error
            self.bar.write(f"== {_label(job)} FAILED: {error}")
        else:
            self.bar.write(f"== {_label(job)} finished in {time.perf_counter() - start:.1f} s "
                           f"on node {self.results[job.key].node[:8]}")
            self.idle.append(((need.cpus, need.gpus), actor))
        self.remaining[root] -= 1
        if self.remaining[root] == 0 and root in self.live_pools:
            _stop_pool(self.live_pools.pop(root))
            self._take(self.pool_needs[root], +1.0)
        self.bar.update(1)

    def _retry(self, job: _Job, error: BaseException) -> bool:
        """Queue a run lost to the cluster (its node or process died) again, if retries are
        left; it will continue from its last checkpoint.  False for a run that failed by
        itself, or that has used its retries."""
        if not lost_to_the_cluster(error):
            return False
        allowed = job.campaign.config.distributed.run_retries
        tries = self.retries.get(job.key, 0)
        if tries >= allowed:
            self.bar.write(f"== {_label(job)} lost to the cluster again, after {allowed} retries "
                           "(distributed.run_retries)")
            return False
        self.retries[job.key] = tries + 1
        self._release_idle()   # some may sit on the same failing node, and reuse only saves start-up
        if unreachable(error):   # its node may be dying: retry once Ray has said so
            self.lost[job.key] = (job, alive_nodes(), time.monotonic() + NODE_VERDICT_S)
        else:
            self.waiting[job.key] = job
        self.bar.write(f"== {_label(job)} lost ({type(error).__name__}: its node or process died); retry "
                       f"{tries + 1} of {allowed}, from {_checkpoint_note(job)}")
        return True


def _error_chain(error: BaseException | None):
    """``error`` and the errors it wraps (a RayTaskError's ``cause``, then ``__cause__``)."""
    while error is not None:
        yield error
        error = getattr(error, "cause", None) or error.__cause__


def lost_to_the_cluster(error: BaseException) -> bool:
    """Whether ``error`` (or an error it wraps, e.g. a walker's death inside a run) means that
    a process, actor or node died, rather than that the run itself failed."""
    return any(isinstance(e, LOST_TO_THE_CLUSTER) for e in _error_chain(error))


def unreachable(error: BaseException) -> bool:
    """Whether ``error`` (or an error it wraps) says an actor stopped answering without Ray
    having declared it dead."""
    return any(isinstance(e, ActorUnavailableError) for e in _error_chain(error))


def _checkpoint_note(job: _Job) -> str:
    """Where a retried run continues: "its checkpoint at iteration N" or "the start"."""
    path = job.campaign.root / job.spec.run_name / "checkpoints" / "checkpoint.pt"
    if not path.exists():
        return "the start (no checkpoint yet)"
    state = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    return f"its checkpoint at iteration {state['iteration']}" if "iteration" in state else "its checkpoint"


def _stop_pool(pool) -> None:
    ray.get(pool.close.remote())
    ray.kill(pool)


def _label(job: _Job) -> str:
    point = f"/{job.campaign.point}" if job.campaign.point else ""
    return f"{job.campaign.config.name}{point}: {job.spec.run_name}"
