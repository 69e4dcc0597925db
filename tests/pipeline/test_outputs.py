"""Tests for pipeline.outputs (atomic writes, provenance, Parquet tables) and pipeline.plots."""

from __future__ import annotations

import datetime
import math
import os
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from pipeline import outputs, plots
from pipeline.campaign import prepare_campaign
from pipeline.campaign_report import make_report
from pipeline.comparison import write_and_print_comparison
from pipeline.config import config_from_dict, config_hash
from pipeline.outputs import (
    OBSERVABLES_SCHEMA,
    atomic_path,
    atomic_write_bytes,
    atomic_write_text,
    fes_table,
    observables_table,
    provenance_metadata,
    read_parquet_metadata,
    samples_from_table,
    samples_table,
    write_parquet,
    write_yaml,
)
from pipeline.runner import run_campaign
from tests.pipeline.test_export import ALLOY_CHAINS, ISING, finished_run

CONFIG = config_from_dict({"methods": ["metadns"], "system": {"name": "ising", "L": 4, "beta": 0.6}}, "t")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def folder_entries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ---------------------------------------------------------------- atomic writes


def test_atomic_write_text_and_bytes_replace_existing(tmp_path):
    target = tmp_path / "sub" / "a.txt"
    atomic_write_text(target, "first")
    assert target.read_text() == "first"
    atomic_write_bytes(target, b"second")
    assert target.read_bytes() == b"second"
    assert folder_entries(target.parent) == ["a.txt"]  # no temporary files left


def test_atomic_write_leaves_no_file_when_writer_raises(tmp_path):
    target = tmp_path / "out.bin"
    with pytest.raises(RuntimeError, match="midway"):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half a file")
            raise RuntimeError("midway")
    assert folder_entries(tmp_path) == []


def test_atomic_write_keeps_old_file_when_writer_raises(tmp_path):
    target = tmp_path / "out.txt"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("new, unfinished")
            raise RuntimeError("interrupted")
    assert target.read_text() == "old"
    assert folder_entries(tmp_path) == ["out.txt"]


def test_write_yaml_unserialisable_object_leaves_no_file(tmp_path):
    target = tmp_path / "c.yaml"
    with pytest.raises(yaml.YAMLError):
        write_yaml(target, {"fine": 1, "bad": object()})
    assert folder_entries(tmp_path) == []


def test_write_yaml_round_trip_with_numpy_values(tmp_path):
    target = tmp_path / "c.yaml"
    write_yaml(target, {"a": np.float64(0.25), "b": (1, 2), "c": np.arange(3), "config": CONFIG.to_dict()})
    loaded = yaml.safe_load(target.read_text())
    assert loaded["a"] == 0.25 and loaded["b"] == [1, 2] and loaded["c"] == [0, 1, 2]
    assert config_from_dict(loaded["config"], "other") == CONFIG


def test_parquet_failure_midway_leaves_no_file(tmp_path, monkeypatch):
    target = tmp_path / "t.parquet"

    def failing_write_table(table, where, **kwargs):
        Path(where).write_bytes(b"PAR1 partial")
        raise OSError("disk full")

    monkeypatch.setattr(outputs.pq, "write_table", failing_write_table)
    with pytest.raises(OSError, match="disk full"):
        write_parquet(pa.table({"x": [1.0]}), target, {"seed": "0"})
    assert folder_entries(tmp_path) == []


# ---------------------------------------------------------------- provenance and parquet


def test_provenance_metadata_contents():
    meta = provenance_metadata(CONFIG.to_dict(), seed=3, extra={"run": "metadns_beta0.6000"})
    assert meta["config_hash"] == config_hash(CONFIG)
    assert meta["seed"] == "3"
    assert meta["torch"] == torch.__version__ and meta["numpy"] == np.__version__ and meta["pyarrow"] == pa.__version__
    assert meta["run"] == "metadns_beta0.6000"
    created = datetime.datetime.fromisoformat(meta["created"])
    assert created.utcoffset() == datetime.timedelta(0)
    for key in ("metadns", "python", "git_revision", "hostname"):
        assert meta[key]
    assert all(isinstance(v, str) for v in meta.values())
    with pytest.raises(ValueError, match="seed"):
        provenance_metadata(CONFIG.to_dict(), seed=3, extra={"seed": "4"})


