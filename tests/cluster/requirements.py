"""What the cluster tests need from the machine (Slurm, network namespaces): skipped without
it, except under ``CI=true``, where ``.ci/run`` provides it and its absence is a failure."""

from __future__ import annotations

import os

import pytest


def require(what: str, reason: str | None) -> None:
    """Skip the calling test when ``reason`` (why ``what`` is unavailable) is given; fail
    instead under ``CI=true``.  Nothing happens when ``reason`` is None."""
    if reason is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what} is required in CI: {reason}")
    pytest.skip(f"no {what}: {reason}")
