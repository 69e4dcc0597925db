"""The system interface every lattice model implements.

A system maps integer configurations ``x`` (tokens ``0..q-1``, shape ``(B, D)``) to
whole-lattice energies (float64, in ``energy_unit``), collective variables (CVs) and
per-sample observables. Public methods validate their inputs, then call a private
``_method`` that subclasses implement; the private methods may assume clean input.

Conventions: energies are for the whole lattice (not per site); ``beta * energy`` is
dimensionless with ``beta = 1 / (boltzmann_constant * T)``. Lattice models use units of
J with ``boltzmann_constant = 1``.
"""

from __future__ import annotations

import abc
import math
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["CVSpec", "LatticeSystem", "as_configurations"]


@dataclass(frozen=True)
class CVSpec:
    """Range and resolution of a discrete collective variable.

    names:   one name per CV dimension, e.g. ``("m",)`` or ``("p1", "p2")``.
    lower:   smallest attainable value per dimension.
    upper:   largest attainable value per dimension.
    spacing: distance between adjacent attainable values per dimension; attainable
             values are ``lower + k * spacing``. A grid aligned to the CV has
             ``round((upper - lower) / spacing) + 1`` points per dimension
             (see :attr:`grid_points`). In 2-D not every grid node need be attainable.
    """

    names: tuple[str, ...]
    lower: tuple[float, ...]
    upper: tuple[float, ...]
    spacing: tuple[float, ...]

    def __post_init__(self) -> None:
        for field in ("names", "lower", "upper", "spacing"):
            object.__setattr__(self, field, tuple(getattr(self, field)))
        d = len(self.names)
        if d == 0:
            raise ValueError("CVSpec.names must name at least one CV dimension")
        for field in ("lower", "upper", "spacing"):
            if len(getattr(self, field)) != d:
                raise ValueError(
                    f"CVSpec.{field} has {len(getattr(self, field))} entries but names has {d}; "
                    "give one value per CV dimension"
                )
        object.__setattr__(self, "lower", tuple(float(v) for v in self.lower))
        object.__setattr__(self, "upper", tuple(float(v) for v in self.upper))
        object.__setattr__(self, "spacing", tuple(float(v) for v in self.spacing))
        for lo, hi, dx, name in zip(self.lower, self.upper, self.spacing, self.names):
            if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
                raise ValueError(f"CVSpec for {name!r}: need finite lower < upper, got [{lo}, {hi}]")
            if not (math.isfinite(dx) and dx > 0):
                raise ValueError(f"CVSpec.spacing for {name!r} must be a positive number, got {dx}")

    @property
    def dim(self) -> int:
        """Number of CV dimensions d."""
        return len(self.names)

    @property
    def grid_points(self) -> tuple[int, ...]:
        """Points per dimension of the grid whose nodes are the attainable CV values."""
        return tuple(
            int(round((hi - lo) / dx)) + 1 for lo, hi, dx in zip(self.lower, self.upper, self.spacing)
        )

    def grid_index(self, values) -> np.ndarray:
        """Nearest grid index per dimension for CV values ``(B, d)`` -> int64 ``(B, d)``.

        Raises ValueError when a value lies more than half a spacing outside the range.
        """
        arr = np.asarray(values.detach().cpu() if isinstance(values, torch.Tensor) else values,
                         dtype=np.float64)
        if arr.ndim != 2 or arr.shape[1] != self.dim:
            raise ValueError(f"values must have shape (B, {self.dim}), got {arr.shape}")
        lower = np.asarray(self.lower)
        spacing = np.asarray(self.spacing)
        index = np.rint((arr - lower) / spacing).astype(np.int64)
        if np.any(index < 0) or np.any(index >= np.asarray(self.grid_points)):
            raise ValueError("values lie outside the CV range [lower, upper] of this CVSpec")
        return index


def as_configurations(x, n_sites: int, n_states: int, name: str = "x") -> torch.Tensor:
    """Validate a batch of configurations and return it as an integer torch tensor.

    x: integer tensor or array of shape ``(B, n_sites)`` with entries in ``0..n_states-1``.
    The dtype and device are kept (numpy input becomes a CPU tensor).
    """
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor or numpy array of shape (B, {n_sites}), "
                         f"got {type(x).__name__}")
    if x.dtype.is_floating_point or x.dtype.is_complex or x.dtype == torch.bool:
        raise ValueError(f"{name} must have an integer dtype (tokens 0..{n_states - 1}), got {x.dtype}")
    if x.dim() != 2 or x.shape[1] != n_sites:
        raise ValueError(
            f"{name} must have shape (B, {n_sites}), got {tuple(x.shape)}; "
            "for a single configuration use x[None]"
        )
    if x.numel() > 0:
        lo, hi = int(x.min()), int(x.max())
        if lo < 0 or hi >= n_states:
            raise ValueError(f"{name} has entries in [{lo}, {hi}] but tokens must lie in 0..{n_states - 1}")
    return x


