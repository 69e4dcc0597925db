"""End-to-end tests of the ``metadns run`` command line (pipeline.cli → pipeline.runner).

Most tests call ``pipeline.cli.main([...])`` in-process; the console script is run as a real
subprocess to check its exit codes and to kill a campaign mid-training (SIGKILL) and resume it.

Budgets are tiny (Ising L = 4, a handful of outer iterations, an 8-wide one-layer denoiser) so
the file runs in well under a minute on 2 CPU cores.  Torch runs single-threaded here (in-process via
a fixture that restores the setting, in subprocesses via OMP_NUM_THREADS=1): on a busy 2-core
machine two threads spin against each other and training gets many times slower, and equal thread
counts keep floating-point reductions identical between the uninterrupted and resumed runs.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from tests.cli_runner import run_cli
from pipeline import training as training_module
from pipeline.config import config_from_dict, config_hash, expand_runs, load_config
from pipeline.outputs import read_parquet_metadata, samples_from_table
from pipeline.build import derive_seed
from pipeline.sampler import group_sizes
from systems.exact import exact_ensemble
from systems.registry import make_system

BETA = 0.6
TAG = "beta0.6000"
L = 4
D = L * L
CV_SPACING = 2.0 / D                   # Ising magnetisation m = mean(s) takes values -1 + k·2/D
ALIGNED_GRID_POINTS = D + 1            # 17 nodes for L = 4

TINY = {
    "seed": 3,
    "methods": ["metadns", "mdns", "sw"],
    "system": {"name": "ising", "L": L, "beta": BETA},
    "sampler": {"denoiser": "lattice", "sites_per_step": 4, "hidden": 8, "layers": 1},
    "bias": {"gamma": 10, "sigma": 0.1, "height_per_cycle": 0.5},
    "training": {"outer_iterations": 3, "batch_size": 16, "inner_steps": 2, "maskings": 2},
    "sampling": {"n_samples": 200, "batch_size": 200},
    "reference": {"chains": 4, "sweeps": 50, "burn_in": 10},
}
TINY_NAME = "tiny"                     # the config file's stem names the campaign folder

OBSERVABLE_COLUMNS = ["system", "method", "temperature", "beta", "delta_mu", "estimator", "observable",
                      "unit", "value", "stderr", "ess", "n_samples"]
WALL_TIME_OBSERVABLES = ("training_wall_time", "generation_wall_time")
WALL_TIME_SUMMARY_KEYS = ("training_wall_time_s", "generation_wall_time_s", "wall_time_s")

CONSOLE_SCRIPT = Path(sys.executable).with_name("metadns")
INLINE = ("--executor", "inline")      # single process; the Ray executor is tested where named
SUBPROCESS_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "RAY_AUTH_MODE": "disabled"}


# ============================================================================ helpers
@pytest.fixture(scope="module", autouse=True)
def single_thread_torch():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def console_command() -> list[str]:
    if CONSOLE_SCRIPT.exists():
        return [str(CONSOLE_SCRIPT)]
    return [sys.executable, "-m", "pipeline.cli"]


def merged(base: dict, patch: dict) -> dict:
    """``base`` with ``patch`` merged one level deep; a patch value of None deletes the key."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in base.items()}
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            section = out[key]
            for sub_key, sub_value in value.items():
                if sub_value is None:
                    section.pop(sub_key, None)
                else:
                    section[sub_key] = sub_value
        elif value is None:
            out.pop(key, None)
        else:
            out[key] = value
    return out


def write_config(folder: Path, d: dict, stem: str = TINY_NAME) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{stem}.yaml"
    path.write_text(yaml.safe_dump(d, sort_keys=False))
    return path


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Relative path → (content, mtime_ns) of every file under ``folder``."""
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns) for p in files_under(folder)}


def temporary_files(folder: Path) -> list[str]:
    """Leftovers of interrupted atomic writes (``.<name>.<random>.tmp``) under ``folder``."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*.tmp"))


def assert_wrote_nothing(out: Path) -> None:
    assert files_under(out) == [], f"files were written under {out}: {files_under(out)}"
    assert not out.exists(), f"{out} was created"


def observables_without_wall_times(path: Path) -> pd.DataFrame:
    """The observables table minus the wall-time cost rows (the only non-deterministic values)."""
    frame = pd.read_parquet(path)
    keep = ~((frame.estimator == "cost") & frame.observable.isin(WALL_TIME_OBSERVABLES))
    return frame[keep].reset_index(drop=True)


def summary_without_wall_times(path: Path) -> dict:
    """summary.json without wall times and without the sentence saying why the device was chosen
    (an inline run and a Ray actor give different reasons for the same CPU)."""
    summary = json.loads(path.read_text())
    summary["device"].pop("device_reason")
    return {k: v for k, v in summary.items() if k not in WALL_TIME_SUMMARY_KEYS}


def checkpoint_iteration(path: Path) -> int:
    return int(torch.load(path, weights_only=False)["iteration"])


def wait_until_unchanged(path: Path, quiet_s: float, timeout_s: float) -> None:
    """Return once ``path``'s modification time has not changed for ``quiet_s`` seconds."""
    deadline = time.monotonic() + timeout_s
    last, since = path.stat().st_mtime_ns, time.monotonic()
    while time.monotonic() - since < quiet_s:
        if time.monotonic() > deadline:
            pytest.fail(f"{path} kept changing for {timeout_s} s after its driver was killed")
        time.sleep(0.1)
        now = path.stat().st_mtime_ns
        if now != last:
            last, since = now, time.monotonic()


# ============================================================================ shared campaigns
@pytest.fixture(scope="module")
def finished_campaign(tmp_path_factory) -> dict:
    """The TINY campaign (metadns, mdns, sw) run once, in-process, to completion."""
    folder = tmp_path_factory.mktemp("finished")
    config_path = write_config(folder, TINY)
    out = folder / "out"
    code, stdout, stderr = run_cli("run", *INLINE, config_path, "--out", out, "--quiet")
    assert code == 0, stderr
    return {"config": config_path, "out": out, "root": out / TINY_NAME, "stdout": stdout, "stderr": stderr}


