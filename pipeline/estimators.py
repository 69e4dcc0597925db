"""Reweighting and estimators: pure numpy float64 functions, no global state.

Size (over the ~400-line guide): every estimator of the project (weights, ESS, delta-method
errors, histograms, JS, FES, ln Z, Δμ reweighting, IMH, autocorrelation) is kept in one
pure-function module, so that one file carries the conventions below and their audit.

Conventions (docs/method.md §6–7):

* A *log-weight* array ``log_w`` has shape ``(n,)``, one entry per fresh i.i.d. sample, is
  unnormalised, dimensionless and float64. ``-inf`` is allowed and means "zero weight";
  NaN and ``+inf`` are errors (they signal a broken energy or likelihood) and are never
  clamped.
* Energies and bias values are in the run's energy unit; ``beta = 1/(k_B T)`` in the
  inverse unit, so that ``beta * energy`` is dimensionless.
* ``log_q`` is the path log-likelihood ``log q(x|sigma)`` of each sample under the order
  that generated it (never a fresh order: that is not a valid importance weight).
* Self-normalised importance sampling (SNIS) estimates use normalised weights
  ``w_bar = softmax(log_w)`` and delta-method standard errors
  ``Var(f_bar) ~= sum_i w_bar_i**2 (f_i - f_bar)**2``.
* Free energies are in units of k_B T for the whole system, gauge ``min F = 0``.

Every public function accepts numpy arrays, sequences or torch tensors (converted with
``.detach().cpu()``) and raises ``ValueError`` naming the offending argument.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import fft as _sp_fft

__all__ = [
    "log_weights_likelihood",
    "log_weights_biased_target",
    "log_weights_bias",
    "reweight_chemical_potential",
    "normalized_weights",
    "kish_ess",
    "weighted_mean_and_stderr",
    "bin_edges_for_discrete",
    "bin_edges_for_cv_grid",
    "weighted_histogram",
    "js_divergence",
    "fes_from_samples",
    "fes_from_histogram",
    "fes_rmse",
    "cost_to_target",
    "log_partition_function",
    "independence_metropolis_hastings",
    "integrated_autocorrelation_time",
    "mcmc_mean_and_stderr",
    "chain_weighted_mean_and_stderr",
    "split_rhat",
    "chain_diagnostics",
]

# Values this close to the outermost bin edges (relative to the edge span) are counted in
# the end bins: it absorbs float round-off of CVs computed as e.g. -sqrt(3)/2.
_EDGE_TOLERANCE = 1e-9


# --------------------------------------------------------------------------------------
# input handling
# --------------------------------------------------------------------------------------
def _as_float64(x, name: str) -> np.ndarray:
    """Convert array-like or torch tensor ``x`` to a float64 numpy array."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch.Tensor without importing torch
        x = x.detach().cpu()
        if getattr(x, "is_complex", lambda: False)():
            raise ValueError(f"{name} must be real-valued, got a complex tensor")
        x = x.double().numpy()
    if np.iscomplexobj(x):
        raise ValueError(f"{name} must be real-valued, got complex values")
    try:
        return np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"{name} must be numeric and convertible to a float64 array; got {type(x).__name__}"
        ) from exc


def _first_bad_index(mask: np.ndarray) -> tuple[int, ...] | int:
    idx = np.argwhere(mask)[0]
    return int(idx[0]) if idx.size == 1 else tuple(int(i) for i in idx)


def _require_finite(arr: np.ndarray, name: str, hint: str = "") -> None:
    bad = ~np.isfinite(arr)
    if bad.any():
        raise ValueError(
            f"{name} contains {int(bad.sum())} non-finite value(s) (first at index "
            f"{_first_bad_index(bad)}: {arr[bad].flat[0]!r}); {hint or 'fix the computation that produced them'}"
        )


def _check_log_weights(log_w, name: str = "log_w") -> np.ndarray:
    """Validate a log-weight vector: 1-D, non-empty, no NaN/+inf, not all -inf."""
    lw = _as_float64(log_w, name)
    if lw.ndim != 1:
        raise ValueError(f"{name} must be 1-D of shape (n,), got shape {lw.shape}; pass one log-weight per sample")
    if lw.size == 0:
        raise ValueError(f"{name} is empty; at least one sample is needed")
    bad = np.isnan(lw) | np.isposinf(lw)
    if bad.any():
        raise ValueError(
            f"{name} contains {int(bad.sum())} NaN/+inf value(s) (first at index {_first_bad_index(bad)}); "
            "fix the energy or log_q that produced them (log-weights are never clamped; -inf = zero weight is allowed)"
        )
    if np.isneginf(lw).all():
        raise ValueError(f"{name} is -inf everywhere: every sample has zero weight, nothing can be estimated")
    return lw


