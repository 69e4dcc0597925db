"""``metadns submit`` (pipeline/distributed/submit.py, cluster/metadns_ray.sbatch.template).

The first tests need no Slurm: they render batch scripts (``--dry-run``), check them with
``bash -n``, run parts of them in bash (the head's address, the job's Ray ports, the
``--setup`` prologue) and check the refusals (bad options, invalid configs or tune sections,
runs made with other settings, no ``sbatch``), each writing nothing.

The others run on a real Slurm (``.ci/run`` starts a single-node one with
``cluster/ci/start_slurm.sh``): a tiny Ising campaign is submitted through ``metadns
submit``, its ``--setup`` lines run first, its Ray head starts with token authentication on
and the job's ports, the driver joins it with ``--address`` and the Parquet outputs are
checked against exact enumeration; a Tune sweep is submitted with ``metadns submit tune``; a
job whose driver fails keeps Ray's logs; a GPU job on a node without CUDA stops in its
preflight naming the node; a job is signalled as Slurm signals it before its time limit,
requeues itself mid-training (Slurm then stops it as it stops a preempted job) and must
resume from its checkpoint to the same numbers as an uninterrupted run.  Without a reachable
Slurm these tests are skipped, except under ``CI=true`` where they fail.
"""

from __future__ import annotations

import dataclasses
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
from tests.cluster.requirements import require
from pipeline.distributed import gpu_preflight
from pipeline.distributed.submit import (PORT_BLOCK, PORT_FIRST, PORT_SLOTS, TEMPLATE, SubmitOptions,
                                         default_environment, job_state, render, submit as submit_job, wait_for_job)
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
TUNE = {
    "seed": 5,
    "methods": ["metadns"],
    "system": {"name": "ising", "L": L, "J": 1.0, "beta": BETA},
    "sampler": {"denoiser": "lattice", "sites_per_step": 4, "hidden": 8, "layers": 1},
    "bias": {"gamma": 10, "sigma": 0.1, "height_per_cycle": 0.5},
    "training": {"outer_iterations": 2, "batch_size": 16, "inner_steps": 1, "maskings": 2, "threads": 1},
    "sampling": {"n_samples": 100, "batch_size": 100},
    "tune": {"space": {"bias.gamma": {"loguniform": [2, 30]}}, "num_samples": 2, "grace_period": 1,
             "reduction_factor": 2, "report_every": 1, "eval_samples": 100, "max_concurrent_trials": 1},
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


def dry_run(tmp_path: Path, *options, content: dict = TINY, command: tuple = ()) -> str:
    """The batch script ``metadns submit [command] CONFIG --dry-run OPTIONS`` prints (checked with bash -n)."""
    config = write_config(tmp_path, "tiny", content)
    code, script, stderr = run_cli("submit", *command, config, "--out", tmp_path / "runs", "--no-env", *options,
                                   "--dry-run")
    assert code == 0, stderr
    checked = subprocess.run(["bash", "-n"], input=script, capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr
    return script


def script_section(script: str, title: str) -> str:
    """The lines of the script's ``# ------ <title> ...`` section, up to the next section."""
    lines = script.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("# ---") and title in line)
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("# ---")), len(lines))
    return "\n".join(lines[start + 1:end])


def run_section(script: str, title: str, env: dict[str, str], show: str) -> subprocess.CompletedProcess:
    """Run one section of a rendered script in bash, with its rendered settings (the upper-case
    assignments at its top), ``env`` and a ``fail`` that prints and exits 1; then ``show``."""
    settings = "\n".join(line for line in script.splitlines() if re.match(r"^[A-Z_]+=", line))
    program = (f"set -uo pipefail\n{settings}\nworkers=()\nlog() {{ echo \"log: $*\"; }}\n"
               f"fail() {{ echo \"error: $*\"; exit 1; }}\n{script_section(script, title)}\n{show}\n")
    return subprocess.run(["bash", "-c", program], capture_output=True, text=True, env={**os.environ, **env})


def slurm_node() -> str:
    """Slurm's name of the (single) CI node."""
    return subprocess.run(["sinfo", "-h", "-o", "%N"], capture_output=True, text=True, check=True).stdout.strip()


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
    require("Slurm", slurm_unavailable())
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


