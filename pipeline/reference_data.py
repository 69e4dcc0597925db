"""What a run is compared against: exact enumeration for tiny systems, else a finished
unbiased chain run (``sw``, then ``metropolis``) at the same temperature.

Bins: one CV bin per attainable CV value per dimension, fixed E/N bins per system
(docs/outputs.md, histograms.parquet), so runs and references share bins exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline import estimators as est
from systems.exact import iterate_states

EXACT_ENUMERATION_LIMIT = 3 ** 16   # states (Potts q=3 4×4, Ising 5×5); up to it comparisons use exact values

__all__ = ["EXACT_ENUMERATION_LIMIT", "ReferenceData", "cv_bin_edges", "cv_grid_shape", "histogram_inputs",
           "has_exact_reference", "exact_reference", "load_reference", "reference_for"]


@dataclass
class ReferenceData:
    """What comparisons are made against: exact enumeration or an unbiased chain run."""

    label: str
    cv_histogram: np.ndarray          # probabilities on the CV bins (flattened)
    energy_histogram: np.ndarray      # probabilities on the E/N bins
    fes_kT: np.ndarray                # F on the CV grid (NaN where unknown), min 0


def cv_bin_edges(system) -> list[np.ndarray]:
    """One bin per attainable CV value per dimension (fixed for a system)."""
    spec = system.cv_spec
    return est.bin_edges_for_cv_grid(spec.lower, spec.upper, spec.spacing)


def cv_grid_shape(system) -> tuple[int, ...]:
    """Number of CV bins per dimension (one per attainable value)."""
    return tuple(len(e) - 1 for e in cv_bin_edges(system))


def histogram_inputs(system, cv: np.ndarray, edges):
    """(values, edges) for est.weighted_histogram: 1-D CVs as (n,) with one edge array,
    d-D CVs as (n, d) with the list of edges."""
    return (cv[:, 0], edges[0]) if len(edges) == 1 else (cv, edges)


def has_exact_reference(system) -> bool:
    """Whether ``system`` is small enough (EXACT_ENUMERATION_LIMIT states) to be compared with
    exact enumeration instead of a reference chain run."""
    return system.n_states ** system.n_sites <= EXACT_ENUMERATION_LIMIT


def reference_for(root: Path, method: str, temperature_tag: str, system, beta: float,
                  unbiased_references) -> ReferenceData | None:
    """Exact enumeration for tiny systems, else the first finished run among
    ``unbiased_references`` (method names, in order of preference) at this temperature
    under the campaign folder ``root``; None when there is none (or when ``method`` is
    itself the preferred reference)."""
    if has_exact_reference(system):
        return exact_reference(system, beta)
    for reference in unbiased_references:
        if reference == method:
            return None
        folder = Path(root) / f"{reference}_{temperature_tag}"
        if (folder / "summary.json").exists():
            data = load_reference(folder, reference)
            return replace(data, fes_kT=data.fes_kT.reshape(cv_grid_shape(system)))
    return None


def exact_reference(system, beta: float, chunk_size: int = 2**18) -> ReferenceData:
    """Exact CV and E/N histograms and F(CV) by streaming every state in chunks of
    ``chunk_size``: each chunk's normalised histogram is scaled by its own ln Z share and
    accumulated in log space, so memory stays one chunk and tiny probabilities keep their
    float64 precision (3^16 Potts states: about 30 s on one core)."""
    cv_edges = cv_bin_edges(system)
    shape = cv_grid_shape(system)
    energy_edges = system.energy_per_site_bin_edges()
    log_cv = np.full(int(np.prod(shape)), -np.inf)
    log_energy = np.full(len(energy_edges) - 1, -np.inf)
    for states in iterate_states(system.n_sites, system.n_states, chunk_size):
        x = states.long()
        energy = system.energy(x).numpy()
        log_w = -beta * energy
        chunk_log_z = np.logaddexp.reduce(log_w)
        values, edges = histogram_inputs(system, system.cv(x).numpy(), cv_edges)
        cv_hist, _ = est.weighted_histogram(values, log_w, edges)
        e_hist, _ = est.weighted_histogram(energy / system.n_sites, log_w, energy_edges)
        with np.errstate(divide="ignore"):
            log_cv = np.logaddexp(log_cv, np.log(cv_hist.ravel()) + chunk_log_z)
            log_energy = np.logaddexp(log_energy, np.log(e_hist) + chunk_log_z)
    log_cv -= np.logaddexp.reduce(log_cv)
    log_energy -= np.logaddexp.reduce(log_energy)
    fes = np.where(np.isfinite(log_cv), -log_cv, np.nan)
    fes -= np.nanmin(fes)
    return ReferenceData("exact", np.exp(log_cv), np.exp(log_energy), fes.reshape(shape))


def load_reference(folder: Path, method: str) -> ReferenceData:
    """The chain-weighted histograms and sample FES of a finished reference run folder
    (fes_kT flattened; :func:`reference_for` reshapes it to the CV grid)."""
    hist = pd.read_parquet(Path(folder) / "histograms.parquet")
    fes = pd.read_parquet(Path(folder) / "fes.parquet")
    mine = hist[hist.estimator == "mcmc"]
    cv_hist = mine[mine.quantity == "cv"].sort_values("bin").probability.to_numpy()
    e_hist = mine[mine.quantity == "energy_per_site"].sort_values("bin").probability.to_numpy()
    return ReferenceData(method, cv_hist, e_hist, fes[fes.source == "samples"].free_energy_kT.to_numpy())