def _check_scalar(x, name: str) -> float:
    arr = _as_float64(x, name)
    if arr.size != 1:
        raise ValueError(f"{name} must be a scalar, got shape {arr.shape}")
    value = float(arr.reshape(()))
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def _check_beta(beta) -> float:
    b = _check_scalar(beta, "beta")
    if b < 0.0:
        raise ValueError(f"beta must be finite and >= 0 (beta = 1/(k_B T) in inverse energy units), got {b}")
    return b


def _check_per_sample(x, name: str, n: int | None = None, hint: str = "") -> np.ndarray:
    arr = _as_float64(x, name)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D of shape (n,), got shape {arr.shape}")
    if n is not None and arr.shape[0] != n:
        raise ValueError(f"{name} has {arr.shape[0]} entries but {n} were expected (one per sample)")
    _require_finite(arr, name, hint)
    return arr


def _logsumexp(lw: np.ndarray) -> float:
    m = float(np.max(lw))
    if m == -math.inf:
        return -math.inf
    return m + math.log(float(np.sum(np.exp(lw - m))))


def _normalise(lw: np.ndarray) -> np.ndarray:
    return np.exp(lw - _logsumexp(lw))


# --------------------------------------------------------------------------------------
# log-weights
# --------------------------------------------------------------------------------------
def log_weights_likelihood(energy, log_q, beta) -> np.ndarray:
    """Log-weights for the *physical* target pi(x) ~ exp(-beta E(x)): ``-beta*E - log_q``.

    energy: (n,) in the run's energy unit; log_q: (n,) path log-likelihood of each sample
    under the order that generated it (<= 0 for a discrete sampler); beta: 1/(k_B T).
    Returns float64 (n,). Asymptotically exact SNIS weights whatever bias V the sampler was
    trained with: V does not appear here. Do NOT add ``beta*V`` to these weights (that
    double-counts the bias, a known pitfall); ``log_weights_bias`` is a different, cheaper
    estimator meant for samples assumed to follow the biased target.
    """
    b = _check_beta(beta)
    e = _check_per_sample(energy, "energy", hint="energies must be finite")
    lq = _check_per_sample(log_q, "log_q", n=e.shape[0], hint="log_q must be finite (the sample was generated)")
    _check_log_q_sign(lq)
    return -b * e - lq


def log_weights_biased_target(energy, bias_energy, log_q, beta) -> np.ndarray:
    """Log-weights for the *biased* target pi_V(x) ~ exp(-beta (E + V)): ``-beta*(E+V) - log_q``.

    energy, bias_energy: (n,) in the run's energy unit, V = V(xi(x)) read from the bias;
    log_q: (n,) path log-likelihood; beta: 1/(k_B T). These are the training (WDCE) weights
    and give the ESS for the biased target. Converting them to physical weights means adding
    ``beta*V`` once; ``log_weights_likelihood`` does that directly, never add ``beta*V`` to it
    again (double counting).
    """
    b = _check_beta(beta)
    e = _check_per_sample(energy, "energy", hint="energies must be finite")
    v = _check_per_sample(bias_energy, "bias_energy", n=e.shape[0], hint="bias values must be finite")
    lq = _check_per_sample(log_q, "log_q", n=e.shape[0], hint="log_q must be finite (the sample was generated)")
    _check_log_q_sign(lq)
    return -b * (e + v) - lq


def log_weights_bias(bias_energy, beta) -> np.ndarray:
    """Bias-only log-weights ``beta*V(xi(x))`` (the "bias weights" of docs/method.md §6).

    bias_energy: (n,) V at each sample's CV in the run's energy unit; beta: 1/(k_B T).
    Valid only if the samples follow the biased target pi_V exactly (q ~= pi_V): cheap and
    low-variance but biased otherwise. Never combine with likelihood weights: the likelihood
    weights ``-beta*E - log_q`` already target pi, adding ``beta*V`` double-counts the bias.
    """
    b = _check_beta(beta)
    v = _check_per_sample(bias_energy, "bias_energy", hint="bias values must be finite")
    return b * v


