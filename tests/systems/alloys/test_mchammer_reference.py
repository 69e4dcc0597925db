"""mchammer reference runs: the μ ↔ Δμ relation, fixed composition (canonical), SGC limits."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import bulk

from systems.alloys.cluster_expansion import PAPER_CUAU_CE, ClusterExpansionBackend
from systems.alloys.mchammer_reference import pure_energies_per_atom, run_mchammer

CELL = bulk("Cu", "fcc", a=3.8, cubic=True).repeat(2)  # 32 sites


def test_delta_mu_zero_chemical_potentials_are_the_pure_energies():
    backend = ClusterExpansionBackend(PAPER_CUAU_CE, bulk("Cu", "fcc", a=3.8).repeat(4))
    cu, au = pure_energies_per_atom(backend)
    assert 1000 * cu == pytest.approx(2.620, abs=5e-4) and 1000 * au == pytest.approx(-2.708, abs=5e-4)


def test_canonical_keeps_composition_and_energies_match_the_backend():
    occupation = np.zeros(32, dtype=np.int64)
    occupation[np.random.default_rng(1).permutation(32)[:10]] = 1
    result = run_mchammer(PAPER_CUAU_CE, CELL, 1200, ensemble="canonical", initial_occupation=occupation,
                          n_sweeps=30, burn_in_sweeps=5)
    assert result["n_species1"].shape == (25,) and np.all(result["n_species1"] == 10)
    assert np.all(result["occupations"].sum(axis=1) == 10)
    backend = ClusterExpansionBackend(PAPER_CUAU_CE, CELL)
    np.testing.assert_allclose(backend.energy(torch.from_numpy(result["occupations"])).numpy(), result["energy"],
                               rtol=0, atol=1e-9)
    assert len(set(map(bytes, result["occupations"].astype(np.uint8)))) > 1  # it moved


@pytest.mark.parametrize("delta_mu, fraction", [(1.0, 1.0), (-1.0, 0.0)])
def test_sgc_large_delta_mu_drives_composition_to_the_limit(delta_mu, fraction):
    result = run_mchammer(PAPER_CUAU_CE, CELL, 1200, delta_mu=delta_mu, n_sweeps=20, burn_in_sweeps=10, seed=3)
    np.testing.assert_array_equal(result["fraction"], fraction)
    cu, au = pure_energies_per_atom(ClusterExpansionBackend(PAPER_CUAU_CE, CELL))
    assert result["chemical_potentials"] == pytest.approx({"Cu": cu, "Au": au + delta_mu})
    np.testing.assert_allclose(result["formation_energy"], 0.0, atol=1e-12)


def test_input_errors():
    with pytest.raises(ValueError, match="initial_occupation is required"):
        run_mchammer(PAPER_CUAU_CE, CELL, 1200, ensemble="canonical")
    with pytest.raises(ValueError, match="ensemble must be"):
        run_mchammer(PAPER_CUAU_CE, CELL, 1200, ensemble="grand")
    with pytest.raises(ValueError, match="burn_in_sweeps"):
        run_mchammer(PAPER_CUAU_CE, CELL, 1200, n_sweeps=10, burn_in_sweeps=10)
