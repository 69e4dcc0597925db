"""Writing one run's outputs: observables, FES, histograms, samples, HILLS, plots and the
summary (layout and schemas: docs/outputs.md).  Every file is written atomically, its
columns with their units (:func:`pipeline.outputs.system_units` of the run's system).

Both method families (reference chains, trained samplers) build their rows and histograms
and hand them here, so a run folder looks the same whichever method made it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa

from pipeline import plots
from pipeline.config import config_hash
from pipeline.devices import device_report, device_usage
from pipeline.outputs import fes_table, observables_table, samples_table, system_units, write_parquet
from pipeline.reference_data import cv_bin_edges

__all__ = ["EnergyCost", "observable_row", "cost_rows", "write_run_outputs", "write_samples", "run_summary"]


@dataclass(frozen=True)
class EnergyCost:
    """Energies a run computed: ``full`` whole-configuration energies (sampler proposals,
    training batches, final samples, chain starts) and ``local`` single-site energy changes
    (Metropolis trials). ``total`` counts each local change as one evaluation, as it costs
    with an energy model that has no cheap ΔE (an MLFF whose receptive field spans the cell)."""

    full: int
    local: int = 0

    @property
    def total(self) -> int:
        return self.full + self.local

    def __add__(self, other: "EnergyCost") -> "EnergyCost":
        return EnergyCost(self.full + other.full, self.local + other.local)

    def figures(self) -> dict[str, int]:
        """summary.json keys: energy_evaluations (total), full_energy_evaluations, local_energy_changes."""
        return {"energy_evaluations": self.total, "full_energy_evaluations": self.full,
                "local_energy_changes": self.local}


def observable_row(ctx, estimator: str, observable: str, unit: str, value, stderr, ess, n,
                   delta_mu=None) -> dict:
    """One observables.parquet row; ``delta_mu`` defaults to the run's own Δμ (0 for lattice models)."""
    if delta_mu is None:
        delta_mu = ctx.system.chemical_potential
    return {"system": ctx.system.name, "method": ctx.spec.method, "temperature": ctx.spec.temperature,
            "beta": ctx.spec.beta, "delta_mu": float(delta_mu), "estimator": estimator, "observable": observable,
            "unit": unit, "value": float(value), "stderr": float(stderr), "ess": float(ess),
            "n_samples": int(n)}


def cost_rows(ctx, n, cost: EnergyCost, hills, training_s, generation_s) -> list[dict]:
    """The ``cost`` rows: energy evaluations (:class:`EnergyCost`: total, full and local),
    bias depositions, training and generation seconds."""
    return [*(observable_row(ctx, "cost", name, "count", count, math.nan, math.nan, n)
              for name, count in cost.figures().items()),
            observable_row(ctx, "cost", "bias_depositions", "hills", hills, math.nan, math.nan, n),
            observable_row(ctx, "cost", "training_wall_time", "s", training_s, math.nan, math.nan, n),
            observable_row(ctx, "cost", "generation_wall_time", "s", generation_s, math.nan, math.nan, n)]


def write_run_outputs(ctx, rows, histograms, fes_samples, fes_bias, bias, fes_by_delta_mu=None) -> None:
    """observables.parquet, fes.parquet, histograms.parquet, HILLS (biased runs), fes.png and
    cv_histogram.png of one run.

    ``histograms``: estimator → ((cv probabilities, stderr), (E/N probabilities, stderr)),
    the first estimator being the run's main one; ``fes_samples``: (F, stderr) on the CV
    bins from the main estimator's samples; ``fes_bias``: the bias's F on its grid or None;
    ``fes_by_delta_mu``: Δμ → (F, stderr) for reweighted alloy ensembles.
    """
    system, spec = ctx.system, ctx.spec
    _write_table(ctx, observables_table(rows), "observables.parquet")

    edges = cv_bin_edges(system)
    centres = [0.5 * (e[1:] + e[:-1]) for e in edges]
    grid = np.stack(np.meshgrid(*centres, indexing="ij"), axis=-1).reshape(-1, len(centres))
    run_delta_mu = float(system.chemical_potential)
    tables = [fes_table(system.cv_spec.names, grid, fes_samples[0].ravel(), fes_samples[1].ravel(), "samples",
                        run_delta_mu)]
    if fes_bias is not None:
        bias_grid = np.stack(np.meshgrid(*bias.axes, indexing="ij"), axis=-1).reshape(-1, bias.dim)
        tables.append(fes_table(system.cv_spec.names, bias_grid, fes_bias.ravel(),
                                np.full(fes_bias.size, np.nan), "bias", run_delta_mu))
    for delta_mu, (free, stderr) in (fes_by_delta_mu or {}).items():
        tables.append(fes_table(system.cv_spec.names, grid, free.ravel(), stderr.ravel(), "samples", delta_mu))
    _write_table(ctx, pa.concat_tables(tables), "fes.parquet")
    _write_table(ctx, _histograms_frame(histograms, system.energy_per_site_bin_edges()), "histograms.parquet")
    if bias is not None:
        bias.write_hills(ctx.run_dir / "HILLS", system.cv_spec.names)
    _plot_run(ctx, histograms, fes_samples, fes_bias, bias, centres)


