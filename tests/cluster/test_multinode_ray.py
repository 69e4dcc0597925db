"""A campaign on a real two-node Ray cluster, with one node killed mid-campaign.

The cluster lives in a network namespace this test creates (``unshare --net``), holding only a
loopback interface: the head node is 127.0.0.1, the worker node 127.0.0.2, each a separate
``ray start`` with its own raylet, object store and temp folder, as on two machines.  Ray's
servers listen on every interface of their namespace, which here is the loopback alone, so
nothing is reachable from outside it.  The driver (``metadns run --executor ray --address``)
runs in the namespace too.

Once runs are training on both nodes and every started run has a checkpoint, the worker's
raylet is killed (SIGKILL).  The runs it held must be retried on the head node from their last
checkpoints, and the campaign must finish with every run's results equal to the inline
executor's (bitwise; wall times aside), one row per run and per outer iteration, none missing
or repeated.

Creating a network namespace needs root (as ``.ci/run`` has); elsewhere the test is skipped,
except under ``CI=true`` where it fails.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from pipeline.campaign import prepare_campaign
from pipeline.config import config_from_dict
from pipeline.distributed.loopback_cluster import LoopbackCluster, children, namespace_unavailable, process_title
from pipeline.runner import run_campaign
from tests.cluster.requirements import require
from tests.same_results import assert_same_results

OUTER_ITERATIONS = 24
CAMPAIGN = {  # 8 runs: two trained methods at four temperatures, one CPU each
    "seed": 7, "methods": ["metadns", "mdns"],
    "system": {"name": "ising", "L": 4, "beta": [0.3, 0.4, 0.5, 0.6]},
    "sampler": {"denoiser": "lattice", "sites_per_step": 4, "hidden": 8, "layers": 1},
    "bias": {"gamma": 10, "sigma": 0.1, "height_per_cycle": 0.5},
    "training": {"outer_iterations": OUTER_ITERATIONS, "batch_size": 16, "inner_steps": 2, "maskings": 2,
                 "threads": 1, "checkpoint_every": 1},
    "sampling": {"n_samples": 200, "batch_size": 200, "coverage_check_sweeps": 0},
    "distributed": {"cpus_per_run": 1, "run_retries": 2},
}
CAMPAIGN_TIMEOUT_S = 900


def checkpoint_iteration(run: Path) -> int:
    """Outer iteration of the run's checkpoint (0: none yet)."""
    import torch  # noqa: PLC0415 - only for this

    path = run / "checkpoints" / "checkpoint.pt"
    try:
        return int(torch.load(path, map_location="cpu", weights_only=False)["iteration"]) if path.exists() else 0
    except (OSError, RuntimeError, EOFError, KeyError):   # replaced while read
        return 0


@pytest.fixture(scope="module")
def killed_campaign():
    """The campaign on the two-node cluster with the worker's raylet killed mid-campaign, and
    the same campaign run inline: (driver exit code, driver log, runs killed mid-training,
    Ray root, inline root)."""
    require("a network namespace", namespace_unavailable())
    folder = Path(tempfile.mkdtemp(prefix="mn", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes
    (folder / "camp.yaml").write_text(yaml.safe_dump({"name": "twonode", **CAMPAIGN}, sort_keys=False))
    cluster = LoopbackCluster(folder, nodes=2, cpus_per_node=2, fast_failure_detection=True)
    try:
        log = (folder / "driver.log").open("w")
        driver = subprocess.Popen(cluster.command([sys.executable, "-m", "pipeline.cli", "run", str(folder / "camp.yaml"),
                                                   "--out", str(folder / "ray"), "--executor", "ray", "--address",
                                                   cluster.address, "--quiet"]),
                                  env=cluster.env, stdout=log, stderr=subprocess.STDOUT, cwd=Path(__file__).parents[2])
        runs = folder / "ray" / "twonode"
        raylet = cluster.raylet(1)
        killed: list[str] = []
        deadline = time.monotonic() + CAMPAIGN_TIMEOUT_S
        while driver.poll() is None and time.monotonic() < deadline:
            on_worker = [p for p in children(raylet) if "RunActor" in process_title(p)]
            started = [r for r in runs.glob("*_beta*") if (r / "config.yaml").exists()] if runs.exists() else []
            in_training = [r for r in started if not (r / "summary.json").exists()]
            if on_worker and in_training and all(checkpoint_iteration(r) >= 2 for r in in_training):
                killed = sorted(r.name for r in in_training)
                os.kill(raylet, signal.SIGKILL)
                break
            time.sleep(0.1)
        code = driver.wait(timeout=max(1.0, deadline - time.monotonic()))
        log.close()
    finally:
        cluster.close()
    inline_root = folder / "inline"
    run_campaign(prepare_campaign(config_from_dict(CAMPAIGN, "twonode"), inline_root, resume=False), progress=False)
    yield code, (folder / "driver.log").read_text(), killed, runs, inline_root / "twonode"
    shutil.rmtree(folder, ignore_errors=True)


def test_campaign_survives_the_loss_of_a_worker_node(killed_campaign):
    code, log, killed, _, _ = killed_campaign
    assert killed, f"the worker node never held a checkpointed run (the campaign did not spread); log:\n{log}"
    assert code == 0, log
    retried = re.findall(r"== twonode: (\S+) lost \(\w+: its node or process died\); retry 1 of 2, from (.+)", log)
    assert retried, f"no run was retried after the node was killed:\n{log}"
    # runs started on the worker between the last look and the kill are retried from the start
    assert all(run in killed or note.startswith("the start") for run, note in retried), log
    resumed = [int(m.group(1)) for _, note in retried if (m := re.match(r"its checkpoint at iteration (\d+)", note))]
    assert resumed and min(resumed) >= 2, f"retried runs did not continue from their checkpoints:\n{log}"


def test_results_equal_the_inline_run_without_missing_or_repeated_rows(killed_campaign):
    _, _, _, ray_root, inline_root = killed_campaign
    runs = sorted(p.name for p in inline_root.glob("*_beta*"))
    assert len(runs) == 8
    assert sorted(p.name for p in ray_root.glob("*_beta*")) == runs
    assert_same_results(inline_root, ray_root, runs)
    for run in runs:
        history = pd.read_parquet(ray_root / run / "history.parquet")
        assert history["iteration"].tolist() == list(range(1, OUTER_ITERATIONS + 1)), run
        reference = pd.read_parquet(inline_root / run / "history.parquet")
        pd.testing.assert_frame_equal(history.drop(columns="wall_time_s"), reference.drop(columns="wall_time_s"),
                                      check_exact=True, obj=run)
    summary = pd.read_parquet(ray_root / "summary.parquet")
    assert sorted(summary["run"]) == runs