def reweight_chemical_potential(log_w, n_solute, beta, delta_mu_from, delta_mu_to) -> np.ndarray:
    """Shift log-weights from one semi-grand-canonical Delta-mu to another.

    With E_dmu(x) = E(x) - dmu * N(x), moving the target from ``delta_mu_from`` to
    ``delta_mu_to`` adds ``beta * (delta_mu_to - delta_mu_from) * N`` to each log-weight.
    log_w: (n,); n_solute: (n,) solute counts N (e.g. N_Au); beta in 1/energy, delta-mu in
    the energy unit. Returns float64 (n,).
    """
    lw = _check_log_weights(log_w)
    counts = _check_per_sample(n_solute, "n_solute", n=lw.shape[0])
    b = _check_beta(beta)
    d_from = _check_scalar(delta_mu_from, "delta_mu_from")
    d_to = _check_scalar(delta_mu_to, "delta_mu_to")
    return lw + b * (d_to - d_from) * counts


def _check_log_q_sign(lq: np.ndarray) -> None:
    # A discrete model's path log-likelihood is a sum of log-probabilities, hence <= 0.
    # A positive value almost always means -log q (a loss) was passed instead of log q.
    bad = lq > 1e-9
    if bad.any():
        raise ValueError(
            f"log_q has {int(bad.sum())} positive value(s) (first at index {_first_bad_index(bad)}: "
            f"{lq[bad][0]!r}); log q(x|sigma) of a discrete sampler is <= 0. Did you pass -log q?"
        )


# --------------------------------------------------------------------------------------
# weights, ESS
# --------------------------------------------------------------------------------------
def normalized_weights(log_w) -> np.ndarray:
    """Self-normalised weights ``softmax(log_w)``: float64 (n,), non-negative, sum to 1."""
    return _normalise(_check_log_weights(log_w))


def kish_ess(log_w) -> float:
    """Kish effective sample size ``(sum w)^2 / sum w^2`` in [1, n] (scale-invariant)."""
    w = _normalise(_check_log_weights(log_w))
    return float(1.0 / np.sum(w * w))


# --------------------------------------------------------------------------------------
# SNIS means
# --------------------------------------------------------------------------------------
def weighted_mean_and_stderr(values, log_w):
    """Self-normalised weighted mean with its delta-method standard error.

    values: (n,) or (n, k) per-sample observables (column-wise for (n, k)); log_w: (n,).
    mean = sum_i w_bar_i f_i, stderr = sqrt(sum_i w_bar_i^2 (f_i - mean)^2).
    Returns (float, float) for (n,) values, two (k,) arrays for (n, k).
    """
    lw = _check_log_weights(log_w)
    f = _as_float64(values, "values")
    if f.ndim not in (1, 2):
        raise ValueError(f"values must have shape (n,) or (n, k), got {f.shape}")
    if f.shape[0] != lw.shape[0]:
        raise ValueError(f"values has {f.shape[0]} rows but log_w has {lw.shape[0]} entries; pass one row per sample")
    _require_finite(f, "values", "observables must be finite")
    w = _normalise(lw)
    mean = w @ f
    var = (w * w) @ (f - mean) ** 2
    stderr = np.sqrt(var)
    if f.ndim == 1:
        return float(mean), float(stderr)
    return np.asarray(mean, dtype=np.float64), np.asarray(stderr, dtype=np.float64)


# --------------------------------------------------------------------------------------
# binning
# --------------------------------------------------------------------------------------
def bin_edges_for_discrete(lower: float, spacing: float, n_values: int) -> np.ndarray:
    """Edges giving each attainable value ``lower + k*spacing`` (k < n_values) its own bin.

    The value sits in the middle of its bin: edges = lower + (k - 1/2) * spacing for
    k = 0..n_values, float64 (n_values + 1,). No value lies on an edge, so round-off in the
    CV cannot move a sample to a neighbouring bin.
    """
    lo, dx = float(lower), float(spacing)
    if not math.isfinite(lo):
        raise ValueError(f"lower must be finite, got {lower}")
    if not (math.isfinite(dx) and dx > 0):
        raise ValueError(f"spacing must be finite and > 0, got {spacing}")
    if int(n_values) != n_values or n_values < 1:
        raise ValueError(f"n_values must be a positive integer, got {n_values}")
    return lo + (np.arange(int(n_values) + 1, dtype=np.float64) - 0.5) * dx