def _histograms_frame(histograms, energy_edges) -> pd.DataFrame:
    """histograms.parquet rows: one per (estimator, quantity, bin)."""
    frames = []
    for estimator, ((cv_p, cv_err), (e_p, e_err)) in histograms.items():
        for quantity, p, err, lo, hi in (
                ("cv", cv_p.ravel(), cv_err.ravel(), None, None),
                ("energy_per_site", e_p, e_err, energy_edges[:-1], energy_edges[1:])):
            frame = pd.DataFrame({"estimator": estimator, "quantity": quantity, "bin": np.arange(p.size),
                                  "probability": p, "stderr": err})
            frame["bin_lower"] = lo if lo is not None else np.nan
            frame["bin_upper"] = hi if hi is not None else np.nan
            frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def _plot_run(ctx, histograms, fes_samples, fes_bias, bias, centres) -> None:
    """fes.png (samples, bias, reference) and, for 1-D CVs, cv_histogram.png."""
    system, spec, ref = ctx.system, ctx.spec, ctx.reference
    main_estimator = next(iter(histograms))
    if system.cv_spec.dim != 1:
        plots.plot_fes(ctx.run_dir / "fes.png", centres, {"samples": (fes_samples[0], None)},
                       system.cv_spec.names, title=f"{spec.run_name}: free energy (samples)")
        return
    curves = {f"{main_estimator}-weighted samples": (fes_samples[0], fes_samples[1])}
    if fes_bias is not None:
        curves["bias (γ/(γ−1) V)"] = (_on_centres(bias, fes_bias, centres[0]), None)
    if ref is not None:
        curves[f"reference ({ref.label})"] = (ref.fes_kT, None)
    plots.plot_fes(ctx.run_dir / "fes.png", centres[0], curves, system.cv_spec.names,
                   title=f"{spec.run_name}: free energy")
    hist_curves = {label: histograms[key][0] for key, label in
                   ((main_estimator, f"{main_estimator}-weighted"), ("bias", "bias-weighted"))
                   if key in histograms}
    if ref is not None:
        hist_curves[f"reference ({ref.label})"] = (ref.cv_histogram, None)
    plots.plot_cv_histograms(ctx.run_dir / "cv_histogram.png", centres[0], hist_curves,
                             system.cv_spec.names[0], title=f"{spec.run_name}: CV distribution")


def _on_centres(bias, fes_bias, centres):
    """Bias FES (on the bias grid) read at the histogram bin centres (nearest node)."""
    return fes_bias[np.argmin(np.abs(bias.axes[0][None, :] - centres[:, None]), axis=1)]


def write_samples(ctx, states: np.ndarray, order: np.ndarray | None, energy, cv, log_q, log_w_bias,
                  log_w_likelihood) -> None:
    """samples.parquet: int8 configurations, int16 orders (−1 where a sample has no
    generation order: chain states, samplers with an exact q(x)), float64 columns."""
    if order is None:
        order = np.full(states.shape, -1, dtype=np.int16)
    _write_table(ctx, samples_table(states, order, energy, cv, ctx.system.cv_spec.names, log_q, log_w_bias,
                                    log_w_likelihood), "samples.parquet")


def write_history(ctx, rows: list[dict]) -> None:
    """history.parquet: one row per outer iteration of a trained run (the trainer's
    IterationRecord: iteration, beta, loss, ess_fraction, max_bias_kT, cv_coverage, n_hills,
    energy_evaluations so far, wall_time_s so far, fes_rmse_kT), or per block of a biased chain
    run (pipeline.methods.chains.ChainHistory: the same columns where they apply, plus phase
    and acceptance rates), across resumes."""
    _write_table(ctx, pd.DataFrame(rows), "history.parquet")


def _write_table(ctx, table, name: str) -> None:
    """``ctx.run_dir / name``: a table or DataFrame with the run's provenance and the units of
    its system's columns."""
    write_parquet(table, ctx.run_dir / name, ctx.metadata, system_units(ctx.system))


def run_summary(ctx, warnings: list[str], **figures) -> dict:
    """summary.json content: run identity, seed, config hash, the device (pipeline.devices:
    device_report and, on a GPU, the peak memory used), warnings and headline figures."""
    device = {**device_report(ctx.device), **device_usage(ctx.device.device)}
    return {"run": ctx.spec.run_name, "method": ctx.spec.method, "beta": ctx.spec.beta,
            "temperature": ctx.spec.temperature, "seed": ctx.seed,
            "config_hash": config_hash(ctx.config), "device": device, "warnings": warnings, **figures}