def test_git_revision_outside_checkout_is_unknown(tmp_path):
    assert outputs.git_revision(tmp_path) == "unknown"


def test_git_revision_reports_head_and_dirty(tmp_path):
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    try:
        subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True, env=env)
        (tmp_path / "f.txt").write_text("a")
        subprocess.run(["git", "add", "f.txt"], cwd=tmp_path, check=True, env=env)
        subprocess.run(["git", "-c", "commit.gpgsign=false", "commit", "-q", "-m", "x"], cwd=tmp_path, check=True, env=env)
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, check=True, capture_output=True,
                              text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("git is not usable here")
    assert outputs.git_revision(tmp_path) == head
    (tmp_path / "untracked.txt").write_text("ignored")
    assert outputs.git_revision(tmp_path) == head
    (tmp_path / "f.txt").write_text("changed")
    assert outputs.git_revision(tmp_path) == head + "-dirty"


def test_parquet_round_trip_table_and_dataframe(tmp_path):
    meta = provenance_metadata(CONFIG.to_dict(), seed=0)
    table = pa.table({"a": np.arange(5, dtype=np.int64), "b": np.linspace(0, 1, 5)})
    path = write_parquet(table, tmp_path / "t.parquet", meta)
    assert pq.read_table(path).select(["a", "b"]).equals(table)
    assert read_parquet_metadata(path) == meta
    frame = pd.DataFrame({"x": [1.5, 2.5], "name": ["p", "q"]})
    path2 = write_parquet(frame, tmp_path / "f.parquet", {"seed": 9, "metadns.note": "kept"})
    pd.testing.assert_frame_equal(pd.read_parquet(path2), frame)
    assert read_parquet_metadata(path2) == {"seed": "9", "note": "kept"}
    assert sorted(folder_entries(tmp_path)) == ["f.parquet", "t.parquet"]
    with pytest.raises(TypeError):
        write_parquet({"a": [1]}, tmp_path / "x.parquet", meta)


# ---------------------------------------------------------------- observables


def observable_row(**changes):
    row = {"system": "ising", "method": "metadns", "temperature": 1 / 0.6, "beta": 0.6, "estimator": "likelihood",
           "observable": "abs_magnetisation", "unit": "1", "value": 0.97, "stderr": 0.01, "ess": 812.5,
           "n_samples": 1000}
    row.update(changes)
    return row


def test_observables_table_round_trip(tmp_path):
    rows = [observable_row(), observable_row(estimator="mcmc", ess=math.nan, delta_mu=0.0, value=1)]
    del rows[0]["ess"]
    table = observables_table(rows)
    assert table.schema.equals(OBSERVABLES_SCHEMA)
    path = write_parquet(table, tmp_path / "observables.parquet", {"seed": "0"})
    frame = pd.read_parquet(path)
    assert list(frame.columns) == OBSERVABLES_SCHEMA.names
    assert frame["delta_mu"].tolist() == [0.0, 0.0]
    assert math.isnan(frame["ess"][0]) and math.isnan(frame["ess"][1])
    assert frame["value"].tolist() == [0.97, 1.0]
    assert frame["n_samples"].dtype == np.int64
    assert observables_table([]).num_rows == 0


@pytest.mark.parametrize(
    "row, message",
    [
        (observable_row(estimator="guess"), "estimator"),
        (observable_row(extra=1), "unknown column"),
        ({k: v for k, v in observable_row().items() if k != "unit"}, "missing"),
        (observable_row(value="high"), "value"),
        (observable_row(n_samples=10.5), "n_samples"),
        (observable_row(n_samples=True), "n_samples"),
        (observable_row(system=3), "system"),
    ],
)
def test_observables_table_rejects_bad_rows(row, message):
    with pytest.raises(ValueError, match=message):
        observables_table([observable_row(), row])


# ---------------------------------------------------------------- fes


