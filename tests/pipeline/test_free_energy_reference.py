"""The independent Cu–Au reference (mchammer canonical MC + thermodynamic integration in β)
against brute force over all 2^16 configurations of a 16-site cell, and its integration rule
against an analytic partition function."""

from __future__ import annotations

import numpy as np
import pytest
from ase.units import kB

from pipeline import free_energy_reference as fr
from systems.alloys.cluster_expansion import PAPER_CUAU_CE, ClusterExpansionBackend
from systems.alloys.fcc import FCCLattice


def test_ladder_holds_every_target_and_respects_the_spacing():
    betas = fr.ladder_betas([400.0, 1300.0, 800.0], 1.5)
    assert betas[0] == 0.0 and np.all(np.diff(betas) > 0) and np.diff(betas).max() <= 1.5 + 1e-12
    for t in (400.0, 800.0, 1300.0):
        assert np.min(np.abs(betas - 1 / (kB * t))) < 1e-12
    with pytest.raises(ValueError, match="beta_spacing"):
        fr.ladder_betas([400.0], 0.0)


def test_integration_against_a_two_level_system():
    """One site, levels 0 and ε: ln Z = ln(1 + e^{−βε}); the rule's error lies within 3× its
    own discretisation estimate, and the SE follows the trapezoid weights."""
    eps = 0.3
    betas = fr.ladder_betas([300.0], 2.0)
    mean_energy = eps / (1 + np.exp(betas * eps))
    log_z, se, discretisation = fr.log_partition_function(1, 0, betas, mean_energy, np.zeros_like(betas))
    exact = np.log1p(np.exp(-betas * eps)) - np.log(2.0)    # relative to Z(0) = 2 states, ln C(1,0) = 0
    error = np.abs(log_z - exact)
    assert error.max() > 1e-6 and np.all(error <= 3 * discretisation + 1e-12) and np.all(se == 0)
    _, se, _ = fr.log_partition_function(1, 0, [0.0, 1.0, 3.0], [0, 0, 0], [0.1, 0.2, 0.3])
    np.testing.assert_allclose(se, [0.0, np.hypot(0.05, 0.1), np.sqrt(0.05 ** 2 + 0.3 ** 2 + 0.3 ** 2)])


@pytest.mark.slow
def test_sixteen_site_cell_against_brute_force():
    """Cooling ladders at every composition reproduce ln Z_n, F(x_Au) and ⟨x_Au⟩ of exact
    enumeration within 3 standard errors at 600 K (ordered CuAu dominates) and 1300 K."""
    supercell = FCCLattice((2, 2, 1), "conventional", 3.8).reference_atoms("Cu")
    backend = ClusterExpansionBackend(PAPER_CUAU_CE, supercell)
    temperatures = [600.0, 1300.0]
    exact = fr.exact_composition_distribution(backend, temperatures)
    betas = fr.ladder_betas(temperatures, 2.0)
    rungs = [int(np.argmin(np.abs(betas - 1 / (kB * t)))) for t in temperatures]
    log_z, log_z_err = np.empty((17, len(betas))), np.empty((17, len(betas)))
    for n in range(17):
        ladder = fr.canonical_ladder(PAPER_CUAU_CE, supercell, n, betas, seed=n, energy_tolerance=0.005)
        z, se, discretisation = fr.log_partition_function(16, n, ladder.betas, ladder.mean_energy, ladder.stderr)
        log_z[n], log_z_err[n] = z, np.hypot(se, discretisation)
    for i, k in enumerate(rungs):
        deviation = np.abs(log_z[:, k] - exact["log_z"][i])
        assert np.all(deviation <= 3 * log_z_err[:, k] + 1e-6), (temperatures[i], deviation, log_z_err[:, k])
        ours = fr.composition_distribution(16, log_z[:, k], log_z_err[:, k])
        truth = fr.composition_distribution(16, exact["log_z"][i], np.zeros(17))
        assert abs(ours["mean_fraction"] - truth["mean_fraction"]) <= 3 * ours["mean_fraction_err"]
        assert 0 < ours["mean_fraction_err"] < 0.01