def copy_campaign(finished: dict, destination: Path) -> tuple[Path, Path]:
    """Copy a finished campaign's output tree (mtimes preserved); returns (out, campaign root)."""
    out = destination / "out"
    shutil.copytree(finished["out"], out, copy_function=shutil.copy2)
    return out, out / TINY_NAME


# ============================================================================ 1. invalid configurations
FILE_ERRORS = [
    # (id, patch of TINY, field the message must name)
    ("unknown-top-level-key", {"sedd": 1}, "sedd"),
    ("unknown-nested-key", {"bias": {"gama": 5}}, "bias.gama"),
    ("wrong-type", {"bias": {"gamma": "ten"}}, "bias.gamma"),
    ("gamma-equal-1", {"bias": {"gamma": 1}}, "bias.gamma"),
    ("gamma-below-1", {"bias": {"gamma": 0.5}}, "bias.gamma"),
    ("sigma-zero", {"bias": {"sigma": 0}}, "bias.sigma"),
    ("sigma-negative", {"bias": {"sigma": -0.1}}, "bias.sigma"),
    ("temperature-zero", {"system": {"beta": None, "temperature": 0}}, "system.temperature"),
    ("beta-negative", {"system": {"beta": -1}}, "system.beta"),
    ("beta-list-entry-negative", {"system": {"beta": [0.6, -1]}}, "system.beta"),
    ("grid-not-covering-cv", {"bias": {"grid_min": -0.5}}, "bias.grid_min"),
    ("grid-misaligned-coarse", {"bias": {"grid_points": ALIGNED_GRID_POINTS - 1}}, "bias.grid_points"),
    ("grid-misaligned-fine", {"bias": {"grid_points": ALIGNED_GRID_POINTS + 1}}, "bias.grid_points"),
    ("grid-twice-as-fine", {"bias": {"grid_points": 2 * ALIGNED_GRID_POINTS - 1}}, "bias.grid_points"),
    ("grid-wider-than-cv", {"bias": {"grid_min": -1 - 2 * CV_SPACING, "grid_max": 1 + CV_SPACING}}, "bias.grid_min"),
    ("grid-wider-than-cv-with-its-node-count",
     {"bias": {"grid_min": -1 - CV_SPACING, "grid_max": 1 + CV_SPACING, "grid_points": ALIGNED_GRID_POINTS + 2}},
     "bias.grid_min"),
    ("grid-max-beyond-cv", {"bias": {"grid_max": 1 + CV_SPACING}}, "bias.grid_max"),
    ("beta-and-temperature", {"system": {"temperature": 2.0}}, "system.beta"),
    ("unknown-method", {"methods": ["metadns", "metadnss"]}, "methods"),
    ("burn-in-not-below-sweeps", {"reference": {"burn_in": 50}}, "reference.burn_in"),
]


@pytest.mark.parametrize("patch, field", [c[1:] for c in FILE_ERRORS], ids=[c[0] for c in FILE_ERRORS])
def test_invalid_config_file_exits_2_names_field_writes_nothing(tmp_path, patch, field):
    config_path = write_config(tmp_path / "cfg", merged(TINY, patch))
    out = tmp_path / "out"
    code, stdout, stderr = run_cli("run", *INLINE, config_path, "--out", out, "--quiet")
    assert code == 2, stderr
    assert field in stderr
    assert "Traceback" not in stderr
    assert_wrote_nothing(out)


SET_ERRORS = [
    # (id, overrides, text the message must contain)
    ("unknown-top-level-key", ["gama=5"], "gama"),
    ("unknown-nested-key", ["bias.gama=5"], "bias.gama"),
    ("too-deep-key", ["bias.gamma.x=5"], "bias.gamma.x"),
    ("wrong-type", ["bias.gamma=ten"], "bias.gamma"),
    ("gamma-equal-1", ["bias.gamma=1"], "bias.gamma"),
    ("sigma-zero", ["bias.sigma=0"], "bias.sigma"),
    ("temperature-zero", ["system.temperature=0"], "system.temperature"),
    ("beta-negative", ["system.beta=-1"], "system.beta"),
    ("grid-not-covering-cv", ["bias.grid_min=-0.5"], "bias.grid_min"),
    ("grid-misaligned", [f"bias.grid_points={ALIGNED_GRID_POINTS - 1}"], "bias.grid_points"),
    ("unknown-method", ["methods=metadnss"], "methods"),
    ("unknown-method-in-list", ["methods=[sw,nope]"], "methods"),
    ("valid-then-invalid", ["bias.gamma=5", "bias.sigma=-1"], "bias.sigma"),
    # malformed --set syntax
    ("no-equals-sign", ["bias.gamma"], "bias.gamma"),
    ("empty-key", ["=5"], "=5"),
    ("empty-key-part", ["bias..gamma=5"], "bias..gamma"),
    ("invalid-yaml-value", ["bias.gamma=[1,"], "bias.gamma"),
]


@pytest.mark.parametrize("overrides, field", [c[1:] for c in SET_ERRORS], ids=[c[0] for c in SET_ERRORS])
def test_invalid_set_override_exits_2_names_field_writes_nothing(tmp_path, overrides, field):
    config_path = write_config(tmp_path / "cfg", TINY)
    out = tmp_path / "out"
    args = ["run", *INLINE, config_path, "--out", out, "--quiet"]
    for override in overrides:
        args += ["--set", override]
    code, stdout, stderr = run_cli(*args)
    assert code == 2, stderr
    assert field in stderr
    assert "Traceback" not in stderr
    assert_wrote_nothing(out)


