"""Tests of pipeline.estimators against exact values (hand-computed, analytic, enumerated).

Statistical assertions use fixed seeds and 3-standard-error bounds; calibration checks
(estimated standard error vs the spread over repeated experiments) use tolerances derived
from the number of repeats R: the relative standard deviation of an empirical standard
deviation over R roughly normal repeats is 1/sqrt(2(R-1)).
"""

import math

import numpy as np
import pytest
import torch
from scipy.signal import lfilter

from pipeline import estimators as est

# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------
# A discrete "system" with 6 states: proposal q, unnormalised target p~ = Z p.
PROPOSAL = np.array([0.10, 0.25, 0.15, 0.20, 0.05, 0.25])
TARGET = np.array([0.30, 0.05, 0.20, 0.10, 0.15, 0.20])
TARGET_Z = 37.5
OBSERVABLE = np.array([-1.0, 0.5, 2.0, 3.0, -2.5, 1.0])


def _draw_is(rng, n, size=None):
    """States drawn from PROPOSAL and their log-weights log(Z p) - log q."""
    shape = (n,) if size is None else (size, n)
    x = rng.choice(PROPOSAL.size, size=shape, p=PROPOSAL)
    return x, np.log(TARGET_Z * TARGET[x]) - np.log(PROPOSAL[x])


def _ar1(rng, n_steps, n_chains, rho):
    """Stationary AR(1) chains x_t = rho x_{t-1} + e_t, unit-variance innovations: (n_steps, n_chains)."""
    noise = rng.standard_normal((n_steps, n_chains))
    noise[0] /= math.sqrt(1.0 - rho**2)  # start in the stationary distribution
    return lfilter([1.0], [1.0, -rho], noise, axis=0)


def _ar1_var_of_mean(n, rho):
    """Exact variance of the mean of n consecutive stationary AR(1) values."""
    var = 1.0 / (1.0 - rho**2)
    return var / n * ((1 + rho) / (1 - rho) - 2 * rho * (1 - rho**n) / (n * (1 - rho) ** 2))


# --------------------------------------------------------------------------------------
# log-weights
# --------------------------------------------------------------------------------------
def test_log_weight_formulas_hand_values_and_no_double_counting():
    energy = np.array([1.0, -2.0])
    log_q = np.array([-0.5, -1.0])
    bias = np.array([0.3, -0.1])
    beta = 0.5
    likelihood = est.log_weights_likelihood(energy, log_q, beta)
    biased = est.log_weights_biased_target(energy, bias, log_q, beta)
    bias_w = est.log_weights_bias(bias, beta)
    np.testing.assert_allclose(likelihood, [0.0, 2.0], atol=1e-15)
    np.testing.assert_allclose(biased, [-0.15, 2.05], atol=1e-15)
    np.testing.assert_allclose(bias_w, [0.15, -0.05], atol=1e-15)
    # converting biased-target weights to the physical target adds beta*V exactly once
    np.testing.assert_allclose(biased + bias_w, likelihood, atol=1e-15)
    assert likelihood.dtype == np.float64


def test_weights_for_a_perfect_biased_sampler():
    """If q equals pi_V exactly, biased-target weights are constant and the likelihood
    weights coincide with the bias weights up to a constant (exact enumeration)."""
    rng = np.random.default_rng(0)
    beta = 0.7
    energy = rng.normal(size=12) * 3
    bias = rng.normal(size=12)
    log_pi_v = -beta * (energy + bias)
    log_pi_v -= np.log(np.sum(np.exp(log_pi_v)))
    biased = est.log_weights_biased_target(energy, bias, log_pi_v, beta)
    np.testing.assert_allclose(biased, biased[0], atol=1e-12)
    assert est.kish_ess(biased) == pytest.approx(12.0, rel=1e-12)
    likelihood = est.log_weights_likelihood(energy, log_pi_v, beta)
    np.testing.assert_allclose(likelihood - est.log_weights_bias(bias, beta), biased[0], atol=1e-12)
    # and the likelihood weights reweight pi_V to the Boltzmann distribution exactly:
    # sum_x pi_V(x) w(x) f(x) / sum_x pi_V(x) w(x) = <f>_Boltzmann
    boltzmann = np.exp(-beta * energy) / np.sum(np.exp(-beta * energy))
    np.testing.assert_allclose(est.normalized_weights(log_pi_v + likelihood), boltzmann, rtol=1e-12)