def bin_edges_for_cv_grid(lower, upper, spacing) -> list[np.ndarray]:
    """Per-dimension discrete-value edges for a CV described by (lower, upper, spacing).

    lower, upper, spacing: scalars or per-dimension sequences (as in ``CVSpec``). Each
    dimension gets ``round((upper - lower)/spacing) + 1`` bins centred on its attainable
    values. Returns a list with one edge array per dimension (pass ``edges[0]`` for a 1-D
    CV given as (n,) values, or the whole list for (n, d) values).
    """
    lo = np.atleast_1d(_as_float64(lower, "lower"))
    hi = np.atleast_1d(_as_float64(upper, "upper"))
    dx = np.atleast_1d(_as_float64(spacing, "spacing"))
    if not (lo.ndim == hi.ndim == dx.ndim == 1 and lo.shape == hi.shape == dx.shape):
        raise ValueError(
            f"lower, upper, spacing must have one entry per dimension, got {lo.shape}, {hi.shape}, {dx.shape}"
        )
    edges = []
    for j in range(lo.shape[0]):
        if not (dx[j] > 0 and hi[j] > lo[j]):
            raise ValueError(f"dimension {j}: need upper > lower and spacing > 0, got {lo[j]}, {hi[j]}, {dx[j]}")
        steps = (hi[j] - lo[j]) / dx[j]
        n_values = int(round(steps)) + 1
        if abs(steps - round(steps)) > 1e-6:
            raise ValueError(
                f"dimension {j}: (upper - lower)/spacing = {steps} is not an integer; fix lower, upper or spacing"
            )
        edges.append(bin_edges_for_discrete(lo[j], dx[j], n_values))
    return edges


def _check_edges(edges, name: str) -> np.ndarray:
    e = _as_float64(edges, name)
    if e.ndim != 1 or e.shape[0] < 2:
        raise ValueError(f"{name} must be a 1-D array of at least 2 edges, got shape {e.shape}")
    _require_finite(e, name, "bin edges must be finite")
    if not np.all(np.diff(e) > 0):
        raise ValueError(f"{name} must be strictly increasing")
    return e


def _edges_per_dimension(bin_edges, dim: int) -> list[np.ndarray]:
    if dim == 1:
        try:
            single = _as_float64(bin_edges, "bin_edges")
        except ValueError:
            single = None  # ragged sequence: handled below
        if single is not None and single.ndim == 1:
            return [_check_edges(single, "bin_edges")]
    if isinstance(bin_edges, np.ndarray) and bin_edges.ndim == 2:
        bin_edges = list(bin_edges)
    if hasattr(bin_edges, "detach") and getattr(bin_edges, "ndim", 0) == 2:
        bin_edges = list(bin_edges)
    if not isinstance(bin_edges, Sequence) or len(bin_edges) != dim:
        raise ValueError(
            f"bin_edges must be a sequence of {dim} edge arrays (one per CV dimension) for values of shape (n, {dim})"
        )
    return [_check_edges(e, f"bin_edges[{j}]") for j, e in enumerate(bin_edges)]


def _bin_index(x: np.ndarray, edges: np.ndarray, name: str) -> np.ndarray:
    """Bin index per value: bins [e_j, e_{j+1}), the last one closed; outside -> ValueError."""
    lo, hi = edges[0], edges[-1]
    tol = _EDGE_TOLERANCE * (hi - lo)
    outside = (x < lo - tol) | (x > hi + tol)
    if outside.any():
        raise ValueError(
            f"{name}: {int(outside.sum())} sample(s) lie outside the bin edges [{lo}, {hi}] (e.g. {x[outside][0]!r}); "
            "widen the edges to cover the CV range (samples are never dropped silently)"
        )
    idx = np.searchsorted(edges, x, side="right") - 1
    # only values on/within round-off of the outer edges are moved: into the end bins
    return np.clip(idx, 0, edges.shape[0] - 2)


def weighted_histogram(values, log_w, bin_edges):
    """Self-normalised bin probabilities with delta-method standard errors.

    values: (n,) with ``bin_edges`` a 1-D edge array, or (n, d) with ``bin_edges`` a
    sequence of d edge arrays (d = 2 for 2-D CVs). Bins are [e_j, e_{j+1}) with the last
    one closed. Samples outside the edges raise ValueError (values within 1e-9 of the edge
    span of the outermost edges count as inside, to absorb round-off).
    Returns (probabilities, stderr), both float64 of shape (m,) or (m1, ..., md);
    probabilities sum to 1; stderr_b = sqrt(sum_i w_bar_i^2 (1[i in b] - P_b)^2).
    """
    lw = _check_log_weights(log_w)
    v = _as_float64(values, "values")
    if v.ndim == 1:
        v = v[:, None]
        edges = [_check_edges(bin_edges, "bin_edges")]
    elif v.ndim == 2:
        edges = _edges_per_dimension(bin_edges, v.shape[1])
    else:
        raise ValueError(f"values must have shape (n,) or (n, d), got {v.shape}")
    if v.shape[0] != lw.shape[0]:
        raise ValueError(f"values has {v.shape[0]} rows but log_w has {lw.shape[0]} entries; pass one row per sample")
    _require_finite(v, "values", "CV values must be finite")
    shape = tuple(e.shape[0] - 1 for e in edges)
    index = tuple(
        _bin_index(v[:, j], e, "values" if len(edges) == 1 else f"values[:, {j}]") for j, e in enumerate(edges)
    )
    flat = np.ravel_multi_index(index, shape)
    w = _normalise(lw)
    size = int(np.prod(shape))
    prob = np.bincount(flat, weights=w, minlength=size)
    w2_in_bin = np.bincount(flat, weights=w * w, minlength=size)
    w2_total = float(np.sum(w * w))
    # sum_i w_i^2 (1_i - P)^2 split into samples inside (1 - P)^2 and outside P^2 the bin
    var = w2_in_bin * (1.0 - prob) ** 2 + np.maximum(w2_total - w2_in_bin, 0.0) * prob**2
    return prob.reshape(shape), np.sqrt(var).reshape(shape)