def test_unknown_profile_exits_2(tmp_path):
    config_path = write_config(tmp_path / "cfg", {**TINY, "profiles": {"cpu": {"training.outer_iterations": 2}}})
    out = tmp_path / "out"
    code, _, stderr = run_cli("run", *INLINE, config_path, "--profile", "gpu", "--out", out, "--quiet")
    assert code == 2, stderr
    assert "profile" in stderr and "cpu" in stderr      # names the field and what is available
    assert_wrote_nothing(out)


def test_missing_config_file_exits_2(tmp_path):
    out = tmp_path / "out"
    code, _, stderr = run_cli("run", *INLINE, tmp_path / "nope.yaml", "--out", out)
    assert code == 2
    assert "nope.yaml" in stderr
    assert_wrote_nothing(out)


# Settings the config schema accepts but the network / estimators reject.  They are
# configuration errors all the same, so they must be caught before the first file is written
# (exit 2, field named), not crash mid-run with a traceback after the run folder exists.
LATE_ERRORS = [
    ("sites-per-step-above-sites", ["methods=metadns", f"sampler.sites_per_step={D + 1}"],
     ("sampler.sites_per_step",)),
    ("transformer-heads-not-dividing-hidden", ["methods=mdns", "sampler.denoiser=transformer", "sampler.heads=3"],
     ("sampler.heads", "sampler.hidden")),
    ("single-fresh-sample", ["methods=mdns", "sampling.n_samples=1"], ("sampling.n_samples",)),
    ("single-recorded-sweep", ["methods=sw", "reference.sweeps=11", "reference.burn_in=10"],
     ("reference.sweeps", "reference.burn_in")),
]


@pytest.mark.parametrize("overrides, fields", [c[1:] for c in LATE_ERRORS], ids=[c[0] for c in LATE_ERRORS])
def test_config_errors_found_by_network_or_estimators_are_reported_before_writing(tmp_path, overrides, fields):
    config_path = write_config(tmp_path / "cfg", merged(TINY, {"training": {"outer_iterations": 1}}))
    out = tmp_path / "out"
    args = ["run", *INLINE, config_path, "--out", out, "--quiet"]
    for override in overrides:
        args += ["--set", override]
    code, stdout, stderr = run_cli(*args)
    assert code == 2, stderr[-2000:]
    assert any(field in stderr for field in fields), stderr[-2000:]
    assert_wrote_nothing(out)


# ============================================================================ 2. existing run folder
def test_existing_run_folder_without_resume_exits_2_and_keeps_files(finished_campaign, tmp_path):
    out, root = copy_campaign(finished_campaign, tmp_path)
    before = snapshot(out)
    code, stdout, stderr = run_cli("run", *INLINE, finished_campaign["config"], "--out", out, "--quiet")
    assert code == 2, stderr
    assert f"metadns_{TAG}" in stderr
    assert str(root) in stderr
    assert "--resume" in stderr
    assert snapshot(out) == before            # same files, byte-identical, not even touched


def test_one_existing_run_folder_blocks_the_whole_campaign(tmp_path):
    """Only sw_… exists: nothing of the other runs may be started either."""
    config_path = write_config(tmp_path / "cfg", TINY)
    out = tmp_path / "out"
    existing = out / TINY_NAME / f"sw_{TAG}"
    existing.mkdir(parents=True)
    (existing / "notes.txt").write_text("keep me")
    code, _, stderr = run_cli("run", *INLINE, config_path, "--out", out, "--quiet")
    assert code == 2
    assert f"sw_{TAG}" in stderr
    assert f"metadns_{TAG}" not in stderr     # only the folders that exist are named
    assert [p.relative_to(out) for p in files_under(out)] == [Path(TINY_NAME, f"sw_{TAG}", "notes.txt")]
    assert (existing / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in (out / TINY_NAME).iterdir()) == [f"sw_{TAG}"]


# ============================================================================ 4. resume of a finished campaign
def test_resume_of_finished_campaign_recomputes_nothing(finished_campaign, tmp_path):
    out, root = copy_campaign(finished_campaign, tmp_path)
    run_folders = [p for p in root.iterdir() if (p / "config.yaml").exists()]
    assert sorted(p.name for p in run_folders) == sorted(f"{m}_{TAG}" for m in TINY["methods"])
    before = {p.name: snapshot(p) for p in run_folders}
    time.sleep(0.01)                          # any rewrite would now get a later mtime
    code, stdout, stderr = run_cli("run", *INLINE, finished_campaign["config"], "--out", out, "--resume", "--quiet")
    assert code == 0, stderr
    assert {p.name: snapshot(p) for p in run_folders} == before
    for method in TINY["methods"]:            # the comparison table is still printed
        assert f"{method}_{TAG}" in stdout


def test_resume_with_a_changed_config_is_refused(finished_campaign, tmp_path):
    """--resume must not hand back (or continue) results made with different settings.

    The run folders hold config.yaml / the config hash of the settings that made them; resuming
    them with another γ silently reports the old γ's results under the new configuration.
    """
    out, root = copy_campaign(finished_campaign, tmp_path)
    before = snapshot(out)
    code, _, stderr = run_cli("run", *INLINE, finished_campaign["config"], "--out", out, "--resume", "--quiet",
                              "--set", "bias.gamma=5")
    assert code == 2, "resumed runs made with bias.gamma=10 as if they had bias.gamma=5"
    assert f"metadns_{TAG}" in stderr
    assert snapshot(out) == before


# ============================================================================ 5. files of a finished run
COMMON_FILES = {"config.yaml", "observables.parquet", "fes.parquet", "histograms.parquet", "samples.parquet",
                "fes.png", "cv_histogram.png", "summary.json"}
