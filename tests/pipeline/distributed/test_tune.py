"""``metadns tune``: Ray Tune sweeps with ASHA early stopping (pipeline.distributed.tune).

The objectives are checked against exact enumeration of the Ising L = 4 model (65 536 states)
with closed-form expectations; a real sweep (8 trials, ASHA with grace period 1 and reduction
factor 2 over 6 outer iterations, one trial at a time so the order of reports is fixed) is
checked by replaying ASHA's rule on the reported objectives, by retraining its best trial in
this process (same numbers as in the Ray worker), and by loading its best.yaml. A sweep
interrupted in a subprocess is resumed with ``--resume`` from its trials' checkpoints, and a
trial whose worker is killed is retried from its checkpoint. Invalid
``tune`` sections exit 2 naming the field, before anything is written or Ray is started; the
GPU and CPU requests of trials are checked against a pretended cluster.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from pipeline import cli
from pipeline.config import ConfigError, apply_overrides, config_from_dict, load_config
from pipeline.distributed import executor, session
from pipeline.distributed.tune import plan_tune, train_trial, trial_objectives, trial_resources, write_outputs
from pipeline.outputs import read_parquet_metadata
from pipeline.build import build_system
from pipeline.campaign import prepare_campaign
from pipeline.runner import run_campaign
from systems.exact import exact_ensemble
from tests.cli_runner import run_cli

REPO = Path(__file__).resolve().parents[3]
BETA = 0.6
L = 4
D = L * L
MAX_T = 6

TINY = {
    "name": "tiny",
    "seed": 11,
    "methods": ["metadns", "sw"],
    "system": {"name": "ising", "L": L, "beta": [BETA]},
    "sampler": {"denoiser": "lattice", "sites_per_step": 4, "hidden": 16, "layers": 1},
    "bias": {"gamma": 10, "sigma": 0.1, "height_per_cycle": 0.5},
    "training": {"outer_iterations": MAX_T, "batch_size": 64, "inner_steps": 2, "maskings": 4},
    "sampling": {"n_samples": 200, "batch_size": 500},
    "reference": {"chains": 4, "sweeps": 60, "burn_in": 10},
    "tune": {
        "space": {"bias.gamma": {"loguniform": [2, 30]}, "bias.height_per_cycle": {"loguniform": [0.05, 3.0]}},
        "num_samples": 8,
        "grace_period": 1,
        "reduction_factor": 2,
        "report_every": 1,
        "eval_samples": 500,
        "max_concurrent_trials": 1,
    },
}


def _write(tmp_path: Path, content: dict, name: str = "tiny.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(content, sort_keys=False))
    return path


# ----------------------------------------------------------------------------- objectives vs exact
@pytest.fixture(scope="module")
def ising_exact():
    system = build_system(config_from_dict(TINY))
    return system, exact_ensemble(system, BETA)


def test_objectives_of_exact_importance_samples_match_the_reference(ising_exact):
    """Every state once with a uniform proposal (log q = −D ln 2): the likelihood weights give π
    exactly, so JS = 0, F matches, the whole CV range is covered and Kish ESS/n = 1/(N Σπ²)."""
    system, ensemble = ising_exact
    plan = plan_tune(config_from_dict(TINY), "unused")
    x = ensemble.states.long()
    n = x.shape[0]
    out = trial_objectives(system, BETA, x, np.full(n, -D * math.log(2.0)), plan.reference)
    p = ensemble.log_prob.double().exp().numpy()
    assert out["js_cv"] == pytest.approx(0.0, abs=1e-12)
    assert out["fes_rmse"] == pytest.approx(0.0, abs=1e-9)
    assert out["fes_coverage"] == 1.0 and out["cv_coverage"] == 1.0
    assert out["ess_fraction"] == pytest.approx(1.0 / (n * np.sum(p * p)), rel=1e-10)
    assert out["coverage_ess"] == pytest.approx(out["ess_fraction"], rel=1e-12)


def test_objectives_of_a_collapsed_sampler_match_closed_forms(ising_exact):
    """A sampler that only produces m > 0 (each such state once, uniform proposal over them):
    the reweighted CV histogram is π(m | m > 0), so with Q = P(m > 0) under π
    JS = ½[ln(2/(1+Q)) + Q ln(2Q/(1+Q)) + (1−Q) ln 2] (0.75 ln(4/3) for Q = ½, the paper's
    collapsed value); the CV span is (1 − 2/D)/2; the sampled F is exact on m > 0 and each
    missing value counts as one effective sample, F = max(0, ln(ESS·P_max))."""
    system, ensemble = ising_exact
    plan = plan_tune(config_from_dict(TINY), "unused")
    m = ensemble.cv[:, 0].double().numpy()
    keep = m > 1e-12
    x = ensemble.states.long()[torch.from_numpy(keep)]
    n_plus = int(keep.sum())
    out = trial_objectives(system, BETA, x, np.full(n_plus, -math.log(n_plus)), plan.reference)

    p = ensemble.log_prob.double().exp().numpy()
    q_plus = p[keep].sum()
    expected_js = 0.5 * (math.log(2 / (1 + q_plus)) + q_plus * math.log(2 * q_plus / (1 + q_plus))
                         + (1 - q_plus) * math.log(2))
    assert out["js_cv"] == pytest.approx(expected_js, rel=1e-9)
    assert out["cv_coverage"] == pytest.approx((1 - 2 / D) / 2, rel=1e-12)
    values = np.round((np.arange(D + 1) * 2.0 / D - 1.0), 12)
    assert out["fes_coverage"] == pytest.approx(np.sum(values > 0) / (D + 1), rel=1e-12)

    w = p[keep] / q_plus                                   # normalised weights of the kept states
    ess = 1.0 / np.sum(w * w)
    assert out["ess_fraction"] == pytest.approx(ess / n_plus, rel=1e-10)
    level = np.round(m * D / 2).astype(int) + D // 2       # CV bin of every state
    p_bin = np.bincount(level, weights=p, minlength=D + 1)
    f_ref = -np.log(p_bin / p_bin.max())
    f_sampled = f_ref.copy()                               # exact where sampled (same gauge: P_max shared)
    f_sampled[values <= 0] = max(0.0, math.log(ess * p_bin[values > 0].max() / q_plus))
    assert out["fes_rmse"] == pytest.approx(np.std(f_sampled - f_ref), rel=1e-9)
    assert out["fes_rmse"] > 1.0                           # a missed mode costs k_BT, not nothing


# ----------------------------------------------------------------------------- the sweep on Ray
def _asha_replay(history: pd.DataFrame, order: list[int], grace: int, factor: float, max_t: int) -> dict[int, int]:
    """Iterations each trial runs under asynchronous successive halving (minimising), trials run
    one after the other: at a trial's first report at or past each rung milestone grace·factor^k
    (< max_t) it stops when its objective is worse than the (1 − 1/factor) quantile of the
    objectives recorded there before it; every arrival is recorded."""
    n_rungs = int(math.log(max_t / grace) / math.log(factor) + 1)
    milestones = [grace * factor ** k for k in range(n_rungs)]
    recorded = {milestone: [] for milestone in milestones}
    stops = {}
    for trial in order:
        reports = history[history.trial == trial].sort_values("iteration")
        stops[trial] = max_t
        for iteration, objective in zip(reports.iteration, reports.objective):
            reached = [ms for ms in milestones if iteration >= ms]
            new = [ms for ms in reached if trial not in {t for t, _ in recorded[ms]}]
            if not new:
                continue
            milestone = max(new)
            earlier = [-value for _, value in recorded[milestone]]
            stop = bool(earlier) and -objective < np.nanpercentile(earlier, (1 - 1 / factor) * 100)
            recorded[milestone].append((trial, objective))
            if stop:
                stops[trial] = int(iteration)
                break
    return stops


@pytest.mark.slow
def test_tune_sweep_stops_trials_with_asha_and_writes_the_best_config(tmp_path, local_ray, capsys):
    config_path = _write(tmp_path, TINY)
    out = tmp_path / "runs"
    assert cli.main(["tune", str(config_path), "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    tune_dir = out / "tiny" / "tune"
    trials = pd.read_parquet(tune_dir / "trials.parquet").set_index("trial")
    history = pd.read_parquet(tune_dir / "history.parquet")
    assert "best trial" in printed and "bias.gamma" in printed

    # One row per trial, with the swept keys, seeds, budgets and objectives.
    assert len(trials) == 8
    assert (trials.error == "").all()
    for column in ("bias.gamma", "bias.height_per_cycle", "seed", "iterations", "final_objective",
                   "best_objective", "stopped_early", "wall_time_s"):
        assert column in trials
    assert trials["bias.gamma"].between(2, 30).all() and trials["bias.height_per_cycle"].between(0.05, 3.0).all()
    assert trials.seed.is_unique
    assert read_parquet_metadata(tune_dir / "trials.parquet")["objective"] == "js_cv"  # exact reference exists
    assert np.isfinite(history.objective).all()
    assert ((history.objective >= 0) & (history.objective <= math.log(2))).all()
    assert np.array_equal(history.objective, history.js_cv)

    # ASHA: the iterations each trial ran are those its rule gives for the reported objectives,
    # and it stopped some trials early.
    stops = _asha_replay(history, list(range(8)), grace=1, factor=2, max_t=MAX_T)
    assert {t: int(trials.iterations[t]) for t in trials.index} == stops
    assert trials.stopped_early.any()
    assert (trials.stopped_early == (trials.iterations < MAX_T)).all()
    for trial, reports in history.groupby("trial"):
        assert trials.final_objective[trial] == reports.sort_values("iteration").objective.iloc[-1]
        assert trials.best_objective[trial] == reports.objective.min()
        assert len(reports) == trials.iterations[trial]

    # The best trial: lowest final JS among the trials that ran the full budget.
    full = trials[trials.iterations == MAX_T]
    best = int(full.final_objective.idxmin())
    best_config = load_config(tune_dir / "best.yaml")
    assert best_config.tune is None
    assert best_config.bias.gamma == trials["bias.gamma"][best]
    assert best_config.bias.height_per_cycle == trials["bias.height_per_cycle"][best]
    assert best_config.methods == ("metadns", "sw") and best_config.system.beta == (BETA,)
    assert best_config.bias.sigma == TINY["bias"]["sigma"]

    # The Ray worker reported exactly what the single-process trial computes.
    plan = plan_tune(load_config(config_path), out.parent / "elsewhere")
    reports = []
    train_trial(plan, best, lambda metrics, checkpoint: reports.append(metrics))
    mine = history[history.trial == best].sort_values("iteration")
    assert [r["outer_iteration"] for r in reports] == mine.iteration.tolist()
    assert [r["js_cv"] for r in reports] == pytest.approx(mine.js_cv.tolist(), rel=1e-9, abs=1e-12)
    assert reports[-1]["seed"] == trials.seed[best]

    # The tune folder is not overwritten.
    assert cli.main(["tune", str(config_path), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and "pass --resume" in err


# ----------------------------------------------------------------------------- resources, interruption, resume
RESUMABLE = {**TINY, "training": {**TINY["training"], "outer_iterations": 40},
             "tune": {**TINY["tune"], "num_samples": 2, "grace_period": 40, "eval_samples": 200}}


def _checkpoints(out: Path, trial: str = "*") -> list[Path]:
    return list((out / "tiny" / "tune" / "ray_results" / "tiny").glob(f"*trial={trial}_*/checkpoint_*"))


def _kill_trial_worker_when(ready, deadline: float) -> None:
    """Once ``ready()``, SIGKILL the Ray Tune trial workers (``ray::ImplicitFunc``) descending
    from this process, as if their node had died (Linux /proc)."""
    while not ready() and time.monotonic() < deadline:
        time.sleep(0.05)
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
    family, grown = {os.getpid()}, True
    while grown:
        children = {pid for pid, parent in parents.items() if parent in family} - family
        family |= children
        grown = bool(children)
    for pid in family - {os.getpid()}:
        with contextlib.suppress(OSError):
            if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"ray::ImplicitFunc"):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.slow
def test_an_interrupted_sweep_resumes_from_its_trials_checkpoints(tmp_path, request):
    """``metadns tune`` in a subprocess is interrupted (SIGINT, as Ctrl+C) once trial 0 has a
    checkpoint; ``--resume`` continues it, and there trial 1's worker is killed once it has
    two checkpoints (Tune retries it, tune.max_failures): every trial once, each trial's
    history 1..T without gaps or repeats, both trials continued from a checkpoint, and the
    interrupted one reporting exactly what an uninterrupted trial does."""
    config_path = _write(tmp_path, RESUMABLE)
    out = tmp_path / "runs"
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "pipeline.cli", "tune", str(config_path), "--out", str(out), "--quiet"]
    log = tmp_path / "interrupted.log"
    with log.open("w") as sink:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=sink, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not _checkpoints(out) and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _checkpoints(out), log.read_text()[-3000:]
        process.send_signal(signal.SIGINT)
        process.wait(timeout=120)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)   # the local Ray it started, if anything is left
    err = log.read_text()
    assert process.returncode == 1, err[-3000:]
    assert "--resume" in err
    tune_dir = out / "tiny" / "tune"
    assert not (tune_dir / "trials.parquet").exists()

    code, _, err = run_cli("tune", config_path, "--out", out, "--quiet")
    assert code == 2 and "pass --resume" in err
    code, _, err = run_cli("tune", config_path, "--out", out, "--resume", "--set", "tune.eval_samples=300")
    assert code == 2 and "another sweep" in err and "tune.eval_samples" in err

    request.getfixturevalue("local_ray")
    def second_checkpoint() -> bool:
        return any(path.name != "checkpoint_000000" for path in _checkpoints(out, "1"))

    killer = threading.Thread(target=_kill_trial_worker_when, args=(second_checkpoint, time.monotonic() + 120))
    killer.start()
    code, _, err = run_cli("tune", config_path, "--out", out, "--resume", "--quiet")
    killer.join()
    assert code == 0, err[-3000:]
    trials = pd.read_parquet(tune_dir / "trials.parquet")
    history = pd.read_parquet(tune_dir / "history.parquet")
    assert sorted(trials.trial) == [0, 1] and (trials.error == "").all()
    assert (trials.iterations == 40).all() and (trials.device == "cpu").all()
    for _, reports in history.groupby("trial"):
        assert reports.iteration.tolist() == list(range(1, 41))
    assert (tune_dir / "best.yaml").is_file()
    resumed = history[history.resumed_from > 0]
    assert sorted(resumed.trial.unique()) == [0, 1]       # both continued from a checkpoint ...
    trial = 0
    start = int(resumed[resumed.trial == trial].resumed_from.iloc[0])
    assert resumed[resumed.trial == trial].iteration.min() == start      # reported again after the restore
    mine = history[history.trial == trial].sort_values("iteration")
    assert (mine.resumed_from[mine.iteration < start] == 0).all()

    # ... and reported what an uninterrupted trial reports.
    reports = []
    train_trial(plan_tune(load_config(config_path), tmp_path / "elsewhere"), trial,
                lambda metrics, checkpoint: reports.append(metrics))
    assert [r["js_cv"] for r in reports] == pytest.approx(mine.js_cv.tolist(), rel=1e-9, abs=1e-12)


def test_gpus_per_trial_sets_what_each_trial_asks_ray_for(monkeypatch):
    """``gpus_per_trial: auto`` asks for one GPU where the cluster has GPUs and training.device
    is not cpu; a number is asked as given; requests the cluster cannot grant are refused."""
    cluster = {"CPU": 2.0, "GPU": 2.0}
    for module in (session, executor):
        monkeypatch.setattr(module, "cluster_cpus", lambda: cluster["CPU"])
        monkeypatch.setattr(module, "cluster_gpus", lambda: cluster["GPU"])

    def request(gpus="auto", device="auto", cpus=1):
        content = {**TINY, "training": {**TINY["training"], "device": device},
                   "tune": {**TINY["tune"], "gpus_per_trial": gpus, "cpus_per_trial": cpus}}
        return trial_resources(plan_tune(config_from_dict(content), "unused"))

    assert request() == {"cpu": 1, "gpu": 1.0}
    assert request(0.25, cpus=0.5) == {"cpu": 0.5, "gpu": 0.25}
    assert request(device="cpu") == {"cpu": 1, "gpu": 0.0}
    for gpus, device, cpus, field in ((4, "auto", 1, "tune.gpus_per_trial"), ("auto", "auto", 3, "tune.cpus_per_trial"),
                                      (1, "cpu", 1, "tune.gpus_per_trial"), (0, "cuda", 1, "tune.gpus_per_trial")):
        with pytest.raises(ConfigError) as error:
            request(gpus, device, cpus)
        assert error.value.field == field
    cluster["GPU"] = 0.0
    assert request() == {"cpu": 1, "gpu": 0.0}
    with pytest.raises(ConfigError) as error:
        request(device="cuda")
    assert error.value.field == "tune.gpus_per_trial" and "no GPU" in error.value.message


def test_a_local_ray_gets_the_allocated_cpus(monkeypatch):
    """``allocated_cpus``: the CPU affinity, at most SLURM_CPUS_ON_NODE; ray_session starts a
    local instance with it."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    monkeypatch.delenv("SLURM_CPUS_ON_NODE", raising=False)
    assert session.allocated_cpus() == 4
    for slurm, expected in (("2", 2), ("16", 4), ("", 4)):
        monkeypatch.setenv("SLURM_CPUS_ON_NODE", slurm)
        assert session.allocated_cpus() == expected
    started = {}
    monkeypatch.setenv("SLURM_CPUS_ON_NODE", "3")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", raising=False)
    monkeypatch.setattr(session.ray, "is_initialized", lambda: False)
    monkeypatch.setattr(session.ray, "init", lambda **kwargs: started.update(kwargs))
    monkeypatch.setattr(session.ray, "shutdown", lambda: None)
    with session.ray_session():
        pass
    assert started["address"] == "local" and started["num_cpus"] == 3


