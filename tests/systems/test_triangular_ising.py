"""Triangular-lattice Ising model: geometry and energies against pure-Python loops over
explicit neighbour pairs, exact enumeration (L = 4, 2^16 states) against Swendsen–Wang near
β_c = ln 3 / 4, and a MetaDNS run through the campaign runner reweighted to the exact ⟨E⟩/N."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

from pipeline.config import ConfigError, config_from_dict
from systems.exact import exact_ensemble
from systems.reference_samplers import swendsen_wang
from systems.registry import SYSTEMS, make_system
from systems.triangular_ising import TriangularIsingModel
from tests.pipeline.test_method_acceptance import estimate, run_config, within_3_sigma

BETA = 0.2  # high-temperature side, near β_c J = ln 3 / 4 ≈ 0.2747
OFFSETS = ((1, 0), (-1, 0), (0, 1), (0, -1), (1, -1), (-1, 1))  # the six neighbours in (i, j)


def neighbour_sets(L: int) -> list[set[int]]:
    """Neighbours of each site i*L + j, written out from the six offsets."""
    return [{((i + di) % L) * L + (j + dj) % L for di, dj in OFFSETS} for i in range(L) for j in range(L)]


def brute_force(config: list[int], L: int, J: float, h: float) -> tuple[float, float, float]:
    """(E, m, C(1)) of one configuration, double loop over sites and their six neighbours
    (each bond met twice, hence the halves)."""
    s = [2 * x - 1 for x in config]
    pair_sum = 0.0
    for site, neighbours in enumerate(neighbour_sets(L)):
        for other in neighbours:
            pair_sum += 0.5 * s[site] * s[other]
    return -J * pair_sum - h * sum(s), sum(s) / (L * L), pair_sum / (3 * L * L)


def random_configurations(n: int, n_sites: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    configs = [[rng.randint(0, 1) for _ in range(n_sites)] for _ in range(n)]
    return configs + [[1] * n_sites, [0] * n_sites]


# ------------------------------------------------------------------------------- geometry
@pytest.mark.parametrize("L", [3, 4, 5])
def test_lattice_has_six_distinct_neighbours_and_three_bonds_per_site(L):
    model = TriangularIsingModel(L)
    expected = neighbour_sets(L)
    assert model.neighbours.shape == (L * L, 6) and model.neighbours.dtype == torch.int64
    for site, row in enumerate(model.neighbours.tolist()):
        assert len(set(row)) == 6 and site not in row
        assert set(row) == expected[site]
    assert model.bonds.shape == (3 * L * L, 2)
    pairs = {frozenset(bond) for bond in model.bonds.tolist()}
    assert len(pairs) == 3 * L * L  # each bond once, none a self-loop
    assert pairs == {frozenset((site, other)) for site in range(L * L) for other in expected[site]}
    assert model.coordinates.tolist() == [[i, j] for i in range(L) for j in range(L)]


def test_l_below_three_is_refused_by_the_model_and_the_configuration():
    with pytest.raises(ValueError, match=">= 3"):
        TriangularIsingModel(2)
    with pytest.raises(ConfigError, match="system.L"):
        config_from_dict({"name": "x", "methods": ["sw"], "system": {"name": "triangular_ising", "L": 2,
                                                                        "beta": BETA}}, "x")
    with pytest.raises(ValueError, match="finite"):
        TriangularIsingModel(3, J=float("nan"))


# ------------------------------------------------------------------------------- energies
@pytest.mark.parametrize("L,J,h", [(3, 1.0, 0.3), (4, 1.0, -0.45), (4, -0.7, 0.2)])
def test_energy_cv_and_correlation_match_brute_force(L, J, h):
    model = make_system("triangular_ising", L=L, J=J, field=h)
    configs = random_configurations(20, L * L, seed=L)
    x = torch.tensor(configs, dtype=torch.int8)
    expected = np.array([brute_force(c, L, J, h) for c in configs])
    energy, cv, observables = model.energy(x), model.cv(x), model.observables(x)
    assert energy.dtype == torch.float64 and cv.shape == (len(configs), 1)
    np.testing.assert_allclose(energy.numpy(), expected[:, 0], rtol=0, atol=1e-12)
    np.testing.assert_allclose(cv[:, 0].numpy(), expected[:, 1], rtol=0, atol=1e-15)
    np.testing.assert_allclose(observables["energy_per_site"].numpy(), expected[:, 0] / (L * L), atol=1e-12)
    np.testing.assert_allclose(observables["correlation_r1"].numpy(), expected[:, 2], rtol=0, atol=1e-12)
    assert set(observables) == set(model.observable_units)
    # all up, in the field's direction or against it: -3J per site from the bonds
    assert energy[-2].item() == pytest.approx(L * L * (-3 * J - h))
    assert energy[-1].item() == pytest.approx(L * L * (-3 * J + h))


def test_energy_change_equals_the_energy_difference():
    model = TriangularIsingModel(4, J=0.8, field=0.3)
    generator = torch.Generator().manual_seed(0)
    x = torch.randint(0, 2, (64, 16), generator=generator)
    sites = torch.randint(0, 16, (64,), generator=generator)
    new_states = torch.randint(0, 2, (64,), generator=generator)
    flipped = x.clone()
    flipped[torch.arange(64), sites] = new_states
    torch.testing.assert_close(model.energy_change(x, sites, new_states), model.energy(flipped) - model.energy(x))


def test_longer_correlations_follow_the_three_bond_directions():
    L, r = 4, 2
    model = TriangularIsingModel(L)
    configs = random_configurations(5, L * L, seed=9)
    expected = []
    for config in configs:
        s = [2 * v - 1 for v in config]
        total = sum(s[i * L + j] * s[((i + r * di) % L) * L + (j + r * dj) % L]
                    for i in range(L) for j in range(L) for di, dj in ((1, 0), (0, 1), (1, -1)))
        expected.append(total / (3 * L * L))
    got = model.observables(torch.tensor(configs))["correlation_r2"]
    np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("J,h", [(1.0, 0.0), (1.0, 0.3), (-0.7, 0.0)])
def test_energy_bins_hold_every_attainable_energy(J, h):
    model = TriangularIsingModel(4, J=J, field=h)
    edges = model.energy_per_site_bin_edges()
    e_site = exact_ensemble(model, 0.0).energies.numpy() / model.n_sites
    assert np.all(np.diff(edges) > 0)
    assert edges[0] < e_site.min() and e_site.max() < edges[-1]
    if h == 0.0:  # one attainable value per bin, at the bin's centre
        centres = 0.5 * (edges[1:] + edges[:-1])
        assert np.abs(np.unique(e_site)[:, None] - centres[None, :]).min(axis=1).max() < 1e-12


# ------------------------------------------------------------------ exact vs reference chain
def test_exact_enumeration_agrees_with_swendsen_wang_near_the_critical_point():
    assert SYSTEMS["triangular_ising"].traits["cluster_moves"]
    model = make_system("triangular_ising", L=4)
    exact = exact_ensemble(model, BETA)
    assert exact.energies.min().item() / model.n_sites == pytest.approx(-3.0)  # ground state -3J per site
    assert exact.expectation("correlation_r1") == pytest.approx(-exact.expectation("energy_per_site") / 3)

    chains = swendsen_wang(model, BETA, n_chains=64, n_sweeps=600, generator=np.random.default_rng(0))
    states = chains.states[100:].reshape(-1, model.n_sites)
    observables = model.observables(states)
    for name in ("energy_per_site", "abs_magnetisation"):
        per_chain = observables[name].reshape(-1, 64).mean(dim=0).numpy()  # independent chain means
        mean, stderr = per_chain.mean(), per_chain.std(ddof=1) / math.sqrt(per_chain.size)
        assert 0 < stderr < 0.01, (name, stderr)
        assert within_3_sigma(mean, stderr, exact.expectation(name)), (name, mean, stderr, exact.expectation(name))


# ------------------------------------------------------------------------------- MetaDNS
def test_metadns_reweights_to_the_exact_energy(tmp_path):
    config = {
        "name": "triangular_l4", "seed": 0, "methods": ["metadns", "sw"],
        "system": {"name": "triangular_ising", "L": 4, "beta": BETA},
        "sampler": {"denoiser": "lattice", "sites_per_step": 2, "hidden": 16, "layers": 2},
        "bias": {"gamma": 10, "sigma": 0.05, "height_per_cycle": 0.5},
        "training": {"outer_iterations": 40, "batch_size": 128, "inner_steps": 3, "maskings": 4,
                     "learning_rate": 3e-3, "threads": 1},
        "sampling": {"n_samples": 8000, "batch_size": 4000},
        "reference": {"chains": 16, "sweeps": 400, "burn_in": 40},
    }
    frames = run_config(tmp_path, config)
    exact = exact_ensemble(make_system("triangular_ising", L=4), BETA)

    # error bars small enough to mean something (exact ⟨E⟩/N ≈ -1.27, ⟨|m|⟩ ≈ 0.56, ln Z ≈ 12.59)
    for name, bound, truth in (("energy_per_site", 0.02, exact.expectation("energy_per_site")),
                               ("abs_magnetisation", 0.01, exact.expectation("abs_magnetisation")),
                               ("log_partition_function", 0.02, exact.log_Z)):
        value, stderr = estimate(frames["metadns"], "likelihood", name)
        assert 0 < stderr < bound, (name, stderr)
        assert within_3_sigma(value, stderr, truth), (name, value, stderr, truth)
    e_sw, e_sw_err = estimate(frames["sw"], "mcmc", "energy_per_site")
    assert within_3_sigma(e_sw, e_sw_err, exact.expectation("energy_per_site")), (e_sw, e_sw_err)