def test_likelihood_weights_recover_boltzmann_average():
    rng = np.random.default_rng(1)
    beta = 1.3
    energy_levels = np.array([0.0, 0.4, 1.1, -0.7, 2.0, 0.2])
    x = rng.choice(6, size=20_000, p=PROPOSAL)
    log_w = est.log_weights_likelihood(energy_levels[x], np.log(PROPOSAL[x]), beta)
    boltzmann = np.exp(-beta * energy_levels) / np.sum(np.exp(-beta * energy_levels))
    mean, se = est.weighted_mean_and_stderr(energy_levels[x], log_w)
    assert abs(mean - boltzmann @ energy_levels) < 3 * se


def test_reweight_chemical_potential_hand_values():
    out = est.reweight_chemical_potential([0.0, -1.0], [1, 3], beta=2.0, delta_mu_from=0.1, delta_mu_to=0.3)
    np.testing.assert_allclose(out, [0.4, -1.0 + 1.2], atol=1e-14)


def test_torch_inputs_match_numpy():
    energy = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float32, requires_grad=True)
    log_q = torch.tensor([-0.5, -1.0, -2.0], dtype=torch.float64)
    got = est.log_weights_likelihood(energy, log_q, torch.tensor(0.5))
    want = est.log_weights_likelihood(energy.detach().numpy().astype(np.float64), log_q.numpy(), 0.5)
    np.testing.assert_array_equal(got, want)
    values = torch.tensor([1.0, 2.0, 4.0])
    assert est.weighted_mean_and_stderr(values, torch.from_numpy(got)) == est.weighted_mean_and_stderr(
        values.numpy(), got
    )


# --------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------
_LOG_W_CONSUMERS = {
    "normalized_weights": lambda lw: est.normalized_weights(lw),
    "kish_ess": lambda lw: est.kish_ess(lw),
    "weighted_mean": lambda lw: est.weighted_mean_and_stderr(np.zeros(lw.shape[0]), lw),
    "histogram": lambda lw: est.weighted_histogram(np.zeros(lw.shape[0]), lw, [-1.0, 1.0]),
    "log_partition_function": lambda lw: est.log_partition_function(lw),
    "imh": lambda lw: est.independence_metropolis_hastings(lw, np.random.default_rng(0)),
}


@pytest.mark.parametrize("consumer", sorted(_LOG_W_CONSUMERS))
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_nan_or_plus_inf_log_weight_is_an_error(consumer, bad):
    log_w = np.array([0.0, -1.0, bad, 0.5])
    with pytest.raises(ValueError, match="log_w"):
        _LOG_W_CONSUMERS[consumer](log_w)


@pytest.mark.parametrize("consumer", sorted(_LOG_W_CONSUMERS))
def test_all_zero_weights_and_wrong_shape_are_errors(consumer):
    with pytest.raises(ValueError, match="log_w"):
        _LOG_W_CONSUMERS[consumer](np.full(4, -math.inf))
    with pytest.raises(ValueError, match="log_w"):
        _LOG_W_CONSUMERS[consumer](np.zeros((4, 1)))


def test_minus_inf_log_weight_means_zero_weight():
    log_w = np.array([0.0, -math.inf, math.log(3.0)])
    np.testing.assert_allclose(est.normalized_weights(log_w), [0.25, 0.0, 0.75])
    mean, se = est.weighted_mean_and_stderr([1.0, 1e6, 5.0], log_w)
    assert mean == pytest.approx(4.0)
    assert se == pytest.approx(math.sqrt(0.25**2 * 9 + 0.75**2 * 1))


