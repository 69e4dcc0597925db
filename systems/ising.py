"""Ising model on the periodic L x L square lattice.

Tokens x in {0, 1}, spins s = 2x - 1 in {-1, +1}.
Energy (units of J, k_B = 1):  E(x) = -J sum_<ij> s_i s_j - h sum_i s_i,
each nearest-neighbour bond counted once (2D bonds, see :class:`SquareLattice`).
CV: magnetisation per site m = mean(s) in [-1, 1], spacing 2/D.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .base import CVSpec, LatticeSystem
from .lattice import SquareLattice

__all__ = ["IsingModel"]


class IsingModel(LatticeSystem):
    """Periodic L x L Ising model with coupling J and field h (``field``), energies in J.

    Observables (per sample, float64 ``(B,)``):
      energy_per_site  E/D                                    [J]
      magnetisation    m = mean(s)                            [1]
      abs_magnetisation |m|                                   [1]
      correlation_r{r} mean over sites and the lattice's bond directions of s_i s_{i+r},
                       r = 1..L//2  [1] (C(1) = -E/(2D) on the square lattice for J = 1, h = 0)
    """

    name = "ising"
    lattice_class = SquareLattice
    """The periodic lattice built from ``L`` (a subclass may put the model on another lattice)."""

    def __init__(self, L: int, J: float = 1.0, field: float = 0.0):
        self.lattice = self.lattice_class(L)
        for label, value in (("J", J), ("field", field)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{label} must be a finite number, got {value!r}")
        self.L = self.lattice.L
        self.J = float(J)
        self.field = float(field)
        self.n_sites = self.lattice.n_sites
        self.n_states = 2
        self.neighbours = self.lattice.neighbours
        self.bonds = self.lattice.bonds
        self.coordinates = self.lattice.coordinates
        self.energy_unit = "J"
        self.boltzmann_constant = 1.0
        self.cv_spec = CVSpec(names=("m",), lower=(-1.0,), upper=(1.0,), spacing=(2.0 / self.n_sites,))
        self.correlation_distances = tuple(range(1, self.L // 2 + 1))
        self._translations = {r: self.lattice.translations(r) for r in self.correlation_distances}
        self.observable_units = {
            "energy_per_site": "J",
            "magnetisation": "1",
            "abs_magnetisation": "1",
            "positive_magnetisation": "1",
            **{f"correlation_r{r}": "1" for r in self.correlation_distances},
        }
        self.headline_observables = ("energy_per_site", "abs_magnetisation", "positive_magnetisation",
                                     "correlation_r1")

    def to_config(self) -> dict:
        return {"name": self.name, "L": self.L, "J": self.J, "field": self.field}

    def energy_per_site_bin_edges(self) -> np.ndarray:
        """Bins of width 4|J|/D (the spacing of E/N at h = 0) centred on −cJ + k·4|J|/D,
        covering [−(c|J| + |h|), c|J| + |h|], with c = bonds per site (2 on the square lattice).

        At h = 0 every attainable E/N is a centre: E/N = −cJ + 2J·n/D with n, the number of
        unsatisfied bonds, even (a spin flip changes it by z − 2·(its unsatisfied bonds))."""
        bonds_per_site = self.lattice.n_bonds / self.n_sites
        spacing = 4.0 * abs(self.J) / self.n_sites if self.J != 0 else 2.0 * max(abs(self.field), 1.0) / self.n_sites
        half_range = bonds_per_site * abs(self.J) + abs(self.field)
        k_max = int(np.ceil(half_range / spacing - 1e-9))
        # offset of the lattice of E/N values from 0, with a tolerance so that −cJ/spacing within
        # rounding of an integer gives 0 (a plain float % gave a whole spacing at L = 6)
        steps = 0.0 if self.J == 0 else -bonds_per_site * self.J / spacing
        offset = (steps - np.floor(steps + 1e-9)) * spacing
        offset = 0.0 if offset < 1e-9 * spacing else offset
        centres = spacing * np.arange(-k_max, k_max + 1) + offset
        return np.concatenate([centres - spacing / 2, centres[-1:] + spacing / 2])

    # ------------------------------------------------------------------ physics
    @staticmethod
    def spins(x: torch.Tensor) -> torch.Tensor:
        """Tokens {0,1} -> spins {-1,+1} as float64 (same shape)."""
        return 2.0 * x.to(torch.float64) - 1.0

    def _energy(self, x: torch.Tensor) -> torch.Tensor:
        s = self.spins(x)
        bonds = self.bonds.to(x.device)
        bond_sum = (s[:, bonds[:, 0]] * s[:, bonds[:, 1]]).sum(dim=1)
        return -self.J * bond_sum - self.field * s.sum(dim=1)

    def _energy_change(self, x, sites, new_states):
        rows = torch.arange(x.shape[0], device=x.device)
        s_old = self.spins(x[rows, sites])
        s_new = self.spins(new_states)
        neighbour_sum = self.spins(x.gather(1, self.neighbours.to(x.device)[sites])).sum(dim=1)
        return -(s_new - s_old) * (self.J * neighbour_sum + self.field)

    def _magnetisation(self, x: torch.Tensor) -> torch.Tensor:
        # From the integer count of up spins so that equal counts give bit-identical CVs.
        n_up = x.long().sum(dim=1)
        return (2 * n_up - self.n_sites).to(torch.float64) / self.n_sites

    def _cv(self, x):
        return self._magnetisation(x)[:, None]

    def _observables(self, x, energy):
        s = self.spins(x)
        m = self._magnetisation(x)
        out = {
            "energy_per_site": energy / self.n_sites,
            "magnetisation": m,
            "abs_magnetisation": m.abs(),
            # Indicator of the m > 0 mode, ½ at m = 0, so that its exact mean is ½ at h = 0.
            "positive_magnetisation": (m > 0).to(torch.float64) + 0.5 * (m == 0).to(torch.float64),
        }
        for r, translations in self._translations.items():  # (n_directions, D)
            pair_sum = (s[:, None, :] * s[:, translations.to(x.device)]).sum(dim=(1, 2))
            out[f"correlation_r{r}"] = pair_sum / translations.numel()
        return out
