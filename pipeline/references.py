"""Reference samplers as methods of a run: Swendsen–Wang, Metropolis, MCMC WT-MetaD.

Each returns a :class:`ChainRecord`: the recorded chain states after burn-in, with the
per-state log-weights that make their averages estimates of the physical target
(zero for unbiased chains; βV(ξ(x)) for chains run under a frozen metadynamics bias).
Error bars account for autocorrelation (ALGORITHM.md §6).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from pipeline.bias import WellTemperedGridBias
from pipeline.estimators import fes_rmse
from systems.reference_samplers import metropolis, swendsen_wang


@dataclass
class ChainRecord:
    """Chain output after burn-in.

    states: int8 (n_steps, n_chains, D); log_w: float64 (n_steps, n_chains), the log
    importance weight of each recorded state for the physical target (0 when the
    chain samples it directly); cost counters for reports.
    """

    states: torch.Tensor
    log_w: np.ndarray
    energy_evaluations: int
    hills: int
    wall_time_s: float
    fes_rmse_history: list[tuple[int, int, float]] | None = None  # (hills, energy evals, RMSE kT)


def run_swendsen_wang(system, beta, n_chains, n_sweeps, burn_in, generator, progress=True) -> ChainRecord:
    """Swendsen–Wang chains; cost is counted as D energy evaluations per sweep per chain."""
    start = time.perf_counter()
    result = swendsen_wang(system, beta, n_chains, n_sweeps, generator, progress=progress)
    kept = result.states[burn_in:]
    return ChainRecord(kept, np.zeros(kept.shape[:2]), n_sweeps * n_chains * system.n_sites, 0,
                       time.perf_counter() - start)


def run_metropolis(system, beta, n_chains, n_sweeps, burn_in, generator, progress=True) -> ChainRecord:
    """Single-site Metropolis chains (one energy evaluation per trial flip)."""
    start = time.perf_counter()
    result = metropolis(system, beta, n_chains, n_sweeps, generator, progress=progress)
    kept = result.states[burn_in:]
    return ChainRecord(kept, np.zeros(kept.shape[:2]), result.n_energy_evaluations, 0,
                       time.perf_counter() - start)


def run_mcmc_metadynamics(system, beta, bias: WellTemperedGridBias, n_chains, n_sweeps, burn_in,
                          deposit_every, generator, reference_fes_kT=None, progress=True) -> ChainRecord:
    """Well-tempered metadynamics with many Metropolis chains sharing one bias.

    Phase 1 (``n_sweeps`` sweeps): every ``deposit_every`` sweeps each chain deposits
    one hill at its current CV, all against the same V snapshot. Phase 2: V is frozen
    and the chains run ``n_sweeps`` more sweeps; the states after ``burn_in`` of them are
    recorded with bias weights log w = βV(ξ(x)), exact for the static biased target.
    ``reference_fes_kT`` (F on the bias grid, NaN where unknown) adds an RMSE history.
    """
    start = time.perf_counter()
    state = None
    evaluations = 0
    rmse_history = [] if reference_fes_kT is not None else None
    for _ in tqdm(range(n_sweeps // deposit_every), desc="MCMC WT-MetaD deposition", disable=not progress):
        segment = metropolis(system, beta, n_chains, deposit_every, generator, initial=state,
                             bias_energy=bias.value, thin=deposit_every)
        state = segment.final_state
        evaluations += segment.n_energy_evaluations
        bias.deposit(system.cv(state.long()).numpy())
        if rmse_history is not None:
            rmse, _ = fes_rmse(bias.free_energy(), reference_fes_kT)
            rmse_history.append((bias.n_hills, evaluations, rmse))

    sampling = metropolis(system, beta, n_chains, n_sweeps, generator, initial=state,
                          bias_energy=bias.value, progress=progress)
    evaluations += sampling.n_energy_evaluations
    states = sampling.states[burn_in:]
    cv = system.cv(states.reshape(-1, system.n_sites).long())
    log_w = (beta * bias.value(cv.numpy())).reshape(states.shape[:2])
    return ChainRecord(states, log_w, evaluations, bias.n_hills, time.perf_counter() - start, rmse_history)