def test_argument_specific_errors():
    with pytest.raises(ValueError, match="values"):
        est.weighted_mean_and_stderr(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match="values"):
        est.weighted_mean_and_stderr([0.0, math.nan], np.zeros(2))
    with pytest.raises(ValueError, match="energy"):
        est.log_weights_likelihood([0.0, math.nan], [-1.0, -1.0], 1.0)
    with pytest.raises(ValueError, match="log_q"):
        est.log_weights_likelihood([0.0, 1.0], [-1.0, -1.0, -1.0], 1.0)
    with pytest.raises(ValueError, match="log_q"):  # -log q passed by mistake
        est.log_weights_likelihood([0.0, 1.0], [1.0, 2.0], 1.0)
    with pytest.raises(ValueError, match="bias_energy"):
        est.log_weights_biased_target([0.0, 1.0], [0.0], [-1.0, -1.0], 1.0)
    with pytest.raises(ValueError, match="beta"):
        est.log_weights_bias([0.0], -1.0)
    with pytest.raises(ValueError, match="p and q"):
        est.js_divergence([0.5, 0.5], [0.2, 0.3, 0.5])
    with pytest.raises(ValueError, match="p has negative"):
        est.js_divergence([-0.5, 1.5], [0.5, 0.5])
    with pytest.raises(ValueError, match="outside the bin edges"):
        est.weighted_histogram([0.0, 1.5], np.zeros(2), [0.0, 0.5, 1.0])
    with pytest.raises(ValueError, match="values"):
        est.weighted_histogram([0.0, math.nan], np.zeros(2), [0.0, 0.5, 1.0])
    with pytest.raises(ValueError, match="bin_edges"):
        est.weighted_histogram([0.0, 0.2], np.zeros(2), [0.0, 1.0, 0.5])
    with pytest.raises(ValueError, match="bin_edges"):
        est.weighted_histogram(np.zeros((2, 2)), np.zeros(2), [[0.0, 1.0]])
    with pytest.raises(ValueError, match="generator"):
        est.independence_metropolis_hastings(np.zeros(3), 0)
    with pytest.raises(ValueError, match="n_steps"):
        est.independence_metropolis_hastings(np.zeros(3), np.random.default_rng(0), n_steps=4)
    with pytest.raises(ValueError, match="chains"):
        est.mcmc_mean_and_stderr([[0.0, math.inf], [1.0, 2.0]])
    with pytest.raises(ValueError, match="spacing"):
        est.bin_edges_for_cv_grid(-1.0, 1.0, 0.3)


# --------------------------------------------------------------------------------------
# ESS
# --------------------------------------------------------------------------------------
def test_kish_ess_exact_values():
    assert est.kish_ess(np.zeros(50)) == pytest.approx(50.0, rel=1e-13)
    assert est.kish_ess(np.full(50, 700.0)) == pytest.approx(50.0, rel=1e-13)  # no overflow
    one = np.full(10, -math.inf)
    one[3] = 2.0
    assert est.kish_ess(one) == 1.0
    hand = np.log([1.0, 1.0, 2.0]) + 1000.0  # (1+1+2)^2 / (1+1+4) = 16/6
    assert est.kish_ess(hand) == pytest.approx(16.0 / 6.0, rel=1e-13)


# --------------------------------------------------------------------------------------
# SNIS mean and its delta-method error
# --------------------------------------------------------------------------------------
def test_weighted_mean_within_three_stderr_and_stderr_calibrated():
    """R = 400 independent importance-sampling experiments (n = 2000 each).

    The relative sd of the empirical sd over R repeats is 1/sqrt(2(R-1)) = 3.5%, so the
    ratio empirical sd / RMS delta-method SE must lie in [0.88, 1.12] (about 3.4 sigma)."""
    rng = np.random.default_rng(2024)
    exact = TARGET @ OBSERVABLE
    states, log_w = _draw_is(rng, 2000, size=400)
    results = np.array([est.weighted_mean_and_stderr(OBSERVABLE[s], lw) for s, lw in zip(states, log_w)])
    means, ses = results[:, 0], results[:, 1]
    assert abs(means[0] - exact) < 3 * ses[0]
    ratio = means.std(ddof=1) / math.sqrt(np.mean(ses**2))
    assert 0.88 < ratio < 1.12, ratio
    # the average of the 400 estimates is unbiased to within its own standard error
    assert abs(means.mean() - exact) < 3 * means.std(ddof=1) / math.sqrt(means.size)


