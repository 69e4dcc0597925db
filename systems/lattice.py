"""Lattice geometry: site positions and periodic nearest-neighbour index tensors.

Every lattice exposes the same attributes, so energy models only see index tensors:
  n_sites:     D.
  neighbours:  int64 ``(D, z)``; row i lists the z nearest neighbours of site i (periodic).
               On very small cells a neighbour may appear twice (L = 2 square lattice),
               consistently with ``bonds``.
  bonds:       int64 ``(n_bonds, 2)``; each nearest-neighbour bond listed once.
  coordinates: float64 ``(D, spatial_dim)`` site positions in lattice units.
"""

from __future__ import annotations

import torch

__all__ = ["Lattice", "SquareLattice"]


class Lattice:
    """Common shape of a periodic lattice (see module docstring for the attributes)."""

    n_sites: int
    neighbours: torch.Tensor
    bonds: torch.Tensor
    coordinates: torch.Tensor

    @property
    def coordination(self) -> int:
        """Number of nearest neighbours z per site."""
        return int(self.neighbours.shape[1])

    @property
    def n_bonds(self) -> int:
        return int(self.bonds.shape[0])

    def translations(self, r: int) -> torch.Tensor:
        """Index maps of the translations by ``r`` steps along each bond direction: int64
        ``(n_directions, D)``, ``out[a, i]`` = the site r steps from i along direction a, so
        ``(s[:, None, :] * s[:, out]).mean((1, 2))`` is the correlation C(r)."""
        raise NotImplementedError(f"{type(self).__name__} does not define its bond directions")


class SquareLattice(Lattice):
    """Periodic ``L x L`` square lattice.

    Site index ``i = row * L + col``. ``coordinates[i] = (row, col)``.
    ``neighbours[i] = (right, down, left, up)`` = sites at (row, col+1), (row+1, col),
    (row, col-1), (row-1, col), all modulo L.
    ``bonds`` holds the right bonds of all sites (rows ``0..D-1``) then the down bonds
    (rows ``D..2D-1``): ``2D`` bonds, each once. For ``L = 2`` the right and left
    neighbour coincide and each pair of sites is joined by two bonds (standard periodic
    convention E = -J sum_i (s_i s_{i+x} + s_i s_{i+y})).
    """

    def __init__(self, L: int):
        if isinstance(L, bool) or int(L) != L or L < 2:
            raise ValueError(f"L must be an integer >= 2 (linear size of the periodic lattice), got {L!r}")
        self.L = int(L)
        self.n_sites = self.L * self.L
        index = torch.arange(self.n_sites, dtype=torch.int64)
        row, col = index // self.L, index % self.L
        self.coordinates = torch.stack([row, col], dim=1).to(torch.float64)
        right, down = self.shift(1, axis=1), self.shift(1, axis=0)
        left, up = self.shift(-1, axis=1), self.shift(-1, axis=0)
        self.neighbours = torch.stack([right, down, left, up], dim=1)
        self.bonds = torch.cat(
            [torch.stack([index, right], dim=1), torch.stack([index, down], dim=1)], dim=0
        )

    def shift(self, r: int, axis: int) -> torch.Tensor:
        """Index map of a translation by ``r`` sites along ``axis`` (0: rows/down, 1: columns/right).

        Returns int64 ``(D,)`` with ``out[i]`` = the site r steps from i, so ``s[:, out]`` is
        the configuration seen at distance r and ``(s * s[:, out]).mean(1)`` gives C(r) along
        that axis.
        """
        if axis not in (0, 1):
            raise ValueError(f"axis must be 0 (rows) or 1 (columns), got {axis!r}")
        if int(r) != r:
            raise ValueError(f"r must be an integer, got {r!r}")
        index = torch.arange(self.n_sites, dtype=torch.int64)
        row, col = index // self.L, index % self.L
        if axis == 0:
            row = (row + int(r)) % self.L
        else:
            col = (col + int(r)) % self.L
        return row * self.L + col

    def translations(self, r: int) -> torch.Tensor:
        """Translations by ``r`` along the two axes: int64 ``(2, D)`` (rows/down, columns/right)."""
        return torch.stack([self.shift(r, axis=0), self.shift(r, axis=1)])

    def __repr__(self) -> str:
        return f"SquareLattice(L={self.L})"