def submit(config: Path, out: Path, cpus: int, *extra, command: str = "run") -> tuple[str, str]:
    """Submit through the CLI in-process (one node, Ray on loopback); returns (job id, stdout)."""
    code, stdout, stderr = run_cli("submit", command, config, "--out", out, "--nodes", 1, "--cpus-per-node", cpus,
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
        "submit", config, "--out", out, "--nodes", 3, "--gpus-per-node", "a100:2", "--cpus-per-node", 16,
        "--mem", "64G", "--time", "1-12:00:00", "--partition", "gpu", "--account", "proj42", "--job-name",
        "ising-study", "--sbatch-arg=--qos=long", "--sbatch-arg=--constraint=a100", "--set",
        "training.outer_iterations=5", "--ray-port", 16390, "--ray-interface", "ib0", "--signal-seconds", 300,
        "--conda-env", "metadns", "--setup", "module load cuda/12.4", "--dry-run")
    assert code == 0, stderr
    assert files_under(out) == []
    for line in ("#SBATCH --job-name=ising-study", "#SBATCH --nodes=3", "#SBATCH --ntasks-per-node=1",
                 "#SBATCH --cpus-per-task=16", "#SBATCH --gpus-per-node=a100:2", "#SBATCH --mem=64G",
                 "#SBATCH --time=1-12:00:00", "#SBATCH --partition=gpu", "#SBATCH --account=proj42",
                 "#SBATCH --qos=long", "#SBATCH --constraint=a100", "#SBATCH --requeue",
                 "#SBATCH --signal=B:USR1@300", "#SBATCH --open-mode=append",
                 f"#SBATCH --output={out.resolve()}/tiny/slurm/slurm-%j.out", f"#SBATCH --chdir={Path.cwd()}",
                 f"DRIVER=(metadns run {config.resolve()} --out {out.resolve()} --resume --quiet --executor ray "
                 "--set training.outer_iterations=5)", "DRIVER_STOP_SIGNAL=TERM", "GPUS_PER_NODE=2",
                 "PORT_BASE=16390", "RAY_INTERFACE=ib0", "HEAD_IP=''", "LOOPBACK=0", "module load cuda/12.4",
                 "export RAY_AUTH_MODE=token", "conda activate metadns"):
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
    for line in ("GPUS_PER_NODE=0", "PORT_BASE=0", "HEAD_IP=''", "RAY_INTERFACE=''", "# (no --setup lines)"):
        assert line in script.splitlines(), line
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
    (["--gpus-per-node", "four"], "--gpus-per-node"),
    (["--gpus-per-node", "a100:"], "--gpus-per-node"),
    (["--gpus-per-node", "a100:0"], "--gpus-per-node"),
    (["--gpus-per-node", "a 100:2"], "--gpus-per-node"),
    (["--setup", "module load cuda \\"], "--setup"),
    (["--setup", "module load cuda\nmodule load gcc"], "--setup"),
    (["--setup", "  "], "--setup"),
    (["--head-ip", "head01"], "--head-ip"),
    (["--ray-interface", "ib0 eth0"], "--ray-interface"),
    (["--head-ip", "10.0.0.1", "--ray-interface", "ib0"], "--ray-interface"),
    (["--loopback", "--head-ip", "10.0.0.1"], "--head-ip"),
    (["--ray-port", 80], "--ray-port"),
    (["--ray-port", 65000], "--ray-port"),
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