def test_weighted_mean_columns_gaussian_target():
    """Proposal N(0, 2^2), target N(1, 1): E[x] = 1, E[x^2] = 2, column-wise (n, 2)."""
    rng = np.random.default_rng(7)
    x = rng.normal(0.0, 2.0, size=50_000)
    log_w = -0.5 * (x - 1.0) ** 2 + 0.5 * (x / 2.0) ** 2  # constants dropped
    values = np.stack([x, x**2], axis=1)
    mean, se = est.weighted_mean_and_stderr(values, log_w)
    assert mean.shape == se.shape == (2,)
    assert np.all(np.abs(mean - [1.0, 2.0]) < 3 * se)
    for column in range(2):
        assert (mean[column], se[column]) == pytest.approx(est.weighted_mean_and_stderr(values[:, column], log_w))


# --------------------------------------------------------------------------------------
# histograms, bins, JS divergence
# --------------------------------------------------------------------------------------
def test_weighted_histogram_hand_values():
    values = [0.1, 0.5, 0.9, 0.95]
    log_w = np.log([1.0, 2.0, 1.0, 4.0])
    prob, se = est.weighted_histogram(values, log_w, [0.0, 1 / 3, 2 / 3, 1.0])
    np.testing.assert_allclose(prob, [1 / 8, 1 / 4, 5 / 8], rtol=1e-14)
    np.testing.assert_allclose(se**2, [35 / 2048, 27 / 512, 139 / 2048], rtol=1e-12)


def test_histogram_bin_convention_left_closed_last_closed():
    prob, _ = est.weighted_histogram([0.0, 0.5, 1.0, 1.0 + 1e-12], np.zeros(4), [0.0, 0.5, 1.0])
    np.testing.assert_allclose(prob, [0.25, 0.75])  # 0.5 goes up; 1.0 (+round-off) in the last bin


def test_weighted_histogram_2d_matches_numpy():
    rng = np.random.default_rng(3)
    values = rng.uniform(-1, 1, size=(500, 2))
    log_w = rng.normal(size=500)
    edges = [np.linspace(-1, 1, 5), np.array([-1.0, -0.2, 0.3, 1.0])]
    prob, se = est.weighted_histogram(values, log_w, edges)
    want, _, _ = np.histogram2d(values[:, 0], values[:, 1], bins=edges, weights=est.normalized_weights(log_w))
    np.testing.assert_allclose(prob, want, atol=1e-14)
    assert se.shape == (4, 3)
    # the (n, 1) form with a 1-D edge array is the 1-D histogram
    one_d, _ = est.weighted_histogram(values[:, :1], log_w, edges[0])
    np.testing.assert_allclose(one_d, want.sum(axis=1), atol=1e-14)


def test_weighted_histogram_importance_sampling_within_three_stderr():
    rng = np.random.default_rng(11)
    states, log_w = _draw_is(rng, 30_000)
    edges = est.bin_edges_for_discrete(0.0, 1.0, 6)
    prob, se = est.weighted_histogram(states.astype(float), log_w, edges)
    assert np.all(np.abs(prob - TARGET) < 3 * se)


def test_discrete_bin_edges_put_each_value_in_its_own_bin():
    n_sites = 16  # Ising L = 4: m in {-1, -1 + 2/16, ..., 1}
    m_values = np.arange(n_sites + 1) * (2.0 / n_sites) - 1.0
    edges = est.bin_edges_for_discrete(-1.0, 2.0 / n_sites, n_sites + 1)
    assert np.all(np.searchsorted(edges, m_values) - 1 == np.arange(n_sites + 1))
    np.testing.assert_allclose(0.5 * (edges[1:] + edges[:-1]), m_values, atol=1e-14)
    # a 2-D CV grid (Potts q = 3 projection, D = 16): both dimensions consistent
    grid = est.bin_edges_for_cv_grid((-0.5, -math.sqrt(3) / 2), (1.0, math.sqrt(3) / 2), (3 / 32, math.sqrt(3) / 32))
    assert [e.size - 1 for e in grid] == [17, 33]