# ----------------------------------------------------------------------------- validation
@pytest.mark.parametrize("override, field, words", [
    ("tune.space.bias.gamm={loguniform: [2, 30]}", "tune.space.bias.gamm", "Did you mean 'gamma'"),
    ("tune.space.bias.gamma={normal: [2, 30]}", "tune.space.bias.gamma", "one distribution"),
    ("tune.space.bias.gamma={loguniform: [0, 30]}", "tune.space.bias.gamma", "0 < low"),
    ("tune.space.bias.gamma={uniform: [5, 2]}", "tune.space.bias.gamma", "low < high"),
    ("tune.space.bias.gamma={grid: [0.5, 5]}", "tune.space.bias.gamma", "value 0.5"),
    ("tune.space.training.batch_size={uniform: [16, 64]}", "tune.space.training.batch_size", "randint"),
    ("tune.space.system.L={grid: [4, 6]}", "tune.space.system.L", "cannot be swept"),
    ("tune.space.training.outer_iterations={grid: [4, 6]}", "tune.space.training.outer_iterations", "budget"),
    ("tune.space.bias.grid_points={grid: [5]}", "tune.space.bias.grid_points", "bias.grid_points"),
    ("tune.objektive=js_cv", "tune.objektive", "Did you mean 'objective'"),
    ("tune.objective=rmse", "tune.objective", "js_cv"),
    ("tune.method=sw", "tune.method", "metadns"),
    ("tune.method=mdns", "tune.method", "not among the config's methods"),
    ("tune.temperature=0.5", "tune.temperature", "system.beta"),
    ("tune.grace_period=7", "tune.grace_period", "outer_iterations"),
    ("tune.reduction_factor=1", "tune.reduction_factor", "> 1"),
    ("tune.num_samples=0", "tune.num_samples", ">= 1"),
    ("tune.cpus_per_trial=0", "tune.cpus_per_trial", "> 0"),
    ("tune.gpus_per_trial=-1", "tune.gpus_per_trial", ">= 0"),
    ("tune.gpus_per_trial=all", "tune.gpus_per_trial", "auto"),
    ("tune.checkpoint_every=0", "tune.checkpoint_every", ">= 1"),
    ("tune.max_failures=-1", "tune.max_failures", ">= 0"),
    ("tune.reference=nowhere", "tune.reference", "not a finished run folder"),
])
def test_invalid_tune_sections_exit_2_naming_the_field_and_write_nothing(tmp_path, capsys, override, field, words):
    config_path = _write(tmp_path, TINY)
    out = tmp_path / "runs"
    assert cli.main(["tune", str(config_path), "--out", str(out), "--set", override]) == 2
    err = capsys.readouterr().err
    assert f"error: {field}:" in err and words in err
    assert not out.exists()


