"""Reweighting a run's samples to other chemical potentials (``sampling.delta_mu_grid``,
alloys): shared by the trained samplers (independent samples) and the chain methods
(correlated chains), which differ only in how they estimate a mean and a FES with errors.

log w_Δμ' = log w + β(Δμ' − Δμ_run)·N₁ (docs/method.md §6).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from pipeline import estimators as est
from pipeline import plots
from pipeline.reference_data import cv_bin_edges
from pipeline.run_outputs import observable_row

__all__ = ["delta_mu_scan"]

MeanFn = Callable[[np.ndarray, np.ndarray], tuple[float, float, float]]   # (values, log w) → mean, SE, ESS
FesFn = Callable[[np.ndarray, np.ndarray, object], tuple[np.ndarray, np.ndarray]]  # (values, log w, edges) → F, SE


def delta_mu_scan(ctx, estimator: str, observables: dict, log_w: np.ndarray, n_solute: np.ndarray, cv: np.ndarray,
                  hist_values, hist_edges, mean_fn: MeanFn, fes_fn: FesFn) -> dict:
    """Observables and F at each Δμ' of the grid from samples with log-weights ``log_w`` (n,)
    for the run's Δμ; ``n_solute`` (n,) solute counts, ``cv`` (n, d). Returns ``rows``
    (``estimator`` rows at each Δμ' other than the run's; ``energy_per_site`` left out since
    E_Δμ depends on Δμ) and ``fes``: Δμ' → (F, stderr) on the run's CV grid; writes
    ``delta_mu_scan.png``. No grid: nothing."""
    grid = ctx.config.sampling.delta_mu_grid
    if not grid:
        return {"rows": [], "fes": {}}
    system, beta = ctx.system, ctx.spec.beta
    fraction_name = system.composition_observable
    run_delta_mu = system.chemical_potential
    rows, fes, fraction, fraction_err, composition_fes = [], {}, [], [], {}
    fraction_edges = cv_bin_edges(system)[0]
    for delta_mu in grid:
        shifted = est.reweight_chemical_potential(log_w, n_solute, beta, run_delta_mu, delta_mu)
        for name, values in observables.items():
            if name == "energy_per_site" or (delta_mu == run_delta_mu and name != fraction_name):
                continue
            mean, stderr, ess = mean_fn(values, shifted)
            if name == fraction_name:
                fraction.append(mean)
                fraction_err.append(stderr)
            if delta_mu != run_delta_mu:
                rows.append(observable_row(ctx, estimator, name, system.observable_units[name], mean, stderr,
                                           ess, len(values), delta_mu=delta_mu))
        fes[delta_mu] = fes_fn(hist_values, shifted, hist_edges)
        composition_fes[delta_mu] = fes_fn(cv[:, 0], shifted, fraction_edges)[0]
    centres = 0.5 * (fraction_edges[1:] + fraction_edges[:-1])
    plots.plot_delta_mu_scan(ctx.run_dir / "delta_mu_scan.png", np.asarray(grid), np.asarray(fraction),
                             np.asarray(fraction_err), centres, composition_fes, fraction_name,
                             title=f"{ctx.spec.run_name}: reweighted from Δμ = {run_delta_mu:g} eV")
    return {"rows": rows, "fes": {d: f for d, f in fes.items() if d != run_delta_mu}}
