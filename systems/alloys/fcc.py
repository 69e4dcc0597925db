"""Periodic FCC supercells for lattice alloys: sites, neighbour shells, sublattices, ASE/pymatgen I/O.

Sites are the atoms of ``ase.build.bulk(..., "fcc").repeat(size)`` in ASE's order, built from
the one-atom primitive cell (``cell="primitive"``) or the four-atom conventional cubic cell
(``cell="conventional"``).  Every FCC site sits at (a/2)·(h₁, h₂, h₃) with integer h and
h₁ + h₂ + h₃ even; ``half_coordinates`` stores h (folded into the supercell).  Shell k of
neighbours lies at distance a·√(k/2): 12, 6, 24, 12, … sites.

The four simple-cubic sublattices of the conventional cell are labelled by h mod 2:
(0,0,0) → 0, (0,1,1) → 1, (1,0,1) → 2, (1,1,0) → 3.  They are well defined on the periodic
supercell only when its cell vectors are whole conventional-cell translations (a primitive
supercell with every size even, or any conventional supercell); ``sublattice`` is None otherwise.
"""

from __future__ import annotations

import numbers

import ase
import numpy as np
import torch
from ase.build import bulk
from ase.neighborlist import neighbor_list

__all__ = ["FCCLattice", "FCC_SHELL_COORDINATION", "StructureMappingError"]

FCC_SHELL_COORDINATION = (12, 6, 24, 12, 24, 8)
"""Sites in neighbour shells 1..6 of the FCC lattice (distances a·√(k/2))."""

_CELLS = ("primitive", "conventional")


class StructureMappingError(ValueError):
    """A structure's atoms do not sit on the sites of the lattice (the message names the frame)."""


