"""Exact enumeration and Kaufman's partition function against independent computations."""

import math

import numpy as np
import pytest
import torch
from scipy.special import logsumexp

from systems.exact import (
    MAX_ENUMERATED_STATES,
    enumerate_states,
    exact_ensemble,
    ising_log_partition_function,
)
from systems.ising import IsingModel
from systems.potts import PottsModel

BETA_C = math.log(1 + math.sqrt(2)) / 2  # 0.44068...


def transfer_matrix_log_z(L, K):
    """ln Z of the periodic L x L Ising model (h = 0) from the row-to-row transfer matrix."""
    rows = ((np.arange(2**L)[:, None] >> np.arange(L)) & 1) * 2.0 - 1.0  # (2^L, L) spins
    intra = (rows * np.roll(rows, -1, axis=1)).sum(axis=1)                # bonds inside a row
    inter = rows @ rows.T                                                 # vertical bonds
    log_t = K * (intra[:, None] / 2 + inter + intra[None, :] / 2)
    shift = log_t.max()
    eigenvalues = np.linalg.eigvalsh(np.exp(log_t - shift))
    return L * shift + logsumexp(L * np.log(np.abs(eigenvalues)), b=np.sign(eigenvalues) ** L)


def test_enumerate_states_lists_each_configuration_once_in_lexicographic_order():
    states = enumerate_states(5, 3)
    assert states.dtype == torch.int8 and states.shape == (243, 5)
    codes = (states.long() * 3 ** torch.arange(4, -1, -1)).sum(dim=1)
    assert torch.equal(codes, torch.arange(243))


@pytest.mark.parametrize("n_sites,n_states", [(23, 2), (12, 4), (14, 3)])
def test_enumerate_states_refuses_more_than_2_to_22(n_sites, n_states):
    assert n_states**n_sites > MAX_ENUMERATED_STATES
    with pytest.raises(ValueError, match="enumeration limit"):
        enumerate_states(n_sites, n_states)


def test_enumerate_states_rejects_bad_arguments():
    with pytest.raises(ValueError, match="n_states"):
        enumerate_states(3, 1)
    with pytest.raises(ValueError, match="n_sites"):
        enumerate_states(0, 2)


@pytest.mark.parametrize("system,beta", [(IsingModel(3, J=1.0, field=0.4), 0.7), (PottsModel(2, q=3, J=0.8), 1.3)])
def test_ensemble_matches_direct_boltzmann_sums(system, beta):
    ensemble = exact_ensemble(system, beta)
    n = system.n_states**system.n_sites
    assert ensemble.states.shape == (n, system.n_sites)
    energies = system.energy(ensemble.states).numpy()
    log_z = logsumexp(-beta * energies)
    assert ensemble.log_Z == pytest.approx(log_z, abs=1e-12)
    assert float(ensemble.probabilities.sum()) == pytest.approx(1.0, abs=1e-12)
    p = np.exp(-beta * energies - log_z)
    expectations = ensemble.expectations()
    assert expectations["energy"] == pytest.approx((p * energies).sum(), abs=1e-12)
    assert expectations["energy_per_site"] == pytest.approx((p * energies).sum() / system.n_sites, abs=1e-12)
    assert ensemble.expectation("energy_per_site") == pytest.approx(expectations["energy_per_site"], abs=1e-14)


def test_chunked_evaluation_equals_single_pass():
    system = IsingModel(3, J=1.0, field=0.2)
    whole = exact_ensemble(system, 0.5)
    chunked = exact_ensemble(system, 0.5, chunk_size=37)
    torch.testing.assert_close(chunked.log_prob, whole.log_prob, rtol=0, atol=1e-13)
    assert chunked.expectations() == pytest.approx(whole.expectations(), abs=1e-12)


@pytest.mark.parametrize("L", [2, 3, 4])
@pytest.mark.parametrize("beta", [0.05, 0.3, 0.44, BETA_C, 0.45, 0.6, 1.0, 3.0])
def test_kaufman_matches_enumeration(L, beta):
    expected = exact_ensemble(IsingModel(L), beta).log_Z
    assert ising_log_partition_function(L, beta) == pytest.approx(expected, abs=1e-10)


@pytest.mark.parametrize("L", [5, 6, 8])
@pytest.mark.parametrize("beta", [0.2, 0.42, 0.46, 0.7])
def test_kaufman_matches_transfer_matrix(L, beta):
    assert ising_log_partition_function(L, beta) == pytest.approx(transfer_matrix_log_z(L, beta), abs=1e-9)