class LatticeSystem(abc.ABC):
    """A model on ``n_sites`` sites with ``n_states`` tokens per site.

    Attributes (set by subclasses):
      name:               registry key, e.g. ``"ising"``.
      n_sites:            D.
      n_states:           q (tokens ``0..q-1``).
      neighbours:         int64 ``(D, z)`` nearest-neighbour site indices (periodic).
      coordinates:        float64 ``(D, spatial_dim)`` site positions (lattice units).
      energy_unit:        ``"J"`` for lattice models.
      boltzmann_constant: 1.0 for lattice models (T in J/k_B).
      cv_spec:            :class:`CVSpec` of :meth:`cv`.
      observable_units:   unit per key of :meth:`observables` (``"1"`` = dimensionless).
      headline_observables: the few observables that summary tables show.
      chemical_potential: Δμ of a semi-grand-canonical system (energy unit), which shifts
                          E by −Δμ·N₁; 0 for systems without one.
      composition_observable: name of the observable that is a composition (e.g.
                          ``"x_Au"``), reweightable in Δμ; None for systems without one.
    """

    name: str
    n_sites: int
    n_states: int
    neighbours: torch.Tensor
    coordinates: torch.Tensor
    energy_unit: str = "J"
    boltzmann_constant: float = 1.0
    cv_spec: CVSpec
    observable_units: dict[str, str]
    headline_observables: tuple[str, ...]
    chemical_potential: float = 0.0
    composition_observable: str | None = None

    @abc.abstractmethod
    def energy_per_site_bin_edges(self) -> np.ndarray:
        """Fixed histogram edges for E/N (energy unit per site), one bin per attainable
        value spacing over the whole attainable range, so that histograms of different
        runs (and the two sides of a JS divergence) always share their bins."""

    # ----------------------------------------------------------------- public API
    def energy(self, x) -> torch.Tensor:
        """Whole-lattice energy. x int ``(B, D)`` -> float64 ``(B,)`` in ``energy_unit``."""
        return self._energy(self._check(x))

    def energy_change(self, x, sites, new_states) -> torch.Tensor:
        """``E(x') - E(x)`` where x' sets ``x[b, sites[b]] = new_states[b]`` (one site per row).

        x int ``(B, D)``; sites int64 ``(B,)``; new_states int64 ``(B,)`` -> float64 ``(B,)``.
        A row whose new state equals the current one gives 0.
        """
        x = self._check(x)
        sites = self._check_index_vector(sites, x.shape[0], self.n_sites, "sites", x.device)
        new_states = self._check_index_vector(new_states, x.shape[0], self.n_states, "new_states", x.device)
        return self._energy_change(x, sites, new_states)

    def cv(self, x) -> torch.Tensor:
        """Collective variable. x int ``(B, D)`` -> float64 ``(B, cv_spec.dim)``."""
        return self._cv(self._check(x))

    def observables(self, x, energy=None) -> dict[str, torch.Tensor]:
        """Per-sample observables. x int ``(B, D)`` -> dict name -> float64 ``(B,)``.

        ``energy`` float64 ``(B,)``: the energies of x when the caller has them already
        (they are used as given, and the energy backend is not called again)."""
        x = self._check(x)
        if energy is None:
            energy = self._energy(x)
        energy = torch.as_tensor(energy, dtype=torch.float64, device=x.device)
        if energy.shape != (x.shape[0],):
            raise ValueError(f"energy must have one value per configuration, shape ({x.shape[0]},), got {tuple(energy.shape)}")
        return self._observables(x, energy)

    def attainable_cv(self) -> np.ndarray | None:
        """Every CV value some configuration has, float64 ``(K, cv_spec.dim)``, for a CV whose
        attainable values are not the whole grid of ``cv_spec`` (an irregular 2-D domain, which
        the bias's edge correction then respects); None when they are, or when unknown."""
        return None

    @abc.abstractmethod
    def to_config(self) -> dict:
        """Parameters that rebuild this system: ``make_system(**system.to_config())``."""

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.to_config().items() if k != "name")
        return f"{type(self).__name__}({params})"

    # ------------------------------------------------------- subclass hooks
    @abc.abstractmethod
    def _energy(self, x: torch.Tensor) -> torch.Tensor: ...

    @abc.abstractmethod
    def _energy_change(self, x: torch.Tensor, sites: torch.Tensor, new_states: torch.Tensor) -> torch.Tensor: ...

    @abc.abstractmethod
    def _cv(self, x: torch.Tensor) -> torch.Tensor: ...

    @abc.abstractmethod
    def _observables(self, x: torch.Tensor, energy: torch.Tensor) -> dict[str, torch.Tensor]: ...

    # ------------------------------------------------------------- helpers
    def _check(self, x) -> torch.Tensor:
        return as_configurations(x, self.n_sites, self.n_states)

    @staticmethod
    def _check_index_vector(v, batch: int, bound: int, name: str, device) -> torch.Tensor:
        if isinstance(v, np.ndarray):
            v = torch.from_numpy(v)
        if not isinstance(v, torch.Tensor) or v.dtype.is_floating_point or v.dtype == torch.bool:
            raise ValueError(f"{name} must be an integer tensor of shape ({batch},)")
        if v.shape != (batch,):
            raise ValueError(f"{name} must have shape ({batch},) (one entry per row of x), got {tuple(v.shape)}")
        if batch > 0 and (int(v.min()) < 0 or int(v.max()) >= bound):
            raise ValueError(f"{name} entries must lie in 0..{bound - 1}")
        return v.to(device=device, dtype=torch.int64)

    @staticmethod
    def _counts(x: torch.Tensor, n_states: int) -> torch.Tensor:
        """Number of sites in each state, int64 ``(B, q)``."""
        counts = torch.zeros(x.shape[0], n_states, dtype=torch.int64, device=x.device)
        return counts.scatter_add_(1, x.long(), torch.ones_like(x, dtype=torch.int64))