EXPECTED_FILES = {
    "metadns": COMMON_FILES | {"HILLS", "bias_growth.png", "history.parquet", "checkpoints/checkpoint.pt"},
    "mdns": COMMON_FILES | {"bias_growth.png", "history.parquet", "checkpoints/checkpoint.pt"},
    "sw": COMMON_FILES,
}
ABSENT_FILES = {"metadns": set(), "mdns": {"HILLS"},
                "sw": {"HILLS", "bias_growth.png", "history.parquet", "checkpoints/checkpoint.pt"}}


@pytest.mark.parametrize("method", ["metadns", "mdns", "sw"])
def test_run_folder_holds_the_documented_files(finished_campaign, method):
    run_dir = finished_campaign["root"] / f"{method}_{TAG}"
    present = {str(p.relative_to(run_dir)) for p in files_under(run_dir)}
    assert EXPECTED_FILES[method] <= present, EXPECTED_FILES[method] - present
    assert not (ABSENT_FILES[method] & present), ABSENT_FILES[method] & present
    assert temporary_files(run_dir) == []
    for png in ("fes.png", "cv_histogram.png", "bias_growth.png"):
        if png in EXPECTED_FILES[method]:
            data = (run_dir / png).read_bytes()
            assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000, png


@pytest.mark.parametrize("method", ["metadns", "mdns"])
def test_history_has_one_row_per_outer_iteration(finished_campaign, method):
    run_dir = finished_campaign["root"] / f"{method}_{TAG}"
    history = pd.read_parquet(run_dir / "history.parquet")
    summary = json.loads((run_dir / "summary.json").read_text())
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert history.iteration.tolist() == list(range(1, config["training"]["outer_iterations"] + 1))
    assert history.energy_evaluations.is_monotonic_increasing and history.wall_time_s.is_monotonic_increasing
    assert history.energy_evaluations.iloc[-1] <= summary["energy_evaluations"]   # final samples come after
    assert history.n_hills.iloc[-1] == summary["hills"]
    assert (history.max_bias_kT > 0).all() == (method == "metadns")
    assert np.isfinite(history.loss).all() and ((history.ess_fraction > 0) & (history.ess_fraction <= 1)).all()


@pytest.mark.parametrize("method", ["metadns", "mdns", "sw"])
def test_observables_table_columns_and_values(finished_campaign, method):
    run_dir = finished_campaign["root"] / f"{method}_{TAG}"
    obs = pd.read_parquet(run_dir / "observables.parquet")
    assert list(obs.columns) == OBSERVABLE_COLUMNS
    assert set(obs.system) == {"ising"} and set(obs.method) == {method}
    assert np.all(obs.beta == BETA) and np.allclose(obs.temperature, 1 / BETA, rtol=0, atol=1e-15)
    assert np.all(obs.delta_mu == 0.0)
    assert obs.n_samples.dtype == np.int64
    neural = method != "sw"
    n = TINY["sampling"]["n_samples"] if neural else (
        (TINY["reference"]["sweeps"] - TINY["reference"]["burn_in"]) * TINY["reference"]["chains"])
    assert np.all(obs.n_samples == n)
    main = "likelihood" if neural else "mcmc"
    values = obs[obs.estimator == main].set_index("observable")
    for name in ("energy_per_site", "abs_magnetisation", "positive_magnetisation"):
        assert np.isfinite(values.loc[name, "value"]) and values.loc[name, "stderr"] >= 0
    assert -2.0 <= values.loc["energy_per_site", "value"] <= 2.0
    assert 0.0 <= values.loc["abs_magnetisation", "value"] <= 1.0
    cost = obs[obs.estimator == "cost"].set_index("observable").value
    if method == "metadns":
        hills = TINY["training"]["outer_iterations"] * TINY["training"]["batch_size"]
        assert cost["bias_depositions"] == hills
        # training batches and final samples, plus the coverage check's chains (32 chains, 500
        # rounds: a start and a proposal per round each, and D local changes per round)
        check_full, check_local = 32 * (1 + 500), 32 * 500 * D
        assert cost["full_energy_evaluations"] == hills + n + check_full
        assert cost["local_energy_changes"] == check_local
        assert cost["energy_evaluations"] == hills + n + check_full + check_local
        assert set(obs.estimator) >= {"likelihood", "bias", "biased_target", "mh", "cost"}
        ess = obs[(obs.estimator == "likelihood") & (obs.observable == "energy_per_site")].ess.iloc[0]
        assert 1.0 <= ess <= n
    elif method == "mdns":
        assert cost["bias_depositions"] == 0
    else:
        assert set(obs.estimator) == {"mcmc", "cost"}


def test_swendsen_wang_observables_agree_with_exact_enumeration(finished_campaign):
    """End to end: the reference run's reported means are within 3 stderr of the exact values."""
    obs = pd.read_parquet(finished_campaign["root"] / f"sw_{TAG}" / "observables.parquet")
    mcmc = obs[obs.estimator == "mcmc"].set_index("observable")
    exact = exact_ensemble(make_system("ising", L=L, J=1.0, field=0.0), BETA).expectations()
    for name in ("energy_per_site", "abs_magnetisation"):
        value, stderr = mcmc.loc[name, "value"], mcmc.loc[name, "stderr"]
        assert stderr > 0
        assert abs(value - exact[name]) < 3 * stderr, (name, value, stderr, exact[name])


def _bias_state(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "checkpoint.pt", weights_only=False)["bias"]