def test_kaufman_coupling_scaling_limits_and_antiferromagnet():
    assert ising_log_partition_function(4, 0.3, J=2.0) == pytest.approx(ising_log_partition_function(4, 0.6), abs=1e-12)
    assert ising_log_partition_function(6, 0.0) == pytest.approx(36 * math.log(2), abs=1e-12)
    # deep in the ordered phase only the two ground states (E = -2N J) count
    assert ising_log_partition_function(16, 50.0) == pytest.approx(2 * 256 * 50.0 + math.log(2), abs=1e-9)
    # bipartite lattice: Z(-K) = Z(K); odd L with J < 0 is frustrated
    assert ising_log_partition_function(4, 0.6, J=-1.0) == pytest.approx(exact_ensemble(IsingModel(4, J=-1.0), 0.6).log_Z,
                                                                       abs=1e-10)
    with pytest.raises(ValueError, match="odd L"):
        ising_log_partition_function(3, 0.6, J=-1.0)
    with pytest.raises(ValueError, match="beta"):
        ising_log_partition_function(4, -0.1)


def test_exact_mean_energy_is_minus_derivative_of_kaufman_log_z():
    beta, h = 0.6, 1e-5
    derivative = (ising_log_partition_function(4, beta + h) - ising_log_partition_function(4, beta - h)) / (2 * h)
    assert exact_ensemble(IsingModel(4), beta).expectations()["energy"] == pytest.approx(-derivative, abs=1e-6)


def test_cv_marginal_matches_weighted_histogram_and_bias_reweighting():
    system, beta = IsingModel(4), 0.6
    ensemble = exact_ensemble(system, beta)
    marginal = ensemble.cv_marginal()
    m = ensemble.cv[:, 0].numpy()
    p = ensemble.probabilities.numpy()
    expected_values = np.arange(-16, 17, 2) / 16
    np.testing.assert_allclose(marginal.values[:, 0], expected_values, atol=1e-14)
    expected = np.array([p[np.isclose(m, v)].sum() for v in expected_values])
    np.testing.assert_allclose(marginal.probabilities, expected, rtol=1e-12, atol=0)
    np.testing.assert_allclose(marginal.probabilities, marginal.probabilities[::-1], rtol=1e-12)  # h = 0 symmetry
    np.testing.assert_allclose(np.exp(marginal.log_probabilities), marginal.probabilities, rtol=1e-12)
    assert marginal.free_energy().min() == 0.0

    def bias(s):
        return 3.0 * s[:, 0] ** 2 - 0.5 * s[:, 0]

    biased = ensemble.cv_marginal(bias)
    reweighted = expected * np.exp(-beta * bias(expected_values[:, None]))
    np.testing.assert_allclose(biased.probabilities, reweighted / reweighted.sum(), rtol=1e-12)
    biased_ensemble = ensemble.biased(bias)
    torch.testing.assert_close(biased_ensemble.energies, ensemble.energies)
    assert biased_ensemble.log_Z == pytest.approx(
        logsumexp(-beta * (ensemble.energies.numpy() + bias(ensemble.cv.numpy()))), abs=1e-12)


def test_potts_cv_marginal_is_2d_and_permutation_symmetric():
    system = PottsModel(3, q=3)
    marginal = exact_ensemble(system, 1.0).cv_marginal()
    assert marginal.values.shape == (55, 2)
    assert marginal.probabilities.sum() == pytest.approx(1.0, abs=1e-12)
    # swapping states 1 and 2 mirrors p2; the marginal must be symmetric under it
    lookup = {tuple(np.round(v, 12)): pr for v, pr in zip(marginal.values, marginal.probabilities)}
    for (p1, p2), pr in lookup.items():
        assert lookup[(p1, round(-p2, 12) + 0.0)] == pytest.approx(pr, rel=1e-10)


def test_exact_ensemble_rejects_bad_inputs():
    with pytest.raises(ValueError, match="beta"):
        exact_ensemble(IsingModel(2), -1.0)
    with pytest.raises(ValueError, match="LatticeSystem"):
        exact_ensemble("ising", 1.0)
    with pytest.raises(ValueError, match="enumeration limit"):
        exact_ensemble(IsingModel(5), 1.0)
    with pytest.raises(ValueError, match="shape"):
        exact_ensemble(IsingModel(2), 1.0).cv_marginal(lambda s: np.zeros(3))