def test_each_node_starts_ray_with_its_own_cpus_and_lets_ray_detect_gpus(tmp_path):
    """Every `ray start` runs in `bash -c` on its node (srun --whole: the job's CPUs and GPUs
    there), so SLURM_CPUS_ON_NODE is that node's: the batch shell never expands it; no --num-gpus."""
    script = dry_run(tmp_path, "--nodes", 3, "--gpus-per-node", 4)
    assert "--num-gpus" not in script
    section = script_section(script, "Ray head and workers")
    steps = [line.strip() for line in section.splitlines() if line.strip().startswith("srun ")]
    assert len(steps) == 2 and all("--whole" in step and 'bash -c "$start_node" start-node' in step for step in steps)
    assert "start-node head" in steps[0] and "start-node worker" in steps[1]
    assert "--cpus-per-task" not in section
    assignment = re.search(r"^start_node='.*?'$", section, re.MULTILINE | re.DOTALL)
    assert assignment, section
    shown = subprocess.run(["bash", "-c", f'{assignment.group(0)}\nprintf %s "$start_node"'], capture_output=True,
                           text=True, env={**os.environ, "SLURM_CPUS_ON_NODE": "999"})
    assert 'exec ray start --num-cpus="$SLURM_CPUS_ON_NODE"' in shown.stdout and "999" not in shown.stdout


def test_gpu_jobs_check_cuda_on_every_node_before_ray_starts(tmp_path):
    script = dry_run(tmp_path, "--nodes", 2, "--gpus-per-node", "h100:4")
    assert "GPUS_PER_NODE=4" in script.splitlines()
    section = script_section(script, "GPUs: every node must see CUDA")
    assert re.search(r'srun --nodes="\$SLURM_JOB_NUM_NODES" --ntasks="\$SLURM_JOB_NUM_NODES" --ntasks-per-node=1 '
                     r'--overlap \\\n\s+--whole python -m pipeline.distributed.gpu_preflight "\$GPUS_PER_NODE"', section)
    assert 'fail "CUDA preflight failed on node(s) ${failed' in section
    assert script.index("gpu_preflight") < script.index("export RAY_AUTH_MODE=token") < script.index("start_node=")
    # Which nodes failed is read from the check's own lines.
    report = ("gpu-preflight ok gpu01: 4 CUDA device(s) (H100)\n"
              "gpu-preflight FAILED gpu02: torch.cuda.is_available() is False (torch 2.5, CUDA build none)")
    failed = re.search(r"failed=\$\((awk .*?)<<<", section).group(1)
    names = subprocess.run(["bash", "-c", f"{failed} <<<\"$1\"", "-", report], capture_output=True, text=True)
    assert names.stdout.strip() == "gpu02"
    assert "GPUS_PER_NODE=0" in dry_run(tmp_path).splitlines()  # no GPUs: no preflight


def test_gpu_preflight_reports_this_node_by_its_slurm_name(monkeypatch, capsys):
    monkeypatch.setenv("SLURMD_NODENAME", "node-under-test")
    passed, report = gpu_preflight.check(1)
    assert report.startswith(f"gpu-preflight {'ok' if passed else 'FAILED'} node-under-test: ")
    assert passed == (torch.cuda.is_available() and torch.cuda.device_count() >= 1)
    if not passed:
        assert "torch" in report and "CUDA_VISIBLE_DEVICES" in report
    assert gpu_preflight.main(["1"]) == (0 if passed else 1)
    assert capsys.readouterr().out.strip() == report
    assert gpu_preflight.main(["0"]) == 2 and "COUNT" in capsys.readouterr().err


@pytest.mark.parametrize("request_, rendered", [("1", "1"), ("8", "8"), ("a100:4", "a100:4"),
                                                ("nvidia_h100_80gb_hbm3:2", "nvidia_h100_80gb_hbm3:2")])
def test_gpu_requests_with_or_without_a_type(tmp_path, request_, rendered):
    script = dry_run(tmp_path, "--gpus-per-node", request_)
    assert f"#SBATCH --gpus-per-node={rendered}" in script.splitlines()
    assert f"GPUS_PER_NODE={rendered.split(':')[-1]}" in script.splitlines()


