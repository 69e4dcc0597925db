"""`metadns report` over a real tiny campaign: dataset partitions, summary rows, phase diagram.

Two campaigns are run in-process (Ising L = 4 at two β with sw and mdns; an 8-site Cu–Au cell
with the paper's CE at 800 K and 1600 K with mcmc-metad and metropolis, at Δμ = 0.05 eV);
the alloy phase diagram is checked against exact enumeration of the same cell.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import yaml
import pyarrow as pa
import pyarrow.dataset as ds
import pytest
import torch

from pipeline.cli import main
from pipeline.config import config_from_dict
from pipeline.outputs import read_parquet_metadata
from pipeline.phase_diagram import BOLTZMANN_EV_PER_K, canonical_free_energy, common_tangent
from pipeline.campaign import prepare_campaign
from pipeline.runner import run_campaign

ALLOY_CELL = {"size": [2, 2, 2], "cell": "primitive", "lattice_constant": 3.8}
DELTA_MU = 0.05
TEMPERATURES = (800.0, 1600.0)
PARTITIONS = {"system=ising/temperature=beta0.3000", "system=ising/temperature=beta0.6000",
              "system=alloy/temperature=T800.0000", "system=alloy/temperature=T1600.0000"}


@pytest.fixture(scope="module")
def campaign_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("campaigns")
    ising = config_from_dict({
        "methods": ["sw", "mdns"], "seed": 1,
        "system": {"name": "ising", "L": 4, "beta": [0.3, 0.6]},
        "sampler": {"hidden": 8, "layers": 1, "sites_per_step": 4},
        "training": {"outer_iterations": 3, "batch_size": 32, "inner_steps": 1, "maskings": 2, "threads": 1},
        "sampling": {"n_samples": 500, "batch_size": 500},
        "reference": {"chains": 8, "sweeps": 200, "burn_in": 20}}, "ising4")
    alloy = config_from_dict({
        "methods": ["mcmc-metad", "metropolis"], "seed": 2,
        "system": {"name": "alloy", **ALLOY_CELL, "energy": {"name": "cluster_expansion", "model": "cuau_paper"},
                   "delta_mu": DELTA_MU, "temperature": list(TEMPERATURES)},
        "bias": {"gamma": 10, "sigma": 0.1},
        "training": {"threads": 1},
        "reference": {"chains": 32, "sweeps": 600, "burn_in": 50}}, "cuau8")
    for config in (ising, alloy):
        run_campaign(prepare_campaign(config, root, resume=False), progress=False)
    unfinished = root / "partial" / "metropolis_T800.0000"     # a run that never finished: ignored
    shutil.copytree(root / "cuau8" / "metropolis_T800.0000", unfinished)
    (unfinished / "summary.json").unlink()
    return root


@pytest.fixture(scope="module")
def report(campaign_dir):
    code = main(["report", str(campaign_dir), "--quiet"])
    assert code == 0
    return campaign_dir


def run_folders(root):
    return sorted(p.parent for p in root.glob("*/*/summary.json"))


def expected_observables(root) -> pd.DataFrame:
    frames = []
    for folder in run_folders(root):
        obs = pd.read_parquet(folder / "observables.parquet").rename(columns={"temperature": "temperature_value"})
        obs.insert(0, "run", folder.name)
        obs.insert(0, "campaign", folder.parent.name)
        obs["temperature"] = folder.name.split("_", 1)[1]
        frames.append(obs)
    return pd.concat(frames, ignore_index=True)


def sort_rows(frame: pd.DataFrame, keys) -> pd.DataFrame:
    return frame.sort_values(list(keys)).reset_index(drop=True)


def test_dataset_is_hive_partitioned_by_system_and_temperature_tag(report):
    for name in ("observables", "fes"):
        parts = {p.parent.relative_to(report / "dataset" / name).as_posix()
                 for p in (report / "dataset" / name).rglob("*.parquet")}
        assert parts == PARTITIONS
        assert all(p.name == "part-0.parquet" for p in (report / "dataset" / name).rglob("*.parquet"))
    part = report / "dataset" / "fes" / "system=alloy" / "temperature=T800.0000" / "part-0.parquet"
    metadata = read_parquet_metadata(part)
    assert metadata["report_runs"] == "8" and "git_revision" in metadata


def test_observables_dataset_reads_back_the_same_rows(report):
    table = ds.dataset(report / "dataset" / "observables", partitioning="hive").to_table()
    assert table.schema.field("temperature").type == pa.string()
    assert table.schema.field("system").type == pa.string()
    got = table.to_pandas()
    expected = expected_observables(report)
    assert set(got.campaign) == {"ising4", "cuau8"}               # the unfinished run is left out
    keys = ("campaign", "run", "estimator", "observable", "delta_mu")
    got = sort_rows(got[expected.columns], keys)
    pd.testing.assert_frame_equal(got, sort_rows(expected, keys), check_dtype=False)


def test_fes_dataset_reads_back_the_same_rows(report):
    got = ds.dataset(report / "dataset" / "fes", partitioning="hive").to_table().to_pandas()
    assert got.temperature.map(type).eq(str).all()
    for folder in run_folders(report):
        fes = pd.read_parquet(folder / "fes.parquet")
        mine = got[(got.campaign == folder.parent.name) & (got.run == folder.name)]
        cv = "m" if folder.parent.name == "ising4" else "x_Au"
        other = "x_Au" if cv == "m" else "m"
        assert mine[other].isna().all()
        keys = ("source", "delta_mu", cv)
        pd.testing.assert_frame_equal(sort_rows(mine[list(fes.columns)], keys), sort_rows(fes, keys),
                                      check_dtype=False)
        summary = json.loads((folder / "summary.json").read_text())
        assert (mine.temperature_value == summary["temperature"]).all() and (mine.method == summary["method"]).all()


def test_summary_has_one_row_per_run_with_the_main_estimator(report, capsys):
    summary = pd.read_parquet(report / "summary.parquet")
    assert sorted(summary.run) == sorted(folder.name for folder in run_folders(report))
    for row in summary.itertuples():
        folder = report / row.campaign / row.run
        obs = pd.read_parquet(folder / "observables.parquet")
        estimator = "likelihood" if row.method == "mdns" else "mcmc"
        assert row.estimator == estimator
        mine = obs[(obs.estimator == estimator) & np.isclose(obs.delta_mu, row.delta_mu)].set_index("observable")
        names = ("energy_per_site", "abs_magnetisation") if row.system == "ising" else ("x_Au", "long_range_order")
        for name in names:
            assert getattr(row, name) == mine.loc[name, "value"]
            assert getattr(row, f"{name}_stderr") == mine.loc[name, "stderr"]
        cost = obs[obs.estimator == "cost"].set_index("observable").value
        assert row.energy_evaluations == cost["energy_evaluations"]
        assert row.wall_time_s == pytest.approx(cost["training_wall_time"] + cost["generation_wall_time"])
        assert row.warnings == len(json.loads((folder / "summary.json").read_text())["warnings"])
        assert (row.delta_mu == DELTA_MU) if row.system == "alloy" else (row.delta_mu == 0.0)
        if row.method == "mdns":
            assert 0 < row.ess_fraction <= 1
        else:
            assert np.isnan(row.ess_fraction)
    for path in ("plots/ising4/observables_vs_temperature.png", "plots/ising4/fes_sw.png", "plots/ising4/fes_mdns.png",
                 "plots/cuau8/observables_vs_temperature.png", "plots/cuau8/fes_mcmc-metad.png", "phase_diagram.png"):
        assert (report / path).stat().st_size > 10_000, path


def test_runs_table_holds_each_runs_flattened_config(report):
    runs = pd.read_parquet(report / "runs.parquet").set_index(["campaign", "run"])
    folders = run_folders(report)
    assert sorted(runs.index) == sorted((f.parent.name, f.name) for f in folders)
    for folder in folders:
        row = runs.loc[(folder.parent.name, folder.name)]
        config = yaml.safe_load((folder / "config.yaml").read_text())
        assert row["method"] == config["methods"][0] == row["methods"].strip('[]"')
        assert row["config_hash"] == json.loads((folder / "summary.json").read_text())["config_hash"]
        assert row["training.outer_iterations"] == config["training"]["outer_iterations"]
        assert row["reference.sweeps"] == config["reference"]["sweeps"]
        assert row["system.name"] == config["system"]["name"]
        # lists (and settings whose type differs between the two campaigns) are JSON text
        assert json.loads(row["sampling.delta_mu_grid"]) == config["sampling"]["delta_mu_grid"]


def exact_regions(temperature):
    """Two-phase regions of the exact canonical f(x) of the 8-site cell (enumeration)."""
    from systems.alloys.alloy import BinaryAlloy
    from systems.exact import exact_ensemble

    marginal = exact_ensemble(BinaryAlloy(**ALLOY_CELL), 1.0 / (BOLTZMANN_EV_PER_K * temperature)).cv_marginal()
    x = marginal.values[:, 0]
    f, _ = canonical_free_energy(x, marginal.free_energy(), temperature, 0.0, 8)
    kT = BOLTZMANN_EV_PER_K * temperature
    return {(r.x_left, r.x_right): (r.slope, r.excess * 8 / kT) for r in common_tangent(x, f).regions}


def test_phase_diagram_matches_exact_enumeration_of_the_cell(report):
    table = pd.read_parquet(report / "phase_diagram.parquet")
    assert set(table.temperature_tag) == {"T800.0000", "T1600.0000"}
    assert (table.method == "mcmc-metad").all() and (table.fes_source == "samples").all()  # priority over metropolis
    assert (table.coverage_check == "not run").all()          # chain runs need no missing-basin check
    n_deep = 0
    for temperature in TEMPERATURES:
        rows = table[table.temperature == temperature].sort_values(["x_left", "x_right"])
        for left, right in zip(rows.iloc[:-1].itertuples(), rows.iloc[1:].itertuples()):  # regions tile x
            assert right.x_left == left.x_right or (
                left.kind == right.kind == "one_phase" and left.phase_right != right.phase_left
                and right.x_left - left.x_right == pytest.approx(1 / 8))   # label change between grid points
        found = rows[rows.kind == "two_phase"]
        truth = exact_regions(temperature)
        # Every gap found is a gap of the exact f, with its coexistence Δμ; every exact gap
        # deeper than 0.8 k_BT (whole cell) is found.  The run's Δμ = 0.05 eV is removed.
        fes = pd.read_parquet(report / "cuau8" / f"mcmc-metad_T{temperature:.4f}" / "fes.parquet")
        fes = fes[fes.source == "samples"].sort_values("x_Au")
        kT = BOLTZMANN_EV_PER_K * temperature
        sigma_f = kT * fes.stderr.to_numpy() / 8
        for row in found.itertuples():
            assert (row.x_left, row.x_right) in truth
            i, j = int(round(row.x_left * 8)), int(round(row.x_right * 8))
            sigma_slope = np.hypot(sigma_f[i], sigma_f[j]) / (row.x_right - row.x_left)
            assert abs(row.slope_eV - truth[(row.x_left, row.x_right)][0]) < 4 * sigma_slope
        deep = {key for key, (_, depth_kT) in truth.items() if depth_kT > 0.8}
        assert deep <= set(zip(found.x_left, found.x_right))
        n_deep += len(deep)
    assert n_deep >= 3                                            # 800 K: three gaps around L1_2 / L1_0 / L1_2


def test_phase_labels_use_the_conditional_order_parameter(report):
    """⟨η | x⟩ recomputed with pandas from the chosen run's samples, and the labels it implies."""
    from systems.alloys.alloy import BinaryAlloy

    system = BinaryAlloy(**ALLOY_CELL)
    table = pd.read_parquet(report / "phase_diagram.parquet")
    for temperature in TEMPERATURES:
        samples = pd.read_parquet(report / "cuau8" / f"mcmc-metad_T{temperature:.4f}" / "samples.parquet")
        x = torch.tensor(np.stack(samples.configuration.to_numpy()).astype(np.int64))
        frame = pd.DataFrame({"x": samples.cv_x_Au.round(6), "eta": system.observables(x)["long_range_order"].numpy(),
                              "w": np.exp(samples.log_w_bias - samples.log_w_bias.max())})
        frame["weta"] = frame.w * frame.eta
        grouped = frame.groupby("x")[["weta", "w"]].sum()
        eta = (grouped.weta / grouped.w).to_dict()
        for row in table[table.temperature == temperature].itertuples():
            assert row.lro_left == pytest.approx(eta[round(row.x_left, 6)], rel=1e-9)
            assert row.lro_right == pytest.approx(eta[round(row.x_right, 6)], rel=1e-9)
        at_quarter = table[(table.temperature == temperature) & (table.x_left == 0.25)].iloc[0]
        assert at_quarter.phase_left == ("L1_2" if eta[0.25] > 0.5 else "disordered")
        pure = table[(table.temperature == temperature) & (table.x_right == 1.0)].iloc[0]
        assert pure.phase_right == "disordered"                  # pure Au: η = 0


