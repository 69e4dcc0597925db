"""FCC supercells: neighbour shells, sublattices and ASE / pymatgen round trips."""

from __future__ import annotations

import numpy as np
import pytest
from ase.io import read, write

from systems.alloys.fcc import FCC_SHELL_COORDINATION, FCCLattice, StructureMappingError

CELLS = [((4, 4, 4), "primitive"), ((2, 2, 2), "conventional"), ((3, 3, 3), "primitive"), ((2, 3, 2), "conventional")]


@pytest.mark.parametrize("size,cell", CELLS)
def test_neighbour_shells_lie_at_fcc_distances_with_full_coordination(size, cell):
    lattice = FCCLattice(size, cell, lattice_constant=3.8)
    atoms = lattice.reference_atoms()
    for k, shell in enumerate(lattice.shells, start=1):
        assert tuple(shell.shape) == (lattice.n_sites, FCC_SHELL_COORDINATION[k - 1])
        rows = np.repeat(np.arange(lattice.n_sites), shell.shape[1])
        cols = shell.numpy().ravel()
        distance = atoms.get_distances(rows[0], cols[: shell.shape[1]], mic=True)
        if min(lattice.size) * (1 if cell == "conventional" else 0.5) > np.sqrt(k / 2):  # no image ambiguity
            np.testing.assert_allclose(distance, 3.8 * np.sqrt(k / 2), atol=1e-9)
        # each neighbour relation is symmetric: j in shell_k(i) as often as i in shell_k(j)
        pairs = np.stack([rows, cols], 1)
        forward = {tuple(p): 0 for p in pairs}
        for p in map(tuple, pairs):
            forward[p] += 1
        assert all(forward[(j, i)] == n for (i, j), n in forward.items())


def test_sublattices_split_fcc_into_four_simple_cubic_lattices():
    lattice = FCCLattice((4, 4, 4), "primitive")
    sub = lattice.sublattice.numpy()
    assert np.bincount(sub).tolist() == [16, 16, 16, 16]
    nearest = sub[lattice.neighbours.numpy()]
    for s in range(4):  # every site has 4 nearest neighbours on each *other* sublattice, none on its own
        counts = np.stack([(nearest[sub == s] == t).sum(1) for t in range(4)], 1)
        expected = np.array([0 if t == s else 4 for t in range(4)])
        assert (counts == expected).all()
    second = sub[lattice.shells[1].numpy()]
    assert (second == sub[:, None]).all()  # second neighbours (a apart) share the sublattice
    assert FCCLattice((3, 3, 3), "primitive").sublattice is None  # odd primitive cell: incommensurate


@pytest.mark.parametrize("size,cell", CELLS[:3])
def test_occupations_round_trip_through_ase_pymatgen_and_files(size, cell, tmp_path):
    lattice = FCCLattice(size, cell)
    rng = np.random.default_rng(0)
    occupation = rng.integers(0, 2, lattice.n_sites)
    species = ("Cu", "Au")
    atoms = lattice.to_atoms(occupation, species)
    np.testing.assert_array_equal(lattice.from_atoms(atoms, species), occupation)
    shuffled = atoms[rng.permutation(len(atoms))]
    np.testing.assert_array_equal(lattice.from_atoms(shuffled, species), occupation)
    strained = lattice.to_atoms(occupation, species, scale=1.03)
    strained.rattle(0.05, seed=1)
    np.testing.assert_array_equal(lattice.from_atoms(strained, species), occupation)
    np.testing.assert_array_equal(lattice.from_structure(lattice.to_structure(occupation, species), species), occupation)
    for name, fmt in (("POSCAR", "vasp"), ("frames.xyz", "extxyz"), ("s.cif", "cif")):
        write(tmp_path / name, atoms, format=fmt)
        np.testing.assert_array_equal(lattice.from_atoms(read(tmp_path / name, format=fmt), species), occupation)


def test_structures_off_the_lattice_give_errors_naming_the_frame():
    lattice = FCCLattice((2, 2, 2), "conventional")
    atoms = lattice.to_atoms(np.zeros(lattice.n_sites, dtype=int), ("Cu", "Au"))
    with pytest.raises(StructureMappingError, match="frame 3: has 31 atoms"):
        lattice.from_atoms(atoms[:-1], ("Cu", "Au"), frame="frame 3")
    moved = atoms.copy()
    moved.positions[5] += [0.9, 0.0, 0.0]
    with pytest.raises(StructureMappingError, match="frame 1: atom 5 .* not on a lattice site"):
        lattice.from_atoms(moved, ("Cu", "Au"), frame="frame 1")
    sheared = atoms.copy()
    sheared.set_cell(sheared.cell[:] + np.array([[0, 0.5, 0], [0, 0, 0], [0, 0, 0]]), scale_atoms=True)
    with pytest.raises(StructureMappingError, match="cell"):
        lattice.from_atoms(sheared, ("Cu", "Au"))
    other = atoms.copy()
    other.symbols[0] = "Ag"
    with pytest.raises(StructureMappingError, match="Ag"):
        lattice.from_atoms(other, ("Cu", "Au"))


@pytest.mark.parametrize("bad", [{"size": 0}, {"size": (2, 2)}, {"cell": "bcc"}, {"lattice_constant": -1.0},
                                 {"n_shells": 9}])
def test_bad_lattice_arguments_name_the_field(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        FCCLattice(**bad)
