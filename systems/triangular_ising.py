"""Ising model on the periodic L x L triangular lattice.

Sites are labelled by lattice coordinates (i, j), site index ``i * L + j``, position
i·a1 + j·a2 with primitive vectors a1, a2 at 60° (unit length).  The six nearest
neighbours of (i, j) are (i±1, j), (i, j±1), (i+1, j−1) and (i−1, j+1), all modulo L;
they are distinct for L ≥ 3 (for L = 2 opposite neighbours coincide), so L ≥ 3 is required.

Tokens x in {0, 1}, spins s = 2x - 1. Energy (units of J, k_B = 1):
E(x) = -J sum_<ij> s_i s_j - h sum_i s_i over the 3 L² bonds, each counted once.
CV: magnetisation per site m = mean(s) in [-1, 1], spacing 2/D.
Exact ferromagnetic critical point (zero field): β_c J = ln(3) / 4 ≈ 0.2747.

Everything but the geometry (spins, energy over ``bonds``, single-flip energy change over
``neighbours``, CV, observables, energy bins, configuration round trip, Swendsen–Wang via
``bonds``) is :class:`IsingModel`'s, which builds its lattice from ``lattice_class``.
"""

from __future__ import annotations

import torch

from .ising import IsingModel
from .lattice import Lattice

__all__ = ["TriangularLattice", "TriangularIsingModel"]


class TriangularLattice(Lattice):
    """Periodic ``L x L`` triangular lattice (L ≥ 3), in lattice coordinates.

    ``coordinates[k] = (i, j)`` for site ``k = i * L + j`` (lattice units along a1, a2; the
    torus has period L along both, as for the square lattice).
    ``neighbours[k]`` = the sites at (i+1, j), (i, j+1), (i+1, j−1), then (i−1, j), (i, j−1),
    (i−1, j+1): the three :attr:`DIRECTIONS` forwards, then backwards (z = 6, all distinct).
    ``bonds`` holds the forward bonds of all sites, direction by direction: ``3D`` bonds, each once.
    """

    DIRECTIONS = ((1, 0), (0, 1), (1, -1))
    """The three bond directions a1, a2, a1 − a2 as steps (di, dj)."""

    def __init__(self, L: int):
        if isinstance(L, bool) or int(L) != L or L < 3:
            raise ValueError(f"L must be an integer >= 3 (linear size of the periodic triangular lattice; "
                             f"for L = 2 opposite neighbours coincide), got {L!r}")
        self.L = int(L)
        self.n_sites = self.L * self.L
        site = torch.arange(self.n_sites, dtype=torch.int64)
        self.coordinates = torch.stack([site // self.L, site % self.L], dim=1).to(torch.float64)
        forward = torch.stack([self.translation(di, dj) for di, dj in self.DIRECTIONS], dim=1)
        backward = torch.stack([self.translation(-di, -dj) for di, dj in self.DIRECTIONS], dim=1)
        self.neighbours = torch.cat([forward, backward], dim=1)
        self.bonds = torch.stack([site.repeat(len(self.DIRECTIONS)), forward.T.reshape(-1)], dim=1)

    def translations(self, r: int) -> torch.Tensor:
        """Translations by ``r`` along the three :attr:`DIRECTIONS`: int64 ``(3, D)``."""
        return torch.stack([self.translation(r * di, r * dj) for di, dj in self.DIRECTIONS])

    def translation(self, di: int, dj: int) -> torch.Tensor:
        """Index map of the translation by (di, dj): int64 ``(D,)``, ``out[k]`` = site (i+di, j+dj) mod L."""
        if int(di) != di or int(dj) != dj:
            raise ValueError(f"di and dj must be integers, got {di!r}, {dj!r}")
        i, j = self.coordinates.long().unbind(dim=1)
        return ((i + int(di)) % self.L) * self.L + (j + int(dj)) % self.L

    def __repr__(self) -> str:
        return f"TriangularLattice(L={self.L})"


class TriangularIsingModel(IsingModel):
    """Periodic L x L triangular-lattice Ising model (L ≥ 3), coupling J, field h, energies in J.

    Observables as for :class:`IsingModel`; ``correlation_r{r}`` averages over the three bond
    directions (C(1) = -E/(3D) for J = 1, h = 0).
    """

    name = "triangular_ising"
    lattice_class = TriangularLattice