def test_objectives_needing_a_reference_are_refused_without_one(tmp_path, capsys):
    """Ising L = 6 has 2^36 states: no exact enumeration, so JS needs a reference run."""
    content = {**TINY, "system": {"name": "ising", "L": 6, "beta": [BETA]}}
    content["tune"] = {**TINY["tune"], "objective": "js_cv"}
    out = tmp_path / "runs"
    assert cli.main(["tune", str(_write(tmp_path, content)), "--out", str(out)]) == 2
    assert "error: tune.objective:" in capsys.readouterr().err
    content["tune"]["objective"] = "auto"
    assert plan_tune(config_from_dict(content), out).objective == "coverage_ess"
    assert not out.exists()


def test_a_finished_swendsen_wang_run_serves_as_reference(tmp_path):
    """``tune.reference`` loads the run's reweighted histograms and F; another β is refused."""
    reference_config = config_from_dict({**TINY, "methods": ["sw"]})
    campaign = prepare_campaign(reference_config, tmp_path, resume=False)
    run_campaign(campaign, progress=False)
    folder = tmp_path / "tiny" / "sw_beta0.6000"
    histograms = pd.read_parquet(folder / "histograms.parquet")
    expected = histograms[(histograms.estimator == "mcmc") & (histograms.quantity == "cv")].sort_values("bin")

    plan = plan_tune(config_from_dict({**TINY, "tune": {**TINY["tune"], "reference": str(folder)}}), tmp_path)
    assert plan.reference.label == "sw" and plan.objective == "js_cv"
    np.testing.assert_array_equal(plan.reference.cv_histogram, expected.probability.to_numpy())

    other = {**TINY, "system": {"name": "ising", "L": L, "beta": [0.5]},
             "tune": {**TINY["tune"], "reference": str(folder)}}
    with pytest.raises(ConfigError) as error:
        plan_tune(config_from_dict(other), tmp_path)
    assert error.value.field == "tune.reference"


