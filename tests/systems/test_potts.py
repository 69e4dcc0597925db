"""PottsModel against brute-force loops over bonds on all 3^9 states of the L = 3 lattice."""

import math

import numpy as np
import pytest
import torch

from systems.potts import PottsModel


def all_states(n_sites, q):
    """All q^n configurations, built independently of systems.exact (base-q digits)."""
    index = np.arange(q**n_sites)[:, None]
    return ((index // q ** np.arange(n_sites)) % q).astype(np.int8)


def brute_force_energy(x, L, J):
    energy = np.zeros(x.shape[0])
    for r in range(L):
        for c in range(L):
            i = r * L + c
            right = r * L + (c + 1) % L
            down = ((r + 1) % L) * L + c
            energy -= J * ((x[:, i] == x[:, right]).astype(float) + (x[:, i] == x[:, down]).astype(float))
    return energy


@pytest.mark.parametrize("J", [1.0, -0.6])
def test_energy_matches_brute_force_on_all_states(J):
    x = all_states(9, 3)
    model = PottsModel(3, q=3, J=J)
    energy = model.energy(torch.from_numpy(x))
    assert energy.dtype == torch.float64
    np.testing.assert_allclose(energy.numpy(), brute_force_energy(x, 3, J), rtol=0, atol=1e-12)


def test_energy_q4_matches_brute_force_on_random_states():
    rng = np.random.default_rng(3)
    x = rng.integers(0, 4, size=(2000, 25)).astype(np.int8)
    model = PottsModel(5, q=4, J=1.2)
    np.testing.assert_allclose(model.energy(torch.from_numpy(x)).numpy(), brute_force_energy(x, 5, 1.2), atol=1e-12)


def test_q3_cv_is_triangle_projection_of_concentrations():
    x = all_states(9, 3)
    model = PottsModel(3, q=3)
    cv = model.cv(torch.from_numpy(x)).numpy()
    c = np.stack([(x == k).mean(axis=1) for k in range(3)], axis=1)
    np.testing.assert_allclose(cv[:, 0], c[:, 0] - (c[:, 1] + c[:, 2]) / 2, atol=1e-14)
    np.testing.assert_allclose(cv[:, 1], math.sqrt(3) / 2 * (c[:, 1] - c[:, 2]), atol=1e-14)
    # pure states at the triangle corners
    pure = model.cv(torch.tensor([[0] * 9, [1] * 9, [2] * 9])).numpy()
    np.testing.assert_allclose(pure, [[1, 0], [-0.5, math.sqrt(3) / 2], [-0.5, -math.sqrt(3) / 2]], atol=1e-14)
    spec = model.cv_spec
    assert spec.names == ("p1", "p2")
    assert spec.grid_points == (10, 19)
    # all values lie on grid nodes; the ranges are attained
    index = spec.grid_index(cv)
    nodes = np.stack([spec.lower[d] + spec.spacing[d] * index[:, d] for d in range(2)], axis=1)
    np.testing.assert_allclose(nodes, cv, atol=1e-14)
    assert index[:, 0].min() == 0 and index[:, 0].max() == 9
    assert index[:, 1].min() == 0 and index[:, 1].max() == 18
    # equal counts give bit-identical CV values (so they group exactly)
    assert len(np.unique(cv, axis=0)) == len(np.unique(index, axis=0)) == 55  # (n0, n1, n2) compositions of 9


def test_other_q_uses_fraction_of_state_zero():
    model = PottsModel(4, q=4)
    assert model.cv_spec.names == ("c0",) and model.cv_spec.grid_points == (17,)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 4, size=(100, 16))
    np.testing.assert_allclose(model.cv(x)[:, 0].numpy(), (x == 0).mean(axis=1), atol=1e-14)


@pytest.mark.parametrize("q,L,J", [(3, 3, 1.0), (4, 4, -0.5), (2, 2, 1.0)])
def test_energy_change_equals_energy_difference(q, L, J):
    model = PottsModel(L, q=q, J=J)
    g = torch.Generator().manual_seed(5)
    x = torch.randint(0, q, (600, L * L), generator=g)
    sites = torch.randint(0, L * L, (600,), generator=g)
    new_states = torch.randint(0, q, (600,), generator=g)
    x_new = x.clone()
    x_new[torch.arange(600), sites] = new_states
    torch.testing.assert_close(model.energy_change(x, sites, new_states), model.energy(x_new) - model.energy(x),
                               rtol=0, atol=1e-12)


def test_observables_hand_values():
    model = PottsModel(3, q=3)
    x = torch.tensor([
        [0] * 9,                       # ordered
        [0, 1, 2] * 3,                 # equal concentrations
        [1, 1, 1, 1, 1, 1, 0, 0, 2],   # c1 = 2/3
    ])
    obs = model.observables(x)
    assert set(obs) == set(model.observable_units)
    np.testing.assert_allclose(obs["order_parameter"].numpy(), [1.0, 0.0, (3 * 6 / 9 - 1) / 2], atol=1e-14)
    np.testing.assert_allclose(obs["concentration_1"].numpy(), [0.0, 1 / 3, 6 / 9], atol=1e-14)
    total = sum(obs[f"concentration_{k}"] for k in range(3))
    np.testing.assert_allclose(total.numpy(), 1.0, atol=1e-14)
    np.testing.assert_allclose(obs["energy_per_site"].numpy(), model.energy(x).numpy() / 9, atol=1e-14)
    assert obs["energy_per_site"][0].item() == pytest.approx(-2.0)  # 18 satisfied bonds / 9 sites


@pytest.mark.parametrize("kwargs", [{"L": 3, "q": 1}, {"L": 3, "q": 2.5}, {"L": 3, "J": math.inf}])
def test_rejects_bad_parameters(kwargs):
    with pytest.raises(ValueError):
        PottsModel(**kwargs)


def test_rejects_tokens_out_of_range():
    with pytest.raises(ValueError, match="0..2"):
        PottsModel(3).energy(torch.full((1, 9), 3))


def test_energy_bins_centre_every_attainable_energy():
    L, q = 3, 3
    x = all_states(L * L, q)
    edges = PottsModel(L, q=q).energy_per_site_bin_edges()
    e_site = np.unique(brute_force_energy(x, L, 1.0)) / (L * L)
    centres = 0.5 * (edges[1:] + edges[:-1])
    assert edges[0] < e_site.min() and e_site.max() < edges[-1]
    assert np.abs(e_site[:, None] - centres[None, :]).min(axis=1).max() < 1e-12