def test_fes_table_sources_and_bias_free_energy(finished_campaign):
    gamma = TINY["bias"]["gamma"]
    kT = 1.0 / BETA
    for method in TINY["methods"]:
        run_dir = finished_campaign["root"] / f"{method}_{TAG}"
        fes = pd.read_parquet(run_dir / "fes.parquet")
        assert list(fes.columns) == ["m", "free_energy_kT", "stderr", "source", "delta_mu"]
        assert (fes.delta_mu == 0.0).all()
        expected_sources = {"bias", "samples"} if method == "metadns" else {"samples"}
        assert set(fes.source) == expected_sources, method
        samples = fes[fes.source == "samples"]
        assert np.allclose(np.sort(samples.m.to_numpy()), -1 + CV_SPACING * np.arange(D + 1))
        assert np.nanmin(samples.free_energy_kT) == 0.0
    # The bias FES equals −γ/(γ−1)·V/kT of the final bias (from the checkpoint), gauge min 0.
    run_dir = finished_campaign["root"] / f"metadns_{TAG}"
    fes = pd.read_parquet(run_dir / "fes.parquet")
    bias_rows = fes[fes.source == "bias"].sort_values("m")
    values = np.asarray(_bias_state(run_dir)["values"], dtype=np.float64)
    assert len(bias_rows) == ALIGNED_GRID_POINTS == values.size
    assert np.allclose(bias_rows.m, -1 + CV_SPACING * np.arange(ALIGNED_GRID_POINTS), atol=1e-12)
    expected = -gamma / (gamma - 1) * values / kT
    expected -= expected.min()
    assert values.max() > 0
    np.testing.assert_allclose(bias_rows.free_energy_kT.to_numpy(), expected, rtol=1e-12, atol=1e-12)


def test_samples_table_is_consistent_with_energy_cv_and_bias(finished_campaign):
    run_dir = finished_campaign["root"] / f"metadns_{TAG}"
    data = samples_from_table(pq.read_table(run_dir / "samples.parquet"))
    n = TINY["sampling"]["n_samples"]
    assert data["x"].shape == (n, D) and set(np.unique(data["x"])) <= {0, 1}
    # each sample's order follows the reveal schedule (default cosine): the same group sizes
    # per generation step for every sample
    expected = np.array(group_sizes(D, TINY["sampler"]["sites_per_step"], schedule="cosine"))
    counts = np.apply_along_axis(np.bincount, 1, data["order"], minlength=len(expected))
    assert expected[0] == 1 and np.all(counts == expected[None, :])
    system = make_system("ising", L=L, J=1.0, field=0.0)
    x = torch.from_numpy(data["x"])
    np.testing.assert_allclose(data["energy"], system.energy(x).numpy(), rtol=0, atol=1e-12)
    spins = 2 * data["x"] - 1
    np.testing.assert_allclose(data["cv"][:, 0], spins.mean(axis=1), rtol=0, atol=1e-12)
    assert list(data["cv_names"]) == ["m"]
    assert np.all(np.isfinite(data["log_q"])) and np.all(data["log_q"] <= 0)
    np.testing.assert_allclose(data["log_w_likelihood"], -BETA * data["energy"] - data["log_q"], rtol=1e-12, atol=1e-9)
    values = np.asarray(_bias_state(run_dir)["values"], dtype=np.float64)
    nodes = np.rint((data["cv"][:, 0] + 1) / CV_SPACING).astype(int)
    np.testing.assert_allclose(data["log_w_bias"], BETA * values[nodes], rtol=1e-12, atol=1e-12)


def test_hills_file_records_every_deposited_hill(finished_campaign):
    run_dir = finished_campaign["root"] / f"metadns_{TAG}"
    lines = (run_dir / "HILLS").read_text().splitlines()
    header = [line for line in lines if line.startswith("#!")]
    rows = np.array([[float(v) for v in line.split()] for line in lines if line and not line.startswith("#")])
    assert header[0].split()[:4] == ["#!", "FIELDS", "time", "m"]
    hills = TINY["training"]["outer_iterations"] * TINY["training"]["batch_size"]
    # the edge correction's mirror images lie beyond the CV range; the hills themselves inside it
    inside = np.abs(rows[:, 1]) <= 1.0 + 1e-9
    assert (~inside).any()
    rows = rows[inside]
    assert rows.shape[0] == hills == _bias_state(run_dir)["n_hills"]
    # one batch of batch_size hills per outer iteration, centred on attainable CV values
    np.testing.assert_array_equal(np.bincount(rows[:, 0].astype(int))[1:],
                                  np.full(TINY["training"]["outer_iterations"], TINY["training"]["batch_size"]))
    steps = (rows[:, 1] + 1) / CV_SPACING
    np.testing.assert_allclose(steps, np.rint(steps), atol=1e-9)
    np.testing.assert_allclose(rows[:, 2], TINY["bias"]["sigma"])


@pytest.mark.parametrize("method", ["metadns", "mdns", "sw"])
def test_summary_config_and_parquet_provenance(finished_campaign, method):
    run_dir = finished_campaign["root"] / f"{method}_{TAG}"
    config = load_config(finished_campaign["config"])
    expected_hash = config_hash(config)
    expected_seed = derive_seed(TINY["seed"], f"{method}_{TAG}")

    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["run"] == f"{method}_{TAG}" and summary["method"] == method
    assert summary["beta"] == BETA and math.isclose(summary["temperature"], 1 / BETA)
    assert summary["config_hash"] == expected_hash
    assert summary["seed"] == expected_seed
    assert isinstance(summary["warnings"], list)

    # config.yaml: the campaign's resolved configuration restricted to this run's method and
    # temperature, so that `metadns run` on it repeats the run (same name, same derived seed).
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    expected = config.to_dict()
    expected["methods"] = [method]
    expected["system"]["beta"] = [BETA]
    assert saved == expected
    rerun = config_from_dict(saved)
    assert [spec.run_name for spec in expand_runs(rerun)] == [f"{method}_{TAG}"]
    assert derive_seed(rerun.seed, f"{method}_{TAG}") == expected_seed

    for name in ("observables.parquet", "fes.parquet", "histograms.parquet", "samples.parquet"):
        metadata = read_parquet_metadata(run_dir / name)
        assert metadata["config_hash"] == expected_hash, name
        assert metadata["seed"] == str(expected_seed), name
        assert metadata["torch"] == torch.__version__, name
        assert re.fullmatch(r"[0-9a-f]{40}(-dirty)?|unknown", metadata["git_revision"]), metadata["git_revision"]
        assert metadata["git_revision"] != "unknown", "the tests run inside the git checkout"


