"""Swendsen–Wang and Metropolis against exact enumeration and Kaufman's exact ln Z.

Standard errors come from per-chain means over many independent chains (after burn-in),
so autocorrelation within a chain is accounted for.
"""

import math

import numpy as np
import pytest
import torch
from scipy.stats import chi2

from systems.exact import exact_ensemble, ising_log_partition_function
from systems.ising import IsingModel
from systems.potts import PottsModel
from systems.reference_samplers import metropolis, metropolis_step, swendsen_wang

BETA_C = math.log(1 + math.sqrt(2)) / 2


def chain_mean_and_stderr(values):
    """values (n_steps, n_chains) -> mean and standard error from independent per-chain means."""
    per_chain = np.asarray(values, dtype=np.float64).mean(axis=0)
    return per_chain.mean(), per_chain.std(ddof=1) / math.sqrt(per_chain.size)


def observable_series(system, states, name, burn_in):
    """Per-sample observable (``"energy"`` or an observables key) as (n_steps - burn_in, n_chains)."""
    kept = states[burn_in:]
    chunks = kept.reshape(-1, system.n_sites).split(8192)  # bounded memory for long runs
    values = torch.cat([system.energy(c) if name == "energy" else system.observables(c)[name] for c in chunks])
    return values.reshape(kept.shape[0], kept.shape[1]).numpy()


def kaufman_mean_energy(L, beta, h=1e-5):
    """<E> = -d ln Z / d beta by central differences of the exact ln Z."""
    return -(ising_log_partition_function(L, beta + h) - ising_log_partition_function(L, beta - h)) / (2 * h)


def assert_within_3_stderr(estimate, stderr, exact, max_stderr):
    assert stderr < max_stderr, f"test too weak: stderr {stderr:.3g} >= {max_stderr}"
    assert abs(estimate - exact) < 3 * stderr, f"{estimate:.5f} ± {stderr:.5f} vs exact {exact:.5f}"


# --------------------------------------------------------------------------- Swendsen–Wang
@pytest.mark.parametrize("beta", [0.6, 0.3])
def test_swendsen_wang_ising_l4_matches_enumeration(beta):
    system = IsingModel(4)
    exact = exact_ensemble(system, beta).expectations()
    run = swendsen_wang(system, beta, n_chains=128, n_sweeps=400, generator=torch.Generator().manual_seed(1))
    assert run.states.dtype == torch.int8 and run.states.shape == (400, 128, 16)
    for name, max_stderr in (("energy", 0.1), ("abs_magnetisation", 0.01)):
        mean, stderr = chain_mean_and_stderr(observable_series(system, run.states, name, burn_in=50))
        assert_within_3_stderr(mean, stderr, exact[name], max_stderr)


def test_swendsen_wang_potts_q3_l3_matches_enumeration():
    system, beta = PottsModel(3, q=3), 1.0
    exact = exact_ensemble(system, beta).expectations()
    run = swendsen_wang(system, beta, n_chains=128, n_sweeps=400, generator=np.random.default_rng(2))
    for name, max_stderr in (("energy", 0.1), ("order_parameter", 0.01), ("concentration_1", 0.01)):
        mean, stderr = chain_mean_and_stderr(observable_series(system, run.states, name, burn_in=50))
        assert_within_3_stderr(mean, stderr, exact[name], max_stderr)


def test_swendsen_wang_ising_l8_critical_energy_matches_kaufman():
    system = IsingModel(8)
    run = swendsen_wang(system, BETA_C, n_chains=64, n_sweeps=400, generator=torch.Generator().manual_seed(3))
    mean, stderr = chain_mean_and_stderr(observable_series(system, run.states, "energy", burn_in=50))
    assert_within_3_stderr(mean, stderr, kaufman_mean_energy(8, BETA_C), max_stderr=0.5)


def test_swendsen_wang_continues_from_final_state_like_one_long_run():
    system = PottsModel(3, q=3)
    whole = swendsen_wang(system, 1.0, 8, 30, torch.Generator().manual_seed(4))
    g = torch.Generator().manual_seed(4)
    first = swendsen_wang(system, 1.0, 8, 10, g)
    second = swendsen_wang(system, 1.0, 8, 20, g, initial=first.final_state)
    assert torch.equal(torch.cat([first.states, second.states]), whole.states)
    thinned = swendsen_wang(system, 1.0, 8, 30, torch.Generator().manual_seed(4), thin=3)
    assert torch.equal(thinned.states, whole.states[2::3])


