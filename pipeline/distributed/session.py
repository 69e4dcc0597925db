"""Joining or starting the Ray instance a command runs on."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import ray


@contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None) -> Iterator[None]:
    """Use Ray for the duration of the block.

    An already initialised Ray (e.g. a test's, or a Tune trial's) is used as is and left
    running.  Otherwise ``address`` (or ``RAY_ADDRESS``) joins an existing cluster — its
    token authentication applies — and with neither a local instance is started with the
    dashboard off and every service bound to 127.0.0.1; it is shut down at the end.
    ``num_cpus`` (local instance only): CPUs Ray may schedule, default all cores.
    """
    if ray.is_initialized():
        yield
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        # address="local": always a new instance, never a cluster some `ray start` left behind
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, _node_ip_address="127.0.0.1",
                 log_to_driver=True)
    try:
        yield
    finally:
        ray.shutdown()


def cluster_cpus() -> float:
    """CPUs of the connected cluster (all nodes)."""
    return float(ray.cluster_resources().get("CPU", 0.0))


def cluster_gpus() -> float:
    """GPUs of the connected cluster (all nodes)."""
    return float(ray.cluster_resources().get("GPU", 0.0))