def test_js_divergence_exact_values():
    assert est.js_divergence([0.2, 0.3, 0.5], [0.2, 0.3, 0.5]) == 0.0
    assert est.js_divergence([2.0, 4.0], [1.0, 2.0]) == pytest.approx(0.0, abs=1e-15)  # normalised
    assert est.js_divergence([1.0, 0.0, 0.0], [0.0, 0.3, 0.7]) == pytest.approx(math.log(2.0), rel=1e-14)
    # M = (0.75, 0.25): KL(p||M) = ln(4/3)/2, KL(q||M) = ln(4/3), JS = 3/4 ln(4/3)
    assert est.js_divergence([0.5, 0.5], [1.0, 0.0]) == pytest.approx(0.75 * math.log(4 / 3), rel=1e-14)
    assert est.js_divergence([1.0, 0.0], [0.5, 0.5]) == pytest.approx(0.75 * math.log(4 / 3), rel=1e-14)
    two_d = est.js_divergence([[0.5, 0.0], [0.5, 0.0]], [[1.0, 0.0], [0.0, 0.0]])
    assert two_d == pytest.approx(0.75 * math.log(4 / 3), rel=1e-14)


# --------------------------------------------------------------------------------------
# free energies, partition function
# --------------------------------------------------------------------------------------
def test_fes_from_samples_matches_minus_log_p():
    """Double well F(s) = 6 (s^2 - 0.6)^2 on s = -1, -0.9, ..., 1 sampled by IS from a
    uniform proposal; an extra bin at s = 1.1 is never reached and must be NaN."""
    rng = np.random.default_rng(5)
    s_values = -1.0 + 0.1 * np.arange(21)
    exact_f = 6.0 * (s_values**2 - 0.6) ** 2
    exact_p = np.exp(-exact_f) / np.sum(np.exp(-exact_f))
    k = rng.integers(0, 21, size=40_000)
    log_w = -exact_f[k] - math.log(1 / 21)
    edges = est.bin_edges_for_discrete(-1.0, 0.1, 22)
    free, se = est.fes_from_samples(s_values[k], log_w, edges)
    assert free.shape == se.shape == (22,)
    assert np.isnan(free[-1]) and np.isnan(se[-1])
    assert np.nanmin(free) == 0.0
    prob, _ = est.weighted_histogram(s_values[k], log_w, edges)
    minus_log_p = free[:-1] - math.log(prob.max())  # undo the gauge: -ln P_hat
    assert np.all(np.abs(minus_log_p - (-np.log(exact_p))) < 3 * se[:-1])
    # and the gauged surface itself is within a few (combined) errors of the exact one
    assert np.all(np.abs(free[:-1] - (exact_f - exact_f.min())) < 0.2)


def test_fes_rmse_hand_values():
    free = [0.0, 1.0, 2.0, math.nan]
    reference = [1.0, 2.0, 3.0, 5.0]
    assert est.fes_rmse(free, reference, align="mean") == pytest.approx((0.0, 0.75))
    assert est.fes_rmse(free, reference, align="min") == pytest.approx((1.0, 0.75))
    assert est.fes_rmse([0.0, 2.0, 7.0], [0.0, 1.0, math.nan], align="min") == pytest.approx(
        (math.sqrt(0.5), 1.0)
    )


def test_log_partition_function_known_normaliser_and_calibration():
    """Discrete target with Z = 37.5: estimate within 3 SE; over R = 400 repeats the SE
    matches the spread of ln Z_hat (tolerance as in the mean test)."""
    rng = np.random.default_rng(99)
    _, log_w = _draw_is(rng, 3000, size=400)
    results = np.array([est.log_partition_function(lw) for lw in log_w])
    estimates, ses = results[:, 0], results[:, 1]
    assert abs(estimates[0] - math.log(TARGET_Z)) < 3 * ses[0]
    ratio = estimates.std(ddof=1) / math.sqrt(np.mean(ses**2))
    assert 0.88 < ratio < 1.12, ratio
    ln_z, se = est.log_partition_function(np.full(10, 2.5))
    assert (ln_z, se) == (pytest.approx(2.5, abs=1e-14), 0.0)