def js_divergence(p, q) -> float:
    """Jensen-Shannon divergence (natural log, in [0, ln 2]) between two histograms.

    p, q: non-negative arrays of the same shape, counts or probabilities on the *same*
    fixed bins (e.g. ``weighted_histogram(...)[0]`` for both sides; unweighted reference
    samples use log_w = zeros). Each is normalised to sum 1; 0 * log 0 = 0.
    JS = (KL(p||m) + KL(q||m))/2 with m = (p + q)/2.
    """
    pa = _as_float64(p, "p")
    qa = _as_float64(q, "q")
    if pa.shape != qa.shape:
        raise ValueError(f"p and q must be histograms on the same bins; got shapes {pa.shape} and {qa.shape}")
    for arr, name in ((pa, "p"), (qa, "q")):
        if arr.size == 0:
            raise ValueError(f"{name} is empty")
        _require_finite(arr, name, "histograms must be finite (use probabilities, not free energies)")
        if (arr < 0).any():
            raise ValueError(f"{name} has negative entries; histograms must be non-negative")
        if not arr.sum() > 0:
            raise ValueError(f"{name} sums to zero; nothing to compare")
    pa = pa / pa.sum()
    qa = qa / qa.sum()
    m = 0.5 * (pa + qa)

    def _kl_to_m(a: np.ndarray) -> float:
        mask = a > 0  # 0 * log 0 = 0; a > 0 implies m > 0
        return float(np.sum(a[mask] * np.log(a[mask] / m[mask])))

    js = 0.5 * (_kl_to_m(pa) + _kl_to_m(qa))
    # remove round-off only (|excess| ~ 1e-16): the exact value lies in [0, ln 2]
    return min(max(js, 0.0), math.log(2.0))


def js_sampling_floor(reference, n_effective: float, draws: int = 200, seed: int = 0) -> float:
    """The JS divergence that sampling noise alone gives: the mean JS between ``reference``
    (a histogram, normalised here) and histograms of ``n_effective`` i.i.d. draws from it
    (``draws`` multinomial repetitions, fixed ``seed``).  A sampler whose JS against the
    reference is near this floor at its ESS is limited by its sample size, not by bias; for
    large n it approaches (K − 1)/(8 n) with K occupied bins."""
    p = _as_float64(reference, "reference").ravel()
    if not n_effective >= 1:
        raise ValueError(f"n_effective must be at least 1, got {n_effective}")
    p = p / p.sum()
    counts = np.random.default_rng(seed).multinomial(int(round(n_effective)), p, size=draws)
    return float(np.mean([js_divergence(c, p) for c in counts]))


# --------------------------------------------------------------------------------------
# free energies
# --------------------------------------------------------------------------------------
def fes_from_samples(cv, log_w, bin_edges):
    """Free-energy surface from weighted samples: F_b = -ln P_b in k_B T, gauge min F = 0.

    cv, log_w, bin_edges as in ``weighted_histogram`` (use physical, i.e. likelihood,
    weights for the unbiased FES). P_b is the probability of the bin (not a density): with
    ``bin_edges_for_discrete`` edges it is the probability of one CV value, F(s).
    Returns (F, stderr), float64 of the histogram's shape; NaN where a bin has no weight.
    stderr_b = stderr(P_b)/P_b (delta method) is the error of -ln P_b; it excludes the
    (small, shared) uncertainty of the gauge constant.
    """
    return fes_from_histogram(*weighted_histogram(cv, log_w, bin_edges))


def fes_from_histogram(probabilities, stderr):
    """F_b = −ln P_b in k_BT (gauge min F = 0) and its error stderr_b / P_b (delta method)
    from bin probabilities and their standard errors (same shape); NaN where P_b = 0."""
    filled = probabilities > 0
    free = np.full(probabilities.shape, np.nan)
    free[filled] = -np.log(probabilities[filled])
    free[filled] -= free[filled].min()
    error = np.full(probabilities.shape, np.nan)
    error[filled] = stderr[filled] / probabilities[filled]
    return free, error


