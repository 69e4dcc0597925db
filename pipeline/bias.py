"""Well-tempered metadynamics bias on a regular grid (1-D or 2-D collective variable).

Size (slightly over the ~400-line guide): one class, the grid bias, with its deposition,
interpolation, FES and HILLS export, which share the grid conventions below.

Conventions (see docs/method.md §2–3):

* ``V`` is stored on the grid nodes in the run's energy unit (J for lattice models, eV for
  alloys); ``kT`` is given in the same unit, so ``V / kT`` is dimensionless.
* ``value(s)`` reads V at the **nearest grid node** (no interpolation). Build the grid so
  that its nodes coincide with the values the CV can take (``cv_spacing`` checks this,
  ``WellTemperedGridBias.aligned`` builds such a grid); then the lookup is exact.
* Deposition is well-tempered with bias factor γ: ΔT = (γ−1)·T, so
  ``k_B ΔT = (γ−1)·kT`` and a hill centred at s_i has height
  ``h_i = h0 · exp(−V(s_i) / ((γ−1)·kT))`` and shape ``exp(−|g − s_i|² / (2σ²))``
  (a product over dimensions in 2-D). All hills of one ``deposit`` call are computed
  against the same snapshot of V (batch deposition), then added together.
* Free energy: ``F(s) = −γ/(γ−1) · V(s) / kT``, in k_BT for the whole system, gauge min F = 0.
* Edge correction (``edge_correction=True``): the well-tempered fixed point gives F exactly only
  if every attainable node receives the same total kernel weight Σ_s K(g, s) from hills at the
  attainable s. A Gaussian cut off at the grid edge gives edge nodes about half, so F comes out
  k_BT too high there. With the correction each hill is reflected about lower − Δ/2 and
  upper + Δ/2 (Δ the node spacing; images of images included), which makes the sum constant
  on a rectangular domain. When ``attainable`` names the nodes of an irregular 2-D domain
  (the Potts triangle) the kernel is instead the Gaussian restricted to those nodes and
  Sinkhorn-scaled, K(g, s) = c·d(g)·G(g − s)·d(s), with d chosen so that every row sums to
  the interior sum c; V then grows on the attainable nodes only, and F is NaN elsewhere.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from pipeline.outputs import atomic_path

__all__ = ["WellTemperedGridBias"]

_STATE_FORMAT = "metadns.WellTemperedGridBias/1"
_ALIGN_RTOL = 1e-9  # alignment tolerance, as a fraction of the CV spacing
_SETTINGS_RTOL = 1e-12  # tolerance when checking that two biases share their settings
_IMAGE_REACH = 8.0  # images of a hill are kept while they come within this many sigmas of the grid
_SINKHORN_TOL = 1e-13  # largest |row sum / c − 1| the Sinkhorn-scaled kernel may leave
_SINKHORN_MAX_ITERATIONS = 20000


def _per_dimension(name: str, value: Any) -> tuple[float, ...] | float:
    """Return a float for a scalar, a tuple of floats for a sequence (validated later)."""
    array = np.asarray(value, dtype=np.float64)
    if array.ndim == 0:
        return float(array)
    if array.ndim != 1:
        raise ValueError(f"{name} must be a scalar or a flat sequence with one entry per CV dimension, got shape {array.shape}")
    return tuple(float(v) for v in array)


def _as_cv_array(s: Any, dim: int, name: str = "s") -> np.ndarray:
    """Convert CV values (numpy, list or torch tensor) to float64 of shape (B, dim)."""
    if hasattr(s, "detach"):  # torch tensor, possibly on an accelerator
        s = s.detach().cpu().numpy()
    array = np.asarray(s, dtype=np.float64)
    if array.ndim == 1 and dim == 1:
        array = array[:, None]
    if array.ndim != 2 or array.shape[1] != dim:
        raise ValueError(f"{name} must have shape (B, {dim}) (one row per sample, one column per CV dimension), got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains NaN or infinite CV values; check the CV computation")
    return array


def _with_old_defaults(settings: dict[str, Any]) -> dict[str, Any]:
    """Settings of a state saved before the edge correction existed: hills were cut off."""
    return {"edge_correction": False, "attainable_nodes": None, **settings}


class WellTemperedGridBias:
    """Well-tempered metadynamics bias V(s) on a regular 1-D or 2-D grid.

    Parameters
    ----------
    lower, upper : float or sequence of float
        Grid range per CV dimension (first and last node), in CV units.
    grid_points : int or sequence of int
        Number of nodes per dimension (≥ 2). Node spacing is (upper − lower)/(grid_points − 1).
    sigma : float or sequence of float
        Gaussian hill width per dimension, CV units (> 0).
    gamma : float
        Bias factor γ = (T + ΔT)/T (> 1).
    kT : float
        k_B·T of the run, in the energy unit of V (> 0).
    hill_height : float
        h0, the height of one hill deposited on V = 0, energy units (> 0). The paper uses
        h0 = h_cycle / B for B hills per cycle.
    cv_spacing : float or sequence of float, optional
        Distance between adjacent attainable CV values, whose values are taken to be
        ``lower + k·cv_spacing``. When given, every such value inside [lower, upper] must
        coincide with a grid node (tolerance 1e-9·cv_spacing), otherwise ValueError.
    edge_correction : bool
        Correct the hills at the domain edges so that the bias F is exact there (module
        docstring); False reproduces hills cut off at the grid edge.
    attainable_nodes : sequence of int, optional
        Flat (row-major) indices of the attainable grid nodes of an irregular 2-D domain
        (:meth:`flat_node_index` of the attainable CV values); with ``edge_correction`` the
        kernel is Sinkhorn-scaled on those nodes instead of reflected.

    Attributes
    ----------
    dim : int                      number of CV dimensions (1 or 2)
    axes : list[np.ndarray]        node coordinates per dimension, float64 (G_k,)
    values : np.ndarray            V on the grid, energy units, float64, shape (G1,) or (G1, G2)
    """

    def __init__(self, lower, upper, grid_points, sigma, gamma, kT, hill_height, cv_spacing=None,
                 edge_correction=False, attainable_nodes=None):
        raw = {
            "lower": _per_dimension("lower", lower),
            "upper": _per_dimension("upper", upper),
            "grid_points": _per_dimension("grid_points", grid_points),
            "sigma": _per_dimension("sigma", sigma),
        }
        if cv_spacing is not None:
            raw["cv_spacing"] = _per_dimension("cv_spacing", cv_spacing)
        lengths = {name: len(v) for name, v in raw.items() if isinstance(v, tuple)}
        for name, length in lengths.items():
            if length not in (1, 2):
                raise ValueError(f"{name} has {length} entries; only 1-D or 2-D CVs are supported, give one entry per dimension")
        if len(set(lengths.values())) > 1:
            described = ", ".join(f"{name}: {length}" for name, length in lengths.items())
            raise ValueError(f"per-dimension arguments disagree on the CV dimension ({described}); give every per-dimension argument the same length or a scalar")
        dim = next(iter(lengths.values()), 1)
        per_dim = {name: (v if isinstance(v, tuple) else (v,) * dim) for name, v in raw.items()}

        lower_t, upper_t, sigma_t = per_dim["lower"], per_dim["upper"], per_dim["sigma"]
        for k in range(dim):
            if not (math.isfinite(lower_t[k]) and math.isfinite(upper_t[k])):
                raise ValueError(f"lower and upper must be finite, got lower={lower_t[k]}, upper={upper_t[k]} in dimension {k}")
            if not lower_t[k] < upper_t[k]:
                raise ValueError(f"lower must be smaller than upper, got lower={lower_t[k]} >= upper={upper_t[k]} in dimension {k}; swap them")
            if not (math.isfinite(sigma_t[k]) and sigma_t[k] > 0):
                raise ValueError(f"sigma must be a positive, finite hill width in CV units, got sigma={sigma_t[k]} in dimension {k}")
        points_t = []
        for k, g in enumerate(per_dim["grid_points"]):
            if not (math.isfinite(g) and g == int(g) and g >= 2):
                raise ValueError(f"grid_points must be an integer >= 2 per dimension, got {g} in dimension {k}")
            points_t.append(int(g))
        gamma = float(gamma)
        if not (math.isfinite(gamma) and gamma > 1):
            raise ValueError(f"gamma (bias factor) must be a finite number > 1 for well-tempered metadynamics, got gamma={gamma}; the paper uses gamma=10")
        kT = float(kT)
        if not (math.isfinite(kT) and kT > 0):
            raise ValueError(f"kT must be positive and finite (k_B*T in the energy unit of the bias), got kT={kT}")
        hill_height = float(hill_height)
        if not (math.isfinite(hill_height) and hill_height > 0):
            raise ValueError(f"hill_height (h0, energy units) must be positive and finite, got hill_height={hill_height}")

        self.dim: int = dim
        self.lower: tuple[float, ...] = tuple(lower_t)
        self.upper: tuple[float, ...] = tuple(upper_t)
        self.grid_points: tuple[int, ...] = tuple(points_t)
        self.sigma: tuple[float, ...] = tuple(sigma_t)
        self.gamma: float = gamma
        self.kT: float = kT
        self.hill_height: float = hill_height
        self.cv_spacing: tuple[float, ...] | None = None
        self.axes: list[np.ndarray] = [np.linspace(lo, up, g) for lo, up, g in zip(self.lower, self.upper, self.grid_points)]
        self.grid_spacing: tuple[float, ...] = tuple((up - lo) / (g - 1) for lo, up, g in zip(self.lower, self.upper, self.grid_points))
        if "cv_spacing" in per_dim:
            self._check_alignment(per_dim["cv_spacing"])
            self.cv_spacing = tuple(per_dim["cv_spacing"])

        self.edge_correction: bool = bool(edge_correction)
        self.attainable_mask: np.ndarray | None = None   # bool grid-shaped, irregular domains only
        if attainable_nodes is not None:
            nodes = np.asarray(attainable_nodes, dtype=np.int64).reshape(-1)
            if nodes.size == 0 or nodes.min() < 0 or nodes.max() >= math.prod(self.grid_points):
                raise ValueError(f"attainable_nodes must be non-empty flat indices into the {self.grid_points} grid")
            self.attainable_mask = np.zeros(math.prod(self.grid_points), dtype=bool)
            self.attainable_mask[nodes] = True
            self.attainable_mask = self.attainable_mask.reshape(self.grid_points)
        self._edge_scale: np.ndarray | None = None   # c^½·d of the Sinkhorn kernel, computed on first use

        self.values: np.ndarray = np.zeros(self.grid_points, dtype=np.float64)
        self.n_depositions: int = 0  # number of deposit calls that added at least one hill
        self._hill_times: list[np.ndarray] = []
        self._hill_centres: list[np.ndarray] = []
        self._hill_heights: list[np.ndarray] = []

    # ------------------------------------------------------------------ construction helpers
    @classmethod
    def aligned(cls, lower, upper, spacing, **kwargs) -> "WellTemperedGridBias":
        """Grid whose nodes are exactly the CV values lower + k·spacing, k = 0..N, with upper = lower + N·spacing.

        ``kwargs`` are the remaining constructor arguments (sigma, gamma, kT, hill_height).
        Raises ValueError when (upper − lower)/spacing is not an integer.
        """
        if "grid_points" in kwargs or "cv_spacing" in kwargs:
            raise ValueError("aligned() derives grid_points and cv_spacing from spacing; do not pass them")
        lower_a = np.atleast_1d(np.asarray(lower, dtype=np.float64))
        upper_a = np.atleast_1d(np.asarray(upper, dtype=np.float64))
        spacing_a = np.atleast_1d(np.asarray(spacing, dtype=np.float64))
        try:
            lower_a, upper_a, spacing_a = np.broadcast_arrays(lower_a, upper_a, spacing_a)
        except ValueError as error:
            raise ValueError("lower, upper and spacing must be scalars or sequences of the same length (one per CV dimension)") from error
        if np.any(~np.isfinite(spacing_a)) or np.any(spacing_a <= 0):
            raise ValueError(f"spacing must be positive and finite per dimension, got {spacing_a.tolist()}")
        intervals = (upper_a - lower_a) / spacing_a
        n_intervals = np.rint(intervals)
        bad = np.abs(intervals - n_intervals) > _ALIGN_RTOL * np.maximum(1.0, np.abs(intervals))
        if np.any(bad):
            k = int(np.argmax(bad))
            raise ValueError(
                f"(upper - lower)/spacing = {intervals[k]:.12g} is not an integer in dimension {k}; "
                f"set upper to lower + N*spacing, e.g. upper={lower_a[k] + max(n_intervals[k], 1) * spacing_a[k]:.12g}"
            )
        grid_points = (n_intervals.astype(np.int64) + 1).tolist()
        scalar = np.ndim(lower) == 0 and np.ndim(upper) == 0 and np.ndim(spacing) == 0
        if scalar:
            return cls(float(lower_a[0]), float(upper_a[0]), int(grid_points[0]), cv_spacing=float(spacing_a[0]), **kwargs)
        return cls(lower_a.tolist(), upper_a.tolist(), grid_points, cv_spacing=spacing_a.tolist(), **kwargs)

    def _check_alignment(self, cv_spacing: Sequence[float]) -> None:
        for k, spacing in enumerate(cv_spacing):
            if not (math.isfinite(spacing) and spacing > 0):
                raise ValueError(f"cv_spacing must be positive and finite, got {spacing} in dimension {k}")
            width = self.upper[k] - self.lower[k]
            n_values = int(math.floor(width / spacing * (1 + _ALIGN_RTOL) + _ALIGN_RTOL)) + 1
            offsets = np.arange(n_values, dtype=np.float64) * spacing  # attainable CV values minus lower
            node_position = offsets / self.grid_spacing[k]
            misfit = np.abs(node_position - np.rint(node_position)) * self.grid_spacing[k]
            if np.any(misfit > _ALIGN_RTOL * spacing):
                first = int(np.argmax(misfit > _ALIGN_RTOL * spacing))
                intervals = width / spacing
                if abs(intervals - round(intervals)) <= _ALIGN_RTOL * max(1.0, intervals):
                    n = int(round(intervals))
                    hint = f"use grid_points={n + 1} (or {2 * n + 1}, {3 * n + 1}, ...: n*{n}+1 nodes), or build it with WellTemperedGridBias.aligned"
                else:
                    hint = "the range is not a whole number of CV spacings: set upper to lower + N*cv_spacing and grid_points to N+1 (WellTemperedGridBias.aligned does this)"
                raise ValueError(
                    f"grid_points={self.grid_points[k]} misaligns the grid with the CV in dimension {k}: CV value "
                    f"{self.lower[k] + offsets[first]:.12g} (lower + {first}*cv_spacing) falls between grid nodes "
                    f"(node spacing {self.grid_spacing[k]:.12g}, cv_spacing {spacing:.12g}); {hint}"
                )

    # ------------------------------------------------------------------ lookups
    @property
    def n_hills(self) -> int:
        """Total number of hills deposited so far."""
        return int(sum(h.shape[0] for h in self._hill_heights))

    def node_index(self, s) -> np.ndarray:
        """Indices of the nearest grid node, int64 (B, dim), for CV values s (B, dim).

        Raises ValueError when a value lies outside [lower − half a cell, upper + half a cell].
        """
        s = _as_cv_array(s, self.dim)
        index = np.empty(s.shape, dtype=np.int64)
        for k in range(self.dim):  # loop over CV dimensions (at most 2), vectorised over samples
            position = (s[:, k] - self.lower[k]) / self.grid_spacing[k]
            outside = (position < -0.5 - 1e-9) | (position > self.grid_points[k] - 0.5 + 1e-9)
            if np.any(outside):
                bad = s[outside, k]
                raise ValueError(
                    f"s has {int(outside.sum())} value(s) outside the bias grid in dimension {k} "
                    f"(e.g. {bad[0]:.12g}; grid covers [{self.lower[k]:.12g}, {self.upper[k]:.12g}] plus half a cell); "
                    "widen lower/upper so the grid covers the whole CV range"
                )
            index[:, k] = np.clip(np.rint(position), 0, self.grid_points[k] - 1).astype(np.int64)
        return index

    def flat_node_index(self, s) -> np.ndarray:
        """Row-major flat index of the nearest grid node, int64 (B,), for CV values s (B, dim)."""
        return np.ravel_multi_index(tuple(self.node_index(s).T), self.grid_points).astype(np.int64)

    def value(self, s) -> np.ndarray:
        """V at the nearest grid node for CV values s (B, dim) → float64 (B,), energy units.

        No interpolation: with an aligned grid (``cv_spacing``/``aligned``) every attainable CV
        value sits on a node and the lookup is exact. Values outside the grid raise ValueError.
        """
        index = self.node_index(s)
        return self.values[tuple(index.T)]

    # ------------------------------------------------------------------ deposition
    def _gaussian_factors(self, centres: np.ndarray) -> list[np.ndarray]:
        """Per-dimension Gaussian factors exp(−(g − s)²/(2σ²)), each float64 (B, G_k); with the
        reflecting edge correction each factor is summed over the hill's images."""
        factors = []
        for k in range(self.dim):
            images = self._images(centres[:, k], k) if self._reflecting else centres[:, k:k + 1]
            distance = self.axes[k][None, None, :] - images[:, :, None]            # (B, images, G_k)
            factors.append(np.exp(-np.square(distance) / (2.0 * self.sigma[k] ** 2)).sum(axis=1))
        return factors

    @property
    def _reflecting(self) -> bool:
        return self.edge_correction and self.attainable_mask is None

    def _images(self, centres: np.ndarray, k: int) -> np.ndarray:
        """Centres (B,) and their mirror images about a = lower − Δ/2 and b = upper + Δ/2 in
        dimension k, float64 (B, n_images), the centre itself first. The reflections generate
        s + nP and 2a − s + nP (P = 2(b − a)); |n| runs as far as _IMAGE_REACH·σ needs."""
        a = self.lower[k] - 0.5 * self.grid_spacing[k]
        b = self.upper[k] + 0.5 * self.grid_spacing[k]
        period = 2.0 * (b - a)
        reach = int(math.ceil(_IMAGE_REACH * self.sigma[k] / period))
        shifts = np.array(sorted(range(-reach, reach + 1), key=abs), dtype=np.float64) * period  # 0 first
        return np.concatenate([centres[:, None] + shifts, (2.0 * a - centres)[:, None] + shifts], axis=1)

    def _sinkhorn_scale(self) -> np.ndarray:
        """c^½·d on the attainable nodes (0 elsewhere), grid-shaped: the Gaussian restricted to
        the attainable nodes, scaled to c·d(g)·G(g − s)·d(s), has every row sum equal to c, the
        largest row sum of the unscaled kernel. Symmetric Sinkhorn iteration d ← (d / Gd)^½."""
        if self._edge_scale is None:
            kernels = [np.exp(-np.square(ax[:, None] - ax[None, :]) / (2.0 * s ** 2)) for ax, s in zip(self.axes, self.sigma)]
            mask = self.attainable_mask.astype(np.float64)

            def smooth(field):   # Σ_s G(g − s) field(s) over the attainable s, at every node g
                return mask * (kernels[0] @ (mask * field) @ kernels[1].T)

            row_sums = smooth(np.ones(self.grid_points))
            c = float(row_sums.max())
            d = np.where(self.attainable_mask, 1.0 / np.sqrt(np.where(self.attainable_mask, row_sums, 1.0) / c), 0.0)
            for _ in range(_SINKHORN_MAX_ITERATIONS):
                sums = d * smooth(d)
                if np.max(np.abs(sums[self.attainable_mask] - 1.0)) < _SINKHORN_TOL:
                    break
                d = np.where(self.attainable_mask, d / np.sqrt(np.where(self.attainable_mask, sums, 1.0)), 0.0)
            else:
                raise RuntimeError("the Sinkhorn scaling of the edge-corrected kernel did not converge; "
                                   "sigma may be too small for the spacing of the attainable nodes")
            self._edge_scale = d * math.sqrt(c)
        return self._edge_scale

    def _add_hills(self, centres: np.ndarray, heights: np.ndarray) -> None:
        factors = self._gaussian_factors(centres)
        if self.dim == 1:
            self.values += heights @ factors[0]
        elif self.edge_correction and self.attainable_mask is not None:
            scale = self._sinkhorn_scale()
            scaled = heights * scale[tuple(self.node_index(centres).T)]
            self.values += scale * ((scaled[:, None] * factors[0]).T @ factors[1])
        else:
            self.values += (heights[:, None] * factors[0]).T @ factors[1]

    def deposit(self, s) -> np.ndarray:
        """Deposit one well-tempered hill per row of s (B, dim); returns the heights float64 (B,).

        Heights h_i = h0·exp(−V(s_i)/((γ−1)·kT)) use V at the nearest node, all read from the
        same snapshot of V taken before this call (batch deposition); each hill is a Gaussian
        centred at s_i itself. The hills are logged with deposition index ``n_depositions``
        (incremented once per call that deposits at least one hill; an empty batch is a no-op).
        """
        centres = _as_cv_array(s, self.dim)
        if centres.shape[0] == 0:
            return np.zeros(0, dtype=np.float64)
        bias_at_centres = self.value(centres)
        heights = self.hill_height * np.exp(-bias_at_centres / ((self.gamma - 1.0) * self.kT))
        self._add_hills(centres, heights)
        self.n_depositions += 1
        self._hill_times.append(np.full(centres.shape[0], self.n_depositions, dtype=np.int64))
        self._hill_centres.append(centres.copy())
        self._hill_heights.append(heights.copy())
        return heights

    def record_deposit(self, s, heights, values) -> None:
        """Log hills deposited elsewhere (a bias server) and adopt that server's V.

        ``s`` (B, dim) hill centres, ``heights`` float64 (B,) the heights the server used,
        ``values`` V on this grid after the server's deposit (it may include other walkers'
        hills, which this log then lacks).  With one walker the result equals ``deposit(s)``.
        """
        centres = _as_cv_array(s, self.dim)
        heights = np.asarray(heights, dtype=np.float64).reshape(-1)
        values = np.asarray(values, dtype=np.float64)
        if heights.shape[0] != centres.shape[0] or values.shape != self.values.shape:
            raise ValueError(f"record_deposit needs one height per centre and V of shape {self.values.shape}; got "
                             f"{heights.shape[0]} heights, {centres.shape[0]} centres, V {values.shape}")
        if centres.shape[0] == 0:
            return
        self.values = values.copy()
        self.n_depositions += 1
        self._hill_times.append(np.full(centres.shape[0], self.n_depositions, dtype=np.int64))
        self._hill_centres.append(centres.copy())
        self._hill_heights.append(heights.copy())

    @property
    def hills(self) -> dict[str, np.ndarray]:
        """Hill log: ``time`` int64 (n,) deposition index (1 = first deposit call), ``centres``
        float64 (n, dim), ``sigmas`` float64 (n, dim), ``heights`` float64 (n,) as added to V (energy units)."""
        if self._hill_heights:
            times = np.concatenate(self._hill_times)
            centres = np.concatenate(self._hill_centres, axis=0)
            heights = np.concatenate(self._hill_heights)
        else:
            times = np.zeros(0, dtype=np.int64)
            centres = np.zeros((0, self.dim), dtype=np.float64)
            heights = np.zeros(0, dtype=np.float64)
        sigmas = np.broadcast_to(np.asarray(self.sigma, dtype=np.float64), centres.shape).copy()
        return {"time": times, "centres": centres, "sigmas": sigmas, "heights": heights}

    # ------------------------------------------------------------------ free energy
    def free_energy(self) -> np.ndarray:
        """Free-energy surface on the grid, float64 grid-shaped, in k_BT for the whole system.

        F(s) = −γ/(γ−1) · V(s)/kT, shifted so that min F = 0 (well-tempered fixed point
        V∞ = −(1 − 1/γ)F + const).
        """
        free_energy = -self.gamma / (self.gamma - 1.0) * self.values / self.kT
        if self.edge_correction and self.attainable_mask is not None:
            free_energy = np.where(self.attainable_mask, free_energy, np.nan)
        return free_energy - np.nanmin(free_energy)

    # ------------------------------------------------------------------ persistence
    @property
    def settings(self) -> dict[str, Any]:
        """Constructor arguments as plain Python types (rebuild with ``WellTemperedGridBias(**settings)``)."""
        return {
            "lower": list(self.lower),
            "upper": list(self.upper),
            "grid_points": list(self.grid_points),
            "sigma": list(self.sigma),
            "gamma": self.gamma,
            "kT": self.kT,
            "hill_height": self.hill_height,
            "cv_spacing": None if self.cv_spacing is None else list(self.cv_spacing),
            "edge_correction": self.edge_correction,
            "attainable_nodes": None if self.attainable_mask is None else np.flatnonzero(self.attainable_mask).tolist(),
        }

    def state_dict(self) -> dict[str, Any]:
        """Settings, V, counters and the hill log as plain Python lists/floats/ints.

        JSON-serialisable and loadable with ``torch.load(weights_only=True)``.
        """
        hills = self.hills
        return {
            "format": _STATE_FORMAT,
            "settings": self.settings,
            "values": self.values.tolist(),
            "n_depositions": int(self.n_depositions),
            "n_hills": int(hills["heights"].shape[0]),
            "hill_times": hills["time"].tolist(),
            "hill_centres": hills["centres"].tolist(),
            "hill_heights": hills["heights"].tolist(),
        }

    def _incompatible_settings(self, settings: dict[str, Any]) -> list[str]:
        problems = []
        settings = _with_old_defaults(settings)
        for key in ("edge_correction", "attainable_nodes"):
            if settings[key] != self.settings[key]:
                shown = {name: ("None" if value is None else f"{len(value)} nodes" if name == "attainable_nodes" else value)
                         for name, value in (("mine", self.settings[key]), ("theirs", settings[key]))}
                problems.append(f"{key}: this bias has {shown['mine']}, the other has {shown['theirs']}")
        for key in ("lower", "upper", "grid_points", "sigma", "gamma", "kT"):
            mine = np.atleast_1d(np.asarray(self.settings[key], dtype=np.float64))
            theirs = np.atleast_1d(np.asarray(settings.get(key), dtype=np.float64))
            if mine.shape != theirs.shape or not np.allclose(mine, theirs, rtol=_SETTINGS_RTOL, atol=0.0):
                problems.append(f"{key}: this bias has {self.settings[key]}, the other has {settings.get(key)}")
        return problems

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore V, counters and hills from ``state_dict()`` output.

        The grid (lower, upper, grid_points), sigma, gamma, kT and the edge correction must match
        this bias, otherwise ValueError. hill_height may differ (a restart may change h0; new hills
        use this bias's h0). A state saved before the edge correction existed continues with
        hills cut off at the edges, as it was deposited (said on the console).
        """
        if not isinstance(state, dict) or state.get("format") != _STATE_FORMAT:
            raise ValueError(f"state must be a dict produced by WellTemperedGridBias.state_dict() (format {_STATE_FORMAT!r})")
        if "edge_correction" not in state["settings"] and self.edge_correction:
            print("NOTE: this bias was saved before the edge correction existed; it continues with hills cut off "
                  "at the CV edges (start the run afresh for an exact F at the edges)", flush=True)
            self.edge_correction, self.attainable_mask, self._edge_scale = False, None, None
        problems = self._incompatible_settings(state["settings"])
        if problems:
            raise ValueError("state is incompatible with this bias (build the bias with the saved settings, e.g. "
                             "WellTemperedGridBias.from_state_dict): " + "; ".join(problems))
        values = np.asarray(state["values"], dtype=np.float64)
        if values.shape != self.grid_points:
            raise ValueError(f"state['values'] has shape {values.shape}, expected {self.grid_points}")
        times = np.asarray(state["hill_times"], dtype=np.int64).reshape(-1)
        heights = np.asarray(state["hill_heights"], dtype=np.float64).reshape(-1)
        centres = np.asarray(state["hill_centres"], dtype=np.float64).reshape(-1, self.dim)
        n_hills = int(state["n_hills"])
        if not (times.shape[0] == heights.shape[0] == centres.shape[0] == n_hills):
            raise ValueError(f"state hill log is inconsistent: {times.shape[0]} times, {centres.shape[0]} centres, "
                             f"{heights.shape[0]} heights, n_hills={n_hills}")
        n_depositions = int(state["n_depositions"])
        if n_hills and (times.min() < 1 or times.max() > n_depositions):
            raise ValueError(f"state hill times must lie in [1, n_depositions={n_depositions}], "
                             f"got [{times.min()}, {times.max()}]")
        self.values = values.copy()
        self.n_depositions = n_depositions
        self._hill_times = [times] if n_hills else []
        self._hill_centres = [centres] if n_hills else []
        self._hill_heights = [heights] if n_hills else []

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> "WellTemperedGridBias":
        """Build a bias with the saved settings and load the saved state into it."""
        if not isinstance(state, dict) or "settings" not in state:
            raise ValueError("state must be a dict produced by WellTemperedGridBias.state_dict()")
        bias = cls(**_with_old_defaults(state["settings"]))
        bias.load_state_dict(state)
        return bias

    def copy(self) -> "WellTemperedGridBias":
        """Independent deep copy (settings, V, counters, hills)."""
        duplicate = type(self)(**self.settings)
        duplicate.values = self.values.copy()
        duplicate._edge_scale = self._edge_scale   # never modified in place
        duplicate.n_depositions = self.n_depositions
        hills = self.hills
        if hills["heights"].shape[0]:
            duplicate._hill_times = [hills["time"]]
            duplicate._hill_centres = [hills["centres"]]
            duplicate._hill_heights = [hills["heights"]]
        return duplicate

    # ------------------------------------------------------------------ export
    def write_hills(self, path, cv_names: Sequence[str] | None = None) -> None:
        """Write the hill log as a PLUMED-style HILLS file, atomically (:func:`pipeline.outputs.atomic_path`).

        Columns ``time <cv...> sigma_<cv...> height biasf``; ``time`` is the deposition index
        (1 = first deposit call), not a simulation time. Following PLUMED's well-tempered
        convention the ``height`` column holds h_i·γ/(γ−1) (energy units), so that summing the
        written Gaussians gives −F·kT up to a constant, and ``biasf`` = γ. To recover the
        heights added to V multiply by (γ−1)/γ. CV names default to ``s`` (1-D) or ``s1, s2``.

        With the reflecting edge correction the file also carries every hill's mirror images
        that reach the grid (same time and height), so that summing its Gaussians reproduces V
        on the grid; the Sinkhorn-scaled kernel of an irregular domain is not a sum of
        Gaussians, and its file lists the hills as deposited.
        """
        if cv_names is None:
            cv_names = ("s",) if self.dim == 1 else tuple(f"s{k + 1}" for k in range(self.dim))
        cv_names = tuple(cv_names)
        if len(cv_names) != self.dim:
            raise ValueError(f"cv_names must have {self.dim} entries (one per CV dimension), got {len(cv_names)}")
        for name in cv_names:
            if not isinstance(name, str) or not name or any(c.isspace() for c in name):
                raise ValueError(f"cv_names entries must be non-empty strings without whitespace, got {name!r}")
        times, centres, heights = self._hills_as_gaussians()
        n = heights.shape[0]
        table = np.column_stack([
            times.astype(np.float64),
            centres,
            np.broadcast_to(np.asarray(self.sigma, dtype=np.float64), centres.shape),
            heights * self.gamma / (self.gamma - 1.0),
            np.full(n, self.gamma),
        ]) if n else np.zeros((0, 2 * self.dim + 3))
        fields = ["time", *cv_names, *(f"sigma_{name}" for name in cv_names), "height", "biasf"]
        header = f"#! FIELDS {' '.join(fields)}\n#! SET multivariate false\n"
        fmt = ["%d"] + ["%.17g"] * (2 * self.dim + 2)

        with atomic_path(path) as tmp, open(tmp, "w") as handle:
            handle.write(header)
            if n:
                np.savetxt(handle, table, fmt=fmt, delimiter=" ")

    def _hills_as_gaussians(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(time int64 (n,), centres float64 (n, dim), heights float64 (n,)) of Gaussians whose
        sum is V: the hills, plus with the reflecting correction their images that come within
        _IMAGE_REACH·σ of the grid (hill by hill, each hill before its images)."""
        hills = self.hills
        if not self._reflecting or hills["heights"].shape[0] == 0:
            return hills["time"], hills["centres"], hills["heights"]
        per_dimension = []
        for k in range(self.dim):
            images = self._images(hills["centres"][:, k], k)                                # (n, m_k)
            near = (images > self.lower[k] - _IMAGE_REACH * self.sigma[k]) & \
                   (images < self.upper[k] + _IMAGE_REACH * self.sigma[k])
            per_dimension.append((images, near))
        if self.dim == 1:
            (images, near), = per_dimension
            coordinates, keep = images[:, :, None], near
        else:
            (first, near_first), (second, near_second) = per_dimension
            coordinates = np.stack(np.broadcast_arrays(first[:, :, None], second[:, None, :]), axis=-1)
            coordinates = coordinates.reshape(first.shape[0], -1, 2)
            keep = (near_first[:, :, None] & near_second[:, None, :]).reshape(first.shape[0], -1)
        rows = np.broadcast_to(np.arange(keep.shape[0])[:, None], keep.shape)[keep]
        return hills["time"][rows], coordinates[keep], hills["heights"][rows]

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(dim={self.dim}, lower={self.lower}, upper={self.upper}, "
                f"grid_points={self.grid_points}, sigma={self.sigma}, gamma={self.gamma}, kT={self.kT}, "
                f"hill_height={self.hill_height}, n_hills={self.n_hills}, n_depositions={self.n_depositions})")