def test_report_rerun_replaces_the_dataset(report, capsys):
    before = ds.dataset(report / "dataset" / "observables", partitioning="hive").count_rows()
    assert main(["report", str(report), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "== cuau8 (alloy)" in out and "== ising4 (ising)" in out and "phase diagram" in out
    assert ds.dataset(report / "dataset" / "observables", partitioning="hive").count_rows() == before
    assert not [p for p in report.iterdir() if p.name.startswith(".dataset")]


def test_report_without_finished_runs_exits_2(tmp_path, capsys):
    (tmp_path / "campaign" / "sw_beta0.3000").mkdir(parents=True)    # a run folder without summary.json
    assert main(["report", str(tmp_path), "--quiet"]) == 2
    assert "no finished runs" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["campaign"]   # nothing written
    assert main(["report", str(tmp_path / "missing")]) == 2


def test_failed_dataset_write_keeps_the_previous_dataset(report):
    from pipeline.campaign_report import write_dataset

    before = sorted(p.relative_to(report) for p in (report / "dataset").rglob("*.parquet"))
    broken = pa.table({"campaign": ["x"], "temperature": ["T1.0000"]})      # no `system` partition column
    with pytest.raises(Exception):
        write_dataset(report, {"observables": broken}, {"seed": "0"})
    assert sorted(p.relative_to(report) for p in (report / "dataset").rglob("*.parquet")) == before
    assert not [p for p in report.iterdir() if p.name.startswith(".dataset")]