def test_campaign_comparison_table(finished_campaign):
    root = finished_campaign["root"]
    table = pd.read_parquet(root / "comparison.parquet")
    assert sorted(table.run) == sorted(f"{m}_{TAG}" for m in TINY["methods"])
    assert set(table.reference) == {"exact"}            # L = 4 is compared with enumeration
    assert np.all((table.js_cv >= 0) & (table.js_cv <= math.log(2)))
    # the sampling-noise floor at each trained run's ESS; none for chain references
    trained = table.method.isin(["metadns", "mdns"])
    assert np.all(table.js_cv_floor[trained] > 0) and table.js_cv_floor[~trained].isna().all()
    assert read_parquet_metadata(root / "comparison.parquet")["config_hash"] == config_hash(
        load_config(finished_campaign["config"]))
    # references run first (metadns comes first in the config), and the table says so
    runs = list(table.run)
    assert runs.index(f"sw_{TAG}") < runs.index(f"metadns_{TAG}")
    printed = [line.split()[0] for line in finished_campaign["stdout"].splitlines() if line.split()]
    assert [r for r in printed if r in runs] == runs


# ============================================================================ 3. kill and resume
RESUME_ITERATIONS = 200
RESUME_CONFIG = merged(TINY, {
    "seed": 11,
    "methods": ["metadns", "sw"],
    "training": {"outer_iterations": RESUME_ITERATIONS, "batch_size": 16, "inner_steps": 1, "maskings": 1},
})
RESUME_NAME = "resumable"


