"""Phase diagrams of binary alloys from free-energy surfaces: common-tangent construction.

Size (slightly over the ~400-line guide): the common-tangent construction and its helpers
share the conventions below.

Pure numpy/scipy functions (no I/O, no Ray).  Conventions:

* A semi-grand-canonical (SGC) run at inverse temperature β and chemical-potential difference
  Δμ (eV) samples P(x) ∝ exp(−β[F_c(x) − Δμ·N·x]) over the Au fraction x = N_Au/N, where
  F_c(x) is the canonical free energy of the whole N-site cell (eV; the run's energy is
  E_Δμ = E_f − Δμ·N_Au).  Its FES is F_kT(x) = −ln P(x) + const (k_BT, any gauge).
* :func:`canonical_free_energy` turns it into f(x) = F_c(x)/N + const in eV/site.
* The lower convex hull of (x, f(x)) is the equilibrium free energy of the two-phase mixtures;
  a hull segment that skips compositions lying above it is a miscibility gap.  Its end points
  are the coexisting compositions and its slope df/dx (eV) is the Δμ at which they coexist.
  Adding a·x to f (any linear term) leaves the compositions unchanged and shifts the slope by a.

Caveats (small cells): only x = k/N is attainable, so compositions are resolved to 1/N and
interfaces are not represented; in an 8- or 64-site cell a "gap" means that intermediate
compositions have a free-energy excess over the tangent, not a macroscopic phase separation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy.special import logsumexp

from systems.units import BOLTZMANN_EV_PER_K

__all__ = [
    "BOLTZMANN_EV_PER_K",
    "Coexistence",
    "TangentConstruction",
    "PhasePoint",
    "canonical_free_energy",
    "lower_convex_hull",
    "common_tangent",
    "disordered_lro_baseline",
    "label_phases",
    "conditional_mean",
    "marginal_free_energy",
    "phase_regions",
    "phase_diagram_table",
    "trim_unresolved_tails",
]

PHASE_LABELS = ("disordered", "L1_2", "L1_0", "ordered", "unknown")


def _vector(value, name: str) -> np.ndarray:
    array = np.asarray(value, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {array.shape}")
    return array


def _grid(x) -> np.ndarray:
    x = _vector(x, "x")
    if x.size < 2:
        raise ValueError(f"x must hold at least two compositions, got {x.size}")
    if not np.all(np.isfinite(x)):
        raise ValueError("x must be finite (NaN belongs in f, not in the composition grid)")
    if np.any(np.diff(x) <= 0):
        raise ValueError("x must be strictly increasing (sort the grid and its values together)")
    return x


def canonical_free_energy(x, free_energy_kT, temperature: float, delta_mu: float, n_sites: int,
                          stderr_kT=None, boltzmann_constant: float = BOLTZMANN_EV_PER_K):
    """Canonical free energy per site f(x) (eV/site, arbitrary constant) from an SGC FES.

    With P(x) ∝ exp(−β[F_c(x) − Δμ·N·x]) and F_kT(x) = −ln P(x) + c:
    f(x) = [k_BT·F_kT(x) + Δμ·N·x] / N.

    Args:
        x: (G,) Au fractions k/N.  free_energy_kT: (G,) F in k_BT, NaN where unvisited.
        temperature: T in K (``boltzmann_constant`` in eV/K; pass 1 for k_B = 1 units).
        delta_mu: Δμ of the run, eV.  n_sites: N.  stderr_kT: (G,) errors of F in k_BT or None.
    Returns:
        (f (G,), stderr of f (G,) or None), eV/site; NaN stays NaN.
    """
    x = _vector(x, "x")
    free = _vector(free_energy_kT, "free_energy_kT")
    if free.shape != x.shape:
        raise ValueError(f"free_energy_kT must have shape {x.shape} like x, got {free.shape}")
    if not (np.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    if int(n_sites) != n_sites or n_sites < 1:
        raise ValueError(f"n_sites must be a positive integer, got {n_sites!r}")
    if not np.isfinite(delta_mu):
        raise ValueError(f"delta_mu must be finite (eV), got {delta_mu!r}")
    kT = boltzmann_constant * float(temperature)
    f = (kT * free + float(delta_mu) * n_sites * x) / n_sites
    if stderr_kT is None:
        return f, None
    err = _vector(stderr_kT, "stderr_kT")
    if err.shape != x.shape:
        raise ValueError(f"stderr_kT must have shape {x.shape} like x, got {err.shape}")
    return f, kT * err / n_sites


def lower_convex_hull(x, f) -> np.ndarray:
    """Indices (into x) of the vertices of the lower convex hull of the finite points (x, f).

    x (G,) strictly increasing, f (G,) with NaN/inf ignored.  Collinear points are not
    vertices.  Returns int64 (H,) increasing; H ≥ 2 unless fewer than two points are finite.
    """
    x = _grid(x)
    f = _vector(f, "f")
    if f.shape != x.shape:
        raise ValueError(f"f must have shape {x.shape} like x, got {f.shape}")
    finite = np.flatnonzero(np.isfinite(f))
    stack: list[int] = []
    for k in finite:  # monotone chain over grid points (not samples): O(G)
        while len(stack) >= 2:
            i, j = stack[-2], stack[-1]
            cross = (x[j] - x[i]) * (f[k] - f[i]) - (f[j] - f[i]) * (x[k] - x[i])
            if cross > 0:  # strict left turn: j stays a vertex
                break
            stack.pop()
        stack.append(int(k))
    return np.asarray(stack, dtype=np.int64)


@dataclass(frozen=True)
class Coexistence:
    """One two-phase region: compositions x_left < x_right coexist at Δμ = ``slope`` (eV).

    ``excess``: the largest height of a skipped composition above the tangent (f units;
    NaN if every skipped composition was unvisited); ``n_unvisited``: skipped grid points
    with no data; ``index_left/right``: grid indices of the end points.
    """

    x_left: float
    x_right: float
    slope: float
    index_left: int
    index_right: int
    excess: float
    n_unvisited: int


@dataclass(frozen=True)
class TangentConstruction:
    """Result of :func:`common_tangent`: hull vertex indices and the two-phase regions."""

    hull: np.ndarray
    regions: tuple[Coexistence, ...]
    x: np.ndarray = field(repr=False)
    f: np.ndarray = field(repr=False)

    def inside_region(self) -> np.ndarray:
        """bool (G,): grid points strictly inside a two-phase region."""
        mask = np.zeros(self.x.shape, dtype=bool)
        for region in self.regions:
            mask[region.index_left + 1:region.index_right] = True
        return mask


def _segment(x, f, sigma, i, j, atol, n_sigma, unvisited):
    """Examine the chord i–j: (is two-phase, slope, excess, n_unvisited)."""
    slope = (f[j] - f[i]) / (x[j] - x[i])
    inner = np.arange(i + 1, j)
    values = f[inner]
    known = np.isfinite(values)
    n_unvisited = int((~known).sum())
    if not known.any():
        return unvisited == "gap" and n_unvisited > 0, slope, np.nan, n_unvisited
    t = (x[inner] - x[i]) / (x[j] - x[i])
    excess = values - (f[i] + slope * (x[inner] - x[i]))
    noise = np.sqrt(sigma[inner] ** 2 + ((1 - t) * sigma[i]) ** 2 + (t * sigma[j]) ** 2)
    significant = excess[known] > np.maximum(atol, n_sigma * noise[known])
    two_phase = bool(significant.any()) or (unvisited == "gap" and n_unvisited > 0)
    return two_phase, slope, float(np.max(excess[known])), n_unvisited


def common_tangent(x, f, stderr=None, n_sigma: float = 3.0, atol: float = 1e-9,
                   unvisited: str = "gap") -> TangentConstruction:
    """Common-tangent construction on a composition grid.

    Args:
        x: (G,) strictly increasing compositions (e.g. k/N).  f: (G,) free energy per site
            (any gauge, any added linear term), NaN = unvisited.  stderr: (G,) standard error
            of f or None (0); NaN errors count as 0.
        n_sigma, atol: a hull segment that skips grid points is a two-phase region when some
            skipped point lies above the segment by more than max(atol, n_sigma·σ), σ the
            error of (f_k − chord) from the errors of the point and of the two end points.
            ``atol`` is in the units of f (eV/site for :func:`canonical_free_energy`).
        unvisited: "gap" — a skipped NaN point inside the visited range counts as lying above
            the tangent (an unvisited composition between visited ones has a free energy
            too high to sample: the usual sign of a miscibility gap); "ignore" — NaN points
            are left out and only finite points decide.
    Adjacent two-phase regions whose shared end point lies within noise (same criterion) of
    the chord joining their outer end points are merged into one region.

    Returns:
        :class:`TangentConstruction`; regions sorted by composition.  NaN outside the visited
        range is never a region.  Raises ValueError with fewer than two finite points.
    """
    x = _grid(x)
    f = _vector(f, "f")
    if f.shape != x.shape:
        raise ValueError(f"f must have shape {x.shape} like x, got {f.shape}")
    if unvisited not in ("gap", "ignore"):
        raise ValueError(f"unvisited must be 'gap' or 'ignore', got {unvisited!r}")
    if not (n_sigma >= 0 and atol >= 0):
        raise ValueError(f"n_sigma and atol must be >= 0, got {n_sigma!r}, {atol!r}")
    f = np.where(np.isfinite(f), f, np.nan)
    sigma = np.zeros_like(x) if stderr is None else _vector(stderr, "stderr")
    if sigma.shape != x.shape:
        raise ValueError(f"stderr must have shape {x.shape} like x, got {sigma.shape}")
    sigma = np.where(np.isfinite(sigma), np.abs(sigma), 0.0)
    if np.isfinite(f).sum() < 2:
        raise ValueError("f needs at least two finite (visited) compositions for a convex hull")
    hull = lower_convex_hull(x, f)

    regions: list[tuple[int, int]] = [(int(i), int(j)) for i, j in zip(hull[:-1], hull[1:])
                                      if j - i > 1 and _segment(x, f, sigma, i, j, atol, n_sigma, unvisited)[0]]
    merged = True
    while merged:  # merge neighbours sharing a vertex that is not significantly below their chord
        merged = False
        for k in range(len(regions) - 1):
            (a, b), (b2, c) = regions[k], regions[k + 1]
            if b != b2:
                continue
            t = (x[b] - x[a]) / (x[c] - x[a])
            depth = f[a] + t * (f[c] - f[a]) - f[b]
            noise = np.sqrt(sigma[b] ** 2 + ((1 - t) * sigma[a]) ** 2 + (t * sigma[c]) ** 2)
            if depth <= max(atol, n_sigma * noise):
                regions[k:k + 2] = [(a, c)]
                merged = True
                break
    out = []
    for i, j in regions:
        _, slope, excess, n_unvisited = _segment(x, f, sigma, i, j, atol, n_sigma, unvisited)
        out.append(Coexistence(float(x[i]), float(x[j]), float(slope), i, j, excess, n_unvisited))
    return TangentConstruction(hull, tuple(out), x, f)


def disordered_lro_baseline(x, n_sites: int) -> np.ndarray:
    """RMS long-range-order amplitude η of a random (disordered) alloy at fraction x.

    For η = 2‖a‖, a_α = (1/N) Σ_i n_i (−1)^{h_iα} over the three X-point waves (the alloy
    system's ``long_range_order``), drawing N·x solute sites at random without replacement
    gives ⟨η²⟩ = 12·x(1−x)/(N−1).  Finite cells therefore show η ≈ √(12x(1−x)/(N−1)) with no
    order at all (0.65 at x = ½ in an 8-site cell, 0.22 at 64 sites).
    """
    x = np.asarray(x, dtype=np.float64)
    if n_sites < 2:
        raise ValueError(f"n_sites must be at least 2, got {n_sites!r}")
    return np.sqrt(12.0 * x * (1.0 - x) / (n_sites - 1))


def label_phases(x, lro, threshold: float = 0.5, n_sites: int | None = None,
                 window: float = 0.125) -> np.ndarray:
    """Label compositions by ordering: "disordered", "L1_2", "L1_0", "ordered" or "unknown".

    A point is ordered when its mean long-range order ⟨η | x⟩ exceeds ``threshold`` and, if
    ``n_sites`` is given, also the random-alloy baseline :func:`disordered_lro_baseline`
    (finite cells have η > 0 without order).  Perfect L1_2 (Cu3Au, CuAu3) has η = √3/2 ≈ 0.87,
    perfect L1_0 (CuAu) η = 1, so the default threshold 0.5 separates them from a large
    disordered cell.  Ordered points are L1_2 within ``window`` of x = 1/4 or 3/4, L1_0
    within ``window`` of 1/2 (the default 1/8 splits [1/8, 7/8] between them), "ordered"
    elsewhere.  NaN η → "unknown".  x, lro: (G,) → labels (G,) (numpy str array).
    """
    x = _vector(x, "x")
    lro = _vector(lro, "lro")
    if lro.shape != x.shape:
        raise ValueError(f"lro must have shape {x.shape} like x, got {lro.shape}")
    if not (0 <= threshold):
        raise ValueError(f"threshold must be >= 0, got {threshold!r}")
    cut = np.full(x.shape, float(threshold))
    if n_sites is not None:
        cut = np.maximum(cut, disordered_lro_baseline(x, n_sites))
    ordered = lro > cut
    near = lambda centre: np.abs(x - centre) <= window + 1e-12  # noqa: E731
    labels = np.full(x.shape, "disordered", dtype=object)
    labels[ordered] = "ordered"
    labels[ordered & (near(0.25) | near(0.75))] = "L1_2"
    labels[ordered & near(0.5)] = "L1_0"
    labels[~np.isfinite(lro)] = "unknown"
    return labels.astype(str)


def conditional_mean(cv, values, log_w, grid) -> np.ndarray:
    """Weighted mean of ``values`` conditioned on the CV: ⟨v | s = grid_k⟩ for each grid point.

    cv, values, log_w: (n,) per sample (log_w unnormalised log weights, float64; −inf = 0
    weight); grid: (G,) increasing; each sample counts for the nearest grid point.  Returns
    (G,), NaN where a grid point has no weight.
    """
    cv, values, log_w = _vector(cv, "cv"), _vector(values, "values"), _vector(log_w, "log_w")
    if not (cv.shape == values.shape == log_w.shape):
        raise ValueError(f"cv, values, log_w must have the same shape, got {cv.shape}, {values.shape}, {log_w.shape}")
    grid = _grid(grid)
    if cv.size == 0 or not np.isfinite(log_w).any():
        return np.full(grid.shape, np.nan)
    upper = np.searchsorted(grid, cv).clip(1, grid.size - 1)
    index = np.where(np.abs(cv - grid[upper - 1]) <= np.abs(grid[upper] - cv), upper - 1, upper)
    w = np.exp(log_w - np.max(log_w[np.isfinite(log_w)]))
    w = np.where(np.isfinite(w), w, 0.0)
    total = np.bincount(index, weights=w, minlength=grid.size)
    weighted = np.bincount(index, weights=w * values, minlength=grid.size)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, weighted / total, np.nan)


def marginal_free_energy(points, free_energy_kT, stderr_kT=None, keep: int = 0):
    """Marginalise a 2-D FES onto one CV: F(s_keep) = −ln Σ_other exp(−F(s_keep, other)).

    points (G, 2), F (G,) in k_BT (NaN = no data), stderr (G,) or None.  Returns (axis (K,),
    F (K,) min 0, stderr (K,) or None); errors assume independent bins (delta method:
    σ_F = √(Σ p_i² σ_i²) / Σ p_i), an approximation for histogram FES.
    """
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 2:
        raise ValueError(f"points must have shape (G, 2), got {points.shape}")
    if keep not in (0, 1):
        raise ValueError(f"keep must be 0 or 1, got {keep!r}")
    free = _vector(free_energy_kT, "free_energy_kT")
    axis, index = np.unique(points[:, keep], return_inverse=True)
    log_p = np.where(np.isfinite(free), -free, -np.inf)
    table = np.full((axis.size, free.size), -np.inf)
    table[index, np.arange(free.size)] = log_p
    with np.errstate(divide="ignore"):
        log_marginal = logsumexp(table, axis=1)
    finite = np.isfinite(log_marginal)
    out = np.full(axis.size, np.nan)
    if finite.any():
        out[finite] = -(log_marginal[finite] - log_marginal[finite].max())
    if stderr_kT is None:
        return axis, out, None
    err = _vector(stderr_kT, "stderr_kT")
    if err.shape != free.shape:
        raise ValueError(f"stderr_kT must have shape {free.shape} like free_energy_kT, got {err.shape}")
    err = np.where(np.isfinite(free) & np.isfinite(err), err, 0.0)
    reference = np.max(log_p[np.isfinite(log_p)]) if np.isfinite(log_p).any() else 0.0
    p = np.exp(log_p - reference)
    numerator = np.sqrt(np.bincount(index, weights=(p * err) ** 2, minlength=axis.size))
    denominator = np.bincount(index, weights=p, minlength=axis.size)
    with np.errstate(invalid="ignore", divide="ignore"):
        return axis, out, np.where(denominator > 0, numerator / denominator, np.nan)


def phase_regions(construction: TangentConstruction, labels: Sequence[str] | None = None,
                  lro=None) -> list[dict]:
    """Split the visited composition range into one-phase and two-phase regions.

    Two-phase: each region of ``construction`` (x_left, x_right, slope = coexistence Δμ).
    One-phase: the remaining visited grid points (hull vertices and points within noise of
    the hull), grouped into runs of equal label not separated by a two-phase region.  The
    rows tile the visited range except where the label changes between two neighbouring
    one-phase grid points (no two-phase region resolved there): that interval of one grid
    step belongs to no row.
    labels, lro: (G,) per grid point or None.  Returns dicts with kind, x_left, x_right,
    slope, phase_left, phase_right, lro_left, lro_right, excess, n_unvisited, sorted by x.
    """
    x, f = construction.x, construction.f
    labels = np.full(x.shape, "unknown") if labels is None else np.asarray(labels, dtype=str)
    lro = np.full(x.shape, np.nan) if lro is None else _vector(lro, "lro")
    if labels.shape != x.shape or lro.shape != x.shape:
        raise ValueError(f"labels and lro must have shape {x.shape} like x")
    hull = construction.hull
    single = np.isfinite(f) & ~construction.inside_region()
    single[:hull[0]] = False
    single[hull[-1] + 1:] = False
    rows = [{"kind": "two_phase", "x_left": r.x_left, "x_right": r.x_right, "slope": r.slope,
             "phase_left": labels[r.index_left], "phase_right": labels[r.index_right],
             "lro_left": lro[r.index_left], "lro_right": lro[r.index_right], "excess": r.excess,
             "n_unvisited": r.n_unvisited} for r in construction.regions]
    idx = np.flatnonzero(single)
    if idx.size:
        ends = {(r.index_left, r.index_right) for r in construction.regions}
        split = np.array([labels[a] != labels[b] or (int(a), int(b)) in ends for a, b in zip(idx[:-1], idx[1:])],
                         dtype=bool)
        starts = np.concatenate([[0], np.flatnonzero(split) + 1])
        stops = np.concatenate([starts[1:], [idx.size]]) - 1
        for s, e in zip(starts, stops):
            a, b = idx[s], idx[e]
            rows.append({"kind": "one_phase", "x_left": float(x[a]), "x_right": float(x[b]), "slope": np.nan,
                         "phase_left": labels[a], "phase_right": labels[b], "lro_left": lro[a],
                         "lro_right": lro[b], "excess": np.nan, "n_unvisited": 0})
    rows.sort(key=lambda r: (r["x_left"], r["x_right"]))
    return rows


@dataclass
class PhasePoint:
    """Input of :func:`phase_diagram_table` for one temperature.

    x (G,) compositions, free_energy_kT (G,) SGC FES in k_BT (NaN unvisited), stderr_kT (G,)
    or None, temperature (K), delta_mu (eV) of the run, n_sites N, lro (G,) ⟨η | x⟩ or None,
    info: extra columns copied into every row (e.g. campaign, method, temperature_tag).
    """

    temperature: float
    x: np.ndarray
    free_energy_kT: np.ndarray
    delta_mu: float
    n_sites: int
    stderr_kT: np.ndarray | None = None
    lro: np.ndarray | None = None
    info: Mapping[str, object] = field(default_factory=dict)


PHASE_TABLE_COLUMNS = ("temperature", "kind", "x_left", "x_right", "slope_eV", "phase_left", "phase_right",
                       "lro_left", "lro_right", "excess_eV_per_site", "n_unvisited", "n_sites")


def trim_unresolved_tails(free_energy_kT, stderr_kT, max_stderr_kT: float) -> np.ndarray:
    """F (G,) with the compositions outside the resolved range set to NaN: the resolved range
    runs from the first to the last composition whose F is finite with an error ≤
    ``max_stderr_kT``.  A chain or sampler that strayed once into a high-F tail leaves a few
    isolated, unresolved compositions there, often with unvisited ones between them and the
    rest; left in, the unvisited ones would read as a miscibility gap.  Compositions inside the
    resolved range keep their values, however noisy (their errors enter the tangent test).
    Returns a copy; F unchanged when no composition is resolved."""
    free = _vector(free_energy_kT, "free_energy_kT").copy()
    err = _vector(stderr_kT, "stderr_kT")
    if err.shape != free.shape:
        raise ValueError(f"stderr_kT must have shape {free.shape} like free_energy_kT, got {err.shape}")
    resolved = np.flatnonzero(np.isfinite(free) & np.isfinite(err) & (err <= max_stderr_kT))
    if resolved.size:
        free[:resolved[0]] = np.nan
        free[resolved[-1] + 1:] = np.nan
    return free


def phase_diagram_table(points: Sequence[PhasePoint], n_sigma: float = 3.0, atol: float = 1e-9,
                        unvisited: str = "gap", lro_threshold: float = 0.5, window: float = 0.125,
                        boltzmann_constant: float = BOLTZMANN_EV_PER_K,
                        max_tail_stderr_kT: float = 0.5) -> pd.DataFrame:
    """Phase diagram over temperatures: one row per one-phase or two-phase region per T.

    Points with errors first lose their unresolved tails (:func:`trim_unresolved_tails` with
    ``max_tail_stderr_kT``; ``inf`` keeps them).  Each point's FES then becomes f(x)
    (:func:`canonical_free_energy`), then the common tangent
    (:func:`common_tangent` with ``n_sigma``, ``atol`` in eV/site, ``unvisited``) and labels
    (:func:`label_phases` with ``lro_threshold``, ``window`` and the random-alloy baseline).
    Columns: the ``info`` keys, then :data:`PHASE_TABLE_COLUMNS` — kind (two_phase /
    one_phase, or one ``unresolved`` row with NaN compositions for a point whose F has fewer
    than two resolved compositions), x_left, x_right, slope_eV (coexistence Δμ, two-phase rows), phase_left/right,
    lro_left/right, excess_eV_per_site (largest height above the tangent), n_unvisited,
    n_sites.  Rows sorted by temperature then composition.
    """
    rows = []
    for point in sorted(points, key=lambda p: p.temperature):
        x = _grid(point.x)
        free = point.free_energy_kT if point.stderr_kT is None else \
            trim_unresolved_tails(point.free_energy_kT, point.stderr_kT, max_tail_stderr_kT)
        f, err = canonical_free_energy(x, free, point.temperature, point.delta_mu, point.n_sites,
                                       point.stderr_kT, boltzmann_constant)
        if np.isfinite(f).sum() < 2:   # e.g. a sampler stuck in one composition: no tangent to draw
            rows.append({**dict(point.info), "temperature": float(point.temperature), "kind": "unresolved",
                         "x_left": np.nan, "x_right": np.nan, "slope_eV": np.nan, "phase_left": "",
                         "phase_right": "", "lro_left": np.nan, "lro_right": np.nan, "excess_eV_per_site": np.nan,
                         "n_unvisited": int((~np.isfinite(f)).sum()), "n_sites": int(point.n_sites)})
            continue
        construction = common_tangent(x, f, err, n_sigma=n_sigma, atol=atol, unvisited=unvisited)
        lro = np.full(x.shape, np.nan) if point.lro is None else _vector(point.lro, "lro")
        labels = label_phases(x, lro, lro_threshold, point.n_sites, window)
        for region in phase_regions(construction, labels, lro):
            rows.append({**dict(point.info), "temperature": float(point.temperature), "kind": region["kind"],
                         "x_left": region["x_left"], "x_right": region["x_right"], "slope_eV": region["slope"],
                         "phase_left": region["phase_left"], "phase_right": region["phase_right"],
                         "lro_left": float(region["lro_left"]), "lro_right": float(region["lro_right"]),
                         "excess_eV_per_site": region["excess"], "n_unvisited": int(region["n_unvisited"]),
                         "n_sites": int(point.n_sites)})
    info_keys = list(dict.fromkeys(k for p in points for k in p.info))
    return pd.DataFrame(rows, columns=info_keys + list(PHASE_TABLE_COLUMNS))
