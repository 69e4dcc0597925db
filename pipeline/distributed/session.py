"""Joining or starting the Ray instance a command runs on."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy


HIDE_GPUS_FROM_ZERO_GPU_ACTORS = {"RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "1"}
"""Since Ray 2.5x an actor that asked for no GPU sees every GPU of its node (CUDA_VISIBLE_DEVICES
is left alone); with this variable Ray sets it to "" for such actors, as it used to."""


@contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None,
                num_gpus: int | None = None) -> Iterator[None]:
    """Use Ray for the duration of the block.

    An already initialised Ray (e.g. a test's, or a Tune trial's) is used as is and left
    running.  Otherwise ``address`` (or ``RAY_ADDRESS``) joins an existing cluster — its
    token authentication applies — and with neither a local instance is started with the
    dashboard off and every service bound to 127.0.0.1; it is shut down at the end.
    ``num_cpus`` / ``num_gpus`` (local instance only): CPUs and GPUs Ray may schedule, default
    :func:`allocated_cpus` and the GPUs the machine has.  Actors that ask for no GPU see none
    (HIDE_GPUS_FROM_ZERO_GPU_ACTORS).
    """
    if ray.is_initialized():
        yield
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:
        ray.init(address=address, log_to_driver=True, runtime_env={"env_vars": HIDE_GPUS_FROM_ZERO_GPU_ACTORS})
    else:
        os.environ.update(HIDE_GPUS_FROM_ZERO_GPU_ACTORS)   # inherited by the local raylet and its workers
        # address="local": always a new instance, never a cluster some `ray start` left behind
        ray.init(address="local", num_cpus=allocated_cpus() if num_cpus is None else num_cpus, num_gpus=num_gpus,
                 include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=True)
    try:
        yield
    finally:
        ray.shutdown()


def allocated_cpus() -> int:
    """CPUs this process was given: its CPU affinity (taskset, a cpuset, a Slurm step's binding),
    at most ``SLURM_CPUS_ON_NODE`` when that is set, rather than every core of the node."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    slurm = os.environ.get("SLURM_CPUS_ON_NODE", "").strip()
    return min(cpus, int(slurm)) if slurm.isdigit() and int(slurm) > 0 else cpus


def on_this_node():
    """A scheduling strategy that places an actor (one asking for no CPU) on the node of the
    calling process.

    The driver keeps its bookkeeping actors (progress board, evaluator pool) beside it, and a
    trainer its bias server: a lost worker node then takes with it only the runs it held."""
    return NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)


def alive_nodes() -> set[str]:
    """Node ids of the cluster's live nodes (a killed node drops out once Ray's health checks
    have declared it dead: seconds)."""
    return {node["NodeID"] for node in ray.nodes() if node["Alive"]}


def cluster_cpus() -> float:
    """CPUs of the connected cluster (all live nodes)."""
    return float(ray.cluster_resources().get("CPU", 0.0))


def cluster_gpus() -> float:
    """GPUs of the connected cluster (all live nodes)."""
    return float(ray.cluster_resources().get("GPU", 0.0))
