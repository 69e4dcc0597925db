"""q-state Potts model on the periodic L x L square lattice.

Tokens x in {0..q-1}. Energy (units of J, k_B = 1):  E(x) = -J sum_<ij> delta(x_i, x_j),
each nearest-neighbour bond counted once (2D bonds, see :class:`SquareLattice`).
Concentrations c_k = fraction of sites in state k.
CV for q = 3: the 2-D projection of (c0, c1, c2) onto the plane c0 + c1 + c2 = 1,
  p1 = c0 - (c1 + c2)/2   in [-1/2, 1],          spacing 3/(2D)
  p2 = (sqrt(3)/2)(c1 - c2) in [-sqrt(3)/2, sqrt(3)/2], spacing sqrt(3)/(2D)
(the three pure states sit at the corners of an equilateral triangle: state 0 at (1, 0),
state 1 at (-1/2, sqrt(3)/2), state 2 at (-1/2, -sqrt(3)/2)).
CV for q != 3: c0 in [0, 1], spacing 1/D.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .base import CVSpec, LatticeSystem
from .lattice import SquareLattice

__all__ = ["PottsModel"]

_SQRT3 = math.sqrt(3.0)


class PottsModel(LatticeSystem):
    """Periodic L x L q-state Potts model with coupling J, energies in J.

    Observables (per sample, float64 ``(B,)``):
      energy_per_site  E/D                                  [J]
      concentration_k  c_k for k = 0..q-1                   [1]
      order_parameter  (q * max_k c_k - 1) / (q - 1), 0 when all c_k = 1/q, 1 when ordered  [1]
    """

    name = "potts"

    def __init__(self, L: int, q: int = 3, J: float = 1.0):
        self.lattice = SquareLattice(L)
        if isinstance(q, bool) or int(q) != q or q < 2:
            raise ValueError(f"q must be an integer >= 2 (number of Potts states), got {q!r}")
        if q > 127:
            raise ValueError(f"q must be <= 127 so that configurations fit in int8, got {q}")
        if isinstance(J, bool) or not isinstance(J, (int, float)) or not math.isfinite(J):
            raise ValueError(f"J must be a finite number, got {J!r}")
        self.L = self.lattice.L
        self.q = int(q)
        self.J = float(J)
        self.n_sites = self.lattice.n_sites
        self.n_states = self.q
        self.neighbours = self.lattice.neighbours
        self.bonds = self.lattice.bonds
        self.coordinates = self.lattice.coordinates
        self.energy_unit = "J"
        self.boltzmann_constant = 1.0
        D = self.n_sites
        if self.q == 3:
            self.cv_spec = CVSpec(
                names=("p1", "p2"),
                lower=(-0.5, -_SQRT3 / 2),
                upper=(1.0, _SQRT3 / 2),
                spacing=(3.0 / (2 * D), _SQRT3 / (2 * D)),
            )
        else:
            self.cv_spec = CVSpec(names=("c0",), lower=(0.0,), upper=(1.0,), spacing=(1.0 / D,))
        self.observable_units = {
            "energy_per_site": "J",
            **{f"concentration_{k}": "1" for k in range(self.q)},
            "order_parameter": "1",
        }
        self.headline_observables = ("energy_per_site", "order_parameter")

    def to_config(self) -> dict:
        return {"name": self.name, "L": self.L, "q": self.q, "J": self.J}

    def energy_per_site_bin_edges(self) -> np.ndarray:
        """E = −J·(number of equal bonds), 2D bonds: E/N takes the values −J·k/D,
        k = 0..2D; one bin of width |J|/D centred on each."""
        spacing = abs(self.J) / self.n_sites if self.J != 0 else 1.0 / self.n_sites
        centres = -np.sign(self.J or 1.0) * spacing * np.arange(2 * self.n_sites + 1)
        centres = np.sort(centres)
        return np.concatenate([centres - spacing / 2, centres[-1:] + spacing / 2])

    # ------------------------------------------------------------------ physics
    def _energy(self, x):
        bonds = self.bonds.to(x.device)
        equal = (x[:, bonds[:, 0]] == x[:, bonds[:, 1]]).sum(dim=1)
        return -self.J * equal.to(torch.float64)

    def _energy_change(self, x, sites, new_states):
        rows = torch.arange(x.shape[0], device=x.device)
        old_states = x[rows, sites].long()
        neighbour_states = x.gather(1, self.neighbours.to(x.device)[sites]).long()  # (B, z)
        equal_new = (neighbour_states == new_states[:, None]).sum(dim=1)
        equal_old = (neighbour_states == old_states[:, None]).sum(dim=1)
        return -self.J * (equal_new - equal_old).to(torch.float64)

    def _cv(self, x):
        counts = self._counts(x, self.q)
        if self.q == 3:
            return self._triangle_point(counts)
        return (counts[:, 0].to(torch.float64) / self.n_sites)[:, None]

    def attainable_cv(self) -> np.ndarray | None:
        """For q = 3 the (p1, p2) of every composition (n0, n1, n2), n0 + n1 + n2 = D: the nodes
        of the triangle, float64 ((D+1)(D+2)/2, 2), computed as :meth:`cv` computes them."""
        if self.q != 3:
            return None
        D = self.n_sites
        n0, n1 = np.nonzero(np.add.outer(np.arange(D + 1), np.arange(D + 1)) <= D)
        counts = torch.from_numpy(np.stack([n0, n1, D - n0 - n1], axis=1))
        return self._triangle_point(counts).numpy()

    def _triangle_point(self, counts: torch.Tensor) -> torch.Tensor:
        """(p1, p2) float64 (B, 2) of q = 3 state counts int (B, 3), built from the integer
        counts so that equal counts give bit-identical CVs."""
        D = self.n_sites
        p1 = (3 * counts[:, 0] - D).to(torch.float64) / (2 * D)
        p2 = (_SQRT3 / 2) * (counts[:, 1] - counts[:, 2]).to(torch.float64) / D
        return torch.stack([p1, p2], dim=1)

    def _observables(self, x, energy):
        concentrations = self._counts(x, self.q).to(torch.float64) / self.n_sites
        out = {"energy_per_site": energy / self.n_sites}
        for k in range(self.q):
            out[f"concentration_{k}"] = concentrations[:, k]
        out["order_parameter"] = (self.q * concentrations.max(dim=1).values - 1.0) / (self.q - 1)
        return out
