"""The references runs are compared against, and the FES-RMSE history (cost to accuracy).

* The streamed enumeration (chunks accumulated in log space) gives the same CV and E/N
  histograms and F(CV) as the all-states ExactEnsemble, whatever the chunk size.
* MetaDNS and MCMC WT-MetaD runs on Potts q=3 L=3 record, after every deposition, the RMSE of
  the bias's F against exact enumeration; the last entry equals the RMSE recomputed from the
  run's fes.parquet against an independent exact marginal.
* Beyond exact enumeration (Potts q=3 L=5) a Swendsen–Wang run is the reference, its F(p1, p2)
  on the 2-D CV grid, and the RMSE history is measured against it.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from pipeline import estimators as est
from pipeline.config import config_from_dict
from pipeline.campaign import prepare_campaign
from pipeline.reference_data import cv_bin_edges, exact_reference, histogram_inputs
from pipeline.runner import run_campaign
from systems.exact import exact_ensemble
from systems.registry import make_system

POTTS = {"name": "potts", "L": 3, "q": 3, "J": 1.0}
BETA = 1.2


@pytest.mark.parametrize("chunk_size", [1000, 2**18])
def test_streamed_exact_reference_equals_the_all_states_ensemble(chunk_size):
    system = make_system(**POTTS)
    reference = exact_reference(system, BETA, chunk_size=chunk_size)
    ensemble = exact_ensemble(system, BETA)
    log_p = ensemble.log_prob.numpy()
    values, edges = histogram_inputs(system, ensemble.cv.numpy(), cv_bin_edges(system))
    cv_hist, _ = est.weighted_histogram(values, log_p, edges)
    e_hist, _ = est.weighted_histogram(ensemble.energies.numpy() / system.n_sites, log_p,
                                       system.energy_per_site_bin_edges())
    fes, _ = est.fes_from_samples(values, log_p, edges)
    np.testing.assert_allclose(reference.cv_histogram, cv_hist.ravel(), rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(reference.energy_histogram, e_hist, rtol=1e-12, atol=1e-300)
    assert np.array_equal(np.isnan(reference.fes_kT), np.isnan(fes))
    np.testing.assert_allclose(reference.fes_kT, fes, atol=1e-12)


def test_runs_record_the_fes_rmse_against_exact_after_every_deposition(tmp_path):
    config = {
        "name": "potts_cost", "seed": 0, "methods": ["mcmc-metad", "metadns"],
        "system": {**POTTS, "beta": BETA},
        "sampler": {"denoiser": "lattice", "sites_per_step": 3, "hidden": 16, "layers": 2},
        "bias": {"gamma": 10, "sigma": 0.1, "height_per_cycle": 0.5},
        "training": {"outer_iterations": 12, "batch_size": 32, "inner_steps": 2, "maskings": 2, "threads": 1},
        "sampling": {"n_samples": 200},
        "reference": {"chains": 16, "sweeps": 200, "burn_in": 10},
    }
    results = run_campaign(prepare_campaign(config_from_dict(config, "potts_cost"), tmp_path, resume=False),
                           progress=False)
    system = make_system(**POTTS)
    marginal = exact_ensemble(system, BETA).cv_marginal()
    index = np.ravel_multi_index(tuple(system.cv_spec.grid_index(marginal.values).T), system.cv_spec.grid_points)
    exact_fes = np.full(int(np.prod(system.cv_spec.grid_points)), np.nan)
    exact_fes[index] = marginal.free_energy()
    cycles = {"mcmc-metad": 200, "metadns": 12}
    hills_per_cycle = {"mcmc-metad": 16, "metadns": 32}
    for result in results:
        method = result.spec.method
        history = json.loads((result.run_dir / "summary.json").read_text())["fes_rmse_history"]
        hills, evaluations, rmse = (np.asarray(c, dtype=float) for c in zip(*history))
        assert len(history) == cycles[method]
        np.testing.assert_array_equal(hills, hills_per_cycle[method] * np.arange(1, cycles[method] + 1))
        assert np.all(np.diff(evaluations) > 0)
        fes = pd.read_parquet(result.run_dir / "fes.parquet")
        bias_fes = fes[fes.source == "bias"].free_energy_kT.to_numpy()
        assert rmse[-1] == pytest.approx(est.fes_rmse(bias_fes, exact_fes)[0], abs=1e-9)
    mcmc_rmse = np.asarray(json.loads((results[0].run_dir / "summary.json").read_text())["fes_rmse_history"])[:, 2]
    assert mcmc_rmse[-1] < 0.5 * mcmc_rmse[0]   # the bias learns F


def test_cost_to_target_takes_the_first_cycle_at_or_below_the_target():
    history = [(10, 100, 3.0), (20, 200, 0.9), (30, 300, 1.2), (40, 400, 0.5)]
    out = est.cost_to_target(history, 1.0)
    assert (out["cycles_to_target"], out["hills_to_target"], out["evaluations_to_target"]) == (2, 20, 200)
    assert out["final_rmse_kT"] == 0.5 and out["hills"] == 40
    assert np.isnan(est.cost_to_target(history, 0.1)["hills_to_target"])


def test_a_swendsen_wang_run_is_the_fes_reference_beyond_exact_enumeration(tmp_path):
    config = {
        "name": "potts_sw_reference", "seed": 0, "methods": ["sw", "mcmc-metad", "metadns"],
        "system": {"name": "potts", "L": 5, "q": 3, "J": 1.0, "beta": 1.0},
        "sampler": {"denoiser": "lattice", "sites_per_step": 5, "hidden": 16, "layers": 2},
        "bias": {"gamma": 10, "sigma": 0.1, "height_per_cycle": 0.5},
        "training": {"outer_iterations": 3, "batch_size": 16, "inner_steps": 1, "maskings": 2, "threads": 1},
        "sampling": {"n_samples": 100},
        "reference": {"chains": 8, "sweeps": 40, "burn_in": 5},
    }
    results = run_campaign(prepare_campaign(config_from_dict(config, config["name"]), tmp_path, resume=False),
                           progress=False)
    sw = next(r for r in results if r.spec.method == "sw")
    sw_fes = pd.read_parquet(sw.run_dir / "fes.parquet")
    sw_fes = sw_fes[sw_fes.source == "samples"].free_energy_kT.to_numpy()
    for result in results:
        if result.spec.method == "sw":
            continue
        history = json.loads((result.run_dir / "summary.json").read_text())["fes_rmse_history"]
        assert len(history) == {"mcmc-metad": 40, "metadns": 3}[result.spec.method]
        fes = pd.read_parquet(result.run_dir / "fes.parquet")
        bias_fes = fes[fes.source == "bias"].free_energy_kT.to_numpy()
        assert history[-1][2] == pytest.approx(est.fes_rmse(bias_fes, sw_fes)[0], abs=1e-9)
