"""The binary-alloy system: formation energies, Δμ, CVs, order parameters, ASE backend."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from ase.calculators.calculator import Calculator, all_changes
from ase.calculators.emt import EMT
from ase.neighborlist import neighbor_list

from systems.alloys.alloy import BinaryAlloy
from systems.alloys.backends import EnergyEvaluationError

EMT_BACKEND = {"name": "ase"}


class NaNCalculator(Calculator):
    """An ASE calculator that fails the way broken force fields do: a NaN energy."""

    implemented_properties = ["energy"]

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        self.results = {"energy": math.nan if "Au" in atoms.get_chemical_symbols() else 0.0}


def ordered(system: BinaryAlloy, au_sublattices) -> torch.Tensor:
    """Au on the given sublattices, Cu elsewhere: (0,) = Cu3Au L1_2, (0, 1) = CuAu L1_0."""
    sub = system.lattice.sublattice
    return torch.isin(sub, torch.tensor(au_sublattices)).to(torch.int64)[None]


def random_occupations(system: BinaryAlloy, n: int, seed: int) -> torch.Tensor:
    """n configurations with i.i.d. uniform occupations, int64 (n, D)."""
    return torch.randint(0, system.n_states, (n, system.n_sites), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def emt_alloy():
    return BinaryAlloy(size=(2, 2, 2), cell="conventional", energy=EMT_BACKEND)


def test_formation_energy_is_emt_energy_minus_pure_references(emt_alloy):
    x = random_occupations(emt_alloy, 4, seed=0)
    atoms_cu = emt_alloy.lattice.to_atoms(np.zeros(32, dtype=int), ("Cu", "Au"))
    atoms_au = emt_alloy.lattice.to_atoms(np.ones(32, dtype=int), ("Cu", "Au"))
    e_cu = EMT().get_potential_energy(atoms_cu) / 32
    e_au = EMT().get_potential_energy(atoms_au) / 32
    for row in range(4):
        atoms = emt_alloy.lattice.to_atoms(x[row].numpy(), ("Cu", "Au"))
        atoms.calc = EMT()
        n_au = int(x[row].sum())
        expected = atoms.get_potential_energy() - (32 - n_au) * e_cu - n_au * e_au
        assert float(emt_alloy.formation_energy(x[row:row + 1])) == pytest.approx(expected, abs=1e-10)
    pure = torch.stack([torch.zeros(32, dtype=torch.int64), torch.ones(32, dtype=torch.int64)])
    np.testing.assert_allclose(emt_alloy.energy(pure).numpy(), 0.0, atol=1e-12)


def test_delta_mu_shifts_energy_by_minus_delta_mu_times_n_au_and_flips_agree():
    base = BinaryAlloy(size=(2, 2, 2), cell="conventional", energy=EMT_BACKEND)
    shifted = BinaryAlloy(size=(2, 2, 2), cell="conventional", energy=EMT_BACKEND, delta_mu=0.15)
    x = random_occupations(base, 6, seed=1)
    n_au = x.sum(1).double()
    torch.testing.assert_close(shifted.energy(x), base.energy(x) - 0.15 * n_au, rtol=0, atol=1e-10)
    sites = torch.arange(6) * 5
    new = 1 - x[torch.arange(6), sites]
    flipped = x.clone()
    flipped[torch.arange(6), sites] = new
    torch.testing.assert_close(shifted.energy_change(x, sites, new), shifted.energy(flipped) - shifted.energy(x),
                               rtol=0, atol=1e-10)
    obs = shifted.observables(x)
    torch.testing.assert_close(obs["formation_energy_per_atom"], base.energy(x) / 32, rtol=0, atol=1e-12)
    torch.testing.assert_close(obs["energy_per_site"], shifted.energy(x) / 32, rtol=0, atol=1e-12)


def test_order_parameters_of_ordered_phases(emt_alloy):
    cases = {(0,): (0.25, math.sqrt(3) / 2, -1 / 3), (0, 1): (0.5, 1.0, -1 / 3), (1, 2, 3): (0.75, math.sqrt(3) / 2, -1 / 3)}
    for au_sublattices, (fraction, lro, alpha1) in cases.items():
        x = ordered(emt_alloy, au_sublattices)
        obs = emt_alloy.observables(x)
        assert float(obs["x_Au"]) == pytest.approx(fraction)
        assert float(obs["long_range_order"]) == pytest.approx(lro, abs=1e-12)
        assert float(obs["warren_cowley_1"]) == pytest.approx(alpha1, abs=1e-12)
        # translation by a nearest-neighbour vector permutes sublattices: order is unchanged
        atoms = emt_alloy.lattice.to_atoms(x[0].numpy(), ("Cu", "Au"))
        atoms.translate([1.9, 1.9, 0.0])  # maps sublattices 0↔3, 1↔2
        translated = torch.from_numpy(emt_alloy.lattice.from_atoms(atoms, ("Cu", "Au")))[None]
        assert not torch.equal(translated, x)
        assert float(emt_alloy.observables(translated)["long_range_order"]) == pytest.approx(lro, abs=1e-12)
    pure = torch.zeros(1, 32, dtype=torch.int64)
    assert float(emt_alloy.observables(pure)["long_range_order"]) == 0.0
    assert float(emt_alloy.observables(pure)["warren_cowley_1"]) == 0.0


def test_warren_cowley_matches_a_direct_pair_count(emt_alloy):
    x = random_occupations(emt_alloy, 3, seed=2)
    atoms = emt_alloy.lattice.reference_atoms()
    first, second, distance = neighbor_list("ijd", atoms, 3.8 * math.sqrt(3.5 / 2))
    shell = np.rint(2 * (distance / 3.8) ** 2).astype(int)
    for k in (1, 2, 3):
        i, j = first[shell == k], second[shell == k]
        for row in range(3):
            occ = x[row].numpy()
            c_au = occ.mean()
            p_cu_au = np.mean((occ[i] == 0) & (occ[j] == 1))  # ordered pairs Cu→Au
            expected = 1 - p_cu_au / ((1 - c_au) * c_au)  # α = 1 − P(AB)/(c_A c_B)
            assert float(emt_alloy.warren_cowley(x[row:row + 1], k)) == pytest.approx(expected, abs=1e-12)


def test_cvs_and_their_specs():
    system = BinaryAlloy(size=(4, 4, 4), cell="primitive", energy=EMT_BACKEND, cv="composition_order")
    x = ordered(system, (0,))
    torch.testing.assert_close(system.cv(x), torch.tensor([[0.25, math.sqrt(3) / 2]], dtype=torch.float64))
    assert system.cv_spec.names == ("x_Au", "long_range_order")
    assert system.cv_spec.grid_points == (65, 65)
    with pytest.raises(ValueError, match="composition_order"):
        BinaryAlloy(size=(3, 3, 3), cell="primitive", energy=EMT_BACKEND, cv="composition_order")


def test_non_finite_calculator_energies_raise_naming_the_configuration():
    system_nan = {"name": "ase", "calculator": "tests.systems.alloys.test_alloy:NaNCalculator"}
    with pytest.raises(EnergyEvaluationError, match="configuration 1 of the batch"):
        BinaryAlloy(size=(1, 1, 1), cell="conventional", energy=system_nan)


@pytest.mark.parametrize("bad,match", [
    ({"species": ["Cu", "Cu"]}, "species"),
    ({"delta_mu": float("nan")}, "delta_mu"),
    ({"cv": "order"}, "cv"),
    ({"energy": {"name": "dft"}}, "unknown energy backend"),
    ({"energy": {"name": "ase", "calculator": "ase.calculators.nope:X"}}, "cannot import ASE calculator"),
])
def test_bad_alloy_arguments_name_the_field(bad, match):
    kwargs = {"size": (1, 1, 1), "cell": "conventional", "energy": EMT_BACKEND} | bad
    with pytest.raises(ValueError, match=match):
        BinaryAlloy(**kwargs)