def test_log_partition_function_gaussian():
    """p~(x) = exp(-x^2/2), Z = sqrt(2 pi), proposal N(0.5, 1.5^2) with exact density."""
    rng = np.random.default_rng(8)
    x = rng.normal(0.5, 1.5, size=100_000)
    log_q = -0.5 * ((x - 0.5) / 1.5) ** 2 - math.log(1.5 * math.sqrt(2 * math.pi))
    ln_z, se = est.log_partition_function(-0.5 * x**2 - log_q)
    assert abs(ln_z - 0.5 * math.log(2 * math.pi)) < 3 * se


# --------------------------------------------------------------------------------------
# independence Metropolis-Hastings
# --------------------------------------------------------------------------------------
def test_imh_equal_weights_accepts_everything():
    visited, rate = est.independence_metropolis_hastings(np.full(20, -3.0), np.random.default_rng(0))
    assert rate == 1.0
    np.testing.assert_array_equal(visited, np.arange(20))
    assert visited.dtype == np.int64
    visited, rate = est.independence_metropolis_hastings(np.zeros(6), np.random.default_rng(0), n_steps=5, initial=3)
    np.testing.assert_array_equal(visited, [3, 0, 1, 2, 4])


def test_imh_shuffled_over_walker_blocks_reproduces_the_target():
    """Samples pooled in blocks from two proposals (walkers), each weighted by its own
    walker's density: proposed in a random order, the chain has the target as stationary
    distribution (draws of (walker, x) from the walkers' mixture, ratio π/q_walker), checked
    per state within 3 autocorrelation-aware SEs over 32 chains."""
    target = np.array([0.1, 0.2, 0.3, 0.4])
    walkers = [np.array([0.45, 0.45, 0.05, 0.05]), np.array([0.05, 0.05, 0.45, 0.45])]
    rng = np.random.default_rng(27)
    paths = []
    for _ in range(32):
        blocks = [rng.choice(4, size=2000, p=q) for q in walkers]
        states = np.concatenate(blocks)
        log_w = np.concatenate([np.log(target[b] / q[b]) for b, q in zip(blocks, walkers)])
        visited, _ = est.independence_metropolis_hastings(log_w, rng, shuffle=True)
        paths.append(states[visited][100:])
    paths = np.stack(paths, axis=1)
    for state in range(target.size):
        freq, se = est.mcmc_mean_and_stderr((paths == state).astype(float))
        assert abs(freq - target[state]) < 3 * se, (state, freq, se)


def test_imh_zero_weights():
    log_w = np.array([-math.inf, 0.0, -math.inf, 0.3, -math.inf, -0.2])
    visited, _ = est.independence_metropolis_hastings(log_w, np.random.default_rng(1))
    assert visited[0] == 0 and visited[1] == 1  # a zero-weight state accepts any proposal
    assert not np.isin(visited[1:], [0, 2, 4]).any()  # zero-weight proposals are never accepted


def test_imh_reproduces_discrete_target_and_acceptance_rate():
    """64 independent chains of 4000 steps (first 100 dropped) on the 6-state target.

    Visit frequencies are compared with TARGET within 3 autocorrelation-aware SEs; the mean
    acceptance rate with the exact stationary value sum_xy p(x) q(y) min(1, w(y)/w(x)),
    within 3 SEs of the 64 independent chain rates."""
    rng = np.random.default_rng(314)
    n_chains, n_steps, burn_in = 64, 4000, 100
    paths, rates = [], []
    for _ in range(n_chains):
        states, log_w = _draw_is(rng, n_steps)
        visited, rate = est.independence_metropolis_hastings(log_w, rng)
        paths.append(states[visited][burn_in:])
        rates.append(rate)
    paths = np.stack(paths, axis=1)  # (n_steps - burn_in, n_chains)
    for state in range(PROPOSAL.size):
        freq, se = est.mcmc_mean_and_stderr((paths == state).astype(float))
        assert abs(freq - TARGET[state]) < 3 * se, (state, freq, se)
    ratio = TARGET / PROPOSAL
    exact_rate = np.sum(TARGET[:, None] * PROPOSAL[None, :] * np.minimum(1.0, ratio[None, :] / ratio[:, None]))
    rates = np.array(rates)
    assert abs(rates.mean() - exact_rate) < 3 * rates.std(ddof=1) / math.sqrt(n_chains)