def test_fes_table_two_sources_round_trip(tmp_path):
    grid = np.linspace(-1, 1, 5)
    free = np.array([0.0, 1.0, 2.0, 1.0, np.nan])
    bias_part = fes_table(["m"], grid, free, None, "bias")
    sample_part = fes_table(["m"], grid[:, None], free + 0.5, np.full(5, 0.1), "samples")
    path = write_parquet(pa.concat_tables([bias_part, sample_part]), tmp_path / "fes.parquet", {"seed": "0"})
    frame = pd.read_parquet(path)
    assert list(frame.columns) == ["m", "free_energy_kT", "stderr", "source", "delta_mu"]
    assert frame["source"].tolist() == ["bias"] * 5 + ["samples"] * 5
    np.testing.assert_array_equal(frame["m"].to_numpy(), np.concatenate([grid, grid]))
    np.testing.assert_array_equal(frame["free_energy_kT"].to_numpy()[:4], free[:4])
    assert np.isnan(frame["free_energy_kT"][4]) and frame["stderr"][:5].isna().all()
    assert frame["stderr"][5:].tolist() == [0.1] * 5


def test_fes_table_two_dimensional_and_errors():
    a0, a1 = np.meshgrid(np.arange(3.0), np.arange(4.0), indexing="ij")
    points = np.stack([a0.ravel(), a1.ravel()], axis=1)
    free = (a0 + 10 * a1).ravel()
    table = fes_table(("p1", "p2"), points, free, None, "bias")
    assert table.column_names == ["p1", "p2", "free_energy_kT", "stderr", "source", "delta_mu"]
    assert table.column("free_energy_kT").to_pylist()[7] == points[7, 0] + 10 * points[7, 1]
    with pytest.raises(ValueError, match="points"):
        fes_table(["p1"], points, free)
    with pytest.raises(ValueError, match="free_energy_kT"):
        fes_table(["p1", "p2"], points, free[:-1])
    with pytest.raises(ValueError, match="source"):
        fes_table(["p1", "p2"], points, free, None, "guess")
    with pytest.raises(ValueError, match="clash"):
        fes_table(["stderr", "p2"], points, free)


# ---------------------------------------------------------------- samples


def random_samples(n=50, n_sites=16, q=3, d=2, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, q, size=(n, n_sites))
    order = np.argsort(rng.random((n, n_sites)), axis=1) // 4  # groups of 4 sites per step
    energy = rng.normal(size=n) * 10
    cv = rng.uniform(-1, 1, size=(n, d))
    log_q = -rng.exponential(size=n) * n_sites
    log_w_bias = rng.normal(size=n)
    log_w_likelihood = -0.6 * energy - log_q
    return x, order, energy, cv, log_q, log_w_bias, log_w_likelihood


def test_samples_table_round_trip_through_parquet(tmp_path):
    x, order, energy, cv, log_q, log_w_bias, log_w_likelihood = random_samples()
    table = samples_table(x, order, energy, cv, ["p1", "p2"], log_q, log_w_bias, log_w_likelihood)
    assert table.column_names == ["configuration", "order", "energy", "cv_p1", "cv_p2", "log_q", "log_w_bias",
                                  "log_w_likelihood"]
    assert table.schema.field("configuration").type == pa.list_(pa.int8(), 16)
    assert table.schema.field("order").type == pa.list_(pa.int16(), 16)
    path = write_parquet(table, tmp_path / "samples.parquet", {"seed": "0"})
    back = samples_from_table(pq.read_table(path))
    np.testing.assert_array_equal(back["x"], x)
    np.testing.assert_array_equal(back["order"], order)
    np.testing.assert_array_equal(back["cv"], cv)
    assert back["cv_names"].tolist() == ["p1", "p2"]
    for name, value in (("energy", energy), ("log_q", log_q), ("log_w_bias", log_w_bias),
                        ("log_w_likelihood", log_w_likelihood)):
        np.testing.assert_array_equal(back[name], value)
    # row i of the table is sample i
    assert pq.read_table(path).column("configuration")[7].as_py() == x[7].tolist()