def test_swendsen_wang_rejects_unsupported_settings():
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="zero field"):
        swendsen_wang(IsingModel(4, field=0.1), 0.5, 2, 2, g)
    with pytest.raises(ValueError, match="J > 0"):
        swendsen_wang(PottsModel(3, J=-1.0), 0.5, 2, 2, g)
    with pytest.raises(ValueError, match="generator"):
        swendsen_wang(IsingModel(4), 0.5, 2, 2, generator=0)
    with pytest.raises(ValueError, match="initial"):
        swendsen_wang(IsingModel(4), 0.5, 2, 2, g, initial=torch.zeros(3, 16, dtype=torch.int64))
    with pytest.raises(ValueError, match="n_sweeps"):
        swendsen_wang(IsingModel(4), 0.5, 2, 0, g)


# --------------------------------------------------------------------------- Metropolis
def test_metropolis_ising_l4_matches_enumeration():
    system, beta = IsingModel(4, field=0.1), 0.4
    exact = exact_ensemble(system, beta).expectations()
    run = metropolis(system, beta, n_chains=256, n_sweeps=200, generator=torch.Generator().manual_seed(5))
    assert run.n_energy_changes == 200 * 16 * 256 and run.n_full_energies == 256
    assert 0.0 < run.acceptance_rate < 1.0
    # energies kept up to date from the accepted ΔE are the energies of the recorded states
    recomputed = system.energy(run.states.reshape(-1, 16)).reshape(run.energies.shape)
    torch.testing.assert_close(run.energies, recomputed, rtol=0, atol=1e-9)
    for name, max_stderr in (("energy", 0.2), ("magnetisation", 0.04)):
        mean, stderr = chain_mean_and_stderr(observable_series(system, run.states, name, burn_in=50))
        assert_within_3_stderr(mean, stderr, exact[name], max_stderr)


def test_metropolis_potts_q3_l3_matches_enumeration():
    system, beta = PottsModel(3, q=3), 1.0
    exact = exact_ensemble(system, beta).expectations()
    run = metropolis(system, beta, n_chains=256, n_sweeps=200, generator=np.random.default_rng(6))
    mean, stderr = chain_mean_and_stderr(observable_series(system, run.states, "energy", burn_in=50))
    assert_within_3_stderr(mean, stderr, exact["energy"], max_stderr=0.1)


def test_biased_metropolis_reproduces_exact_biased_cv_marginal():
    system, beta = IsingModel(4), 0.6

    def bias(s):  # J units; flattens the double well and tilts it towards m > 0
        return 8.0 * s[:, 0] ** 2 - 1.5 * s[:, 0]

    ensemble = exact_ensemble(system, beta)
    target = ensemble.cv_marginal(bias).probabilities
    unbiased = ensemble.cv_marginal().probabilities
    run = metropolis(system, beta, n_chains=256, n_sweeps=250, generator=torch.Generator().manual_seed(7),
                     bias_energy=bias)
    m_index = ((observable_series(system, run.states, "magnetisation", burn_in=50) * 16 + 16) / 2).round()
    per_chain = np.stack([(m_index == k).mean(axis=0) for k in range(17)], axis=1)  # (n_chains, 17)
    mean = per_chain.mean(axis=0)
    stderr = per_chain.std(axis=0, ddof=1) / math.sqrt(per_chain.shape[0])
    assert np.all(stderr > 0)

    def chi_square(p):
        return float(np.sum((mean - p) ** 2 / stderr**2))

    threshold = chi2.ppf(0.999, df=16)
    assert chi_square(target) < threshold
    # the test can tell the biased marginal from the unbiased and from a sign-flipped bias
    assert chi_square(unbiased) > 10 * threshold
    flipped = ensemble.cv_marginal(lambda s: -bias(s)).probabilities
    assert chi_square(flipped) > 10 * threshold


def test_metropolis_step_at_infinite_temperature_always_changes_one_site():
    system = PottsModel(3, q=3)
    g = torch.Generator().manual_seed(8)
    x = torch.zeros(20000, 9, dtype=torch.int8)
    x_new, accepted = metropolis_step(system, x, 0.0, g)
    assert accepted.all() and x_new.dtype == torch.int8
    changed = x_new != x
    assert torch.all(changed.sum(dim=1) == 1)
    # proposals: uniform site, uniform among the q - 1 other states
    site_counts = changed.sum(dim=0).numpy()
    state_counts = np.bincount(x_new[changed].numpy(), minlength=3)
    assert state_counts[0] == 0
    assert chi2.sf(np.sum((site_counts - 20000 / 9) ** 2 / (20000 / 9)), df=8) > 1e-3
    assert chi2.sf(np.sum((state_counts[1:] - 10000) ** 2 / 10000), df=1) > 1e-3
    assert torch.equal(x, torch.zeros(20000, 9, dtype=torch.int8))  # input untouched