# --------------------------------------------------------------------------------------
# MCMC error analysis
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("rho", [0.0, 0.5, 0.9])
def test_integrated_autocorrelation_time_ar1(rho):
    """tau_int = (1 + rho)/(1 - rho); 8 chains of 2e5 steps give a relative error of about
    sqrt(2 (2W + 1) / 1.6e6) <= 1.5% (Sokal), so 10% is a loose bound."""
    rng = np.random.default_rng(int(rho * 10) + 1)
    chains = _ar1(rng, 200_000, 8, rho)
    tau = est.integrated_autocorrelation_time(chains)
    assert tau == pytest.approx((1 + rho) / (1 - rho), rel=0.1)
    single = est.integrated_autocorrelation_time(chains[:, 0])
    assert single == pytest.approx(est.integrated_autocorrelation_time(chains[:, :1]))


def test_mcmc_mean_and_stderr_calibrated_on_ar1():
    """400 repeats of 4 AR(1) chains (rho = 0.8, tau = 9) of 5000 steps each.

    The exact variance of the grand mean is known. Each stderr has ~5% relative noise, so
    the RMS over 400 repeats must match the exact value to within 5%; the spread of the
    400 means matches it within 3.4/sqrt(2*399) ~ 12%."""
    rng = np.random.default_rng(17)
    rho, n_steps, n_chains, repeats = 0.8, 5000, 4, 400
    exact_se = math.sqrt(_ar1_var_of_mean(n_steps, rho) / n_chains)
    means, ses = [], []
    for _ in range(repeats):
        mean, se = est.mcmc_mean_and_stderr(_ar1(rng, n_steps, n_chains, rho))
        means.append(mean)
        ses.append(se)
    assert math.sqrt(np.mean(np.square(ses))) / exact_se == pytest.approx(1.0, abs=0.05)
    assert np.std(means, ddof=1) / exact_se == pytest.approx(1.0, abs=0.12)


def test_mcmc_stderr_is_not_fooled_by_stuck_chains():
    """Chains stuck at +1 or -1 (tiny noise): the error must be the between-chain one,
    sqrt(var/n_chains), not the naive i.i.d. value sqrt(var/(n_steps n_chains))."""
    rng = np.random.default_rng(4)
    levels = np.array([1.0, 1.0, 1.0, -1.0, 1.0, -1.0, 1.0, 1.0])
    chains = levels[None, :] + 0.01 * rng.standard_normal((2000, 8))
    mean, se = est.mcmc_mean_and_stderr(chains)
    assert mean == pytest.approx(levels.mean(), abs=1e-3)
    assert se == pytest.approx(math.sqrt(chains.var() / 8), rel=0.05)
    assert est.mcmc_mean_and_stderr(np.ones((10, 3))) == (1.0, 0.0)
    assert math.isnan(est.integrated_autocorrelation_time(np.ones(10)))


def test_chain_weighted_mean_reduces_to_mcmc_mean_for_equal_weights():
    rng = np.random.default_rng(5)
    chains = rng.normal(size=(500, 4)).cumsum(axis=0) * 0.01 + rng.normal(size=(500, 4))
    mean, stderr = est.chain_weighted_mean_and_stderr(chains, np.zeros_like(chains))
    ref_mean, ref_stderr = est.mcmc_mean_and_stderr(chains)
    assert mean == pytest.approx(ref_mean, abs=1e-12)
    assert stderr == pytest.approx(ref_stderr, rel=1e-9)