def test_samples_table_accepts_tensors_and_one_dimensional_cv():
    x, order, energy, cv, log_q, log_w_bias, log_w_likelihood = random_samples(n=8, n_sites=4, q=2, d=1, seed=1)
    table = samples_table(torch.from_numpy(x), torch.from_numpy(order), torch.from_numpy(energy),
                          torch.from_numpy(cv[:, 0]), ["m"], torch.from_numpy(log_q), log_w_bias, log_w_likelihood)
    back = samples_from_table(table)
    np.testing.assert_array_equal(back["x"], x)
    np.testing.assert_array_equal(back["cv"][:, 0], cv[:, 0])


def test_samples_table_validates():
    x, order, energy, cv, log_q, log_w_bias, log_w_likelihood = random_samples(n=6, n_sites=4)
    args = dict(x=x, order=order, energy=energy, cv=cv, cv_names=["p1", "p2"], log_q=log_q, log_w_bias=log_w_bias,
                log_w_likelihood=log_w_likelihood)
    with pytest.raises(ValueError, match="order"):
        samples_table(**{**args, "order": order[:, :3]})
    with pytest.raises(ValueError, match="energy"):
        samples_table(**{**args, "energy": energy[:5]})
    with pytest.raises(ValueError, match="cv"):
        samples_table(**{**args, "cv_names": ["m"]})
    with pytest.raises(ValueError, match="int8"):
        samples_table(**{**args, "x": x + 200})
    with pytest.raises(ValueError, match="x must hold integers"):
        samples_table(**{**args, "x": x.astype(float)})


# ---------------------------------------------------------------- units (field metadata)

def units_of(path) -> dict[str, str]:
    """Column → unit from the Parquet file's field metadata (columns without one left out)."""
    return {field.name: field.metadata[outputs.UNIT_KEY].decode() for field in pq.read_schema(path)
            if field.metadata and outputs.UNIT_KEY in field.metadata}


@pytest.fixture(scope="module")
def lattice_and_alloy_runs(tmp_path_factory):
    """A tiny Ising (Swendsen–Wang) and a tiny alloy (Metropolis, EMT, 8 sites) run under one root."""
    root = tmp_path_factory.mktemp("runs")
    return root, finished_run(ISING, "ising4", root), finished_run(ALLOY_CHAINS, "alloy8", root)


def test_schema_with_units_keeps_other_metadata_and_lets_units_win():
    schema = pa.schema([pa.field("energy", pa.float64(), metadata={"note": "kept"}), ("wall_time_s", pa.float64()),
                        ("free_energy_kT", pa.float64()), ("name", pa.string())], metadata={"k": "v"})
    marked = outputs.schema_with_units(schema, {"energy": "eV", "free_energy_kT": "nat", "absent": "J"})
    assert marked.field("energy").metadata == {b"note": b"kept", b"unit": b"eV"}
    assert marked.field("wall_time_s").metadata == {b"unit": b"s"}          # NAMED_UNITS
    assert marked.field("free_energy_kT").metadata == {b"unit": b"nat"}     # the caller's unit wins
    assert marked.field("name").metadata is None
    assert marked.metadata == {b"k": b"v"}


def test_run_files_carry_their_system_units(lattice_and_alloy_runs):
    _, ising_run, alloy_run = lattice_and_alloy_runs
    logs = {"log_q": "nat", "log_w_bias": "nat", "log_w_likelihood": "nat"}
    assert units_of(ising_run / "samples.parquet") == {"energy": "J", "cv_m": "1", **logs}
    assert units_of(alloy_run / "samples.parquet") == {"energy": "eV", "cv_x_Au": "1", **logs}
    assert units_of(ising_run / "observables.parquet") == {"temperature": "J/k_B", "beta": "1/J", "delta_mu": "J"}
    assert units_of(alloy_run / "observables.parquet") == {"temperature": "K", "beta": "1/eV", "delta_mu": "eV"}
    assert units_of(alloy_run / "fes.parquet") == {"x_Au": "1", "free_energy_kT": "kT", "stderr": "kT",
                                                   "delta_mu": "eV"}
    assert units_of(ising_run / "histograms.parquet") == {"bin_lower": "J", "bin_upper": "J"}