def test_metropolis_step_acceptance_follows_energy_and_bias_signs():
    g = torch.Generator().manual_seed(9)
    all_up = torch.ones(1000, 16, dtype=torch.int64)
    # ferromagnet, cold: flipping any spin from the ground state costs 8 J -> always rejected
    x_new, accepted = metropolis_step(IsingModel(4), all_up, 10.0, g)
    assert not accepted.any() and torch.equal(x_new, all_up)
    # no coupling: only the bias acts. V = -100 m makes a flip cost 12.5 J; V = +100 m gains 12.5 J
    free = IsingModel(4, J=0.0)
    _, accepted = metropolis_step(free, all_up, 1.0, g, bias_energy=lambda s: -100.0 * s[:, 0])
    assert not accepted.any()
    x_new, accepted = metropolis_step(free, all_up, 1.0, g, bias_energy=lambda s: 100.0 * s[:, 0])
    assert accepted.all() and torch.all(x_new.sum(dim=1) == 15)
    # a bias of 1.2 J per flip is accepted with probability exp(-1.2)
    _, accepted = metropolis_step(free, all_up, 1.0, g, bias_energy=lambda s: -9.6 * s[:, 0])
    p = math.exp(-1.2)
    assert abs(accepted.double().mean().item() - p) < 3 * math.sqrt(p * (1 - p) / 1000)


def test_metropolis_infinite_temperature_accepts_everything_and_continues():
    system = IsingModel(3)
    run = metropolis(system, 0.0, 4, 5, torch.Generator().manual_seed(10))
    assert run.acceptance_rate == 1.0 and run.n_energy_changes == 5 * 9 * 4
    g = torch.Generator().manual_seed(11)
    whole = metropolis(system, 0.5, 4, 6, torch.Generator().manual_seed(11))
    first = metropolis(system, 0.5, 4, 2, g)
    second = metropolis(system, 0.5, 4, 4, g, initial=first.final_state, initial_energy=first.final_energy)
    assert torch.equal(torch.cat([first.states, second.states]), whole.states)
    assert torch.equal(torch.cat([first.energies, second.energies]), whole.energies)
    assert second.n_full_energies == 0


def test_metropolis_rejects_bad_inputs():
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="bias_energy"):
        metropolis(IsingModel(3), 0.5, 2, 2, g, bias_energy=3.0)
    with pytest.raises(ValueError, match="beta"):
        metropolis_step(IsingModel(3), torch.zeros(2, 9, dtype=torch.int64), -1.0, g)
    with pytest.raises(ValueError, match="shape"):
        metropolis(IsingModel(3), 0.5, 2, 2, g, bias_energy=lambda s: np.zeros(5))


# --------------------------------------------------------------------------- slow reference
@pytest.mark.slow
def test_swendsen_wang_ising_l16_reference_values(capsys):
    """L = 16, beta = 0.6: <|m|> against the published 0.9736; <E> against Kaufman's exact value."""
    system, beta = IsingModel(16), 0.6
    run = swendsen_wang(system, beta, n_chains=128, n_sweeps=3000, generator=torch.Generator().manual_seed(12),
                        progress=False)
    abs_m, abs_m_err = chain_mean_and_stderr(observable_series(system, run.states, "abs_magnetisation", 300))
    energy, energy_err = chain_mean_and_stderr(observable_series(system, run.states, "energy", 300))
    exact_energy = kaufman_mean_energy(16, beta)
    with capsys.disabled():
        print(f"\nSW L=16 beta=0.6: <|m|> = {abs_m:.5f} ± {abs_m_err:.5f} (published 0.9736); "
              f"<E>/N = {energy / 256:.5f} ± {energy_err / 256:.5f} (Kaufman {exact_energy / 256:.5f})")
    assert abs(abs_m - 0.9736) < 0.005
    assert abs(abs_m - 0.9736) < 3 * abs_m_err + 5e-5  # the reference is rounded to 4 decimals
    assert_within_3_stderr(energy, energy_err, exact_energy, max_stderr=0.1)