# ----------------------------------------------------------------------------- plan and overrides
def test_trials_are_reproducible_and_cover_the_grid():
    """Grid entries are crossed with num_samples random draws; the same config gives the same
    trials and seeds, another config seed other ones."""
    content = {**TINY, "tune": {**TINY["tune"], "num_samples": 3,
                                "space": {"bias.gamma": {"grid": [4, 8]}, "bias.sigma": {"choice": [0.05, 0.1]},
                                          "training.inner_steps": {"randint": [1, 3]}}}}
    plan = plan_tune(config_from_dict(content), "runs")
    again = plan_tune(config_from_dict(content), "runs")
    other = plan_tune(config_from_dict({**content, "seed": 12}), "runs")
    assert len(plan.trials) == 6
    assert [t.overrides for t in plan.trials] == [t.overrides for t in again.trials]
    assert [t.seed for t in plan.trials] == [t.seed for t in again.trials]
    assert len({t.seed for t in plan.trials}) == 6
    assert [t.seed for t in plan.trials] != [t.seed for t in other.trials]
    assert sorted(t.overrides["bias.gamma"] for t in plan.trials) == [4, 4, 4, 8, 8, 8]
    assert {t.overrides["bias.sigma"] for t in plan.trials} <= {0.05, 0.1}
    assert {t.overrides["training.inner_steps"] for t in plan.trials} <= {1, 2, 3}
    for trial in plan.trials:                       # each trial trains one method at one temperature
        trial_config = config_from_dict(trial.config)
        assert trial_config.methods == ("metadns",) and trial_config.tune is None
        assert trial_config.bias.gamma == trial.overrides["bias.gamma"]
        assert trial_config.training.inner_steps == trial.overrides["training.inner_steps"]


