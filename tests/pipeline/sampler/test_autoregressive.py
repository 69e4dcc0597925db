"""The autoregressive sampler family (pipeline/sampler/autoregressive.py) on its own and
through the whole method (``metadns`` with ``sampler.family: autoregressive``).

* Ising L=4 (2^16 states): the exact q(x) of a sharpened random model sums to 1 in float64
  (tests/pipeline/sampler/test_contract.py covers L ≤ 3 only).
* ``loss: reinforce`` refuses a replay buffer (it trains on fresh samples only).
* Ising L=4, β=0.6: a MetaDNS run's likelihood-weighted ⟨E⟩/N, ⟨|m|⟩ and ln Z lie within
  3 SE of exact enumeration, with error bars small enough to mean something.
* Ising L=8, β=0.6 (barrier ≈ 9 k_BT): MetaDNS with the autoregressive sampler holds both
  magnetisation modes.  Measured (BENCHMARKS.md): the weighted forward KL with the replay
  buffer drifts across the barrier far more slowly than REINFORCE at these budgets, so the
  test uses ``loss: reinforce`` (fresh samples only) with 500 outer iterations.
"""

from __future__ import annotations

import pytest
import torch

from pipeline.build import build_sampler
from pipeline.config import config_from_dict
from pipeline.errors import ConfigError
from pipeline.sampler.autoregressive import AutoregressiveSampler
from systems.exact import enumerate_states, exact_ensemble, ising_log_partition_function
from systems.registry import make_system
from tests.pipeline.test_method_acceptance import BETA, assert_both_modes_held, estimate, run_config, within_3_sigma


# ----------------------------------------------------------------------------- normalisation
def test_probabilities_of_all_ising_L4_states_sum_to_one_in_float64():
    system = make_system("ising", L=4)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        sampler = AutoregressiveSampler(system.n_sites, system.n_states, hidden=4, layers=3).double()
    with torch.no_grad():  # sharpen the nearly uniform initialisation so that context matters
        for parameter in sampler.parameters():
            parameter.mul_(4.0)
    states = enumerate_states(system.n_sites, system.n_states).long()
    assert states.shape == (2 ** 16, 16)
    log_q = sampler.log_prob(states)
    assert log_q.dtype == torch.float64 and log_q.shape == (2 ** 16,)
    assert float(torch.logsumexp(log_q, 0).exp()) == pytest.approx(1.0, abs=1e-10)
    assert float(log_q.max() - log_q.min()) > 1.0  # far from uniform: a bookkeeping error could not hide
    batch = sampler.sample(500, torch.Generator().manual_seed(1), batch_size=128)
    index = (batch.x * 2 ** torch.arange(15, -1, -1)).sum(1)  # enumerate_states order, site 0 first
    assert torch.allclose(batch.log_q, log_q[index], rtol=0, atol=1e-12)


def test_reinforce_refuses_a_replay_buffer():
    config = config_from_dict({
        "name": "reinforce_buffer", "methods": ["metadns"], "system": {"name": "ising", "L": 4, "beta": BETA},
        "sampler": {"family": "autoregressive", "loss": "reinforce"},
        "training": {"replay_buffer_size": 64},
    }, "reinforce_buffer")
    with pytest.raises(ConfigError, match="replay_buffer_size"):
        build_sampler(config, make_system("ising", L=4))


# ----------------------------------------------------------------------------- whole method
def test_metadns_autoregressive_reweights_to_exact_ising_L4(tmp_path):
    """≈ 10 s: 150 outer iterations × 128 samples, weighted forward KL, no buffer."""
    config = {
        "name": "ar_ising_l4", "seed": 0, "methods": ["metadns"],
        "system": {"name": "ising", "L": 4, "beta": BETA},
        "sampler": {"family": "autoregressive", "hidden": 8, "layers": 2, "loss": "forward_kl"},
        "bias": {"gamma": 10, "sigma": 0.05, "height_per_cycle": 0.5},
        "training": {"outer_iterations": 150, "batch_size": 128, "inner_steps": 5, "learning_rate": 2e-3,
                     "threads": 1},
        "sampling": {"n_samples": 20000, "batch_size": 5000},
    }
    observables = run_config(tmp_path, config)["metadns"]
    exact = exact_ensemble(make_system("ising", L=4), BETA)
    exact_ln_z = ising_log_partition_function(4, BETA)

    e, e_err = estimate(observables, "likelihood", "energy_per_site")
    m, m_err = estimate(observables, "likelihood", "abs_magnetisation")
    ln_z, ln_z_err = estimate(observables, "likelihood", "log_partition_function")
    e_mh, e_mh_err = estimate(observables, "mh", "energy_per_site")
    # The error bars must be small enough for the checks to mean something.
    assert max(e_err, e_mh_err) < 0.01 and m_err < 0.005 and ln_z_err < 0.05, (e_err, e_mh_err, m_err, ln_z_err)
    assert within_3_sigma(e, e_err, exact.expectation("energy_per_site")), (e, e_err)
    assert within_3_sigma(m, m_err, exact.expectation("abs_magnetisation")), (m, m_err)
    assert within_3_sigma(ln_z, ln_z_err, exact_ln_z), (ln_z, ln_z_err, exact_ln_z)
    assert within_3_sigma(e_mh, e_mh_err, exact.expectation("energy_per_site")), (e_mh, e_mh_err)


@pytest.mark.slow
def test_metadns_autoregressive_holds_both_modes_on_ising_L8(tmp_path):
    """≈ 1–2 min: 500 outer iterations × 128 fresh samples, REINFORCE (no buffer)."""
    config = {
        "name": "ar_barrier", "seed": 0, "methods": ["sw", "metadns"],
        "system": {"name": "ising", "L": 8, "beta": BETA},
        "sampler": {"family": "autoregressive", "hidden": 8, "layers": 2, "loss": "reinforce"},
        "bias": {"gamma": 10, "sigma": 0.05, "height_per_cycle": 1.0},
        "training": {"outer_iterations": 500, "batch_size": 128, "inner_steps": 5, "learning_rate": 2e-3,
                     "replay_buffer_size": 0, "threads": 1},
        "sampling": {"n_samples": 10000, "batch_size": 5000},
        "reference": {"chains": 32, "sweeps": 1000, "burn_in": 100},
    }
    observables = run_config(tmp_path, config)
    assert_both_modes_held(observables)
