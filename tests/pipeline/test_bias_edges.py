"""The bias's free energy is exact at the CV edges (edge correction, pipeline/bias.py).

Deposition is driven by exact samples of π_V: each deposit draws CV values from
P_V(s) ∝ exp(−F(s) − V(s)/kT) on the attainable values, for a known F (exact enumeration, or
a synthetic F). At the well-tempered fixed point −γ/(γ−1)·V/kT = F + const, so after enough
hills the bias's F must match F at every attainable value, the end values included, to
0.1 k_BT (best constant removed). γ = 10 throughout. Without the correction the edges are
visibly off, which shows that the test can fail.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.bias import WellTemperedGridBias
from systems import make_system
from systems.exact import exact_ensemble

GAMMA = 10.0
TOLERANCE_KT = 0.1


def drive_with_exact_samples(bias: WellTemperedGridBias, values: np.ndarray, free_energy: np.ndarray,
                             depositions: int, per_deposit: int, seed: int) -> None:
    """``depositions`` deposits of ``per_deposit`` CV values, each drawn from
    P_V(s) ∝ exp(−F(s) − V(s)/kT) over the attainable ``values`` (K, d) with F (K,) in k_BT."""
    rng = np.random.default_rng(seed)
    for _ in range(depositions):
        log_p = -free_energy - bias.value(values) / bias.kT
        p = np.exp(log_p - log_p.max())
        bias.deposit(values[rng.choice(values.shape[0], size=per_deposit, p=p / p.sum())])


def worst_error(bias: WellTemperedGridBias, values: np.ndarray, free_energy: np.ndarray) -> tuple[float, int]:
    """Largest |F_bias − F| over the attainable values after removing the best constant, and
    the index of the value where it occurs."""
    difference = bias.free_energy()[tuple(bias.node_index(values).T)] - free_energy
    difference -= difference.mean()
    return float(np.abs(difference).max()), int(np.argmax(np.abs(difference)))


def make_bias(spec, sigma, per_deposit, edge_correction, attainable=None, height_per_deposit=0.5):
    bias = WellTemperedGridBias.aligned(spec.lower if len(spec.lower) > 1 else spec.lower[0],
                                        spec.upper if len(spec.upper) > 1 else spec.upper[0],
                                        spec.spacing if len(spec.spacing) > 1 else spec.spacing[0],
                                        sigma=sigma, gamma=GAMMA, kT=1.0,
                                        hill_height=height_per_deposit / per_deposit,
                                        edge_correction=edge_correction)
    if attainable is None:
        return bias
    return WellTemperedGridBias(**{**bias.settings, "attainable_nodes": bias.flat_node_index(attainable)})


def exact_cv_free_energy(system, beta):
    marginal = exact_ensemble(system, beta).cv_marginal()
    return marginal.values, marginal.free_energy()


PER_DEPOSIT = 64   # hills per deposit, h0 = 0.5 k_BT / 64


def check_edges(spec, values, free_energy, sigma, attainable=None, depositions=3000, seed=0):
    """The corrected bias meets the tolerance everywhere; the uncorrected one misses it at an
    end value by more than 1 k_BT. 3000 deposits are 192,000 hills.

    σ is 1–2.5 spacings of the attainable values: features of F narrower than σ converge
    slowly under any smooth kernel (the alternating mode is damped by ~exp(−π²σ²/2Δ²)), and
    so does a steep F at an edge, whose mirror image has a kink there; neither is an edge
    effect of the kernel sums, which is what this checks."""
    corrected = make_bias(spec, sigma, PER_DEPOSIT, True, attainable)
    drive_with_exact_samples(corrected, values, free_energy, depositions, PER_DEPOSIT, seed)
    error, where = worst_error(corrected, values, free_energy)
    assert corrected.n_hills == depositions * PER_DEPOSIT
    assert error < TOLERANCE_KT, f"corrected bias off by {error:.3f} k_BT at s = {values[where]}"

    cut_off = make_bias(spec, sigma, PER_DEPOSIT, False)
    drive_with_exact_samples(cut_off, values, free_energy, depositions, PER_DEPOSIT, seed)
    error, _ = worst_error(cut_off, values, free_energy)
    assert error > 1.0, f"the uncorrected bias should be visibly off at the edges, worst error {error:.3f} k_BT"


def test_ising_l4_exact_free_energy_at_the_edges():
    system = make_system("ising", L=4)
    values, free_energy = exact_cv_free_energy(system, beta=0.3)
    check_edges(system.cv_spec, values, free_energy, sigma=0.15)


def test_synthetic_double_well_on_the_ising_l8_grid():
    system = make_system("ising", L=8)
    m = np.linspace(-1.0, 1.0, 65)[:, None]
    free_energy = 4.0 * (1.0 - m[:, 0] ** 2) ** 2 + 1.5 * m[:, 0]   # wells at the edges, barrier 4 k_BT, tilted
    check_edges(system.cv_spec, m, free_energy, sigma=0.08)


def test_synthetic_free_energy_on_a_small_cuau_cell():
    system = make_system("alloy", size=[2, 2, 2], cell="conventional", lattice_constant=3.8)   # 32 sites
    D = system.n_sites
    x = (np.arange(D + 1) / D)[:, None]
    free_energy = 4.0 * np.sin(2 * math.pi * x[:, 0]) ** 2 + 3.0 * x[:, 0]
    check_edges(system.cv_spec, x, free_energy, sigma=0.05)


def test_potts_l3_exact_free_energy_on_the_triangle():
    system = make_system("potts", L=3, q=3)
    values, free_energy = exact_cv_free_energy(system, beta=0.5)
    attainable = system.attainable_cv()
    assert attainable.shape == (55, 2)
    np.testing.assert_array_equal(np.unique(attainable, axis=0), np.unique(values, axis=0))
    check_edges(system.cv_spec, values, free_energy, sigma=(0.15, 0.15), attainable=attainable, depositions=6000)


def test_sinkhorn_kernel_is_symmetric_and_sums_to_the_interior_weight():
    system = make_system("potts", L=3, q=3)
    bias = make_bias(system.cv_spec, (0.25, 0.25), 1, True, system.attainable_cv())
    nodes = system.attainable_cv()
    kernel = []
    for s in nodes:   # the V one unit hill at s adds, on every attainable node
        probe = bias.copy()
        probe._add_hills(s[None, :], np.ones(1))
        kernel.append(probe.values[tuple(bias.node_index(nodes).T)])
    kernel = np.array(kernel)
    np.testing.assert_allclose(kernel, kernel.T, rtol=1e-12, atol=1e-15)
    row_sums = kernel.sum(axis=1)
    np.testing.assert_allclose(row_sums, row_sums[0], rtol=1e-12)
    assert np.isnan(bias.free_energy()[~bias.attainable_mask]).all() or not bias.n_hills


@pytest.mark.parametrize("sigma", [0.05, 0.3, 1.5])
def test_reflected_hills_spread_the_same_weight_over_every_node(sigma):
    """Σ_s K(g, s) over the attainable s is the same at every node g, for narrow hills, hills
    wider than the domain (images of images) and hills on a grid of 33 values."""
    bias = WellTemperedGridBias.aligned(0.0, 1.0, 1.0 / 32, sigma=sigma, gamma=GAMMA, kT=1.0, hill_height=1.0,
                                        edge_correction=True)
    bias._add_hills(bias.axes[0][:, None], np.ones(33))
    np.testing.assert_allclose(bias.values, bias.values[16], rtol=1e-12)


def test_hills_file_with_images_reproduces_v(tmp_path):
    """Summing the written Gaussians (height·(γ−1)/γ) gives V on the grid, in 1-D and 2-D."""
    for lower, upper, spacing, sigma in ((-1.0, 1.0, 0.125, 0.3), ([0.0, 0.0], [1.0, 1.0], [0.25, 0.125], [0.3, 0.2])):
        bias = WellTemperedGridBias.aligned(lower, upper, spacing, sigma=sigma, gamma=GAMMA, kT=1.0, hill_height=0.1,
                                            edge_correction=True)
        rng = np.random.default_rng(1)
        dim = bias.dim
        for _ in range(5):
            nodes = np.stack([rng.choice(ax, 7) for ax in bias.axes], axis=1)
            bias.deposit(nodes)
        path = tmp_path / f"HILLS{dim}"
        bias.write_hills(path)
        table = np.loadtxt(path, comments="#", ndmin=2)
        centres, sigmas = table[:, 1:1 + dim], table[:, 1 + dim:1 + 2 * dim]
        heights = table[:, 1 + 2 * dim] * (GAMMA - 1) / GAMMA
        mesh = np.stack(np.meshgrid(*bias.axes, indexing="ij"), axis=-1).reshape(-1, dim)
        exponent = -np.square(mesh[:, None, :] - centres[None]) / (2 * sigmas[None] ** 2)
        summed = (heights[None] * np.exp(exponent.sum(axis=2))).sum(axis=1).reshape(bias.grid_points)
        np.testing.assert_allclose(summed, bias.values, rtol=1e-10, atol=1e-14)
        assert table.shape[0] > bias.n_hills      # images were written
        np.testing.assert_array_equal(table[0, 1:1 + dim], bias.hills["centres"][0])   # each hill before its images


def test_old_states_keep_cut_off_hills():
    bias = WellTemperedGridBias(-1.0, 1.0, 17, 0.1, GAMMA, 1.0, 0.1)
    state = bias.state_dict()
    for key in ("edge_correction", "attainable_nodes"):
        del state["settings"][key]
    restored = WellTemperedGridBias.from_state_dict(state)
    assert restored.edge_correction is False
    corrected = WellTemperedGridBias(-1.0, 1.0, 17, 0.1, GAMMA, 1.0, 0.1, edge_correction=True)
    corrected.load_state_dict(state)           # an old run resumes as it was deposited
    assert corrected.edge_correction is False
    corrected = WellTemperedGridBias(-1.0, 1.0, 17, 0.1, GAMMA, 1.0, 0.1, edge_correction=True)
    with pytest.raises(ValueError, match="edge_correction"):
        corrected.load_state_dict(bias.state_dict())   # a new state's setting must match
