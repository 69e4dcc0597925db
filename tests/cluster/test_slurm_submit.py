"""``metadns submit`` (pipeline/distributed/submit.py, cluster/metadns_ray.sbatch.template).

The first tests need no Slurm: they render batch scripts (``--dry-run``), check them with
``bash -n`` and check the refusals (bad options, invalid configs, runs made with other
settings, no ``sbatch``), each writing nothing.

The others run on a real Slurm (``.ci/run`` starts a single-node one with
``cluster/ci/start_slurm.sh``): a tiny Ising campaign is submitted through ``metadns
submit``, its Ray head starts with token authentication on, the driver joins it with
``--address`` and the Parquet outputs are checked against exact enumeration; a second job
is signalled as Slurm signals it before its time limit, requeues itself mid-training (Slurm
then stops it as it stops a preempted job) and must resume from its checkpoint to the same
numbers as an uninterrupted run.  Without a reachable Slurm these
tests are skipped, except under ``CI=true`` where they fail.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import stat
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from tests.cli_runner import run_cli
from pipeline.distributed.submit import TEMPLATE, default_environment, job_state, wait_for_job
from systems.exact import exact_ensemble
from systems.registry import make_system

BETA = 0.6
L = 4
TAG = "beta0.6000"
OBSERVABLE_COLUMNS = {"system", "method", "temperature", "beta", "delta_mu", "estimator", "observable", "unit",
                      "value", "stderr", "ess", "n_samples"}
TINY = {
    "seed": 11,
    "methods": ["mdns", "sw"],
    "system": {"name": "ising", "L": L, "J": 1.0, "beta": BETA},
    "sampler": {"denoiser": "lattice", "sites_per_step": 4, "hidden": 8, "layers": 1},
    "training": {"outer_iterations": 3, "batch_size": 16, "inner_steps": 2, "maskings": 2, "threads": 1},
    "sampling": {"n_samples": 200, "batch_size": 200},
    "reference": {"chains": 4, "sweeps": 400, "burn_in": 50},
}
# Long enough (200 checkpointed outer iterations, 5-10 s on a busy 2-core machine)
# that a requeue issued right after the first checkpoint lands mid-training.
REQUEUE = {
    "seed": 4,
    "methods": ["mdns"],
    "system": {"name": "ising", "L": L, "J": 1.0, "beta": BETA},
    "sampler": {"denoiser": "lattice", "sites_per_step": 4, "hidden": 16, "layers": 2},
    "training": {"outer_iterations": 200, "batch_size": 32, "inner_steps": 2, "maskings": 2, "threads": 1,
                 "checkpoint_every": 1},
    "sampling": {"n_samples": 200, "batch_size": 200},
}
JOB_TIMEOUT_S = 600
AUTH_LINE = "Ray started with token authentication ON"


# ============================================================================ helpers
def write_config(folder: Path, stem: str, content: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{stem}.yaml"
    path.write_text(yaml.safe_dump(content, sort_keys=False))
    return path


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*")) if folder.exists() else []


def scontrol_fields(job_id: str) -> dict[str, str]:
    result = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True, check=True)
    return dict(item.split("=", 1) for item in result.stdout.split() if "=" in item)


def without_costs(table: pd.DataFrame) -> pd.DataFrame:
    """Estimates only (no wall times or counts), in a fixed row order."""
    estimates = table[table["estimator"] != "cost"]
    return estimates.sort_values(["estimator", "observable"]).reset_index(drop=True)


def slurm_unavailable() -> str | None:
    """Why this machine cannot run the Slurm tests (None: it can)."""
    for tool in ("sbatch", "sinfo", "scontrol", "scancel", "squeue"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not on PATH (install slurm-wlm; .ci/run starts a single-node Slurm)"
    try:
        ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=30)
        nodes = subprocess.run(["sinfo", "-h", "-o", "%T %c"], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return "slurmctld does not answer within 30 s"
    if "is UP" not in ping.stdout:
        return f"slurmctld is not up: {(ping.stdout + ping.stderr).strip()}"
    if not any(line.split()[0] in ("idle", "mixed") for line in nodes.stdout.splitlines() if line.strip()):
        return f"no idle Slurm node: {nodes.stdout.strip() or nodes.stderr.strip()}"
    return None


@pytest.fixture(scope="module")
def slurm_cpus() -> int:
    """CPUs of an idle node of the running Slurm; skip (fail under CI=true) without one."""
    reason = slurm_unavailable()
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"Slurm is required in CI: {reason}")
        pytest.skip(f"no Slurm: {reason}")
    nodes = subprocess.run(["sinfo", "-h", "-o", "%T %c"], capture_output=True, text=True, check=True).stdout
    return max(int(line.split()[1]) for line in nodes.splitlines() if line.split()[0] in ("idle", "mixed"))


@pytest.fixture()
def jobs():
    """Job ids submitted by a test; any still queued or running at its end is cancelled."""
    submitted: list[str] = []
    yield submitted
    for job_id in submitted:
        state = job_state(job_id)
        if state is not None and state[0] in ("PENDING", "RUNNING", "CONFIGURING", "REQUEUED", "SUSPENDED"):
            subprocess.run(["scancel", job_id], check=False)


def submit(config: Path, out: Path, cpus: int, *extra) -> tuple[str, str]:
    """Submit through the CLI in-process (one node, Ray on loopback); returns (job id, stdout)."""
    code, stdout, stderr = run_cli("submit", config, "--out", out, "--nodes", 1, "--cpus-per-node", cpus,
                                   "--loopback", "--time", 15, *extra)
    assert code == 0, stderr
    match = re.search(r"submitted job (\d+)", stdout)
    assert match, stdout
    return match.group(1), stdout


def finish(job_id: str, log: Path) -> tuple[str, str]:
    state, exit_code = wait_for_job(job_id, JOB_TIMEOUT_S)
    text = log.read_text() if log.exists() else "(no log)"
    assert (state, exit_code) == ("COMPLETED", "0:0"), f"job {job_id}: {state} {exit_code}\n{text[-6000:]}"
    return state, text


# ============================================================================ without Slurm
def test_dry_run_renders_every_option_and_writes_nothing(tmp_path):
    config = write_config(tmp_path, "tiny", TINY)
    out = tmp_path / "runs"
    code, script, stderr = run_cli(
        "submit", config, "--out", out, "--nodes", 3, "--gpus-per-node", 2, "--cpus-per-node", 16, "--mem", "64G",
        "--time", "1-12:00:00", "--partition", "gpu", "--account", "proj42", "--job-name", "ising-study",
        "--sbatch-arg=--qos=long", "--sbatch-arg=--constraint=a100", "--set", "training.outer_iterations=5",
        "--ray-port", 6390, "--signal-seconds", 300, "--conda-env", "metadns", "--dry-run")
    assert code == 0, stderr
    assert files_under(out) == []
    for line in ("#SBATCH --job-name=ising-study", "#SBATCH --nodes=3", "#SBATCH --ntasks-per-node=1",
                 "#SBATCH --cpus-per-task=16", "#SBATCH --gpus-per-node=2", "#SBATCH --mem=64G",
                 "#SBATCH --time=1-12:00:00", "#SBATCH --partition=gpu", "#SBATCH --account=proj42",
                 "#SBATCH --qos=long", "#SBATCH --constraint=a100", "#SBATCH --requeue",
                 "#SBATCH --signal=B:USR1@300", "#SBATCH --open-mode=append",
                 f"#SBATCH --output={out.resolve()}/tiny/slurm/slurm-%j.out", f"#SBATCH --chdir={Path.cwd()}",
                 f"CONFIG={config.resolve()}", f"OUT={out.resolve()}", "GPUS_PER_NODE=2", "RAY_PORT=6390",
                 "LOOPBACK=0", "RUN_OPTIONS=(--set training.outer_iterations=5)", "export RAY_AUTH_MODE=token",
                 "conda activate metadns"):
        assert line in script.splitlines() or line in script, line
    assert "--exclusive" not in script
    assert not re.search(r"\{\{[A-Z_]+\}\}", script)
    assert "RAY_AUTH_MODE=disabled" not in script
    checked = subprocess.run(["bash", "-n"], input=script, capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr


def test_dry_run_defaults_whole_nodes_and_the_running_environment(tmp_path):
    config = write_config(tmp_path, "tiny", TINY)
    code, script, stderr = run_cli("submit", config, "--out", tmp_path / "runs", "--dry-run")
    assert code == 0, stderr
    assert "#SBATCH --exclusive" in script.splitlines()
    assert "#SBATCH --nodes=1" in script.splitlines()
    assert "#SBATCH --job-name=metadns-tiny" in script.splitlines()
    assert "#SBATCH --time" not in script and "#SBATCH --gpus-per-node" not in script
    kind, prefix = default_environment()
    if kind == "venv":
        assert f"source {Path(prefix).resolve()}/bin/activate" in script
    code, script, _ = run_cli("submit", config, "--out", tmp_path / "runs", "--no-env", "--dry-run")
    assert code == 0 and "source " not in script and "conda activate" not in script
    assert subprocess.run(["bash", "-n"], input=script, capture_output=True, text=True).returncode == 0


def test_dry_run_of_a_cuda_config_needs_no_gpu_here(tmp_path):
    """Validation for the job's nodes never builds the run on this machine's device: a CUDA
    trainer and a CUDA cluster-expansion backend both pass on a GPU-less login node."""
    raw = {**TINY, "methods": ["mdns", "metropolis"], "system": {"name": "alloy", "size": [2, 2, 2], "temperature": [600],
                              "energy": {"name": "cluster_expansion", "model": "cuau_paper", "device": "cuda"}}}
    config = write_config(tmp_path, "cuda", raw)
    code, script, stderr = run_cli("submit", config, "--out", tmp_path / "runs", "--gpus-per-node", 1,
                                   "--set", "training.device=cuda", "--dry-run")
    assert code == 0, stderr
    assert "metadns run" in script
    code, _, stderr = run_cli("run", config, "--out", tmp_path / "runs", "--executor", "inline",
                              "--set", "training.device=cuda")
    if not torch.cuda.is_available():
        assert code == 2 and "training.device" in stderr and not (tmp_path / "runs" / "cuda").exists()


@pytest.mark.parametrize("options, option_named", [
    (["--time", "soon"], "--time"),
    (["--nodes", 0], "--nodes"),
    (["--nodes", 2, "--loopback"], "--loopback"),
    (["--gpus-per-node", -1], "--gpus-per-node"),
    (["--mem", "lots"], "--mem"),
    (["--job-name", "two words"], "--job-name"),
    (["--sbatch-arg", "qos=long"], "--sbatch-arg"),
    (["--venv", "no/such/venv"], "--venv"),
    (["--template", "no/such/template"], "--template"),
])
def test_bad_options_exit_2_naming_the_option(tmp_path, options, option_named):
    config = write_config(tmp_path, "tiny", TINY)
    code, stdout, stderr = run_cli("submit", config, "--out", tmp_path / "runs", *options)
    assert code == 2
    assert option_named in stderr
    assert files_under(tmp_path / "runs") == []


def test_invalid_config_exits_2_before_anything_is_written(tmp_path):
    bad = dict(TINY, system={**TINY["system"], "L": -4})
    config = write_config(tmp_path, "bad", bad)
    code, stdout, stderr = run_cli("submit", config, "--out", tmp_path / "runs")
    assert code == 2
    assert "system.L" in stderr
    assert files_under(tmp_path / "runs") == []
    code, _, stderr = run_cli("submit", tmp_path / "missing.yaml", "--out", tmp_path / "runs")
    assert code == 2 and "missing.yaml" in stderr


def test_missing_sbatch_exits_2_with_a_message(tmp_path, monkeypatch):
    config = write_config(tmp_path, "tiny", TINY)
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))  # a PATH without Slurm's commands
    code, stdout, stderr = run_cli("submit", config, "--out", tmp_path / "runs")
    assert code == 2
    assert "sbatch" in stderr and "not on PATH" in stderr
    assert files_under(tmp_path / "runs") == []


def test_runs_made_with_other_settings_are_refused_before_submitting(tmp_path):
    sw_only = {**TINY, "methods": ["sw"], "reference": {"chains": 2, "sweeps": 20, "burn_in": 5}}
    config = write_config(tmp_path, "tiny", sw_only)
    out = tmp_path / "runs"
    code, _, stderr = run_cli("run", config, "--out", out, "--executor", "inline", "--quiet")
    assert code == 0, stderr
    before = files_under(out)
    code, _, stderr = run_cli("submit", config, "--out", out, "--set", "seed=12")
    assert code == 2
    assert "other settings" in stderr
    assert files_under(out) == before


def test_template_ships_with_the_package():
    assert TEMPLATE.is_file()
    text = TEMPLATE.read_text()
    assert "RAY_AUTH_MODE=token" in text and "#SBATCH --requeue" in text and "--resume" in text


# ============================================================================ on a real Slurm
def test_submitted_campaign_runs_on_ray_with_token_auth_and_matches_exact_enumeration(tmp_path, slurm_cpus, jobs):
    config = write_config(tmp_path, "tinyslurm", TINY)
    out = tmp_path / "runs"
    job_id, stdout = submit(config, out, slurm_cpus)
    jobs.append(job_id)
    campaign = out / "tinyslurm"
    log = campaign / "slurm" / f"slurm-{job_id}.out"
    assert str(log) in stdout
    assert (campaign / "slurm" / "job.sbatch").is_file()

    # A second job on the same campaign is refused while the first is queued or running.
    code, _, stderr = run_cli("submit", config, "--out", out, "--nodes", 1, "--cpus-per-node", slurm_cpus,
                              "--loopback")
    assert code == 2 and job_id in stderr and "--out" in stderr

    _, text = finish(job_id, log)
    assert AUTH_LINE in text
    assert f"Connecting to existing Ray cluster at address: 127.0.0.1:{20000 + int(job_id) % 10000}" in text
    assert "driver finished with status 0" in text
    token = campaign / "slurm" / "ray_auth_token"
    assert stat.S_IMODE(token.stat().st_mode) == 0o600
    assert re.fullmatch(r"[0-9a-f]{64}", token.read_text())
    assert not Path(f"/tmp/ray-metadns-{job_id}").exists()  # the job cleaned its Ray temp folder

    exact = exact_ensemble(make_system("ising", L=L, J=1.0, field=0.0), BETA).expectations()
    for method in ("mdns", "sw"):
        table = pd.read_parquet(campaign / f"{method}_{TAG}" / "observables.parquet")
        assert OBSERVABLE_COLUMNS <= set(table.columns)
        assert (table["method"] == method).all() and np.allclose(table["beta"], BETA)
        assert (campaign / f"{method}_{TAG}" / "summary.json").is_file()
    sw = pd.read_parquet(campaign / f"sw_{TAG}" / "observables.parquet")
    row = sw[(sw["estimator"] == "mcmc") & (sw["observable"] == "energy_per_site")].iloc[0]
    assert row["stderr"] > 0
    assert abs(row["value"] - exact["energy_per_site"]) <= 3 * row["stderr"], (row["value"], row["stderr"])
    mdns = pd.read_parquet(campaign / f"mdns_{TAG}" / "observables.parquet")
    likelihood = mdns[(mdns["estimator"] == "likelihood") & (mdns["observable"] == "energy_per_site")]
    assert len(likelihood) == 1 and math.isfinite(likelihood["value"].iloc[0])
    assert set(pd.read_parquet(campaign / "comparison.parquet")["method"]) == {"mdns", "sw"}


def test_sbatch_refusal_exits_2_and_leaves_no_script(tmp_path, slurm_cpus):
    config = write_config(tmp_path, "tiny", TINY)
    code, _, stderr = run_cli("submit", config, "--out", tmp_path / "runs", "--partition", "no-such-partition",
                              "--cpus-per-node", slurm_cpus)
    assert code == 2
    assert "sbatch" in stderr and "partition" in stderr.lower()
    assert not (tmp_path / "runs" / "tiny" / "slurm" / "job.sbatch").exists()


def test_requeued_job_resumes_from_its_checkpoint_to_the_uninterrupted_result(tmp_path, slurm_cpus, jobs):
    config = write_config(tmp_path, "requeue", REQUEUE)
    out = tmp_path / "runs"
    job_id, _ = submit(config, out, slurm_cpus)
    jobs.append(job_id)
    run_dir = out / "requeue" / f"mdns_{TAG}"
    checkpoint = run_dir / "checkpoints" / "checkpoint.pt"
    log = out / "requeue" / "slurm" / f"slurm-{job_id}.out"
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while not checkpoint.exists():
        state = job_state(job_id)
        assert state is not None and state[0] in ("PENDING", "CONFIGURING", "RUNNING"), (state, log.read_text())
        assert time.monotonic() < deadline, "no checkpoint written"
        time.sleep(0.2)
    # What Slurm sends the batch shell --signal-seconds before the time limit (B:USR1): the
    # script requeues its job, Slurm then stops it with SIGTERM as it stops a preempted job.
    subprocess.run(["scancel", "--batch", "--signal=USR1", job_id], check=True)
    while scontrol_fields(job_id)["JobState"] in ("RUNNING", "COMPLETING"):
        assert time.monotonic() < deadline, "the requeued job did not stop"
        time.sleep(0.5)
    interrupted_at = int(torch.load(checkpoint, weights_only=False)["iteration"])
    assert 0 < interrupted_at < REQUEUE["training"]["outer_iterations"], interrupted_at
    assert not (run_dir / "summary.json").exists()
    # Requeued jobs wait for a begin time (about two minutes); release this one now.
    subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], check=True)

    _, text = finish(job_id, log)
    assert scontrol_fields(job_id)["Restarts"] == "1"
    assert f"job {job_id} (restart 0)" in text and f"job {job_id} (restart 1)" in text
    assert text.count(AUTH_LINE) == 2
    assert "time limit is near: requeueing" in text and "SIGTERM (preemption or scancel)" in text
    final = torch.load(checkpoint, weights_only=False)
    assert final["iteration"] == REQUEUE["training"]["outer_iterations"]
    assert [r["iteration"] for r in final["history"]] == list(range(1, REQUEUE["training"]["outer_iterations"] + 1))

    # The same config uninterrupted, in this process: the same numbers.
    reference_out = tmp_path / "reference"
    code, _, stderr = run_cli("run", config, "--out", reference_out, "--executor", "inline", "--quiet")
    assert code == 0, stderr
    resumed = pd.read_parquet(run_dir / "observables.parquet")
    uninterrupted = pd.read_parquet(reference_out / "requeue" / f"mdns_{TAG}" / "observables.parquet")
    resumed, uninterrupted = without_costs(resumed), without_costs(uninterrupted)
    assert resumed[["estimator", "observable"]].equals(uninterrupted[["estimator", "observable"]])
    np.testing.assert_allclose(resumed["value"].to_numpy(), uninterrupted["value"].to_numpy(), rtol=1e-10, atol=1e-12)


def test_wait_returns_1_when_the_job_fails(tmp_path, slurm_cpus, jobs, monkeypatch):
    config = write_config(tmp_path, "tiny", TINY)
    out = tmp_path / "runs"
    # --no-env with a system PATH: the job finds Slurm's commands but not this project's tools.
    monkeypatch.setenv("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    code, stdout, stderr = run_cli("submit", config, "--out", out, "--cpus-per-node", slurm_cpus, "--loopback",
                                   "--no-env", "--wait")
    job_id = re.search(r"submitted job (\d+)", stdout).group(1)
    jobs.append(job_id)
    assert code == 1, stdout + stderr
    assert f"job {job_id} ended with status 1" in stdout
    assert job_state(job_id) == ("FAILED", "1:0")
    log = (out / "tiny" / "slurm" / f"slurm-{job_id}.out").read_text()
    assert "not found on PATH after activating the environment" in log
    assert not (out / "tiny" / "slurm" / "ray_auth_token").exists()  # it stopped before starting Ray