class FCCLattice:
    """A periodic FCC supercell.

    Args:
        size: repetitions of the chosen cell along its three vectors, an int or 3 ints.
        cell: ``"primitive"`` (1 site per cell, vectors (0, a/2, a/2), …) or ``"conventional"``
            (4 sites per cubic cell of edge a).
        lattice_constant: conventional cubic lattice constant a in Å.
        n_shells: neighbour shells to tabulate (1..6).

    Attributes:
        n_sites: D.  positions: float64 ``(D, 3)`` Å.  cell: float64 ``(3, 3)`` Å (rows).
        half_coordinates: int64 ``(D, 3)``, positions / (a/2), rounded.
        shells: list of int64 ``(D, z_k)`` neighbour indices per shell (periodic images each
            counted, so every row has exactly z_k entries even in small cells).
        neighbours: ``shells[0]``, the nearest neighbours ``(D, 12)``.
        sublattice: int64 ``(D,)`` in 0..3, or None when the cell is incommensurate with it.
        coordinates: float64 ``(D, 3)``, positions in units of a (for denoisers).
    """

    def __init__(self, size=(4, 4, 4), cell: str = "primitive", lattice_constant: float = 3.8,
                 n_shells: int = 3):
        self.size = _parse_size(size)
        if cell not in _CELLS:
            raise ValueError(f"cell must be one of {_CELLS}, got {cell!r}")
        if isinstance(lattice_constant, bool) or not isinstance(lattice_constant, numbers.Real) \
                or not np.isfinite(lattice_constant) or lattice_constant <= 0:
            raise ValueError(f"lattice_constant must be a positive number in Å (e.g. 3.8), got {lattice_constant!r}")
        if isinstance(n_shells, bool) or not isinstance(n_shells, numbers.Integral) \
                or not 1 <= n_shells <= len(FCC_SHELL_COORDINATION):
            raise ValueError(f"n_shells must be an integer in 1..{len(FCC_SHELL_COORDINATION)}, got {n_shells!r}")
        self.cell_type = cell
        self.lattice_constant = float(lattice_constant)
        self.n_shells = int(n_shells)
        self._reference = bulk("X", "fcc", a=self.lattice_constant, cubic=cell == "conventional").repeat(self.size)
        self.n_sites = len(self._reference)
        self.cell = np.array(self._reference.cell[:], dtype=np.float64)
        self.positions = np.array(self._reference.positions, dtype=np.float64)
        half = self.positions / (self.lattice_constant / 2)
        self.half_coordinates = np.rint(half).astype(np.int64)
        self.coordinates = torch.from_numpy(self.positions / self.lattice_constant)
        self.shells = self._neighbour_shells()
        self.neighbours = self.shells[0]
        self.sublattice = self._sublattices()

    # ------------------------------------------------------------------ geometry
    def _neighbour_shells(self) -> list[torch.Tensor]:
        a = self.lattice_constant
        cutoff = a * np.sqrt((self.n_shells + 0.5) / 2)
        first, second, distance = neighbor_list("ijd", self._reference, cutoff)
        shell_index = np.rint(2 * (distance / a) ** 2).astype(np.int64)  # k where d = a·√(k/2)
        shells = []
        for k in range(1, self.n_shells + 1):
            z = FCC_SHELL_COORDINATION[k - 1]
            selected = shell_index == k
            rows, cols = first[selected], second[selected]
            order = np.argsort(rows, kind="stable")
            rows, cols = rows[order], cols[order]
            if rows.shape[0] != z * self.n_sites:
                raise RuntimeError(f"shell {k}: expected {z} neighbours per site, found {rows.shape[0] / self.n_sites}")
            shells.append(torch.from_numpy(cols.reshape(self.n_sites, z).astype(np.int64)))
        return shells

    def _sublattices(self) -> torch.Tensor | None:
        cell_half = np.rint(self.cell / (self.lattice_constant / 2)).astype(np.int64)
        if np.any(cell_half % 2):
            return None
        parity = self.half_coordinates % 2
        return torch.from_numpy(2 * parity[:, 0] + parity[:, 1])

    def describe(self) -> str:
        return f"{'×'.join(map(str, self.size))} {self.cell_type} FCC supercell, a = {self.lattice_constant} Å, {self.n_sites} sites"

    # ------------------------------------------------------------------ ASE / pymatgen
    def reference_atoms(self, symbol: str = "Cu") -> ase.Atoms:
        """The supercell with every site occupied by ``symbol`` (site order = atom order)."""
        atoms = self._reference.copy()
        atoms.set_chemical_symbols([symbol] * self.n_sites)
        return atoms

    def to_atoms(self, occupation, species: tuple[str, str], scale: float = 1.0) -> ase.Atoms:
        """``ase.Atoms`` with atom i = ``species[occupation[i]]``; ``scale`` strains isotropically."""
        from .backends import decorate
        occupation = np.asarray(occupation)
        if occupation.shape != (self.n_sites,) or not np.isin(occupation, (0, 1)).all():
            raise ValueError(f"occupation must be {self.n_sites} values in {{0, 1}}, got shape {occupation.shape}")
        return decorate(self._reference, occupation, species, scale)

    def from_atoms(self, atoms: ase.Atoms, species: tuple[str, str], frame: str = "structure") -> np.ndarray:
        """Occupations int64 ``(D,)`` of a structure whose atoms sit on this lattice's sites.

        The structure's cell vectors must be this supercell's up to a rotation and an isotropic
        scale (e.g. a Vegard lattice constant); atoms may be displaced by less than a quarter of the
        nearest-neighbour distance.  Raises :class:`StructureMappingError` naming ``frame``.
        """
        if len(atoms) != self.n_sites:
            raise StructureMappingError(f"{frame}: has {len(atoms)} atoms but the lattice ({self.describe()}) "
                                        f"has {self.n_sites} sites")
        unknown = sorted(set(atoms.get_chemical_symbols()) - set(species))
        if unknown:
            raise StructureMappingError(f"{frame}: species {unknown} are not among the system's species {list(species)}")
        cell = np.array(atoms.cell[:], dtype=np.float64)
        # Compare metric tensors: invariant under rotations (CIF readers reorient cells).
        metric, reference_metric = cell @ cell.T, self.cell @ self.cell.T
        scale2 = np.trace(metric) / np.trace(reference_metric)
        if not np.allclose(metric, scale2 * reference_metric, atol=1e-4 * np.trace(metric)):
            raise StructureMappingError(
                f"{frame}: its cell vectors (lengths {np.round(np.linalg.norm(cell, axis=1), 4).tolist()} Å) are not "
                f"those of the lattice's cell {np.round(self.cell, 4).tolist()} up to a rotation and an isotropic "
                f"scale; build it as a {self.describe()}")
        fractional = np.asarray(atoms.get_scaled_positions(wrap=True))
        reference = np.asarray(self._reference.get_scaled_positions(wrap=True))
        offset = fractional[:, None, :] - reference[None, :, :]
        offset -= np.rint(offset)
        distance = np.linalg.norm(offset @ self.cell, axis=2)  # (atoms, sites) in reference Å
        site = distance.argmin(axis=1)
        tolerance = 0.25 * self.lattice_constant / np.sqrt(2)
        far = distance[np.arange(len(atoms)), site] > tolerance
        if far.any():
            atom = int(np.nonzero(far)[0][0])
            raise StructureMappingError(f"{frame}: atom {atom} at {np.round(atoms.positions[atom], 3).tolist()} Å "
                                        f"is not on a lattice site (tolerance {tolerance:.2f} Å)")
        if np.unique(site).shape[0] != self.n_sites:
            raise StructureMappingError(f"{frame}: several atoms map onto the same lattice site")
        occupation = np.empty(self.n_sites, dtype=np.int64)
        occupation[site] = [species.index(s) for s in atoms.get_chemical_symbols()]
        return occupation

    def to_structure(self, occupation, species: tuple[str, str]):
        """pymatgen ``Structure`` of an occupation (via ASE)."""
        from pymatgen.io.ase import AseAtomsAdaptor
        return AseAtomsAdaptor.get_structure(self.to_atoms(occupation, species))

    def from_structure(self, structure, species: tuple[str, str], frame: str = "structure") -> np.ndarray:
        """Occupations of a pymatgen ``Structure`` (see :meth:`from_atoms`)."""
        from pymatgen.io.ase import AseAtomsAdaptor
        return self.from_atoms(AseAtomsAdaptor.get_atoms(structure), species, frame)


def _parse_size(size) -> tuple[int, int, int]:
    values = (size,) * 3 if isinstance(size, numbers.Integral) and not isinstance(size, bool) else size
    try:
        values = tuple(values)
    except TypeError:
        values = ()
    if len(values) != 3 or any(isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1 for v in values):
        raise ValueError(f"size must be a positive integer or three of them, e.g. [4, 4, 4], got {size!r}")
    return tuple(int(v) for v in values)