def fes_rmse(free_energy, reference, align: str = "mean") -> tuple[float, float]:
    """RMSE (k_B T) between a FES and a reference on the same grid, and the coverage.

    Points where the reference is finite count; of those, points where ``free_energy`` is
    NaN/inf are missing and reduce ``coverage`` (fraction of reference points covered)
    instead of entering the RMSE. align="mean" removes the best constant offset (mean
    difference over the compared points); align="min" compares as given (both gauged
    min = 0). Returns (rmse, coverage).
    """
    f = _as_float64(free_energy, "free_energy")
    r = _as_float64(reference, "reference")
    if f.shape != r.shape:
        raise ValueError(f"free_energy and reference must be on the same grid; got shapes {f.shape} and {r.shape}")
    if align not in ("mean", "min"):
        raise ValueError(f"align must be 'mean' or 'min', got {align!r}")
    ref_ok = np.isfinite(r)
    both = ref_ok & np.isfinite(f)
    if not both.any():
        raise ValueError("free_energy and reference have no finite grid point in common")
    diff = f[both] - r[both]
    if align == "mean":
        diff = diff - diff.mean()
    return float(np.sqrt(np.mean(diff**2))), float(both.sum() / ref_ok.sum())


def cost_to_target(history, target_kT: float) -> dict[str, float]:
    """Cost to accuracy from an FES-RMSE history [(hills, energy evaluations, RMSE k_BT), one
    entry per deposition cycle, in order]: the cycles, hills and evaluations spent when the RMSE
    first falls to ``target_kT`` or below (NaN if it never does), the final RMSE and the totals."""
    if len(history) == 0:
        raise ValueError("history is empty: it needs one (hills, evaluations, rmse) entry per deposition cycle")
    hills, evaluations, rmse = (np.asarray(column, dtype=np.float64) for column in zip(*history))
    reached = np.flatnonzero(rmse <= target_kT)
    first = int(reached[0]) if reached.size else None
    return {"cycles_to_target": math.nan if first is None else first + 1,
            "hills_to_target": math.nan if first is None else float(hills[first]),
            "evaluations_to_target": math.nan if first is None else float(evaluations[first]),
            "final_rmse_kT": float(rmse[-1]), "cycles": len(rmse), "hills": float(hills[-1]),
            "energy_evaluations": float(evaluations[-1])}


def log_partition_function(log_w) -> tuple[float, float]:
    """ln Z ~= logsumexp(log_w) - ln n with its delta-method standard error.

    log_w: (n,) *unnormalised* likelihood weights ``-beta*E - log_q`` (then Z is the
    partition function sum_x exp(-beta E)). stderr = std(w)/(sqrt(n) mean(w)) (sample
    std, ddof=1), computed in log space as sqrt((n sum w_bar^2 - 1)/(n - 1)). The estimate is
    biased low by about stderr^2/2 (Jensen); requires n >= 2.
    """
    lw = _check_log_weights(log_w)
    n = lw.shape[0]
    if n < 2:
        raise ValueError("log_w needs at least 2 samples to estimate a standard error")
    lse = _logsumexp(lw)
    w = np.exp(lw - lse)
    rel_var = max((n * float(np.sum(w * w)) - 1.0) / (n - 1), 0.0)
    return lse - math.log(n), math.sqrt(rel_var)


