"""``metadns export``: an alloy run's samples as ASE structures (extxyz and ASE database).

One tiny real alloy run (mdns, EMT on an 8-site cell, 2 outer iterations: seconds) is exported
and read back with ``ase.io.read`` and ``ase.db.connect``; a tiny Metropolis run checks the
chain weights, a tiny Ising run the refusal of lattice-model runs.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import ase.db
import ase.io
import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.campaign import prepare_campaign
from pipeline.config import config_from_dict
from pipeline.export import RunSamples, selected_rows
from pipeline.outputs import samples_from_table
from pipeline.runner import run_campaign
from tests.cli_runner import run_cli
from tests.pipeline.test_cli_startup import NO_HEAVY, metadns

ALLOY = {
    "methods": ["mdns"], "seed": 1,
    "system": {"name": "alloy", "size": [2, 2, 2], "energy": {"name": "ase"}, "temperature": [1500.0]},
    "sampler": {"hidden": 8, "layers": 1, "sites_per_step": 4},
    "training": {"outer_iterations": 2, "batch_size": 16, "inner_steps": 1, "maskings": 1, "threads": 1},
    "sampling": {"n_samples": 300, "batch_size": 300, "coverage_check_sweeps": 0},
}
ALLOY_CHAINS = {"methods": ["metropolis"], "seed": 1,
                "system": {"name": "alloy", "size": [2, 2, 2], "energy": {"name": "ase"}, "temperature": [1500.0]},
                "reference": {"chains": 2, "sweeps": 10, "burn_in": 2}}
ISING = {"methods": ["sw"], "seed": 1, "system": {"name": "ising", "L": 4, "beta": 0.4},
         "reference": {"chains": 2, "sweeps": 20, "burn_in": 5}}
SPECIES = np.array(["Cu", "Au"])


def finished_run(config: dict, name: str, out) -> Path:
    """Run the one-run campaign ``config`` (named ``name``) under ``out``; its run folder."""
    (result,) = run_campaign(prepare_campaign(config_from_dict(config, name), out, resume=False), progress=False)
    return result.run_dir


@pytest.fixture(scope="module")
def alloy_run(tmp_path_factory):
    return finished_run(ALLOY, "alloy8", tmp_path_factory.mktemp("runs"))


@pytest.fixture(scope="module")
def samples(alloy_run):
    return samples_from_table(pq.read_table(alloy_run / "samples.parquet"))


def normalised(log_w):
    """Self-normalised weights, computed here independently of pipeline.estimators."""
    w = np.exp(log_w - log_w.max())
    return w / w.sum()


def export(run_dir, *args):
    code, out, err = run_cli("export", run_dir, *args)
    assert code == 0, err
    return out


def read_extxyz(path):
    """The structures of an extxyz file and their sample_index, int (N,)."""
    images = ase.io.read(path, index=":")
    index = np.array([atoms.info["sample_index"] for atoms in images])
    return images, index


def test_extxyz_holds_the_samples_with_energy_weights_cvs_and_run(alloy_run, samples, tmp_path):
    path = tmp_path / "some.extxyz"
    assert "40 structures (weighted)" in export(alloy_run, "--n", 40, "--out", path, "--seed", 3)
    images, index = read_extxyz(path)
    assert len(images) == 40
    assert np.all(np.diff(index) >= 0)  # draws sorted by sample index
    weights = normalised(samples["log_w_likelihood"])  # mdns: the likelihood estimator is the headline
    for atoms, row in zip(images, index):
        assert atoms.get_chemical_symbols() == SPECIES[samples["x"][row]].tolist()
        assert abs(atoms.get_potential_energy() - samples["energy"][row]) <= 1e-12
        assert atoms.info["log_weight"] == pytest.approx(samples["log_w_likelihood"][row], abs=1e-12)
        assert atoms.info["weight"] == pytest.approx(weights[row], rel=1e-10)
        assert atoms.info["cv_x_Au"] == pytest.approx(samples["cv"][row, 0], abs=1e-12)
        assert atoms.info["run"] == "mdns_T1500.0000"
        assert atoms.pbc.all() and len(atoms) == 8


def test_database_rows_carry_the_same_fields(alloy_run, samples):
    assert "12 structures (first)" in export(alloy_run, "--format", "db", "--select", "first", "--n", 12)
    path = alloy_run / "export" / "first.db"  # the default output
    rows = sorted(ase.db.connect(path).select(), key=lambda row: row.id)
    assert [row.sample_index for row in rows] == list(range(12))
    for row in rows:
        atoms = row.toatoms()
        assert atoms.get_chemical_symbols() == SPECIES[samples["x"][row.sample_index]].tolist()
        assert abs(row.energy - samples["energy"][row.sample_index]) <= 1e-12
        assert abs(atoms.get_potential_energy() - samples["energy"][row.sample_index]) <= 1e-12
        assert row.log_weight == pytest.approx(samples["log_w_likelihood"][row.sample_index], abs=1e-12)
        assert {"weight", "cv_x_Au", "run"} <= set(row.key_value_pairs)


def test_lowest_energy_gives_the_sorted_lowest_distinct_configurations(alloy_run, samples, tmp_path):
    export(alloy_run, "--select", "lowest-energy", "--n", 10, "--out", tmp_path / "low.extxyz")
    images, index = read_extxyz(tmp_path / "low.extxyz")
    energies = np.array([atoms.get_potential_energy() for atoms in images])
    _, first = np.unique(samples["x"], axis=0, return_index=True)
    np.testing.assert_allclose(energies, np.sort(samples["energy"][first])[:10], rtol=0, atol=1e-12)
    assert len({tuple(samples["x"][row]) for row in index}) == 10  # distinct configurations


def test_weighted_selection_is_reproducible_with_its_seed(alloy_run, tmp_path):
    paths = {}
    for label, seed in (("a", 7), ("b", 7), ("c", 8)):
        paths[label] = tmp_path / f"{label}.extxyz"
        export(alloy_run, "--n", 30, "--seed", seed, "--out", paths[label])
    same, again, other = (read_extxyz(paths[label])[1] for label in "abc")
    np.testing.assert_array_equal(same, again)
    assert not np.array_equal(same, other)


def test_weighted_draw_frequencies_follow_the_weights():
    weight = np.array([0.5, 0.3, 0.15, 0.05, 0.0])
    with np.errstate(divide="ignore"):
        log_weight = np.log(weight)
    samples = RunSamples("r", None, np.arange(5)[:, None], np.zeros(5), np.zeros((5, 0)), (), log_weight, weight)
    draws = 20_000
    counts = np.bincount(selected_rows(samples, "weighted", draws, seed=11), minlength=5)
    spread = np.sqrt(draws * weight * (1 - weight))
    assert np.all(np.abs(counts - draws * weight) <= 4 * spread)
    assert counts[-1] == 0


def test_chain_run_exports_its_chain_weights(tmp_path):
    """Metropolis states: the headline (mcmc) weights are the chain weights, log w = 0, w = 1/n."""
    run_dir = finished_run(ALLOY_CHAINS, "chains8", tmp_path)
    n_samples = pq.read_metadata(run_dir / "samples.parquet").num_rows
    export(run_dir, "--n", 10)
    images, _ = read_extxyz(run_dir / "export" / "weighted.extxyz")
    assert [atoms.info["log_weight"] for atoms in images] == [0.0] * 10
    np.testing.assert_allclose([atoms.info["weight"] for atoms in images], 1 / n_samples, rtol=1e-12)


def test_lattice_model_run_exits_2_naming_the_problem(tmp_path):
    run_dir = finished_run(ISING, "ising4", tmp_path)
    code, _, err = run_cli("export", run_dir)
    assert code == 2
    assert "export writes atomic structures" in err and "ising lattice-model run" in err
    assert not (run_dir / "export").exists()


@pytest.mark.parametrize("args, field", [
    (("--n", 0), "--n"),
    (("--n", -3), "--n"),
    (("--format", "cif"), "--format"),
    (("--select", "best"), "--select"),
    (("--format", "db", "--out", "x.extxyz"), "--out"),
])
def test_bad_arguments_exit_2_naming_the_field_and_write_nothing(alloy_run, tmp_path, args, field):
    run_dir = tmp_path / "run"
    shutil.copytree(alloy_run, run_dir, ignore=shutil.ignore_patterns("export"))
    before = sorted(p.relative_to(run_dir) for p in run_dir.rglob("*"))
    code, _, err = run_cli("export", run_dir, *args)
    assert code == 2
    assert f"metadns: error: {field}:" in err
    assert sorted(p.relative_to(run_dir) for p in run_dir.rglob("*")) == before


def test_missing_folder_or_samples_exit_2(alloy_run, tmp_path):
    code, _, err = run_cli("export", tmp_path / "nowhere")
    assert code == 2 and "RUN_DIR" in err and "is not a folder" in err
    shutil.copy(alloy_run / "config.yaml", tmp_path / "config.yaml")
    code, _, err = run_cli("export", tmp_path)
    assert code == 2 and "has no samples.parquet" in err
    assert [p.name for p in tmp_path.iterdir()] == ["config.yaml"]  # nothing written


def test_export_help_starts_without_heavy_imports():
    result = metadns("export", "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: metadns export")
    assert NO_HEAVY in result.stderr
