"""What runs are compared against (pipeline/reference_data.py): CV bins, when exact
enumeration applies, and the exact reference against systems/exact.py enumeration."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.reference_data import (EXACT_ENUMERATION_LIMIT, cv_bin_edges, cv_grid_shape, exact_reference,
                                     has_exact_reference, reference_for)
from systems.exact import exact_ensemble
from systems.ising import IsingModel
from systems.potts import PottsModel


# --------------------------------------------------------------------------- bins
def test_ising_cv_bins_are_one_per_attainable_magnetisation():
    system = IsingModel(L=4)
    (edges,) = cv_bin_edges(system)
    d = system.n_sites
    attainable = -1.0 + 2.0 * np.arange(d + 1) / d          # m = mean(s) over 16 spins
    assert len(edges) - 1 == d + 1 == 17 and cv_grid_shape(system) == (17,)
    np.testing.assert_allclose((edges[:-1] + edges[1:]) / 2, attainable, atol=1e-12)
    # every attainable value falls strictly inside its own bin
    index = np.searchsorted(edges, attainable, side="right") - 1
    assert list(index) == list(range(d + 1))
    assert np.all(attainable > edges[:-1]) and np.all(attainable < edges[1:])


def test_cv_bins_of_every_state_are_distinct_per_cv_value():
    """Enumerated states: two states share a bin exactly when they share the CV value."""
    for system in (IsingModel(L=3), PottsModel(L=2, q=3)):
        edges = cv_bin_edges(system)
        assert cv_grid_shape(system) == tuple(system.cv_spec.grid_points)
        cv = exact_ensemble(system, 0.0).cv.numpy()
        bins = np.stack([np.searchsorted(e, cv[:, j], side="right") - 1 for j, e in enumerate(edges)], axis=1)
        assert np.all((bins >= 0) & (bins < np.array(cv_grid_shape(system))))
        _, value_ids = np.unique(np.round(cv, 9), axis=0, return_inverse=True)
        _, bin_ids = np.unique(bins, axis=0, return_inverse=True)
        # a bijection between distinct values and occupied bins
        pairs = set(zip(value_ids.ravel().tolist(), bin_ids.ravel().tolist()))
        assert len(pairs) == len(set(value_ids.ravel().tolist())) == len(set(bin_ids.ravel().tolist()))


# --------------------------------------------------------------------------- exact or not
@pytest.mark.parametrize("system, exact", [
    (IsingModel(L=4), True),
    (IsingModel(L=5), True),            # 2^25 states
    (PottsModel(L=4, q=3), True),       # 3^16 states: exactly at the limit
    (PottsModel(L=5, q=3), False),
    (IsingModel(L=6), False),           # 2^36 states
])
def test_has_exact_reference_up_to_the_enumeration_limit(system, exact):
    states = system.n_states ** system.n_sites
    assert (states <= EXACT_ENUMERATION_LIMIT) == exact
    assert has_exact_reference(system) is exact


def test_the_limit_is_inclusive():
    class Stub:
        n_states, n_sites = 3, 16
    assert Stub.n_states ** Stub.n_sites == EXACT_ENUMERATION_LIMIT
    assert has_exact_reference(Stub())
    Stub.n_sites = 17
    assert not has_exact_reference(Stub())


# --------------------------------------------------------------------------- exact values
def marginal_on_grid(system, beta) -> np.ndarray:
    """Exact CV marginal from systems/exact.py, placed on the flattened CV grid."""
    marginal = exact_ensemble(system, beta).cv_marginal()
    index = system.cv_spec.grid_index(marginal.values)
    flat = np.ravel_multi_index(tuple(np.asarray(index).T), system.cv_spec.grid_points)
    out = np.zeros(int(np.prod(system.cv_spec.grid_points)))
    out[flat] = marginal.probabilities
    return out


def energy_histogram(system, beta) -> np.ndarray:
    ensemble = exact_ensemble(system, beta)
    edges = system.energy_per_site_bin_edges()
    e = ensemble.energies.numpy() / system.n_sites
    hist, _ = np.histogram(e, bins=edges, weights=ensemble.probabilities.numpy())
    return hist


@pytest.mark.parametrize("system, beta", [(IsingModel(L=3), 0.6), (IsingModel(L=3, J=1.0, field=0.3), 0.4),
                                          (PottsModel(L=2, q=3), 0.8)])
def test_exact_reference_agrees_with_enumeration(system, beta):
    ref = exact_reference(system, beta)
    assert ref.label == "exact"
    expected_cv = marginal_on_grid(system, beta)
    np.testing.assert_allclose(ref.cv_histogram, expected_cv, rtol=1e-9, atol=1e-15)
    np.testing.assert_allclose(ref.energy_histogram, energy_histogram(system, beta), rtol=1e-9, atol=1e-15)
    assert ref.cv_histogram.sum() == pytest.approx(1.0, abs=1e-12)
    # F = -ln P on attainable values (min 0), NaN where no state has that CV value
    assert ref.fes_kT.shape == cv_grid_shape(system)
    fes = ref.fes_kT.ravel()
    occupied = expected_cv > 0
    assert np.all(np.isnan(fes[~occupied])) and np.all(np.isfinite(fes[occupied]))
    expected_fes = -np.log(expected_cv[occupied])
    np.testing.assert_allclose(fes[occupied], expected_fes - expected_fes.min(), rtol=1e-9, atol=1e-9)
    assert np.nanmin(fes) == 0.0


def test_exact_reference_is_independent_of_the_chunk_size():
    system = PottsModel(L=2, q=3)          # 81 states: chunks of 7 leave a ragged last chunk
    whole = exact_reference(system, 1.1)
    chunked = exact_reference(system, 1.1, chunk_size=7)
    np.testing.assert_allclose(chunked.cv_histogram, whole.cv_histogram, rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(chunked.energy_histogram, whole.energy_histogram, rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(chunked.fes_kT, whole.fes_kT, rtol=1e-12, atol=1e-12)


def test_exact_reference_keeps_tiny_probabilities():
    """At strong coupling the disordered bins are ~e^-40 yet finite (log-space accumulation)."""
    system = IsingModel(L=3)
    beta = 3.0
    ref = exact_reference(system, beta, chunk_size=16)
    expected = marginal_on_grid(system, beta)
    assert expected.min() < 1e-15 and np.all(expected > 0)
    np.testing.assert_allclose(ref.cv_histogram, expected, rtol=1e-9)


def test_reference_for_tiny_systems_is_exact_regardless_of_folders(tmp_path):
    system = IsingModel(L=3)
    ref = reference_for(tmp_path, "metadns", "beta0.6000", system, 0.6, ("sw", "metropolis"))
    assert ref is not None and ref.label == "exact"
    np.testing.assert_allclose(ref.cv_histogram, exact_reference(system, 0.6).cv_histogram)


def test_reference_for_large_systems_without_finished_references_is_none(tmp_path):
    system = IsingModel(L=6)
    (tmp_path / "sw_beta0.6000").mkdir()           # started, never finished: no summary.json
    assert reference_for(tmp_path, "metadns", "beta0.6000", system, 0.6, ("sw", "metropolis")) is None
    # the preferred reference is not compared against anything
    assert reference_for(tmp_path, "sw", "beta0.6000", system, 0.6, ("sw", "metropolis")) is None