# --------------------------------------------------------------------------------------
# independence Metropolis-Hastings
# --------------------------------------------------------------------------------------
def independence_metropolis_hastings(log_w, generator, n_steps: int | None = None, initial: int = 0,
                                     shuffle: bool = False):
    """Independence Metropolis-Hastings over i.i.d. proposals, in their generated order.

    log_w: (n,) importance log-weights of the samples (log pi~ - log q on (x, sigma), e.g.
    likelihood weights); generator: ``numpy.random.Generator`` for the accept/reject draws.
    The chain starts at sample ``initial``; step t proposes the next unused sample (all
    samples except ``initial``, in index order, each once) and accepts it with probability
    min(1, w_t / w_current). A zero-weight current state accepts any proposal; a
    zero-weight proposal is never accepted. n_steps: chain length including the initial
    state (2 <= n_steps <= n, default n).
    shuffle: propose the samples in a random order (drawn from ``generator``) instead. Needed
    for samples drawn in blocks, one per component of a mixture proposal (walkers; weights
    π~/q_mixture): in a random order they are draws from the mixture, in block order the
    chain would see one component's draws at a time and cross between modes only at block
    boundaries.
    Returns (visited indices int64 (n_steps,), acceptance rate over the n_steps - 1 moves).
    The visited samples are a correlated chain with stationary distribution pi: use
    ``mcmc_mean_and_stderr`` for errors, never the i.i.d. formula.
    """
    lw = _check_log_weights(log_w)
    n = lw.shape[0]
    if not isinstance(generator, np.random.Generator):
        raise ValueError(
            f"generator must be a numpy.random.Generator (np.random.default_rng(seed)), got {type(generator).__name__}"
        )
    if isinstance(initial, bool) or int(initial) != initial or not 0 <= initial < n:
        raise ValueError(f"initial must be an integer sample index in [0, {n}), got {initial}")
    initial = int(initial)
    if n_steps is None:
        n_steps = n
    if isinstance(n_steps, bool) or int(n_steps) != n_steps or not 2 <= n_steps <= n:
        raise ValueError(
            f"n_steps must be an integer in [2, {n}] (each sample is proposed at most once), got {n_steps}"
        )
    n_steps = int(n_steps)
    order = generator.permutation(n) if shuffle else np.arange(n)
    proposals = order[order != initial][: n_steps - 1]
    with np.errstate(divide="ignore"):
        log_u = np.log(generator.random(n_steps - 1))
    lw_list = lw.tolist()
    current, current_lw = initial, lw_list[initial]
    visited = [initial]
    accepted = 0
    for proposal, lu in zip(proposals.tolist(), log_u.tolist()):
        proposal_lw = lw_list[proposal]
        if current_lw == -math.inf or lu < proposal_lw - current_lw:
            current, current_lw = proposal, proposal_lw
            accepted += 1
        visited.append(current)
    return np.asarray(visited, dtype=np.int64), accepted / (n_steps - 1)


# --------------------------------------------------------------------------------------
# MCMC error analysis
# --------------------------------------------------------------------------------------
def _as_chains(series, name: str) -> np.ndarray:
    x = _as_float64(series, name)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2:
        raise ValueError(f"{name} must have shape (n_steps,) or (n_steps, n_chains), got {x.shape}")
    if x.shape[0] < 2 or x.shape[1] < 1:
        raise ValueError(f"{name} needs at least 2 steps and 1 chain, got shape {x.shape}")
    _require_finite(x, name, "MCMC observables must be finite")
    return x


def _chain_averaged_autocovariance(x: np.ndarray) -> np.ndarray:
    """Autocovariance C(t), t = 0..n-1, averaged over chains (columns) via FFT.

    Deviations are taken from the grand mean of all chains, so chains stuck in different
    states show up as slowly decaying correlation (and a large tau), not as small errors.
    Biased (1/n) estimator, as in Sokal's windowing.
    """
    n = x.shape[0]
    y = x - x.mean()
    n_fft = _sp_fft.next_fast_len(2 * n, real=True)
    spectrum = _sp_fft.rfft(y, n=n_fft, axis=0)
    acov = _sp_fft.irfft(spectrum * np.conj(spectrum), n=n_fft, axis=0)[:n] / n
    return acov.mean(axis=1)


def _sokal_tau(acov: np.ndarray, window_factor: float) -> tuple[float, int]:
    rho = acov / acov[0]
    tau = 2.0 * np.cumsum(rho) - 1.0  # tau(W) = 1 + 2 sum_{t=1..W} rho(t)
    windows = np.arange(rho.shape[0])
    ok = windows >= window_factor * tau
    window = int(np.argmax(ok)) if ok.any() else rho.shape[0] - 1
    return float(tau[window]), window


def integrated_autocorrelation_time(series, window_factor: float = 5.0) -> float:
    """Integrated autocorrelation time tau_int = 1 + 2 sum_t rho(t), in steps.

    series: (n_steps,) or (n_steps, n_chains) (the autocovariance is averaged over chains,
    deviations from the grand mean). Sokal's automatic window: the smallest W with
    W >= window_factor * tau(W) (window_factor ~ 5-6); if none exists the whole series is
    used. Estimates are reliable only for n_steps >~ 50 tau. Chains sitting in different
    states give tau ~ n_steps (no window closes): the chains are too short to mix, and the
    resulting error is the between-chain one. Returns NaN for a constant series.
    """
    if not (math.isfinite(window_factor) and window_factor > 0):
        raise ValueError(f"window_factor must be > 0, got {window_factor}")
    x = _as_chains(series, "series")
    acov = _chain_averaged_autocovariance(x)
    if acov[0] <= 0:
        return math.nan
    return _sokal_tau(acov, window_factor)[0]


