"""A local Ray instance shared by the tests of this folder (loopback only, no dashboard)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # tests on one machine; clusters keep tokens on
ray = pytest.importorskip("ray")


@pytest.fixture(scope="session")
def local_ray():
    """Ray with 2 CPUs; code under test reuses it (ray_session leaves an initialised Ray alone)."""
    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
                 log_to_driver=False)
    yield ray
    if started:
        ray.shutdown()