def test_head_address_from_an_interface_an_explicit_ip_or_the_head_name(tmp_path):
    env = {"SLURM_JOB_NODELIST": "localhost", "SLURMD_NODENAME": "localhost"}
    show = 'echo "head=$head_host ip=$head_ip from=$head_ip_from workers=${workers[*]}"'
    assert shutil.which("ip") and shutil.which("getent") and shutil.which("scontrol"), "needs iproute2, glibc, Slurm"

    def head(*options, nodes="localhost"):
        return run_section(dry_run(tmp_path, *options), "head address", {**env, "SLURM_JOB_NODELIST": nodes}, show)

    result = head("--ray-interface", "lo")
    assert result.stdout.strip() == "head=localhost ip=127.0.0.1 from=interface lo workers=", result
    result = head("--head-ip", "10.1.2.3")
    assert result.stdout.strip() == "head=localhost ip=10.1.2.3 from=--head-ip workers=", result
    result = head()  # default: what the head's name resolves to
    assert result.stdout.strip() == "head=localhost ip=127.0.0.1 from=getent ahostsv4 localhost workers=", result
    result = head("--ray-interface", "nosuch0")
    assert result.returncode == 1 and "error: --ray-interface nosuch0: no IPv4 address on that interface" in result.stdout
    # Several nodes: a head name that resolves to loopback is refused, naming the fix.
    result = head(nodes="localhost,node[7-8]")
    assert result.returncode == 1, result
    assert "loopback address the other nodes cannot reach; pass --ray-interface IFACE" in result.stdout
    result = head("--head-ip", "10.1.2.3", nodes="localhost,node[7-8]")
    assert result.stdout.strip() == "head=localhost ip=10.1.2.3 from=--head-ip workers=node7 node8", result


def test_every_ray_port_comes_from_one_block_per_job_id(tmp_path):
    """The block: PORT_FIRST + PORT_BLOCK × (job id mod PORT_SLOTS), GCS first, worker ports
    last; different slots never overlap; every port is passed to `ray start`."""
    script = dry_run(tmp_path)
    names = ("gcs_port", "client_server_port", "node_manager_port", "object_manager_port", "dashboard_agent_port",
             "dashboard_agent_grpc_port", "runtime_env_agent_port", "metrics_export_port", "min_worker_port",
             "max_worker_port")
    show = "echo " + " ".join(f"${name}" for name in names)

    def ports(job_id: int, text: str = script) -> dict[str, int]:
        result = run_section(text, "ports: one block", {"SLURM_JOB_ID": str(job_id)}, show)
        assert result.returncode == 0, result
        return dict(zip(names, map(int, result.stdout.split())))

    blocks = []
    for job_id in range(PORT_SLOTS):
        assigned = ports(job_id)
        base = PORT_FIRST + PORT_BLOCK * job_id
        assert assigned == {**{name: base + i for i, name in enumerate(names[:-1])}, "max_worker_port": base + PORT_BLOCK - 1}
        blocks.append(range(base, base + PORT_BLOCK))
    assert ports(4242) == ports(4242 % PORT_SLOTS)
    assert all(a.stop <= b.start for a, b in zip(blocks, blocks[1:]))  # disjoint, in order
    assert 1024 <= blocks[0].start and blocks[-1].stop <= 32768  # below Linux's ephemeral ports
    assert ports(4242, dry_run(tmp_path, "--ray-port", 40000))["gcs_port"] == 40000
    section = script_section(script, "Ray head and workers")
    for option, name in (("--port", "gcs_port"), ("--ray-client-server-port", "client_server_port"),
                         ("--node-manager-port", "node_manager_port"), ("--object-manager-port", "object_manager_port"),
                         ("--dashboard-agent-listen-port", "dashboard_agent_port"),
                         ("--dashboard-agent-grpc-port", "dashboard_agent_grpc_port"),
                         ("--runtime-env-agent-port", "runtime_env_agent_port"),
                         ("--metrics-export-port", "metrics_export_port"), ("--min-worker-port", "min_worker_port"),
                         ("--max-worker-port", "max_worker_port")):
        assert f'{option}="${name}"' in section, option


def test_setup_lines_run_first_and_a_failing_one_stops_the_job(tmp_path):
    script = dry_run(tmp_path, "--setup", "export SITE_STEP=1", "--setup", "echo \"ran $SITE_STEP, ${UNSET_HERE:-}\"",
                     "--setup", "false", "--setup", "echo never")
    first_command = next(line for line in script.splitlines()[script.splitlines().index("set -uo pipefail") + 1:]
                         if line and not line.startswith("#") and not re.match(r"^[A-Za-z_]+=|^\w+\(\) \{|^ |^}$", line))
    assert first_command == "set +u  # module and conda scripts read unset variables", first_command
    result = run_section(script, "setup (--setup lines", {}, "echo done")
    assert result.returncode == 1
    assert result.stdout.splitlines() == ["ran 1, ", "error: --setup line 3 exited with status 1: false"]


