"""Warm starts of ``metadns-mcmc`` along a temperature ladder, with and without reweighting the
hotter rung's states to the colder temperature (TA-BG).

The weights are checked state by state on an enumerated lattice: a state drawn from π_{V_h} at
β_h, times its weight, must be distributed as the unbiased Boltzmann distribution at β. A
two-rung ladder (Ising L = 4, β 0.3 → 0.4) must then stay exact after either kind of warm start:
⟨E⟩/N within 3 SE of enumeration and the CV histogram through the χ² test of the method's tests.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.stats
import torch

from pipeline.bias import WellTemperedGridBias
from pipeline.campaign import prepare_campaign
from pipeline.config import ConfigError, config_from_dict
from pipeline.methods.neural_chains import reweighted_log_weights
from pipeline.runner import execute_run
from systems.exact import enumerate_states, exact_ensemble
from systems.registry import make_system
from tests.pipeline.test_neural_mcmc_method import chi_square_against_exact, config, run_samples


def test_weights_carry_the_biased_hot_target_to_the_cold_one():
    system = make_system(name="ising", L=3)
    beta_hot, beta_cold = 0.3, 0.45
    bias = WellTemperedGridBias(-1.0, 1.0, 19, 0.15, 5.0, 1.0 / beta_hot, 0.4)
    generator = np.random.default_rng(0)
    for _ in range(30):
        bias.deposit(generator.uniform(-1, 1, size=(4, 1)))
    x = enumerate_states(system.n_sites, system.n_states)
    energy = system.energy(x).to(torch.float64)
    cv = system.cv(x).to(torch.float64)
    hotter = {"bias": bias.state_dict(),
              "recorded": {"x": x[None].to(torch.int8), "energy": energy[None], "cv": cv[None]}}
    log_w = reweighted_log_weights(hotter, beta_cold)
    log_pi_hot = -beta_hot * (energy.numpy() + bias.value(cv.numpy()))
    offset = log_pi_hot + log_w + beta_cold * energy.numpy()      # log π_hot·w − log π_cold
    assert np.ptp(offset) < 1e-12


def ladder_config(**training) -> dict:
    raw = config("ising", "local and global", initialise_from="previous_temperature", **training)
    raw["system"]["beta"] = [0.3, 0.4]
    return raw


@pytest.mark.parametrize("min_ess, mode", [(100.0, "reweighted"), (1e9, "sampler and chain states")])
def test_a_warm_started_colder_rung_stays_exact(tmp_path, capsys, min_ess, mode):
    raw = ladder_config(temperature_reweighting_steps=20, temperature_reweighting_min_ess=min_ess)
    campaign_config = config_from_dict(raw, "mc")
    campaign = prepare_campaign(campaign_config, tmp_path, resume=True)
    hot_spec, cold_spec = campaign.runs
    execute_run(campaign, hot_spec, progress=False)
    cold = execute_run(campaign, cold_spec, progress=False)
    warm = cold.summary["warm_start"]
    assert warm["mode"] == mode and warm["from"] == hot_spec.run_name
    assert warm["hotter_states"] == 360 * 32 and 100 < warm["kish_ess"] < warm["hotter_states"]
    if mode != "reweighted":
        assert "Kish ESS" in capsys.readouterr().out
    system = make_system(name="ising", L=4)
    observables = pd.read_parquet(cold.run_dir / "observables.parquet").set_index(["estimator", "observable"])
    value, stderr = observables.loc[("mcmc", "energy_per_site"), ["value", "stderr"]]
    exact = exact_ensemble(system, 0.4).expectations()["energy_per_site"]
    assert abs(value - exact) < 3 * stderr, (value, stderr, exact)
    chi2, n_bins = chi_square_against_exact(*run_samples(cold.run_dir, system), system, 0.4)
    assert chi2 < scipy.stats.chi2.ppf(0.999, n_bins), (chi2, n_bins)


def test_reweighting_needs_a_metadns_mcmc_ladder():
    with pytest.raises(ConfigError) as error:
        config_from_dict(config("ising", "local and global", temperature_reweighting_steps=5), "mc")
    assert error.value.field == "training.temperature_reweighting_steps"
    assert "previous_temperature" in str(error.value)
