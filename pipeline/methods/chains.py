"""Chain methods of a run: Swendsen–Wang (``sw``), single-site Metropolis (``metropolis``)
and MCMC WT-MetaD (``mcmc-metad``: Metropolis chains sharing one well-tempered bias).

Each chain algorithm returns a :class:`ChainRecord`: the recorded chain states after burn-in,
with the per-state log-weights that make their averages estimates of the physical target
(zero for unbiased chains; βV(ξ(x)) for chains run under a frozen metadynamics bias), and
for biased chains the rows of history.parquet, one per block (:class:`ChainHistory`).
:func:`finish_chain_run` turns a record into the run's outputs; error bars account for
autocorrelation (docs/method.md §6).  The method entry points (registered in
pipeline/registry.py) are :func:`swendsen_wang`, :func:`metropolis` and
:func:`mcmc_metadynamics`, each ``(ctx: RunContext) -> summary``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from pipeline import estimators as est
from pipeline.bias import WellTemperedGridBias
from pipeline.build import build_bias
from pipeline.estimators import fes_rmse
from pipeline.methods.delta_mu import delta_mu_scan
from pipeline.reference_data import cv_bin_edges, histogram_inputs
from pipeline.run_outputs import (EnergyCost, cost_rows, observable_row, run_summary, write_history, write_run_outputs,
                                  write_samples)
from pipeline.training import CVRangeSeen
from systems import reference_samplers


@dataclass
class ChainRecord:
    """Chain output after burn-in.

    states: int8 (n_steps, n_chains, D); log_w: float64 (n_steps, n_chains), the log
    importance weight of each recorded state for the physical target (0 when the
    chain samples it directly); energies: float64 (n_steps, n_chains) of the recorded states
    when the chain kept them, or None (then computed, and counted, by finish_chain_run);
    cost counters for reports; ``history``: the rows of history.parquet (:class:`ChainHistory`),
    or None for chains without blocks.
    """

    states: torch.Tensor
    log_w: np.ndarray
    energies: np.ndarray | None
    cost: EnergyCost
    hills: int
    wall_time_s: float
    fes_rmse_history: list[tuple[int, int, float]] | None = None  # (hills, energy evals, RMSE kT)
    history: list[dict] | None = None


class ChainHistory:
    """history.parquet rows of a biased chain run, one per block of the chains (docs/outputs.md).

    Every row has ``iteration`` (blocks done, 1-based), ``phase`` (``adaptive``: the bias grew
    at the block's end; ``production``: V frozen), ``beta``, ``max_bias_kT`` (max V/kT after
    the block), ``cv_coverage`` (smallest fraction of a CV dimension's range spanned so far by
    the chain states at block ends, as a trained run's CVRangeSeen), ``n_hills``,
    ``energy_evaluations`` (total so far) and ``wall_time_s`` (so far); the method adds its own
    columns (acceptance rates, loss, ESS, FES RMSE).
    """

    def __init__(self, system, beta: float, bias: WellTemperedGridBias):
        self.beta, self.bias = beta, bias
        self.cv_seen = CVRangeSeen(system.cv_spec)
        self.rows: list[dict] = []

    def add(self, iteration: int, phase: str, cv: np.ndarray, cost: EnergyCost, wall_time_s: float,
            **columns: float) -> None:
        """Append the row of block ``iteration``; ``cv`` float64 (C, d): the chains' CVs at its end."""
        self.rows.append({"iteration": iteration, "phase": phase, "beta": self.beta,
                          "max_bias_kT": float(self.bias.values.max() * self.beta),
                          "cv_coverage": self.cv_seen.update(cv), "n_hills": int(self.bias.n_hills),
                          "energy_evaluations": cost.total, "wall_time_s": wall_time_s,
                          **{name: float(value) for name, value in columns.items()}})

    def state_dict(self) -> dict:
        return {"rows": list(self.rows), "cv_seen": self.cv_seen.state()}

    def load_state_dict(self, state: dict) -> None:
        self.rows = list(state["rows"])
        self.cv_seen.load(state["cv_seen"])


def run_swendsen_wang(system, beta, n_chains, n_sweeps, burn_in, generator, progress=True) -> ChainRecord:
    """Swendsen–Wang chains; a sweep computes no energy (finish_chain_run computes, and counts,
    those of the recorded states)."""
    start = time.perf_counter()
    result = reference_samplers.swendsen_wang(system, beta, n_chains, n_sweeps, generator, progress=progress)
    kept = result.states[burn_in:]
    return ChainRecord(kept, np.zeros(kept.shape[:2]), None, EnergyCost(0), 0, time.perf_counter() - start)


def run_metropolis(system, beta, n_chains, n_sweeps, burn_in, generator, progress=True) -> ChainRecord:
    """Single-site Metropolis chains (one local energy change per trial flip)."""
    start = time.perf_counter()
    result = reference_samplers.metropolis(system, beta, n_chains, n_sweeps, generator, progress=progress)
    return ChainRecord(result.states[burn_in:], np.zeros((n_sweeps - burn_in, n_chains)),
                       result.energies[burn_in:].numpy(), _metropolis_cost(result), 0, time.perf_counter() - start)


def _metropolis_cost(result) -> EnergyCost:
    return EnergyCost(result.n_full_energies, result.n_energy_changes)


def run_mcmc_metadynamics(system, beta, bias: WellTemperedGridBias, n_chains, n_sweeps, burn_in,
                          deposit_every, generator, reference_fes_kT=None, progress=True) -> ChainRecord:
    """Well-tempered metadynamics with many Metropolis chains sharing one bias.

    Phase 1 (``n_sweeps`` sweeps): every ``deposit_every`` sweeps each chain deposits
    one hill at its current CV, all against the same V snapshot. Phase 2: V is frozen
    and the chains run ``n_sweeps`` more sweeps; the states after ``burn_in`` of them are
    recorded with bias weights log w = βV(ξ(x)), exact for the static biased target.
    Both phases run in blocks of ``deposit_every`` sweeps (the last production block takes the
    remainder), one history row each with the block's ``local_acceptance`` and, for deposition
    blocks, ``fes_rmse_kT`` against ``reference_fes_kT`` (F on the bias grid, NaN where
    unknown; the RMSE is NaN without it and in production).
    """
    start = time.perf_counter()
    history = ChainHistory(system, beta, bias)
    state, energy = None, None
    cost = EnergyCost(0)
    cycles = n_sweeps // deposit_every
    production = np.diff(np.append(np.arange(0, n_sweeps, deposit_every), n_sweeps))  # sweeps per production block
    blocks = [("adaptive", deposit_every)] * cycles + [("production", int(sweeps)) for sweeps in production]
    recorded, recorded_energy = [], []
    for block, (phase, sweeps) in enumerate(tqdm(blocks, desc="MCMC WT-MetaD", unit="block", disable=not progress)):
        adaptive = phase == "adaptive"
        segment = reference_samplers.metropolis(system, beta, n_chains, sweeps, generator, initial=state,
                                                bias_energy=bias.value, thin=sweeps if adaptive else 1,
                                                initial_energy=energy)
        state, energy = segment.final_state, segment.final_energy
        cost += _metropolis_cost(segment)
        cv = system.cv(state.long()).numpy()
        rmse = math.nan
        if adaptive:
            bias.deposit(cv)
            if reference_fes_kT is not None:
                rmse, _ = fes_rmse(bias.free_energy(), reference_fes_kT)
        else:
            recorded.append(segment.states)
            recorded_energy.append(segment.energies)
        history.add(block + 1, phase, cv, cost, time.perf_counter() - start,
                    local_acceptance=segment.acceptance_rate, fes_rmse_kT=rmse)

    states = torch.cat(recorded)[burn_in:]
    cv = system.cv(states.reshape(-1, system.n_sites).long())
    log_w = (beta * bias.value(cv.numpy())).reshape(states.shape[:2])
    rmse_history = None if reference_fes_kT is None else [
        (row["n_hills"], row["energy_evaluations"], row["fes_rmse_kT"]) for row in history.rows
        if row["phase"] == "adaptive"]
    return ChainRecord(states, log_w, torch.cat(recorded_energy)[burn_in:].numpy(), cost, bias.n_hills,
                       time.perf_counter() - start, rmse_history, history.rows)


# ----------------------------------------------------------------------------- run entry points
def swendsen_wang(ctx) -> dict:
    """``sw``: Swendsen–Wang reference chains (reference.* settings)."""
    r = ctx.config.reference
    record = run_swendsen_wang(ctx.system, ctx.spec.beta, r.chains, r.sweeps, r.burn_in, _generator(ctx),
                               ctx.progress)
    return finish_chain_run(ctx, record, None)


def metropolis(ctx) -> dict:
    """``metropolis``: single-site Metropolis reference chains (reference.* settings)."""
    r = ctx.config.reference
    record = run_metropolis(ctx.system, ctx.spec.beta, r.chains, r.sweeps, r.burn_in, _generator(ctx),
                            ctx.progress)
    return finish_chain_run(ctx, record, None)


def mcmc_metadynamics(ctx) -> dict:
    """``mcmc-metad``: chains sharing one well-tempered bias, one hill per chain per deposit.
    The chains deposit once per sweep from one process, so the bias is local (a bias server
    would add a round trip per sweep and share nothing)."""
    r = ctx.config.reference
    bias = build_bias(ctx.config, ctx.system, ctx.spec.beta, r.chains)
    reference_fes = ctx.reference.fes_kT if ctx.reference is not None else None
    record = run_mcmc_metadynamics(ctx.system, ctx.spec.beta, bias, r.chains, r.sweeps, r.burn_in,
                                   r.deposit_every, _generator(ctx), reference_fes, ctx.progress)
    return finish_chain_run(ctx, record, bias)


def _generator(ctx) -> torch.Generator:
    return torch.Generator().manual_seed(ctx.seed)


def finish_chain_run(ctx, record: ChainRecord, bias, extra: dict | None = None) -> dict:
    """Observables (chain-weighted, autocorrelation-aware errors; the ``ess`` column holds
    ESS_f = Var_π(f)/SE²), histograms, FES, samples, HILLS and plots of a chain run; returns its
    summary, with ``chain_diagnostics`` (ESS_f, τ_int, split-R̂ of the headline observables and
    E/N) and the ``extra`` entries."""
    system = ctx.system
    n_steps, n_chains, D = record.states.shape
    flat = record.states.reshape(-1, D).long()
    cost = record.cost
    if record.energies is None:
        energy = (ctx.services.energy or system.energy)(flat).numpy()
        cost += EnergyCost(len(energy))
    else:
        energy = record.energies.reshape(-1)
    cv = system.cv(flat).numpy()
    observables = {k: v.numpy().reshape(n_steps, n_chains) for k, v in system.observables(flat, energy).items()}
    n = n_steps * n_chains
    log_w = record.log_w
    rows, diagnostics = [], {}
    for name, values in observables.items():
        mixing = est.chain_diagnostics(values, log_w)
        if name in (*system.headline_observables, "energy_per_site"):
            diagnostics[name] = {k: mixing[k] for k in ("ess", "tau_int", "rhat")}
        rows.append(observable_row(ctx, "mcmc", name, system.observable_units[name], mixing["mean"],
                                   mixing["stderr"], mixing["ess"], n))
    rows += cost_rows(ctx, n, cost, record.hills, record.wall_time_s, 0.0)

    hist_values, hist_edges = histogram_inputs(system, cv, cv_bin_edges(system))
    e_site = energy / system.n_sites
    cv_histogram = chain_histogram(hist_values, log_w, hist_edges, n_steps, n_chains)
    histograms = {"mcmc": (cv_histogram,
                           chain_histogram(e_site, log_w, system.energy_per_site_bin_edges(), n_steps, n_chains))}
    shape = (n_steps, n_chains)

    def chain_mean(values, weights):
        mixing = est.chain_diagnostics(values.reshape(shape), weights.reshape(shape))
        return mixing["mean"], mixing["stderr"], mixing["ess"]

    def chain_fes(values, weights, edges):
        return est.fes_from_histogram(*chain_histogram(values, weights.reshape(shape), edges, n_steps, n_chains))

    flat_observables = {name: values.ravel() for name, values in observables.items()}
    scan = delta_mu_scan(ctx, "mcmc", flat_observables, log_w.ravel(), flat.sum(dim=1).numpy().astype(np.float64),
                         cv, hist_values, hist_edges, chain_mean, chain_fes)
    rows += scan["rows"]
    write_run_outputs(ctx, rows, histograms, est.fes_from_histogram(*cv_histogram),
                      bias.free_energy() if bias is not None else None, bias, scan["fes"])
    # Chain states were not generated by a sampler: no order, log q and likelihood weights
    # NaN; log_w_bias holds the chain's physical-target weight.
    no_likelihood = np.full(n, np.nan)
    write_samples(ctx, record.states.reshape(-1, D).numpy(), None, energy, cv, no_likelihood, log_w.ravel(),
                  no_likelihood)
    if record.history:
        write_history(ctx, record.history)
    extra = {"chain_diagnostics": diagnostics, **(extra or {})}
    if record.fes_rmse_history:
        extra["fes_rmse_history"] = record.fes_rmse_history
    return run_summary(ctx, [], n_samples=n, **cost.figures(), hills=record.hills,
                       wall_time_s=record.wall_time_s, **extra)


def chain_histogram(values, log_w, edges, n_steps, n_chains):
    """Bin probabilities with autocorrelation-aware stderr (one indicator series per bin).
    values (n_steps·n_chains,) or (n_steps·n_chains, 2); edges one array or a pair."""
    flat_edges = edges if isinstance(edges, np.ndarray) else None
    if flat_edges is not None:
        idx = np.clip(np.searchsorted(flat_edges, values, side="right") - 1, 0, len(flat_edges) - 2)
        n_bins = len(flat_edges) - 1
    else:
        i0 = np.searchsorted(edges[0], values[:, 0], side="right") - 1
        i1 = np.searchsorted(edges[1], values[:, 1], side="right") - 1
        n_bins = (len(edges[0]) - 1) * (len(edges[1]) - 1)
        idx = i0 * (len(edges[1]) - 1) + i1
    idx = idx.reshape(n_steps, n_chains)
    probabilities = np.zeros(n_bins)
    stderr = np.zeros(n_bins)
    for b in np.unique(idx):  # ≤ number of CV or E/N bins
        probabilities[b], stderr[b] = est.chain_weighted_mean_and_stderr((idx == b).astype(np.float64), log_w)
    shape = n_bins if flat_edges is not None else (len(edges[0]) - 1, len(edges[1]) - 1)
    return probabilities.reshape(shape), stderr.reshape(shape)