def test_default_space_sweeps_gamma_height_and_sigma():
    plan = plan_tune(config_from_dict({**TINY, "tune": None}), "runs")
    assert [e.key for e in plan.settings.space] == ["bias.gamma", "bias.height_per_cycle", "bias.sigma"]
    assert len(plan.trials) == 8 and plan.objective == "js_cv" and plan.mode == "min"


def test_set_overrides_reach_the_tune_section():
    raw = apply_overrides(TINY, ["tune.num_samples=3", "tune.space.bias.sigma={grid: [0.05, 0.1]}"])
    assert raw["tune"]["num_samples"] == 3
    assert raw["tune"]["space"]["bias.sigma"] == {"grid": [0.05, 0.1]}
    assert raw["tune"]["space"]["bias.gamma"] == TINY["tune"]["space"]["bias.gamma"]   # merged, not replaced
    assert apply_overrides({**TINY, "tune": None}, ["tune.method=mdns"])["tune"] == {"method": "mdns"}
    with pytest.raises(ConfigError) as error:
        apply_overrides(TINY, ["tune.grace_period.x=1"])
    assert error.value.field == "tune.grace_period.x"
    assert TINY["tune"]["num_samples"] == 8                                          # input untouched


@pytest.mark.parametrize("objective, unit", [("js_cv", "nat"), ("fes_rmse", "kT"), ("coverage_ess", None)])
def test_tune_tables_carry_units(tmp_path, objective, unit):
    """trials.parquet and history.parquet mark JS divergences nat, FES RMSEs kT, wall times s and
    the objective columns with the objective's unit (coverage_ess, a fraction, has none)."""
    plan = plan_tune(config_from_dict({**TINY, "tune": {**TINY["tune"], "objective": objective}}), tmp_path)
    plan.out_dir.mkdir(parents=True)
    components = {"js_cv": 0.1, "fes_rmse": 0.5, "fes_coverage": 1.0, "cv_coverage": 0.9, "ess_fraction": 0.3,
                  "coverage_ess": 0.27}
    trials = pd.DataFrame([{"trial": t.index, **t.overrides, "seed": t.seed, "iterations": MAX_T,
                            "final_objective": components[objective], "best_objective": components[objective],
                            "stopped_early": False, "reports": 1, "wall_time_s": 2.0, "device": "cpu",
                            **{f"final_{name}": value for name, value in components.items()}, "error": ""}
                           for t in plan.trials])
    history = pd.DataFrame([{"trial": t.index, "iteration": MAX_T, "objective": components[objective], **components,
                             "wall_time_s": 2.0, "resumed_from": 0} for t in plan.trials])
    write_outputs(plan, trials, history, "tiny.yaml")

    def units(name: str) -> dict[str, str]:
        return {field.name: field.metadata[b"unit"].decode() for field in pq.read_schema(plan.out_dir / name)
                if field.metadata and b"unit" in field.metadata}

    def in_objective_unit(*columns: str) -> dict[str, str]:
        return {} if unit is None else dict.fromkeys(columns, unit)

    assert units("history.parquet") == {"js_cv": "nat", "fes_rmse": "kT", "wall_time_s": "s",
                                        **in_objective_unit("objective")}
    assert units("trials.parquet") == {"final_js_cv": "nat", "final_fes_rmse": "kT", "wall_time_s": "s",
                                       **in_objective_unit("final_objective", "best_objective")}


def test_cli_does_not_import_ray():
    code = "import sys, pipeline.cli; print(json.dumps('ray' in sys.modules))"
    result = subprocess.run([sys.executable, "-c", "import json; " + code], capture_output=True, text=True,
                            check=True)
    assert json.loads(result.stdout) is False


def test_shipped_tune_workflow_plans_without_writing(tmp_path):
    path = Path(__file__).resolve().parents[3] / "workflows" / "tune_ising.yaml"
    plan = plan_tune(load_config(path), tmp_path)
    assert plan.objective == "coverage_ess" and plan.mode == "max" and len(plan.trials) == 6
    assert plan.out_dir == (tmp_path / "tune_ising" / "tune").resolve()
    assert not any(tmp_path.iterdir())