def test_a_failed_job_keeps_ray_logs_of_every_node(tmp_path):
    """What `finish` does with a failed driver (run for real on Slurm below): copy each node's
    Ray logs to SLURM_DIR/ray-logs-<job id>/<node>/ before the temporary folder goes."""
    script = dry_run(tmp_path, "--nodes", 2)
    finish = script[script.index("finish() {"):script.index("\n}\n", script.index("finish() {"))]
    assert "logs=$SLURM_DIR/ray-logs-$SLURM_JOB_ID" in finish and "$stopping -eq 0" in finish
    assert finish.index('cp -r "$2/session_latest/logs" "$1/${SLURMD_NODENAME') < finish.index('rm -rf "$2"')
    assert 'srun --nodes="${#workers[@]}"' in finish  # the workers' nodes too
    assert script.rstrip().endswith('finish "$status"')


def test_tune_sweeps_are_submitted_as_metadns_tune(tmp_path):
    config = write_config(tmp_path, "tiny", TUNE)
    out = tmp_path / "runs"
    script = dry_run(tmp_path, "--set", "tune.num_samples=3", content=TUNE, command=("tune",))
    assert (f"DRIVER=(metadns tune {config.resolve()} --out {out.resolve()} --resume --quiet --set "
            "tune.num_samples=3)") in script.splitlines()
    assert "DRIVER_STOP_SIGNAL=INT" in script.splitlines()  # Tune saves its state on SIGINT
    assert "--executor" not in script
    assert files_under(out) == []
    code, _, stderr = run_cli("submit", "tune", config, "--out", out, "--set", "tune.num_samples=0", "--dry-run")
    assert code == 2 and "tune.num_samples" in stderr
    # A tune folder holding another sweep is refused before submitting.
    other = out / "tiny" / "tune"
    other.mkdir(parents=True)
    (other / "config.yaml").write_text(yaml.safe_dump({**TUNE, "name": "tiny", "seed": 99}))
    code, _, stderr = run_cli("submit", "tune", config, "--out", out, "--dry-run")
    assert code == 2 and "another sweep" in stderr and "seed" in stderr


# ============================================================================ on a real Slurm
def test_submitted_campaign_runs_on_ray_with_token_auth_and_matches_exact_enumeration(tmp_path, slurm_cpus, jobs):
    config = write_config(tmp_path, "tinyslurm", TINY)
    out = tmp_path / "runs"
    job_id, stdout = submit(config, out, slurm_cpus, "--setup", 'echo "setup line 1 on $(hostname -s)"',
                            "--setup", "export SETUP_CHECK=exported", "--setup", 'echo "setup line 3: $SETUP_CHECK"')
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
    lines = text.splitlines()  # the --setup lines ran first, in order, in the batch shell
    assert lines[0].startswith("setup line 1 on ") and lines[1] == "setup line 3: exported"
    assert f"job {job_id} (restart 0)" in lines[2]
    base = PORT_FIRST + PORT_BLOCK * (int(job_id) % PORT_SLOTS)
    assert f"Connecting to existing Ray cluster at address: 127.0.0.1:{base}..." in text
    assert f"[metadns] Ray head on {slurm_node()}: {slurm_cpus} CPUs" in text  # the node's own SLURM_CPUS_ON_NODE
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


