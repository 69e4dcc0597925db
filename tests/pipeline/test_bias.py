"""Tests for pipeline.bias: hand-computed deposition, validation, persistence, HILLS export,
and convergence of the well-tempered FES to exact free energies."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest
import torch

from pipeline.bias import WellTemperedGridBias


def _bias_1d(**overrides) -> WellTemperedGridBias:
    settings = dict(lower=0.0, upper=1.0, grid_points=5, sigma=0.2, gamma=4.0, kT=2.0, hill_height=1.5)
    settings.update(overrides)
    return WellTemperedGridBias(**settings)


def _bias_2d(**overrides) -> WellTemperedGridBias:
    settings = dict(lower=(0.0, 0.0), upper=(1.0, 2.0), grid_points=(3, 5), sigma=(0.5, 1.0),
                    gamma=3.0, kT=0.5, hill_height=2.0)
    settings.update(overrides)
    return WellTemperedGridBias(**settings)


# --------------------------------------------------------------------------- deposition by hand
def test_first_and_second_hill_1d_match_hand_computation():
    bias = _bias_1d()  # nodes 0, 0.25, 0.5, 0.75, 1; sigma 0.2 -> 2 sigma^2 = 0.08; (gamma-1) kT = 6
    heights = bias.deposit([[0.5]])
    assert heights.tolist() == [1.5]
    expected = [1.5 * math.exp(-0.25 / 0.08), 1.5 * math.exp(-0.0625 / 0.08), 1.5,
                1.5 * math.exp(-0.0625 / 0.08), 1.5 * math.exp(-0.25 / 0.08)]
    np.testing.assert_allclose(bias.values, expected, rtol=1e-14)

    # Second hill on the flank of the first: its height is reduced by exp(-V(0.25)/6).
    v_at_quarter = 1.5 * math.exp(-0.78125)
    second_height = 1.5 * math.exp(-v_at_quarter / 6.0)
    heights = bias.deposit(np.array([[0.25]]))
    np.testing.assert_allclose(heights, [second_height], rtol=1e-14)
    for node, previous in zip([0.0, 0.25, 0.5, 0.75, 1.0], expected):
        want = previous + second_height * math.exp(-((node - 0.25) ** 2) / 0.08)
        assert bias.value([[node]])[0] == pytest.approx(want, rel=1e-14)
    assert bias.n_hills == 2 and bias.n_depositions == 2


def test_batch_uses_one_snapshot_unlike_sequential_calls():
    batched = _bias_1d()
    heights = batched.deposit([[0.5], [0.5]])
    np.testing.assert_allclose(heights, [1.5, 1.5])  # both read V = 0
    assert batched.value([[0.5]])[0] == pytest.approx(3.0, rel=1e-14)
    assert batched.n_depositions == 1 and batched.n_hills == 2

    sequential = _bias_1d()
    sequential.deposit([[0.5]])
    second = sequential.deposit([[0.5]])
    assert second[0] == pytest.approx(1.5 * math.exp(-1.5 / 6.0), rel=1e-14)
    assert sequential.value([[0.5]])[0] == pytest.approx(1.5 + 1.5 * math.exp(-0.25), rel=1e-14)
    assert sequential.n_depositions == 2


def test_off_node_centre_uses_nearest_node_height_and_exact_gaussian_centre():
    bias = _bias_1d()
    bias.deposit([[0.5]])
    v_nearest = bias.values[1]  # 0.3 is nearest to node 0.25
    heights = bias.deposit([[0.3]])
    assert heights[0] == pytest.approx(1.5 * math.exp(-v_nearest / 6.0), rel=1e-14)
    want_at_half = 1.5 + heights[0] * math.exp(-(0.2 ** 2) / 0.08)
    assert bias.values[2] == pytest.approx(want_at_half, rel=1e-14)
    # value() reads the nearest node, no interpolation
    assert bias.value([[0.37]])[0] == bias.values[1]
    assert bias.value([[0.38]])[0] == bias.values[2]


def test_two_dimensional_hills_match_hand_computation():
    bias = _bias_2d()  # axes x: 0, 0.5, 1 ; y: 0, 0.5, ..., 2 ; 2 sigma^2 = 0.5 and 2.0 ; (gamma-1) kT = 1
    bias.deposit([[0.5, 1.0]])
    xs, ys = [0.0, 0.5, 1.0], [0.0, 0.5, 1.0, 1.5, 2.0]
    first = np.array([[2.0 * math.exp(-((x - 0.5) ** 2) / 0.5) * math.exp(-((y - 1.0) ** 2) / 2.0) for y in ys] for x in xs])
    np.testing.assert_allclose(bias.values, first, rtol=1e-14)

    v_corner = 2.0 * math.exp(-0.5) * math.exp(-0.5)  # V at (1, 2) after the first hill
    second_height = 2.0 * math.exp(-v_corner / 1.0)
    heights = bias.deposit(torch.tensor([[1.0, 2.0]], dtype=torch.float64))
    assert heights[0] == pytest.approx(second_height, rel=1e-14)
    second = np.array([[second_height * math.exp(-((x - 1.0) ** 2) / 0.5) * math.exp(-((y - 2.0) ** 2) / 2.0) for y in ys] for x in xs])
    np.testing.assert_allclose(bias.values, first + second, rtol=1e-14)
    assert bias.value([[0.0, 0.5]])[0] == pytest.approx(first[0, 1] + second[0, 1], rel=1e-14)


def test_free_energy_is_scaled_negative_bias_with_min_zero():
    bias = _bias_1d()
    bias.deposit([[0.5], [0.75]])
    expected = -4.0 / 3.0 * bias.values / 2.0
    expected -= expected.min()
    np.testing.assert_allclose(bias.free_energy(), expected, rtol=1e-14, atol=1e-15)
    assert bias.free_energy().min() == 0.0


def test_node_index_picks_the_nearest_node():
    bias = _bias_2d()
    s = np.array([[0.1, 0.2], [0.74, 1.76], [0.76, 1.74], [0.1, 0.24]])
    np.testing.assert_array_equal(bias.node_index(s), [[0, 0], [1, 4], [2, 3], [0, 0]])


# --------------------------------------------------------------------------- validation
@pytest.mark.parametrize("gamma", [1.0, 0.5, -3.0, float("inf"), float("nan")])
def test_rejects_gamma_not_above_one(gamma):
    with pytest.raises(ValueError, match="gamma"):
        _bias_1d(gamma=gamma)


@pytest.mark.parametrize("sigma", [0.0, -0.1, (0.1, 0.0)])
def test_rejects_non_positive_sigma(sigma):
    with pytest.raises(ValueError, match="sigma"):
        _bias_2d(sigma=sigma)


@pytest.mark.parametrize("overrides, name", [
    (dict(kT=0.0), "kT"), (dict(kT=-1.0), "kT"), (dict(hill_height=0.0), "hill_height"),
    (dict(grid_points=1), "grid_points"), (dict(grid_points=4.5), "grid_points"),
    (dict(lower=1.0, upper=1.0), "lower"), (dict(lower=2.0, upper=1.0), "lower"),
    (dict(lower=(0.0, 0.0, 0.0), upper=(1.0, 1.0, 1.0)), "1-D or 2-D"),
    (dict(lower=(0.0, 0.0), upper=1.0, sigma=(0.1, 0.1, 0.1)), "sigma"),
])
def test_rejects_bad_settings(overrides, name):
    with pytest.raises(ValueError, match=name):
        _bias_1d(**overrides)


def test_inconsistent_dimensions_are_rejected():
    with pytest.raises(ValueError, match="disagree"):
        WellTemperedGridBias(lower=(0.0, 0.0), upper=(1.0,), grid_points=3, sigma=0.1, gamma=10, kT=1, hill_height=1)


def test_alignment_check_for_ising_l16_magnetisation():
    common = dict(lower=-1.0, upper=1.0, sigma=0.05, gamma=10.0, kT=1 / 0.6, hill_height=0.01, cv_spacing=2 / 256)
    aligned = WellTemperedGridBias(grid_points=257, **common)
    assert aligned.cv_spacing == (2 / 256,)
    with pytest.raises(ValueError, match="grid_points=257") as error:
        WellTemperedGridBias(grid_points=256, **common)
    assert "misaligns" in str(error.value)
    # a grid twice as fine also has a node at every CV value
    WellTemperedGridBias(grid_points=513, **common)
    # a range that is not a whole number of spacings cannot be aligned by grid_points alone
    with pytest.raises(ValueError, match="upper"):
        WellTemperedGridBias(**{**common, "upper": 1.003, "grid_points": 257})


def test_aligned_builds_nodes_at_cv_values_potts_q3():
    sqrt3 = math.sqrt(3.0)
    d = 16
    spacing = (3 / (2 * d), sqrt3 / (2 * d))
    bias = WellTemperedGridBias.aligned((-0.5, -sqrt3 / 2), (1.0, sqrt3 / 2), spacing,
                                        sigma=(0.05, 0.05), gamma=10.0, kT=1.0, hill_height=0.1)
    assert bias.grid_points == (17, 33)
    for axis, lo, h in zip(bias.axes, (-0.5, -sqrt3 / 2), spacing):
        np.testing.assert_allclose(axis, lo + np.arange(axis.size) * h, rtol=0, atol=1e-12)
    one_d = WellTemperedGridBias.aligned(-1.0, 1.0, 2 / 16, sigma=0.05, gamma=10.0, kT=1.0, hill_height=0.1)
    assert one_d.dim == 1 and one_d.grid_points == (17,)
    with pytest.raises(ValueError, match="upper"):
        WellTemperedGridBias.aligned(0.0, 1.0, 0.3, sigma=0.05, gamma=10.0, kT=1.0, hill_height=0.1)


def test_cv_outside_grid_raises_and_leaves_bias_untouched():
    bias = WellTemperedGridBias.aligned(-1.0, 1.0, 0.125, sigma=0.05, gamma=10.0, kT=1.0, hill_height=0.1)
    assert bias.value([[1.06]])[0] == 0.0  # within half a cell (0.0625) of the last node
    with pytest.raises(ValueError, match="outside the bias grid"):
        bias.value([[1.07]])
    with pytest.raises(ValueError, match="outside the bias grid"):
        bias.deposit([[0.0], [-1.2]])
    assert bias.n_hills == 0 and not bias.values.any()
    with pytest.raises(ValueError, match="NaN"):
        bias.value([[float("nan")]])
    with pytest.raises(ValueError, match="shape"):
        _bias_2d().value([[0.1, 0.2, 0.3]])


# --------------------------------------------------------------------------- persistence
def test_state_round_trip_json_and_torch():
    bias = _bias_2d()
    rng = np.random.default_rng(1)
    for _ in range(3):
        bias.deposit(rng.uniform([0.0, 0.0], [1.0, 2.0], size=(4, 2)))
    state = bias.state_dict()

    via_json = json.loads(json.dumps(state))
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    via_torch = torch.load(buffer, weights_only=True)

    for loaded_state in (via_json, via_torch):
        restored = _bias_2d()
        restored.load_state_dict(loaded_state)
        np.testing.assert_array_equal(restored.values, bias.values)
        assert restored.n_depositions == 3 and restored.n_hills == 12
        for key, array in bias.hills.items():
            np.testing.assert_array_equal(restored.hills[key], array)
        # both continue identically
        more = rng.uniform([0.0, 0.0], [1.0, 2.0], size=(5, 2))
        a, b = bias.copy(), restored
        np.testing.assert_array_equal(a.deposit(more), b.deposit(more))
        np.testing.assert_array_equal(a.values, b.values)
        assert b.hills["time"][-1] == 4

    rebuilt = WellTemperedGridBias.from_state_dict(via_json)
    np.testing.assert_array_equal(rebuilt.values, bias.values)


@pytest.mark.parametrize("overrides, name", [
    (dict(gamma=5.0), "gamma"), (dict(sigma=(0.5, 0.9)), "sigma"), (dict(kT=0.6), "kT"),
    (dict(grid_points=(3, 6)), "grid_points"), (dict(upper=(1.0, 2.5)), "upper"),
])
def test_load_rejects_incompatible_settings(overrides, name):
    bias = _bias_2d()
    bias.deposit([[0.5, 1.0]])
    other = _bias_2d(**overrides)
    with pytest.raises(ValueError, match=name):
        other.load_state_dict(bias.state_dict())


# --------------------------------------------------------------------------- HILLS export
def _read_hills(path):
    with open(path) as handle:
        lines = handle.read().splitlines()
    header = [line for line in lines if line.startswith("#!")]
    table = np.loadtxt(path, comments="#", ndmin=2)
    return header, table


def test_hills_file_sums_to_minus_free_energy(tmp_path):
    bias = WellTemperedGridBias.aligned(-1.0, 1.0, 0.125, sigma=0.05, gamma=10.0, kT=1 / 0.6, hill_height=0.2)
    rng = np.random.default_rng(7)
    nodes = bias.axes[0]
    for _ in range(6):
        bias.deposit(rng.choice(nodes, size=(3, 1)))
    path = tmp_path / "out" / "HILLS"
    path.parent.mkdir()
    path.write_text("stale content\n")
    bias.write_hills(path, cv_names=("m",))
    assert sorted(p.name for p in path.parent.iterdir()) == ["HILLS"]  # no temporary file left

    header, table = _read_hills(path)
    assert header == ["#! FIELDS time m sigma_m height biasf", "#! SET multivariate false"]
    assert table.shape == (18, 5)
    np.testing.assert_array_equal(table[:, 0], np.repeat(np.arange(1, 7), 3))
    np.testing.assert_array_equal(table[:, 2], 0.05)
    np.testing.assert_array_equal(table[:, 4], 10.0)
    gamma, kT = 10.0, 1 / 0.6
    np.testing.assert_allclose(table[:, 3], bias.hills["heights"] * gamma / (gamma - 1), rtol=1e-15)

    # Sum of the written Gaussians, computed independently of the bias code.
    summed = np.zeros_like(nodes)
    for time, centre, sigma, height, biasf in table:
        summed += height * np.exp(-((nodes - centre) ** 2) / (2 * sigma ** 2))
    np.testing.assert_allclose(summed, gamma / (gamma - 1) * bias.values, rtol=1e-12)
    minus_free_energy = summed / kT
    np.testing.assert_allclose(minus_free_energy.max() - minus_free_energy, bias.free_energy(), atol=1e-12)


def test_hills_file_2d_header_and_validation(tmp_path):
    bias = _bias_2d()
    bias.deposit([[0.5, 1.0], [0.0, 2.0]])
    path = tmp_path / "HILLS"
    bias.write_hills(path, cv_names=["p1", "p2"])
    header, table = _read_hills(path)
    assert header[0] == "#! FIELDS time p1 p2 sigma_p1 sigma_p2 height biasf"
    np.testing.assert_array_equal(table[:, 1:3], [[0.5, 1.0], [0.0, 2.0]])
    np.testing.assert_array_equal(table[:, 3:5], [[0.5, 1.0], [0.5, 1.0]])
    np.testing.assert_allclose(table[:, 5], bias.hills["heights"] * 1.5, rtol=1e-15)
    with pytest.raises(ValueError, match="cv_names"):
        bias.write_hills(path, cv_names=["p1"])
    with pytest.raises(ValueError, match="cv_names"):
        bias.write_hills(path, cv_names=["p 1", "p2"])


# --------------------------------------------------------------------------- acceptance: convergence to exact F
def _exact_ising_magnetisation_free_energy(side: int, beta: float) -> tuple[np.ndarray, np.ndarray]:
    """Exact -ln P(m) (min 0) for the periodic side x side Ising model, J = 1, h = 0, by enumeration."""
    n_sites = side * side
    codes = np.arange(2 ** n_sites, dtype=np.int64)
    spins = (2 * ((codes[:, None] >> np.arange(n_sites)) & 1) - 1).reshape(-1, side, side)
    energy = -(spins * np.roll(spins, 1, axis=1)).sum(axis=(1, 2)) - (spins * np.roll(spins, 1, axis=2)).sum(axis=(1, 2))
    n_up = (spins.reshape(-1, n_sites) > 0).sum(axis=1)
    log_boltzmann = -beta * energy.astype(np.float64)
    log_boltzmann -= log_boltzmann.max()
    probability = np.bincount(n_up, weights=np.exp(log_boltzmann), minlength=n_sites + 1)
    probability /= probability.sum()
    magnetisation = -1.0 + 2.0 * np.arange(n_sites + 1) / n_sites
    free_energy = -np.log(probability)
    return magnetisation, free_energy - free_energy.min()


def _run_metadynamics(bias, log_probability, nodes, n_cycles, batch, seed):
    """Each cycle: draw `batch` node indices from the exact biased marginal P·exp(-V/kT), deposit them."""
    rng = np.random.default_rng(seed)
    shape = log_probability.shape
    for _ in range(n_cycles):
        log_biased = (log_probability - bias.values / bias.kT).ravel()
        p = np.exp(log_biased - log_biased.max())
        flat = rng.choice(p.size, size=batch, p=p / p.sum())
        index = np.unravel_index(flat, shape)
        bias.deposit(np.column_stack([axis[i] for axis, i in zip(nodes, index)]))


def test_acceptance_ising_l4_free_energy_matches_exact_enumeration():
    beta, side = 0.6, 4
    magnetisation, exact_free_energy = _exact_ising_magnetisation_free_energy(side, beta)
    assert exact_free_energy.max() > 7.0  # a real barrier: m = 0 is ~7 k_BT above m = ±1
    kT, batch = 1.0 / beta, 128
    bias = WellTemperedGridBias.aligned(-1.0, 1.0, 2.0 / side ** 2, sigma=0.05, gamma=10.0, kT=kT,
                                        hill_height=0.5 * kT / batch)
    np.testing.assert_allclose(bias.axes[0], magnetisation, atol=1e-15)
    _run_metadynamics(bias, -exact_free_energy, [magnetisation], n_cycles=8000, batch=batch, seed=2026)
    error = bias.free_energy() - exact_free_energy
    # Observed max |error| ~0.05 k_BT (≈0.04 systematic from hill overlap at the grid edges).
    assert np.max(np.abs(error)) < 0.1, np.round(error, 3)


def test_acceptance_2d_product_of_independent_marginals():
    f1 = np.array([0.0, 1.0, 2.5, 3.0, 2.0, 1.5, 2.5, 4.0, 5.0])  # -ln P1 on x = 0, 1/8, ..., 1
    f2 = np.array([3.0, 1.0, 0.0, 0.5, 2.0, 1.0, 0.0])  # -ln P2 on y = -1, -2/3, ..., 1
    exact_free_energy = f1[:, None] + f2[None, :]
    kT, batch = 2.0, 512
    bias = WellTemperedGridBias.aligned((0.0, -1.0), (1.0, 1.0), (1 / 8, 1 / 3), sigma=(0.05, 0.1), gamma=10.0,
                                        kT=kT, hill_height=0.5 * kT / batch)
    _run_metadynamics(bias, -exact_free_energy, bias.axes, n_cycles=6000, batch=batch, seed=11)
    error = bias.free_energy() - exact_free_energy
    assert np.max(np.abs(error)) < 0.1, np.round(error, 3)
