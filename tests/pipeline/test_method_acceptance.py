"""Acceptance tests of the whole method, run through the same runner that `metadns run` uses.

* Reweighting on Ising L=4 at β=0.6 against exact enumeration (2^16 states): likelihood-
  weighted ⟨E⟩/N and ⟨|m|⟩, the ln Z estimate and the independence Metropolis–Hastings
  pass lie within 3 standard errors of the exact values.
* Barrier crossing on Ising L=8 at β=0.6: MetaDNS's likelihood-reweighted P(m>0) = ½ and
  ⟨|m|⟩ of Swendsen–Wang within 3 SE.
* MCMC WT-MetaD on Potts q=3 L=3 reweights to exact averages.
"""

from __future__ import annotations

import math

import pandas as pd
import pytest

from pipeline.config import config_from_dict
from pipeline.campaign import prepare_campaign
from pipeline.runner import run_campaign
from systems.exact import exact_ensemble, ising_log_partition_function
from systems.registry import make_system

BETA = 0.6


def run_config(tmp_path, config: dict) -> dict[str, pd.DataFrame]:
    """Run every method of ``config``; observables.parquet of each run by method."""
    campaign = prepare_campaign(config_from_dict(config, config["name"]), tmp_path, resume=False)
    results = run_campaign(campaign, progress=False)
    return {r.spec.method: pd.read_parquet(r.run_dir / "observables.parquet") for r in results}


def estimate(frame: pd.DataFrame, estimator: str, observable: str) -> tuple[float, float]:
    row = frame[(frame.estimator == estimator) & (frame.observable == observable)]
    assert len(row) == 1, (estimator, observable)
    return float(row.value.iloc[0]), float(row.stderr.iloc[0])


def within_3_sigma(value, stderr, exact) -> bool:
    return abs(value - exact) <= 3 * stderr


def assert_both_modes_held(observables: dict[str, pd.DataFrame]) -> None:
    """MetaDNS's likelihood-weighted P(m>0) is ½ within 3 SE (SE ≤ 0.05) and its ⟨|m|⟩ agrees
    with Swendsen–Wang's within 3 combined SE."""
    p_up, p_up_err = estimate(observables["metadns"], "likelihood", "positive_magnetisation")
    assert p_up_err <= 0.05, p_up_err
    assert within_3_sigma(p_up, p_up_err, 0.5), (p_up, p_up_err)

    m, m_err = estimate(observables["metadns"], "likelihood", "abs_magnetisation")
    m_sw, m_sw_err = estimate(observables["sw"], "mcmc", "abs_magnetisation")
    assert abs(m - m_sw) <= 3 * math.hypot(m_err, m_sw_err), (m, m_err, m_sw, m_sw_err)


@pytest.mark.slow
def test_reweighting_matches_exact_enumeration_on_ising_L4(tmp_path):
    config = {
        "name": "ising_l4", "seed": 3, "methods": ["metadns"],
        "system": {"name": "ising", "L": 4, "beta": BETA},
        "sampler": {"denoiser": "lattice", "sites_per_step": 2, "hidden": 32, "layers": 2},
        "bias": {"gamma": 10, "sigma": 0.05, "height_per_cycle": 0.5},
        "training": {"outer_iterations": 150, "batch_size": 128, "inner_steps": 5, "maskings": 8,
                     "learning_rate": 2e-3, "threads": 1},
        "sampling": {"n_samples": 20000, "batch_size": 5000},
    }
    observables = run_config(tmp_path, config)["metadns"]
    system = make_system("ising", L=4)
    exact = exact_ensemble(system, BETA)
    exact_e = exact.expectation("energy_per_site")
    exact_m = exact.expectation("abs_magnetisation")

    e, e_err = estimate(observables, "likelihood", "energy_per_site")
    m, m_err = estimate(observables, "likelihood", "abs_magnetisation")
    ln_z, ln_z_err = estimate(observables, "likelihood", "log_partition_function")
    e_mh, e_mh_err = estimate(observables, "mh", "energy_per_site")
    exact_ln_z = ising_log_partition_function(4, BETA)
    assert math.isclose(float(exact.log_Z), exact_ln_z, rel_tol=1e-12)

    # The error bars must be small enough for the checks to mean something.
    assert max(e_err, e_mh_err) < 0.02 and m_err < 0.01 and ln_z_err < 0.05
    assert within_3_sigma(e, e_err, exact_e), (e, e_err, exact_e)
    assert within_3_sigma(m, m_err, exact_m), (m, m_err, exact_m)
    assert within_3_sigma(ln_z, ln_z_err, exact_ln_z), (ln_z, ln_z_err, exact_ln_z)
    assert within_3_sigma(e_mh, e_mh_err, exact_e), (e_mh, e_mh_err, exact_e)


@pytest.mark.slow
def test_metadns_crosses_the_barrier_on_ising_L8(tmp_path):
    """Both magnetisation modes at β=0.6, L=8 (barrier ≈ 9 k_BT): the CV-stratified replay
    buffer keeps the mode the sampler left in training, so it stops hopping between modes."""
    config = {
        "name": "barrier", "seed": 0, "methods": ["sw", "metadns"],
        "system": {"name": "ising", "L": 8, "beta": BETA},
        "sampler": {"denoiser": "lattice", "sites_per_step": 4, "schedule": "cosine", "hidden": 32, "layers": 3},
        "bias": {"gamma": 10, "sigma": 0.05, "height_per_cycle": 1.0},
        "training": {"outer_iterations": 250, "batch_size": 128, "inner_steps": 5, "maskings": 8,
                     "learning_rate": 2e-3, "replay_buffer_size": 4096, "threads": 1},
        "sampling": {"n_samples": 10000, "batch_size": 5000},
        "reference": {"chains": 32, "sweeps": 1000, "burn_in": 100},
    }
    observables = run_config(tmp_path, config)
    assert_both_modes_held(observables)


def test_mcmc_metadynamics_reweights_to_exact_potts(tmp_path):
    """MCMC WT-MetaD on Potts q=3 L=3 (2-D CV): the frozen-bias phase, reweighted with βV,
    gives the exact ⟨E⟩/N and order parameter within 3 autocorrelation-aware SE."""
    config = {
        "name": "potts_metad", "seed": 0, "methods": ["mcmc-metad"],
        "system": {"name": "potts", "L": 3, "q": 3, "beta": 1.0},
        "bias": {"gamma": 10, "sigma": 0.1, "height_per_cycle": 0.5},
        "reference": {"chains": 16, "sweeps": 200, "burn_in": 20},
        "training": {"threads": 1},
    }
    observables = run_config(tmp_path, config)["mcmc-metad"]
    exact = exact_ensemble(make_system("potts", L=3, q=3), 1.0)
    for name in ("energy_per_site", "order_parameter"):
        value, stderr = estimate(observables, "mcmc", name)
        assert 0 < stderr < 0.05
        assert within_3_sigma(value, stderr, exact.expectation(name)), (name, value, stderr)
    hills = estimate(observables, "cost", "bias_depositions")[0]
    assert hills == 16 * 200  # one hill per chain per deposition sweep
