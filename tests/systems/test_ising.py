"""IsingModel against brute-force loops over bonds on all states of small lattices."""

import numpy as np
import pytest
import torch

from systems.base import CVSpec
from systems.ising import IsingModel


def all_binary_states(n_sites):
    """All 2^n configurations, built independently of systems.exact (bit k of the index)."""
    index = np.arange(2**n_sites)[:, None]
    return ((index >> np.arange(n_sites)) & 1).astype(np.int8)


def brute_force_energy(x, L, J, h):
    """E = -J sum over right and down bonds s_i s_j - h sum s_i, double loop over the lattice."""
    s = 2.0 * x.astype(np.float64) - 1.0
    energy = np.zeros(x.shape[0])
    for r in range(L):
        for c in range(L):
            i = r * L + c
            right = r * L + (c + 1) % L
            down = ((r + 1) % L) * L + c
            energy -= J * s[:, i] * (s[:, right] + s[:, down])
            energy -= h * s[:, i]
    return energy


def brute_force_correlation(x, L, r):
    s = 2.0 * x.astype(np.float64) - 1.0
    total = np.zeros(x.shape[0])
    for row in range(L):
        for col in range(L):
            i = row * L + col
            total += s[:, i] * (s[:, row * L + (col + r) % L] + s[:, ((row + r) % L) * L + col])
    return total / (2 * L * L)


@pytest.mark.parametrize("L,J,h", [(4, 1.0, 0.0), (4, -0.7, 0.3), (3, 1.3, -0.5), (2, 1.0, 0.25)])
def test_energy_matches_brute_force_on_all_states(L, J, h):
    x = all_binary_states(L * L)
    model = IsingModel(L, J=J, field=h)
    energy = model.energy(torch.from_numpy(x))
    assert energy.dtype == torch.float64
    np.testing.assert_allclose(energy.numpy(), brute_force_energy(x, L, J, h), rtol=0, atol=1e-12)


def test_energy_hand_values():
    model = IsingModel(4, J=1.0, field=0.5)
    all_up = torch.ones(1, 16, dtype=torch.int64)
    checkerboard = torch.tensor([[(r + c) % 2 for r in range(4) for c in range(4)]])
    # all up: 32 satisfied bonds and 16 spins along the field
    assert model.energy(all_up).item() == pytest.approx(-32.0 - 8.0)
    # checkerboard: 32 broken bonds, zero magnetisation
    assert model.energy(checkerboard).item() == pytest.approx(32.0)


def test_cv_is_magnetisation_on_the_grid():
    L = 4
    x = all_binary_states(L * L)
    model = IsingModel(L)
    cv = model.cv(torch.from_numpy(x))
    assert cv.shape == (x.shape[0], 1) and cv.dtype == torch.float64
    expected = (2.0 * x - 1.0).mean(axis=1)
    np.testing.assert_allclose(cv[:, 0].numpy(), expected, atol=1e-14)
    spec = model.cv_spec
    assert spec == CVSpec(("m",), (-1.0,), (1.0,), (2.0 / 16,))
    assert spec.grid_points == (17,)
    # every attainable value sits on a grid node and every node is attained
    index = spec.grid_index(cv)
    np.testing.assert_allclose(spec.lower[0] + spec.spacing[0] * index[:, 0], cv[:, 0].numpy(), atol=1e-14)
    assert np.array_equal(np.unique(index), np.arange(17))


def test_grid_points_for_l16():
    assert IsingModel(16).cv_spec.grid_points == (257,)


@pytest.mark.parametrize("L,J,h", [(4, 1.0, 0.0), (5, -0.8, 0.4), (2, 1.0, 0.3)])
def test_energy_change_equals_energy_difference(L, J, h):
    model = IsingModel(L, J=J, field=h)
    g = torch.Generator().manual_seed(11)
    x = torch.randint(0, 2, (500, L * L), generator=g)
    sites = torch.randint(0, L * L, (500,), generator=g)
    new_states = torch.randint(0, 2, (500,), generator=g)  # about half leave the site unchanged
    x_new = x.clone()
    x_new[torch.arange(500), sites] = new_states
    delta = model.energy_change(x, sites, new_states)
    torch.testing.assert_close(delta, model.energy(x_new) - model.energy(x), rtol=0, atol=1e-12)
    unchanged = x[torch.arange(500), sites] == new_states
    assert unchanged.any() and torch.all(delta[unchanged] == 0)


