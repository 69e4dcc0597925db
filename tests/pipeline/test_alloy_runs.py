"""Alloy runs end to end: MetaDNS on a tiny Cu–Au cell against exact enumeration, Δμ reweighting."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.config import config_from_dict
from pipeline.campaign import prepare_campaign
from pipeline.runner import run_campaign
from systems.alloys.alloy import BinaryAlloy
from systems.exact import exact_ensemble

CELL = {"size": [2, 2, 2], "cell": "primitive", "lattice_constant": 3.8}  # 8 sites: 256 states
TEMPERATURE = 1500.0  # K
DELTA_MU_GRID = [-0.1, 0.0, 0.15]  # eV


@pytest.fixture(scope="module")
def emt_run(tmp_path_factory):
    config = config_from_dict({
        "methods": ["metadns"], "seed": 3,
        "system": {"name": "alloy", **CELL, "energy": {"name": "ase"}, "temperature": [TEMPERATURE]},
        "sampler": {"hidden": 16, "layers": 2, "sites_per_step": 2},
        "bias": {"gamma": 10, "sigma": 0.1, "height_per_cycle": 0.5},
        "training": {"outer_iterations": 60, "batch_size": 64, "threads": 1},
        # no missing-basin check: its chains would make an EMT call per trial (minutes here)
        "sampling": {"n_samples": 3000, "delta_mu_grid": DELTA_MU_GRID, "coverage_check_sweeps": 0},
    }, "emt8")
    campaign = prepare_campaign(config, tmp_path_factory.mktemp("runs"), resume=False)
    (result,) = run_campaign(campaign, progress=False)
    return result.run_dir


def exact_means(delta_mu: float) -> dict[str, float]:
    system = BinaryAlloy(**CELL, energy={"name": "ase"}, delta_mu=delta_mu)
    ensemble = exact_ensemble(system, 1.0 / (system.boltzmann_constant * TEMPERATURE))
    return {name: ensemble.expectation(values) for name, values in
            system.observables(ensemble.states.long()).items()}


@pytest.mark.slow
@pytest.mark.parametrize("delta_mu", DELTA_MU_GRID)
def test_reweighted_composition_and_formation_energy_match_exact_enumeration(emt_run, delta_mu):
    obs = pd.read_parquet(emt_run / "observables.parquet")
    exact = exact_means(delta_mu)
    rows = obs[(obs.estimator == "likelihood") & (obs.delta_mu == delta_mu)].set_index("observable")
    for name in ("x_Au", "formation_energy_per_atom", "warren_cowley_1"):
        value, stderr = rows.loc[name, "value"], rows.loc[name, "stderr"]
        assert 0 < stderr < 0.02
        assert abs(value - exact[name]) < 3 * stderr, (name, value, stderr, exact[name])


@pytest.mark.slow
def test_delta_mu_scan_is_monotone_and_written_with_fes_and_plot(emt_run):
    obs = pd.read_parquet(emt_run / "observables.parquet")
    fraction = obs[(obs.estimator == "likelihood") & (obs.observable == "x_Au")].sort_values("delta_mu")
    assert fraction.delta_mu.tolist() == DELTA_MU_GRID
    assert np.all(np.diff(fraction.value.to_numpy()) > 0)  # Δμ > 0 favours Au
    assert not (obs.observable.eq("energy_per_site") & obs.delta_mu.ne(0.0)).any()
    fes = pd.read_parquet(emt_run / "fes.parquet")
    assert sorted(fes[fes.source == "samples"].delta_mu.unique().tolist()) == DELTA_MU_GRID
    assert (fes[fes.source == "bias"].delta_mu == 0.0).all()
    assert (emt_run / "delta_mu_scan.png").stat().st_size > 0


def test_chain_samples_reweighted_in_delta_mu_match_exact_enumeration(tmp_path):
    """Metropolis chains at Δμ = 0 (cluster expansion, 8 sites, 1500 K) reweighted to each Δμ'
    of the grid: x_Au and the formation energy within 3 chain-aware SE of exact enumeration."""
    config = config_from_dict({
        "methods": ["metropolis"], "seed": 5,
        "system": {"name": "alloy", **CELL, "temperature": [TEMPERATURE]},
        "reference": {"chains": 32, "sweeps": 600, "burn_in": 50},
        "sampling": {"delta_mu_grid": DELTA_MU_GRID},
    }, "ce8")
    (result,) = run_campaign(prepare_campaign(config, tmp_path, resume=False), progress=False)
    obs = pd.read_parquet(result.run_dir / "observables.parquet")
    for delta_mu in DELTA_MU_GRID:
        system = BinaryAlloy(**CELL, delta_mu=delta_mu)
        ensemble = exact_ensemble(system, 1.0 / (system.boltzmann_constant * TEMPERATURE))
        rows = obs[(obs.estimator == "mcmc") & (obs.delta_mu == delta_mu)].set_index("observable")
        for name in ("x_Au", "formation_energy_per_atom"):
            exact = ensemble.expectation(system.observables(ensemble.states.long())[name])
            value, stderr = rows.loc[name, ["value", "stderr"]]
            assert 0 < stderr < 0.02 and abs(value - exact) < 3 * stderr, (delta_mu, name, value, stderr, exact)
    fes = pd.read_parquet(result.run_dir / "fes.parquet")
    assert sorted(fes[fes.source == "samples"].delta_mu.unique().tolist()) == DELTA_MU_GRID
    assert (result.run_dir / "delta_mu_scan.png").stat().st_size > 0
