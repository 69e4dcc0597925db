"""Binary substitutional alloy on a periodic FCC supercell (Cu–Au is the shipped case).

Occupations x_i ∈ {0 = species[0], 1 = species[1]} (Cu, Au).  Units: eV and kelvin,
k_B = 8.617333262e-5 eV/K (docs/method.md §1).  Energy used in the Boltzmann factor
(semi-grand-canonical, whole cell, eV):

    E_Δμ(x) = E_f(x) − Δμ·N₁(x),   E_f(x) = E(x) − (D − N₁)·e₀ − N₁·e₁,

with E(x) the backend's total energy, e₀ and e₁ the per-site energies of the pure cells
(so both pure cells have E_f = 0), N₁ the number of species[1] atoms and Δμ = ``delta_mu``
(eV; Δμ > 0 favours species[1]).  Δμ = 0 with the paper's CE is the paper's ensemble.

CVs: ``cv="composition"`` → x₁ = N₁/D (1-D, spacing 1/D);
``cv="composition_order"`` → (x₁, η) with η the long-range order parameter below
(2-D; η is not confined to a grid, its "spacing" 1/D is the resolution of the bias grid).

Long-range order: the amplitudes of the three X-point concentration waves,
η_α = (1/D) Σ_i x_i (−1)^{h_iα} (h = half-lattice coordinates), combined translation-
invariantly as η = 2·|(η_1, η_2, η_3)|: 0 for a random alloy (to O(D^−½)), 1 for L1_0
(CuAu), √3/2 ≈ 0.866 for L1_2 (Cu₃Au and CuAu₃).  Needs a supercell commensurate with
the conventional cell (see :class:`FCCLattice`).

Warren–Cowley short-range order of shell k: α_k = (⟨σ_iσ_j⟩_k − m²)/(1 − m²) with σ = 2x − 1,
m = ⟨σ⟩ over the cell and ⟨·⟩_k over all ordered shell-k pairs; α_k = 0 for a pure cell.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import torch

from ..base import CVSpec, LatticeSystem
from ..units import BOLTZMANN_EV_PER_K
from .backends import EnergyBackend
from .fcc import FCCLattice

__all__ = ["BinaryAlloy", "BOLTZMANN_EV_PER_K", "build_backend"]

_CVS = ("composition", "composition_order")


def build_backend(spec: dict, lattice: FCCLattice, species: tuple[str, str]) -> EnergyBackend:
    """Build an energy backend from plain data (what the config's ``system.energy`` holds):
    ``spec["name"]`` selects an entry of systems.registry.ENERGY_BACKENDS, whose factory
    ``from_options(options, lattice, species)`` receives the other keys, e.g.
    ``{"name": "cluster_expansion", "model": "cuau_paper"}`` or ``{"name": "ase"}`` (EMT).
    """
    from ..registry import ENERGY_BACKENDS  # noqa: PLC0415 - the registry names this module

    if not isinstance(spec, dict) or "name" not in spec:
        raise ValueError(f"the energy backend must be a mapping with a 'name' (one of {list(ENERGY_BACKENDS)}), "
                         f"got {spec!r}")
    if spec["name"] not in ENERGY_BACKENDS:
        raise ValueError(f"unknown energy backend {spec['name']!r}; valid names: {list(ENERGY_BACKENDS)}")
    options = {key: value for key, value in spec.items() if key != "name"}
    return ENERGY_BACKENDS[spec["name"]].load()(options, lattice, species)


class BinaryAlloy(LatticeSystem):
    """Binary alloy on an FCC supercell with a pluggable energy backend (eV, kelvin).

    Args:
        size, cell, lattice_constant: the :class:`FCCLattice` (Å).
        species: chemical symbols of occupation 0 and 1, e.g. ``("Cu", "Au")``.
        energy: backend spec (see :func:`build_backend`), e.g. ``{"name": "cluster_expansion",
            "model": "cuau_paper"}``.
        delta_mu: Δμ in eV (semi-grand-canonical; 0 = the formation energy alone).
        cv: ``"composition"`` or ``"composition_order"``.

    Observables (per sample, float64 ``(B,)``): ``energy_per_site`` (E_Δμ/D, eV),
    ``formation_energy_per_atom`` (E_f/D, eV), ``x_<species[1]>``, ``warren_cowley_<k>``
    for k = 1..3, and ``long_range_order`` η when the cell has the four sublattices.
    """

    name = "alloy"

    def __init__(self, size=(4, 4, 4), cell: str = "primitive", lattice_constant: float = 3.8,
                 species=("Cu", "Au"), energy: dict | None = None, delta_mu: float = 0.0,
                 cv: str = "composition"):
        self.lattice = FCCLattice(size, cell, lattice_constant, n_shells=3)
        species = tuple(species)
        if len(species) != 2 or len(set(species)) != 2 or not all(isinstance(s, str) for s in species):
            raise ValueError(f"species must be two different chemical symbols, e.g. ['Cu', 'Au'], got {list(species)}")
        if isinstance(delta_mu, bool) or not isinstance(delta_mu, numbers.Real) or not math.isfinite(delta_mu):
            raise ValueError(f"delta_mu must be a finite number in eV, got {delta_mu!r}")
        if cv not in _CVS:
            raise ValueError(f"cv must be one of {_CVS}, got {cv!r}")
        if cv == "composition_order" and self.lattice.sublattice is None:
            raise ValueError(f"cv 'composition_order' needs the four FCC sublattices, which a {self.lattice.describe()} "
                             "does not have; use a conventional cell or even primitive sizes")
        self.species = species
        self.energy_spec = dict(energy or {"name": "cluster_expansion", "model": "cuau_paper"})
        self.backend = build_backend(self.energy_spec, self.lattice, species)
        self.delta_mu = float(delta_mu)
        self.cv_kind = cv
        self.n_sites = self.lattice.n_sites
        self.n_states = 2
        self.neighbours = self.lattice.neighbours
        self.coordinates = self.lattice.coordinates
        self.energy_unit = "eV"
        self.boltzmann_constant = BOLTZMANN_EV_PER_K
        D = self.n_sites
        pure = torch.stack([torch.zeros(D, dtype=torch.int64), torch.ones(D, dtype=torch.int64)])
        self.pure_energies_per_site = (self.backend.energy(pure) / D).to(torch.float64)  # (e₀, e₁) eV
        fraction = f"x_{species[1]}"
        if cv == "composition":
            self.cv_spec = CVSpec(names=(fraction,), lower=(0.0,), upper=(1.0,), spacing=(1.0 / D,))
        else:
            self.cv_spec = CVSpec(names=(fraction, "long_range_order"), lower=(0.0, 0.0), upper=(1.0, 1.0),
                                  spacing=(1.0 / D, 1.0 / D))
        self.fraction_name = fraction
        self.observable_units = {"energy_per_site": "eV", "formation_energy_per_atom": "eV", fraction: "1",
                                 **{f"warren_cowley_{k}": "1" for k in (1, 2, 3)}}
        if self.lattice.sublattice is not None:
            self.observable_units["long_range_order"] = "1"
            half = torch.from_numpy(self.lattice.half_coordinates)
            self._wave_signs = (1.0 - 2.0 * (half % 2)).to(torch.float64)  # (D, 3) = (−1)^{h_α}
        self.headline_observables = (fraction, "formation_energy_per_atom") + \
            (("long_range_order",) if self.lattice.sublattice is not None else ())

    @property
    def chemical_potential(self) -> float:
        """Δμ in eV: the energy the sampler sees is E_f − Δμ·N₁."""
        return self.delta_mu

    @property
    def composition_observable(self) -> str:
        """The observable x of species[1] (``x_Au``), reweightable in Δμ."""
        return self.fraction_name

    def to_config(self) -> dict:
        return {"name": self.name, "size": list(self.lattice.size), "cell": self.lattice.cell_type,
                "lattice_constant": self.lattice.lattice_constant, "species": list(self.species),
                "energy": dict(self.energy_spec), "delta_mu": self.delta_mu, "cv": self.cv_kind}

    def energy_per_site_bin_edges(self) -> np.ndarray:
        """Fixed 2 meV bins over [−1, 1] eV per site (E_Δμ/D), the same for every run."""
        return np.linspace(-1.0, 1.0, 1001)

    # ------------------------------------------------------------------ physics
    def formation_energy(self, x) -> torch.Tensor:
        """E_f(x) in eV per cell, float64 ``(B,)`` (pure cells at zero)."""
        return self._formation_energy(self._check(x))

    def _formation_energy(self, x: torch.Tensor) -> torch.Tensor:
        n1 = x.sum(dim=1).to(torch.float64)
        e0, e1 = (float(e) for e in self.pure_energies_per_site)
        return self.backend.energy(x) - (self.n_sites - n1) * e0 - n1 * e1

    def _energy(self, x):
        return self._formation_energy(x) - self.delta_mu * x.sum(dim=1).to(torch.float64)

    def _energy_change(self, x, sites, new_states):
        rows = torch.arange(x.shape[0], device=x.device)
        gained = (new_states - x[rows, sites].long()).to(torch.float64)  # Δn₁ ∈ {−1, 0, 1}
        e0, e1 = (float(e) for e in self.pure_energies_per_site)
        return self.backend.energy_change(x, sites, new_states) - gained * (e1 - e0 + self.delta_mu)

    def _cv(self, x):
        fraction = x.sum(dim=1).to(torch.float64) / self.n_sites
        if self.cv_kind == "composition":
            return fraction[:, None]
        return torch.stack([fraction, self._long_range_order(x)], dim=1)

    def _long_range_order(self, x: torch.Tensor) -> torch.Tensor:
        amplitudes = x.to(torch.float64) @ self._wave_signs.to(x.device) / self.n_sites  # (B, 3)
        return 2.0 * amplitudes.norm(dim=1)

    def warren_cowley(self, x: torch.Tensor, shell: int) -> torch.Tensor:
        """α_shell per configuration, float64 ``(B,)`` (0 for pure cells)."""
        spins = 2.0 * x.to(torch.float64) - 1.0
        neighbours = self.lattice.shells[shell - 1].to(x.device)
        pair = (spins[:, :, None] * spins[:, neighbours]).mean(dim=(1, 2))
        m2 = spins.mean(dim=1) ** 2
        disordered = 1.0 - m2
        return torch.where(disordered > 0, (pair - m2) / disordered.clamp_min(1e-300), torch.zeros_like(pair))

    def _observables(self, x, energy):
        n1 = x.sum(dim=1).to(torch.float64)
        out = {"energy_per_site": energy / self.n_sites,
               "formation_energy_per_atom": (energy + self.delta_mu * n1) / self.n_sites,
               self.fraction_name: n1 / self.n_sites}
        for k in (1, 2, 3):
            out[f"warren_cowley_{k}"] = self.warren_cowley(x, k)
        if self.lattice.sublattice is not None:
            out["long_range_order"] = self._long_range_order(x)
        return out