def test_report_tables_carry_the_units_their_runs_agree_on(lattice_and_alloy_runs):
    root, _, alloy_run = lattice_and_alloy_runs
    make_report(root, progress=False)
    mixed = units_of(root / "summary.parquet")
    assert "temperature" not in mixed and "beta" not in mixed  # J/k_B for Ising, K for the alloy
    assert mixed["x_Au"] == mixed["abs_magnetisation"] == "1" and mixed["formation_energy_per_atom"] == "eV"
    assert mixed["wall_time_s"] == "s"
    make_report(alloy_run.parent, progress=False)
    alloy_only = units_of(alloy_run.parent / "runs.parquet")
    assert alloy_only == {"temperature": "K", "beta": "1/eV"}
    observables = ds.dataset(alloy_run.parent / "dataset" / "observables", partitioning="hive").schema
    assert observables.field("temperature_value").metadata[outputs.UNIT_KEY] == b"K"


def test_comparison_table_carries_its_system_units(lattice_and_alloy_runs):
    root = lattice_and_alloy_runs[0]
    for config, name, energy, headline in ((ISING, "ising4", "J", "abs_magnetisation"),
                                           (ALLOY_CHAINS, "alloy8", "eV", "x_Au")):
        campaign = prepare_campaign(config_from_dict(config, name), root, resume=True)
        table = write_and_print_comparison(campaign, run_campaign(campaign, progress=False))  # finished runs
        units = units_of(campaign.root / "comparison.parquet")
        assert units["beta"] == f"1/{energy}" and units["wall_time_s"] == "s"
        assert units[headline] == units[f"{headline}_stderr"] == "1"
        js = [column for column in table.columns if column.startswith("js_")]
        assert js and all(units[column] == "nat" for column in js)
        assert "energy_evaluations" not in units and "hills" not in units


# ---------------------------------------------------------------- plots


def assert_png(path: Path):
    data = Path(path).read_bytes()
    assert data[:8] == PNG_SIGNATURE and len(data) > 1000


def test_plots_write_png_files(tmp_path):
    grid = np.linspace(-1, 1, 17)
    free = 4 * grid**2
    free[0] = np.nan
    out = plots.plot_fes(tmp_path / "fes.png", grid, {"bias": (free, None), "samples": (free + 0.1, 0.2 + 0 * grid)},
                         ["m"], "Ising L=4")
    assert_png(out)
    a0, a1 = np.linspace(-0.5, 1, 5), np.linspace(-0.8, 0.8, 6)
    free2 = np.add.outer(a0**2, a1**2)
    free2[0, 0] = np.nan
    assert_png(plots.plot_fes(tmp_path / "fes2.png", [a0, a1], {"bias": (free2, None)}, ["p1", "p2"], "Potts"))
    m0, m1 = np.meshgrid(a0, a1, indexing="ij")
    points = np.stack([m0.ravel(), m1.ravel()], axis=1)
    assert_png(plots.plot_fes(tmp_path / "fes3.png", points, {"a": (free2.ravel(), None), "b": (free2.ravel(), None)},
                              ["p1", "p2"], "Potts"))
    centres = np.linspace(-1, 1, 9)
    p = np.full(9, 1 / 9)
    assert_png(plots.plot_cv_histograms(tmp_path / "h.png", centres, {"reweighted": (p, p / 10), "SW": (p, None)},
                                        "m", "histograms"))
    steps = np.arange(10)
    assert_png(plots.plot_bias_growth(tmp_path / "g.png", steps, np.sqrt(steps), steps / 10, "growth"))
    assert sorted(folder_entries(tmp_path)) == ["fes.png", "fes2.png", "fes3.png", "g.png", "h.png"]


def test_plots_reject_bad_input(tmp_path):
    with pytest.raises(ValueError, match=".png"):
        plots.plot_bias_growth(tmp_path / "g.jpg", [0, 1], [0, 1], [0, 1])
    with pytest.raises(ValueError, match="length"):
        plots.plot_fes(tmp_path / "f.png", np.arange(3.0), {"a": (np.arange(4.0), None)}, ["m"])
    assert folder_entries(tmp_path) == []