@pytest.fixture(scope="module")
def killed_and_resumed(tmp_path_factory) -> dict:
    """Folder A: uninterrupted console-script run.  Folder B: the same run SIGKILLed in the
    middle of metadns training, then continued with ``--resume``."""
    folder = tmp_path_factory.mktemp("resume")
    config_path = write_config(folder, RESUME_CONFIG, stem=RESUME_NAME)
    out_a, out_b = folder / "A", folder / "B"
    command = console_command() + ["run", str(config_path), "--quiet"]
    a = subprocess.Popen(command + [*INLINE, "--out", str(out_a)], cwd=folder, env=SUBPROCESS_ENV,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # B runs on the default executor (a local Ray instance, trainer and bias-server actors).
    b = subprocess.Popen(command + ["--out", str(out_b)], cwd=folder, env=SUBPROCESS_ENV,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = out_b / RESUME_NAME / f"metadns_{TAG}" / "checkpoints" / "checkpoint.pt"
    deadline = time.monotonic() + 90
    trained_two = None        # when checkpoint.iteration >= 2 was first seen
    try:
        while True:
            if b.poll() is not None:
                pytest.fail(f"run B ended (code {b.returncode}) before it could be killed mid-training; "
                            "raise RESUME_ITERATIONS")
            if time.monotonic() > deadline:
                pytest.fail("metadns training of run B never started")
            if trained_two is None and checkpoint.exists():
                try:
                    if checkpoint_iteration(checkpoint) >= 2:
                        trained_two = time.monotonic()
                except (EOFError, RuntimeError, FileNotFoundError):
                    pass
            if trained_two is not None:
                # Worst case for atomic writes: kill while the next checkpoint is being written
                # (its temporary file exists); after 2 s without catching one, kill anyway.
                writing = any(name.endswith(".tmp") for name in os.listdir(checkpoint.parent))
                if writing or time.monotonic() - trained_two > 2.0:
                    os.kill(b.pid, signal.SIGKILL)
                    break
            time.sleep(0.002)
    finally:
        if b.poll() is None:
            b.kill()
        b.wait()
    assert b.returncode == -signal.SIGKILL
    # B's trainer actor dies with its driver, but may finish an iteration or a few first:
    # the run resumes from whatever checkpoint is last once nothing writes any more.
    wait_until_unchanged(checkpoint, quiet_s=3.0, timeout_s=60.0)
    state = torch.load(checkpoint, weights_only=False)
    temporaries_after_kill = temporary_files(out_b)
    summary_after_kill = (checkpoint.parent.parent / "summary.json").exists()

    resumed = subprocess.run(console_command() + ["run", str(config_path), "--out", str(out_b), "--resume"],
                             cwd=folder, env=SUBPROCESS_ENV, capture_output=True, text=True, timeout=300)
    a_stdout, a_stderr = a.communicate(timeout=300)
    assert a.returncode == 0, a_stderr[-3000:]
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    return {"config": config_path, "A": out_a / RESUME_NAME, "B": out_b / RESUME_NAME,
            "killed_at": int(state["iteration"]), "history_at_kill": len(state["history"]),
            "summary_after_kill": summary_after_kill, "temporaries_after_kill": temporaries_after_kill,
            "resume_stderr": resumed.stderr, "a_stdout": a_stdout}


def test_console_script_run_succeeds_and_kill_lands_mid_training(killed_and_resumed):
    k = killed_and_resumed["killed_at"]
    assert 2 <= k < RESUME_ITERATIONS, k
    assert killed_and_resumed["history_at_kill"] == k
    assert not killed_and_resumed["summary_after_kill"]
    assert f"metadns_{TAG}" in killed_and_resumed["a_stdout"]        # comparison table printed


def test_resume_continues_from_the_checkpoint(killed_and_resumed):
    """The resumed training starts at the killed iteration, not at 0 (tqdm's first display)."""
    k = killed_and_resumed["killed_at"]
    shown = re.findall(rf"\b(\d+)/{RESUME_ITERATIONS}\b", killed_and_resumed["resume_stderr"])
    assert shown, killed_and_resumed["resume_stderr"][-2000:]
    assert int(shown[0]) == k
    assert int(shown[-1]) == RESUME_ITERATIONS


@pytest.mark.parametrize("method", ["metadns", "sw"])
def test_resumed_run_equals_uninterrupted_run(killed_and_resumed, method):
    run_a = killed_and_resumed["A"] / f"{method}_{TAG}"
    run_b = killed_and_resumed["B"] / f"{method}_{TAG}"
    pd.testing.assert_frame_equal(observables_without_wall_times(run_b / "observables.parquet"),
                                  observables_without_wall_times(run_a / "observables.parquet"), check_exact=True)
    samples_a = samples_from_table(pq.read_table(run_a / "samples.parquet"))
    samples_b = samples_from_table(pq.read_table(run_b / "samples.parquet"))
    assert samples_a.keys() == samples_b.keys()
    for key in samples_a:
        np.testing.assert_array_equal(samples_b[key], samples_a[key], err_msg=key)
    for name in ("fes.parquet", "histograms.parquet"):
        pd.testing.assert_frame_equal(pd.read_parquet(run_b / name), pd.read_parquet(run_a / name), check_exact=True)
    assert summary_without_wall_times(run_b / "summary.json") == summary_without_wall_times(run_a / "summary.json")
    assert (run_b / "config.yaml").read_bytes() == (run_a / "config.yaml").read_bytes()
    if method == "metadns":
        assert (run_b / "HILLS").read_bytes() == (run_a / "HILLS").read_bytes()
        hills = RESUME_ITERATIONS * RESUME_CONFIG["training"]["batch_size"]
        assert json.loads((run_b / "summary.json").read_text())["hills"] == hills
        state_a = torch.load(run_a / "checkpoints" / "checkpoint.pt", weights_only=False)
        state_b = torch.load(run_b / "checkpoints" / "checkpoint.pt", weights_only=False)
        assert state_b["iteration"] == state_a["iteration"] == RESUME_ITERATIONS
        assert state_b["bias"] == state_a["bias"]
        for key, tensor in state_a["ema_sampler"].items():
            assert torch.equal(state_b["ema_sampler"][key], tensor), key


def test_no_temporary_files_left_after_kill_and_resume(killed_and_resumed):
    assert temporary_files(killed_and_resumed["A"]) == []
    assert temporary_files(killed_and_resumed["B"]) == [], (
        f"left over after resume; present right after the kill: {killed_and_resumed['temporaries_after_kill']}")


def test_resume_with_more_outer_iterations_equals_a_run_given_that_budget(finished_campaign, tmp_path):
    """A finished run continued with a larger training.outer_iterations trains on from its last
    checkpoint and ends exactly as an uninterrupted run with the larger budget; the reference
    run (which the setting does not affect) is left untouched."""
    longer = TINY["training"]["outer_iterations"] + 2
    out, root = copy_campaign(finished_campaign, tmp_path / "extended")
    sw_before = snapshot(root / f"sw_{TAG}")
    code, _, stderr = run_cli("run", *INLINE, finished_campaign["config"], "--out", out, "--resume", "--quiet",
                              "--set", f"training.outer_iterations={longer}")
    assert code == 0, stderr[-2000:]
    assert snapshot(root / f"sw_{TAG}") == sw_before

    direct_out = tmp_path / "direct"
    code, _, stderr = run_cli("run", *INLINE, finished_campaign["config"], "--out", direct_out, "--quiet",
                              "--set", f"training.outer_iterations={longer}")
    assert code == 0, stderr[-2000:]
    extended, direct = root / f"metadns_{TAG}", direct_out / TINY_NAME / f"metadns_{TAG}"
    assert json.loads((extended / "summary.json").read_text())["hills"] == longer * TINY["training"]["batch_size"]
    assert (extended / "HILLS").read_bytes() == (direct / "HILLS").read_bytes()
    assert (extended / "config.yaml").read_bytes() == (direct / "config.yaml").read_bytes()
    pd.testing.assert_frame_equal(observables_without_wall_times(extended / "observables.parquet"),
                                  observables_without_wall_times(direct / "observables.parquet"), check_exact=True)
    assert summary_without_wall_times(extended / "summary.json") == summary_without_wall_times(direct / "summary.json")


def test_resume_with_fewer_outer_iterations_is_refused(finished_campaign, tmp_path):
    out, _ = copy_campaign(finished_campaign, tmp_path)
    before = snapshot(out)
    code, _, stderr = run_cli("run", *INLINE, finished_campaign["config"], "--out", out, "--resume", "--quiet",
                              "--set", "training.outer_iterations=1")
    assert code == 2
    assert "training.outer_iterations" in stderr and f"metadns_{TAG}" in stderr
    assert snapshot(out) == before


def test_resume_with_fewer_iterations_and_other_settings_names_the_other_settings(finished_campaign, tmp_path):
    """When the budget shrinks and another setting changes too, the refusal says the settings
    differ (the budget alone would not be the fix)."""
    out, _ = copy_campaign(finished_campaign, tmp_path)
    before = snapshot(out)
    code, _, stderr = run_cli("run", *INLINE, finished_campaign["config"], "--out", out, "--resume", "--quiet",
                              "--set", "training.outer_iterations=1", "--set", "training.learning_rate=0.5")
    assert code == 2
    assert "other settings" in stderr and "fewer training.outer_iterations" not in stderr
    assert snapshot(out) == before


def test_resume_with_more_samples_draws_them_from_the_trained_sampler(finished_campaign, tmp_path):
    more = 2 * TINY["sampling"]["n_samples"]
    out, root = copy_campaign(finished_campaign, tmp_path)
    run_dir = root / f"mdns_{TAG}"
    checkpoint_before = (run_dir / "checkpoints" / "checkpoint.pt").read_bytes()
    code, _, stderr = run_cli("run", *INLINE, finished_campaign["config"], "--out", out, "--resume", "--quiet",
                              "--set", f"sampling.n_samples={more}")
    assert code == 0, stderr[-2000:]
    assert pq.read_table(run_dir / "samples.parquet").num_rows == more
    assert (run_dir / "checkpoints" / "checkpoint.pt").read_bytes() == checkpoint_before   # not retrained
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["sampling"]["n_samples"] == more


def test_resume_removes_stale_temporary_files(finished_campaign, tmp_path):
    """Deterministic version of the kill above: a run killed while writing its checkpoint or a
    table leaves ``.<name>.<random>.tmp``; continuing the run must not leave it behind."""
    out, root = copy_campaign(finished_campaign, tmp_path)
    run_dir = root / f"mdns_{TAG}"
    (run_dir / "summary.json").unlink()       # killed after training, before the run finished
    stale = [run_dir / "checkpoints" / ".checkpoint.pt.k1ll3d.tmp", run_dir / ".samples.parquet.k1ll3d.tmp"]
    for path in stale:
        path.write_bytes(b"half a file")
    code, _, stderr = run_cli("run", *INLINE, finished_campaign["config"], "--out", out, "--resume", "--quiet")
    assert code == 0, stderr
    assert (run_dir / "summary.json").exists()
    assert temporary_files(root) == []


def test_finished_checkpoint_resume_reproduces_outputs(finished_campaign, tmp_path):
    """A run killed after its last training checkpoint redoes only sampling, identically."""
    out, root = copy_campaign(finished_campaign, tmp_path)
    run_dir = root / f"metadns_{TAG}"
    for name in ("summary.json", "samples.parquet", "observables.parquet", "HILLS"):
        (run_dir / name).unlink()
    code, _, stderr = run_cli("run", *INLINE, finished_campaign["config"], "--out", out, "--resume", "--quiet")
    assert code == 0, stderr
    original = finished_campaign["root"] / f"metadns_{TAG}"
    assert (run_dir / "HILLS").read_bytes() == (original / "HILLS").read_bytes()
    pd.testing.assert_frame_equal(observables_without_wall_times(run_dir / "observables.parquet"),
                                  observables_without_wall_times(original / "observables.parquet"), check_exact=True)
    assert pq.read_table(run_dir / "samples.parquet").equals(pq.read_table(original / "samples.parquet"))


# ============================================================================ console script, threads
def test_console_script_exit_code_for_invalid_config(tmp_path):
    config_path = write_config(tmp_path / "cfg", TINY)
    out = tmp_path / "out"
    result = subprocess.run(console_command() + ["run", str(config_path), "--out", str(out), "--set", "bias.gamma=1"],
                            cwd=tmp_path, env=SUBPROCESS_ENV, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "bias.gamma" in result.stderr and "Traceback" not in result.stderr
    assert_wrote_nothing(out)


def test_training_threads_setting_is_applied(tmp_path, monkeypatch):
    """``training.threads`` (documented: the number of CPU threads, null = all cores) must
    reach torch while the run trains."""
    seen = []
    original_step = training_module.DualLoopTrainer.step

    def recording_step(self):
        seen.append(torch.get_num_threads())
        return original_step(self)

    monkeypatch.setattr(training_module.DualLoopTrainer, "step", recording_step)
    config = merged(TINY, {"methods": ["mdns"], "training": {"outer_iterations": 1, "threads": 1},
                           "sampling": {"n_samples": 20, "batch_size": 20}})
    config_path = write_config(tmp_path / "cfg", config)
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        code, _, stderr = run_cli("run", *INLINE, config_path, "--out", tmp_path / "out", "--quiet")
    finally:
        torch.set_num_threads(previous)
    assert code == 0, stderr
    assert seen == [1], f"torch used {seen} threads with training.threads: 1"


def alloy_config(energy: dict) -> dict:
    return {"methods": ["metadns"], "system": {"name": "alloy", "size": [1, 1, 1], "cell": "conventional",
                                               "energy": energy, "temperature": [1000]}}


@pytest.mark.parametrize("energy, message", [
    ({"name": "cluster_expansion", "model": "missing/model.ce"}, "missing/model.ce"),
    ({"name": "ase", "calculator": "ase.calculators.nothing:Nope"}, "cannot import ASE calculator"),
    ({"name": "dft"}, "unknown energy backend"),
])
def test_bad_alloy_backend_exits_2_naming_system_energy_and_writes_nothing(tmp_path, energy, message):
    config_path = write_config(tmp_path / "cfg", alloy_config(energy))
    out = tmp_path / "out"
    code, stdout, stderr = run_cli("run", *INLINE, config_path, "--out", out, "--quiet")
    assert code == 2, stderr
    assert "system.energy" in stderr and message in stderr
    assert "Traceback" not in stderr
    assert_wrote_nothing(out)


@pytest.mark.parametrize("energy, field, message", [
    ({"name": "cluster_expansion", "model": "cuau_paper", "devise": "cpu"}, "system.energy.devise",
     "Did you mean 'device'?"),
    ({"name": "mace", "model": "cuau_emt", "dtype": "half"}, "system.energy.dtype", "float64, float32"),
    ({"name": "ase", "parameters": "fast"}, "system.energy.parameters", "mapping"),
])
def test_bad_energy_option_exits_2_naming_the_key_and_writes_nothing(tmp_path, energy, field, message):
    """A misspelt or mistyped backend option is a configuration error (it used to reach the
    backend constructor as a keyword argument and end in a TypeError traceback)."""
    config_path = write_config(tmp_path / "cfg", alloy_config(energy))
    out = tmp_path / "out"
    code, stdout, stderr = run_cli("run", *INLINE, config_path, "--out", out, "--quiet")
    assert code == 2, stderr
    assert f"metadns: error: {field}:" in stderr and message in stderr
    assert "Traceback" not in stderr
    assert_wrote_nothing(out)