def test_chain_weighted_mean_recovers_target_from_biased_ar1_chains():
    # AR(1) chains of a standard normal proposal; reweighting by w ∝ exp(x) targets N(1, 1).
    rng = np.random.default_rng(11)
    rho, n_steps, n_chains = 0.7, 20000, 8
    x = np.empty((n_steps, n_chains))
    x[0] = rng.normal(size=n_chains)
    noise = rng.normal(size=(n_steps, n_chains)) * np.sqrt(1 - rho ** 2)
    for t in range(1, n_steps):
        x[t] = rho * x[t - 1] + noise[t]
    mean, stderr = est.chain_weighted_mean_and_stderr(x, x)
    assert abs(mean - 1.0) < 3 * stderr
    assert stderr < 0.05


def test_js_sampling_floor_matches_the_small_noise_limit():
    """For n draws on K equally likely bins E[JS] → (K − 1)/(8 n) (second-order expansion of
    both KL terms; multinomial variances p(1 − p)/n).  400 draws: the mean has a relative
    standard error of √(2/(K−1))/√400 ≈ 2.4 % for K = 10."""
    k, n = 10, 5000
    floor = est.js_sampling_floor(np.ones(k), n, draws=400, seed=1)
    expected = (k - 1) / (8 * n)
    assert floor == pytest.approx(expected, rel=3 * 0.024 + 0.01)
    assert est.js_sampling_floor(np.ones(k), 4 * n, draws=400, seed=1) == pytest.approx(expected / 4, rel=0.1)


def test_js_sampling_floor_rejects_an_empty_sample():
    with pytest.raises(ValueError, match="n_effective"):
        est.js_sampling_floor([0.5, 0.5], 0.0)


def test_every_registered_weighting_takes_its_declared_inputs_and_is_exact_where_it_should_be():
    """WEIGHTINGS factories take exactly the inputs their ``inputs`` trait names (in order), and
    on exact inputs they give the documented weights: likelihood weights are uniform when
    q = π (log q = −βE − ln Z), bias weights are βV."""
    import inspect

    from pipeline.outputs import ESTIMATORS
    from pipeline.registry import WEIGHTINGS

    rng = np.random.default_rng(4)
    energy, bias_energy, beta = rng.normal(size=50), rng.normal(size=50), 0.7
    log_pi = -beta * energy - np.logaddexp.reduce(-beta * energy)
    inputs = {"energy": energy, "bias_energy": bias_energy, "log_q": log_pi, "beta": beta}
    expected = {"likelihood": lambda w: np.allclose(w - w[0], 0.0, atol=1e-12),
                "bias": lambda w: np.allclose(w, beta * bias_energy, atol=1e-12)}
    assert set(WEIGHTINGS) == set(expected) and ESTIMATORS[:len(WEIGHTINGS)] == tuple(WEIGHTINGS)
    for name, entry in WEIGHTINGS.items():
        factory, wanted = entry.load(), entry.traits["inputs"]
        assert tuple(inspect.signature(factory).parameters) == wanted, name
        log_w = factory(*(inputs[key] for key in wanted))
        assert log_w.dtype == np.float64 and log_w.shape == (50,) and expected[name](log_w), name


def test_split_rhat_and_chain_diagnostics_of_known_chains():
    """Independent N(0,1) draws: R̂ ≈ 1, ESS_f ≈ n, τ_int ≈ 1; an AR(1) chain with ρ = 0.9 has
    τ_int = (1 + ρ)/(1 − ρ) = 19; chains stuck at different means give R̂ ≫ 1."""
    rng = np.random.default_rng(0)
    iid = rng.standard_normal((4000, 8))
    figures = est.chain_diagnostics(iid, np.zeros(iid.shape))
    assert abs(est.split_rhat(iid) - 1.0) < 0.01
    assert abs(figures["ess"] / iid.size - 1.0) < 0.1 and abs(figures["tau_int"] - 1.0) < 0.1
    ar = lfilter([1.0], [1.0, -0.9], rng.standard_normal((40000, 4)), axis=0)   # x_t = 0.9 x_{t-1} + ε_t
    assert abs(est.chain_diagnostics(ar, np.zeros(ar.shape))["tau_int"] - 19.0) < 3.0
    stuck = rng.standard_normal((1000, 4)) + np.array([0.0, 0.0, 3.0, 3.0])
    assert est.split_rhat(stuck) > 1.5
    assert np.isnan(est.split_rhat(np.ones((100, 3))))