def test_a_failed_driver_leaves_rays_logs_beside_the_slurm_log(tmp_path, slurm_cpus, jobs):
    """The config is valid when submitted (held) and broken before the job starts: Ray comes up,
    the driver exits 2, and every node's Ray logs (here one) are kept under ray-logs-<job id>/."""
    config = write_config(tmp_path, "broken", TINY)
    out = tmp_path / "runs"
    job_id, _ = submit(config, out, slurm_cpus, "--sbatch-arg=--hold")
    jobs.append(job_id)
    write_config(tmp_path, "broken", {**TINY, "system": {**TINY["system"], "L": -4}})
    subprocess.run(["scontrol", "release", job_id], check=True)
    state, exit_code = wait_for_job(job_id, JOB_TIMEOUT_S)
    slurm = out / "broken" / "slurm"
    text = (slurm / f"slurm-{job_id}.out").read_text()
    assert (state, exit_code) == ("FAILED", "2:0"), text[-6000:]
    assert AUTH_LINE in text and "system.L" in text and "driver finished with status 2" in text
    assert not Path(f"/tmp/ray-metadns-{job_id}").exists()
    logs = slurm / f"ray-logs-{job_id}"
    assert f"Ray's logs of this failed job: {logs}/<node>/" in text
    assert [node.name for node in logs.iterdir()] == [slurm_node()]
    raylet = (logs / slurm_node() / "raylet.out").read_text()
    assert (logs / slurm_node() / "gcs_server.out").is_file()
    base = PORT_FIRST + PORT_BLOCK * (int(job_id) % PORT_SLOTS)  # Ray took the job's ports
    assert f"NodeManager server started, listening on port {base + 2}" in raylet
    assert f"ObjectManager server started, listening on port {base + 3}" in raylet


def test_a_gpu_job_on_a_node_without_cuda_stops_in_its_preflight(tmp_path, slurm_cpus, jobs):
    if torch.cuda.is_available():
        pytest.skip("this node has CUDA, so its preflight passes")
    config = write_config(tmp_path, "gpu", TINY)
    job = render(SubmitOptions(config, out=tmp_path / "runs", gpus_per_node="1", cpus_per_node=slurm_cpus,
                               loopback=True, time="15"))
    # The CI Slurm has no GPUs to give: the job asks for none and runs its GPU preflight on a CPU node.
    script = job.script.replace("#SBATCH --gpus-per-node=1\n", "")
    assert script != job.script
    job_id, _ = submit_job(dataclasses.replace(job, script=script))
    jobs.append(job_id)
    state, exit_code = wait_for_job(job_id, JOB_TIMEOUT_S)
    text = job.log_path(job_id).read_text()
    assert (state, exit_code) == ("FAILED", "1:0"), text[-6000:]
    assert f"gpu-preflight FAILED {slurm_node()}: torch.cuda.is_available() is False" in text
    assert f"error: CUDA preflight failed on node(s) {slurm_node()}: " in text
    assert AUTH_LINE not in text and not (job.slurm_dir / "ray_auth_token").exists()  # stopped before Ray


def test_a_submitted_tune_sweep_runs_on_the_jobs_ray_cluster(tmp_path, slurm_cpus, jobs):
    config = write_config(tmp_path, "tunejob", TUNE)
    out = tmp_path / "runs"
    job_id, _ = submit(config, out, slurm_cpus, command="tune")
    jobs.append(job_id)
    slurm = out / "tunejob" / "slurm"
    assert (slurm / "tune.sbatch").is_file()
    _, text = finish(job_id, slurm / f"slurm-{job_id}.out")
    assert AUTH_LINE in text and "driver: metadns tune" in text and "driver finished with status 0" in text
    tune_dir = out / "tunejob" / "tune"
    trials = pd.read_parquet(tune_dir / "trials.parquet")
    assert len(trials) == TUNE["tune"]["num_samples"] and (trials["error"] == "").all()
    assert (tune_dir / "best.yaml").is_file()


def test_requeued_job_resumes_from_its_checkpoint_to_the_uninterrupted_result(tmp_path, slurm_cpus, jobs):
    config = write_config(tmp_path, "requeue", REQUEUE)
    out = tmp_path / "runs"
    job_id, _ = submit(config, out, slurm_cpus, "--setup", "export METADNS_PROGRESS_EVERY=0.01")  # a line every 0.6 s
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
    assert re.search(r"^\[progress\] mdns_beta0\.6000: outer iteration \d+/200, ESS/n [\d.]+, max V [\d.]+ kT, "
                     r"elapsed \d:\d\d:\d\d$", text, re.MULTILINE), text[-6000:]
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