def test_observables_against_brute_force():
    L = 4
    x = all_binary_states(L * L)
    model = IsingModel(L)
    obs = model.observables(torch.from_numpy(x))
    assert set(obs) == set(model.observable_units) == {
        "energy_per_site", "magnetisation", "abs_magnetisation", "positive_magnetisation",
        "correlation_r1", "correlation_r2"}
    energy = brute_force_energy(x, L, 1.0, 0.0)
    m = (2.0 * x - 1.0).mean(axis=1)
    np.testing.assert_allclose(obs["energy_per_site"].numpy(), energy / 16, atol=1e-12)
    np.testing.assert_allclose(obs["magnetisation"].numpy(), m, atol=1e-14)
    np.testing.assert_allclose(obs["abs_magnetisation"].numpy(), np.abs(m), atol=1e-14)
    np.testing.assert_array_equal(obs["positive_magnetisation"].numpy(), np.where(m > 0, 1.0, np.where(m == 0, 0.5, 0.0)))
    for r in (1, 2):
        np.testing.assert_allclose(obs[f"correlation_r{r}"].numpy(), brute_force_correlation(x, L, r), atol=1e-14)
    # C(1) = -E / (2N) sample by sample for J = 1, h = 0
    np.testing.assert_allclose(obs["correlation_r1"].numpy(), -energy / (2 * 16), atol=1e-14)
    assert model.observable_units["energy_per_site"] == "J"


def test_correlation_distances_up_to_half_the_size():
    model = IsingModel(7)
    assert [k for k in model.observable_units if k.startswith("correlation")] == [
        "correlation_r1", "correlation_r2", "correlation_r3"]


def test_accepts_int8_and_numpy_and_gives_same_energy():
    model = IsingModel(3, J=0.9, field=0.2)
    x = all_binary_states(9)
    e_int8 = model.energy(torch.from_numpy(x))
    e_numpy = model.energy(x.astype(np.int64))
    torch.testing.assert_close(e_int8, e_numpy)


@pytest.mark.parametrize(
    "bad,match",
    [
        (torch.zeros(2, 16), "integer dtype"),
        (torch.zeros(16, dtype=torch.int64), r"shape \(B, 16\)"),
        (torch.zeros(2, 15, dtype=torch.int64), r"shape \(B, 16\)"),
        (torch.full((2, 16), 2, dtype=torch.int64), "tokens must lie in 0..1"),
        ([[0] * 16], "torch.Tensor or numpy"),
    ],
)
def test_rejects_bad_configurations(bad, match):
    with pytest.raises(ValueError, match=match):
        IsingModel(4).energy(bad)


def test_energy_change_rejects_bad_moves():
    model = IsingModel(3)
    x = torch.zeros(4, 9, dtype=torch.int64)
    with pytest.raises(ValueError, match="sites"):
        model.energy_change(x, torch.tensor([0, 1, 2, 9]), torch.ones(4, dtype=torch.int64))
    with pytest.raises(ValueError, match="new_states"):
        model.energy_change(x, torch.zeros(4, dtype=torch.int64), torch.full((4,), 2))
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        model.energy_change(x, torch.zeros(3, dtype=torch.int64), torch.ones(4, dtype=torch.int64))


@pytest.mark.parametrize("kwargs", [{"L": 4, "J": float("nan")}, {"L": 4, "field": "0"}, {"L": 1}])
def test_rejects_bad_parameters(kwargs):
    with pytest.raises(ValueError):
        IsingModel(**kwargs)


@pytest.mark.parametrize("J, field", [(1.0, 0.0), (1.0, 0.3), (-0.7, 0.0)])
def test_energy_bins_hold_every_attainable_energy(J, field):
    L = 4
    x = all_binary_states(L * L)
    edges = IsingModel(L, J=J, field=field).energy_per_site_bin_edges()
    e_site = brute_force_energy(x, L, J, field) / (L * L)
    assert np.all(np.diff(edges) > 0)
    assert edges[0] < e_site.min() and e_site.max() < edges[-1]
    if field == 0.0:
        # one attainable value per bin, at the bin's centre
        centres = 0.5 * (edges[1:] + edges[:-1])
        nearest = np.abs(np.unique(e_site)[:, None] - centres[None, :]).min(axis=1)
        assert nearest.max() < 1e-12


@pytest.mark.parametrize("L", [3, 5, 6, 7, 8, 12, 16])
def test_energy_bins_centre_the_ordered_and_single_flip_energies_at_every_size(L):
    """The ground state (E/N = −2J) and one flipped spin (−2J + 8J/D) sit on bin centres; at
    L = 6 a float modulo once shifted every bin by a whole spacing, leaving −2J outside."""
    model = IsingModel(L)
    edges = model.energy_per_site_bin_edges()
    centres = 0.5 * (edges[1:] + edges[:-1])
    x = torch.zeros((2, L * L), dtype=torch.int64)
    x[1, 0] = 1
    e_site = (model.energy(x) / model.n_sites).numpy()
    assert np.abs(e_site[:, None] - centres[None, :]).min(axis=1).max() < 1e-12
