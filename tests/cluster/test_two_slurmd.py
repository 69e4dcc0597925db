"""``metadns submit --nodes 2`` on a real two-node Slurm: one Ray head, one Ray worker.

``cluster/ci/start_two_node_slurm.sh`` starts a Slurm of its own beside the single-node CI
Slurm: slurmctld in one network namespace (holding a bridge, 10.77.0.1) and two ``slurmd -N``
(nodes n1 and n2, 10.77.0.11 and 10.77.0.12) in two more, joined by veth pairs to the bridge.
Nothing is added to the host's network namespace.  The namespaces and this Slurm's config and
state (under a temporary folder) belong to this module, with a name prefix of their own, and go
when it ends.  Slurm's commands reach it through wrappers put first on PATH (they enter the
controller's namespace); ``metadns submit`` itself is unchanged.

The tests check that steps run on both nodes, then submit a tiny Ising campaign over two
nodes: the head's address must come from ``--ray-interface eth0`` of the batch node, the Ray
worker must join from the other node, runs must finish on both Ray nodes and every run must
write its results (the SW energy matching exact enumeration).  Creating the namespaces needs
root, Slurm's daemons, munged running and iproute2; otherwise the tests are skipped, except
under ``CI=true`` where they fail.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from tests.cli_runner import run_cli
from tests.cluster.requirements import require
from pipeline.distributed.submit import wait_for_job
from systems.exact import exact_ensemble
from systems.registry import make_system

SCRIPT = Path(__file__).resolve().parents[2] / "cluster" / "ci" / "start_two_node_slurm.sh"
L = 4
BETAS = (0.5, 0.6)
TINY = {  # two grid points: their two SW runs start together, one on each 1-CPU Ray node
    "seed": 11,
    "methods": ["mdns", "sw"],
    "system": {"name": "ising", "L": L, "J": 1.0, "beta": list(BETAS)},
    "sampler": {"denoiser": "lattice", "sites_per_step": 4, "hidden": 8, "layers": 1},
    "training": {"outer_iterations": 3, "batch_size": 16, "inner_steps": 2, "maskings": 2, "threads": 1},
    "sampling": {"n_samples": 200, "batch_size": 200},
    "reference": {"chains": 4, "sweeps": 400, "burn_in": 50},
    "distributed": {"cpus_per_run": 1},
}
NODE_IPS = {"n1": "10.77.0.11", "n2": "10.77.0.12"}
JOB_TIMEOUT_S = 300


def unavailable() -> str | None:
    """Why this machine cannot run the two-node Slurm (None: it can)."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, Slurm's daemons)"
    for tool in ("slurmctld", "slurmd", "sbatch", "srun", "sinfo", "scontrol", "munge", "unmunge", "ip", "nsenter",
                 "unshare"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not on PATH (slurm-wlm, munge, iproute2, util-linux)"
    probe = subprocess.run(["unshare", "--net", "sh", "-c",
                            "ip link add b0 type bridge && ip link add v0 type veth peer name v1"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        return f"cannot make a network namespace with a bridge and a veth pair: {probe.stderr.strip()}"
    munge = subprocess.run("munge -n | unmunge", shell=True, capture_output=True, text=True)
    if munge.returncode != 0:
        return f"munged does not answer (cluster/ci/start_slurm.sh starts it): {munge.stderr.strip()}"
    return None


@pytest.fixture(scope="module")
def two_nodes():
    """The two-node Slurm of this module; yields the folder of its Slurm command wrappers."""
    require("two-node Slurm", unavailable())
    folder = Path(tempfile.mkdtemp(prefix="md2n-", dir="/tmp"))  # short: Slurm's spool sockets
    env = {**os.environ, "TWO_NODE_PREFIX": f"md2n{os.getpid()}", "TWO_NODE_CONF_DIR": str(folder / "etc"),
           "TWO_NODE_STATE_DIR": str(folder / "state"), "TWO_NODE_CPUS": "1",
           "TWO_NODE_FIRST_JOB_ID": str(700000 + 1000 * (os.getpid() % 500))}
    try:
        started = subprocess.run(["bash", str(SCRIPT), "start"], env=env, capture_output=True, text=True, timeout=180)
        if started.returncode != 0:
            logs = "\n".join(f"--- {p}\n{p.read_text()[-3000:]}" for p in sorted((folder / "state" / "log").glob("*.log")))
            pytest.fail(f"start_two_node_slurm.sh start failed:\n{started.stdout}\n{started.stderr}\n{logs}")
        subprocess.run(["bash", str(SCRIPT), "wrappers", str(folder / "bin")], env=env, check=True)
        yield folder / "bin"
    finally:
        subprocess.run(["bash", str(SCRIPT), "stop"], env=env, capture_output=True, text=True, timeout=180)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture()
def on_two_nodes(two_nodes, monkeypatch):
    """Slurm's commands (for `metadns submit` too) reach the two-node Slurm in this test."""
    monkeypatch.setenv("PATH", f"{two_nodes}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}"
                               f"{os.environ['PATH']}")
    return two_nodes


def test_steps_run_on_both_nodes_in_their_own_namespaces(on_two_nodes):
    nodes = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %T %c"], capture_output=True, text=True, check=True)
    assert sorted(nodes.stdout.split("\n")[:2]) == ["n1 idle 1", "n2 idle 1"], nodes.stdout
    step = subprocess.run(["srun", "-N2", "--ntasks-per-node=1", "bash", "-c",
                           'echo "$SLURMD_NODENAME $(hostname) $(ip -o -4 addr show eth0 | awk \'{print $4}\')"'],
                          capture_output=True, text=True, timeout=60)
    assert step.returncode == 0, step.stderr
    assert sorted(step.stdout.splitlines()) == [f"{node} {node} {ip}/24" for node, ip in NODE_IPS.items()]


def test_a_campaign_submitted_over_two_nodes_runs_on_both_ray_nodes(tmp_path, on_two_nodes):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY, sort_keys=False))
    out = tmp_path / "runs"
    code, stdout, stderr = run_cli("submit", config, "--out", out, "--nodes", 2, "--cpus-per-node", 1,
                                   "--ray-interface", "eth0", "--time", 10)
    assert code == 0, stderr
    job_id = re.search(r"submitted job (\d+)", stdout).group(1)
    try:
        state = wait_for_job(job_id, JOB_TIMEOUT_S)
    finally:
        if subprocess.run(["squeue", "-h", "-j", job_id], capture_output=True, text=True).stdout.strip():
            subprocess.run(["scancel", job_id], check=False)
    log = (out / "tiny" / "slurm" / f"slurm-{job_id}.out").read_text()
    assert state == ("COMPLETED", "0:0"), f"job {job_id}: {state}\n{log[-6000:]}"

    # The head on the batch node (n1) at its eth0 address; the worker on n2; both joined.
    head = re.search(r"Ray head (n\d) at ([\d.]+):(\d+) \(address from interface eth0\).*; 2 node\(s\)", log)
    assert head, log[-6000:]
    head_node, head_ip = head.group(1), head.group(2)
    worker_node = next(node for node in NODE_IPS if node != head_node)
    assert head_ip == NODE_IPS[head_node]
    assert f"[metadns] Ray head on {head_node}: 1 CPUs" in log
    assert f"[metadns] Ray worker on {worker_node}: 1 CPUs" in log
    joined = re.search(r"\[metadns\] 2 Ray node\(s\) up: (.*)", log)
    assert joined and all(f"'node:{ip}': 1.0" in joined.group(1) for ip in NODE_IPS.values()), log[-6000:]
    assert "Ray started with token authentication ON" in log
    assert f"--address {head_ip}:{head.group(3)}" in log

    # Runs ran on both Ray nodes, and every run wrote its results.
    finished = re.findall(r"== tiny: (\S+) finished in [\d.]+ s on node ([0-9a-f]{8})", log)
    runs = {run for run, _ in finished}
    assert runs == {f"{method}_beta{beta:.4f}" for method in ("mdns", "sw") for beta in BETAS}, log[-6000:]
    assert len({node for _, node in finished}) == 2, finished
    campaign = out / "tiny"
    for run in runs:
        assert (campaign / run / "observables.parquet").is_file(), run
    assert (campaign / "summary.parquet").is_file()
    for beta in BETAS:
        exact = exact_ensemble(make_system("ising", L=L, J=1.0, field=0.0), beta).expectations()
        sw = pd.read_parquet(campaign / f"sw_beta{beta:.4f}" / "observables.parquet")
        row = sw[(sw["estimator"] == "mcmc") & (sw["observable"] == "energy_per_site")].iloc[0]
        assert row["stderr"] > 0 and np.isfinite(row["value"])
        assert abs(row["value"] - exact["energy_per_site"]) <= 4 * row["stderr"], (beta, row["value"], row["stderr"])
    # The job removed Ray's temporary folder (shared here by both nodes).
    assert not Path(f"/tmp/ray-metadns-{job_id}").exists()