def mcmc_mean_and_stderr(chains, window_factor: float = 5.0) -> tuple[float, float]:
    """Mean over all steps and chains, with an autocorrelation-aware standard error.

    chains: (n_steps, n_chains) or (n_steps,). stderr = sqrt(tau_int * var / (n_steps *
    n_chains)), var the variance about the grand mean and tau_int from the chain-averaged
    autocorrelation (``integrated_autocorrelation_time``). Returns (mean, stderr); stderr is
    0.0 when no fluctuation was observed at all (then the data cannot show its error).
    """
    x = _as_chains(chains, "chains")
    if not (math.isfinite(window_factor) and window_factor > 0):
        raise ValueError(f"window_factor must be > 0, got {window_factor}")
    mean = float(x.mean())
    acov = _chain_averaged_autocovariance(x)
    if acov[0] <= 0:
        return mean, 0.0
    tau, _ = _sokal_tau(acov, window_factor)
    return mean, math.sqrt(max(tau, 0.0) * acov[0] / x.size)


def chain_weighted_mean_and_stderr(values, log_w, window_factor: float = 5.0) -> tuple[float, float]:
    """Self-normalised weighted mean over correlated chains, with autocorrelation-aware SE.

    values, log_w: (n_steps, n_chains) or (n_steps,); log_w are the per-state log weights
    for the target (e.g. βV(ξ(x)) for chains run under a frozen bias; all equal for
    unbiased chains, which reduces this to :func:`mcmc_mean_and_stderr`).
    f̄ = Σ w f / Σ w. The error linearises the ratio (delta method): the series
    g = (w / w̄)(f − f̄) has mean 0 and the SE of f̄ is the MCMC SE of the mean of g.
    """
    f = _as_chains(values, "values")
    lw = np.asarray(log_w, dtype=np.float64).reshape(-1, 1) if np.ndim(log_w) == 1 else np.asarray(log_w, dtype=np.float64)
    if lw.shape != f.shape:
        raise ValueError(f"log_w must have the shape of values {f.shape}, got {lw.shape}")
    _check_log_weights(lw.ravel(), "log_w")
    w = np.exp(lw - lw.max())
    w_mean = w.mean()
    mean = float((w * f).sum() / w.sum())
    _, stderr = mcmc_mean_and_stderr((w / w_mean) * (f - mean), window_factor)
    return mean, stderr


def split_rhat(chains) -> float:
    """Split-R̂ (Gelman et al., Bayesian Data Analysis, 3rd ed., §11.4) of chains
    ``(n_steps, n_chains)``: each chain cut into halves, R̂ = sqrt(((n−1)/n·W + B/n) / W) with
    W the mean within-half variance and B/n the variance of the half means. Near 1 when the
    chains have mixed; above ~1.01–1.05 when chains started apart still disagree. NaN when no
    half varies (R̂ undefined), or with fewer than 4 steps."""
    x = _as_chains(chains, "chains")
    half = x.shape[0] // 2
    if half < 2:
        return math.nan
    halves = np.concatenate([x[:half], x[x.shape[0] - half:]], axis=1)     # (half, 2·n_chains)
    within = halves.var(axis=0, ddof=1).mean()
    between_over_n = halves.mean(axis=0).var(ddof=1)
    if within <= 0:
        return math.nan
    return float(math.sqrt(((half - 1) / half * within + between_over_n) / within))


def chain_diagnostics(values, log_w, window_factor: float = 5.0) -> dict[str, float]:
    """Mean and mixing figures of one observable over correlated, weighted chains
    (n_steps, n_chains): ``mean`` and ``stderr`` from :func:`chain_weighted_mean_and_stderr`,
    ``ess`` = Var_π(f) / SE(f)² (Var_π the self-normalised weighted variance, SE from
    :func:`chain_weighted_mean_and_stderr`), ``tau_int`` = n_steps·n_chains / ess in steps
    (the autocorrelation time, inflated by the spread of the weights), and ``rhat``
    (:func:`split_rhat` of f under the chains' own target). NaN where f never varies."""
    f = _as_chains(values, "values")
    lw = np.asarray(log_w, dtype=np.float64).reshape(f.shape)
    mean, stderr = chain_weighted_mean_and_stderr(f, lw, window_factor)
    w = np.exp(lw - lw.max())
    variance = float((w * (f - mean) ** 2).sum() / w.sum())
    if not (stderr > 0 and variance > 0):
        return {"mean": mean, "stderr": stderr, "ess": math.nan, "tau_int": math.nan, "rhat": math.nan}
    ess = variance / stderr ** 2
    return {"mean": mean, "stderr": stderr, "ess": ess, "tau_int": f.size / ess, "rhat": split_rhat(f)}
