"""``metadns-mcmc``: exact MCMC on the metadynamics-biased target, with the neural sampler as
a global proposal, trained on the chains' own states (docs/method.md §10).

``reference.chains`` chains run rounds of: one sweep of local moves (D single-site trials per
chain under E + V), one independence proposal per chain from the EMA sampler, and an order
refresh (pipeline/neural_mcmc.py).

* **Adaptive phase** (``training.outer_iterations`` rounds): after each round every chain
  deposits a well-tempered hill at its CV (h0 = h_cycle·kT / chains), and the sampler takes
  ``training.inner_steps`` maximum-likelihood steps on the chain states (its own loss with
  uniform weights).
* **Production** (``reference.sweeps`` rounds): sampler and V frozen, so the chain is a
  fixed-kernel MCMC on π_V. The first ``reference.burn_in`` rounds are discarded; the rest are
  recorded with log w = βV(ξ(x)), exact for π_V, and their errors account for autocorrelation.

The summary adds the production acceptance rate of global proposals, the local acceptance
rate and the number of round trips each chain makes across the CV range. A round trip runs from
the lowest to the highest decile of the first CV's range and back. A run that is resumed or
extended starts again from scratch; it writes no training checkpoint.
"""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import torch
from tqdm.auto import tqdm

from pipeline.build import build_bias, build_trainer
from pipeline.methods.chains import ChainRecord, finish_chain_run
from pipeline.neural_mcmc import BiasedTarget, global_move, local_moves, refresh_orders, start_chains
from pipeline.run_outputs import EnergyCost

__all__ = ["run", "round_trips"]


def run(ctx) -> dict:
    """Adaptive rounds, then production; returns the run's summary."""
    config, system, beta = ctx.config, ctx.system, ctx.spec.beta
    r = config.reference
    energy_fn = ctx.services.energy or system.energy
    bias = build_bias(config, system, beta, r.chains)
    trainer = build_trainer(config, ctx.spec, system, ctx.seed, energy_fn, None, ctx.device.device)
    sampler, generator = trainer.ema_sampler, trainer.generator
    target = BiasedTarget(system, beta, bias.value, energy_fn)
    start = time.perf_counter()
    initial = torch.randint(system.n_states, (r.chains, system.n_sites), generator=generator,
                            device=generator.device).cpu()
    state = start_chains(initial, target, sampler, generator)
    cost = EnergyCost(r.chains)   # the starting states
    no_weights = torch.zeros(r.chains, dtype=torch.float64)
    for _ in tqdm(range(config.training.outer_iterations), desc="metadns-mcmc adaptive", disable=not ctx.progress):
        state, _, _, round_cost = _round(state, target, sampler, generator)
        cost += round_cost
        bias.deposit(state.cv.numpy())
        trainer.train_on(state.x, no_weights, no_weights)
        state = replace(state, log_q=None)   # the sampler changed: log q of the states is stale

    states, energies, cvs, global_accepted, local_accepted = [], [], [], 0, 0
    for step in tqdm(range(r.sweeps), desc="metadns-mcmc production", disable=not ctx.progress):
        state, accepted, local, round_cost = _round(state, target, sampler, generator)
        cost += round_cost
        if step >= r.burn_in:
            states.append(state.x.to(torch.int8))
            energies.append(state.energy)
            cvs.append(state.cv)
            global_accepted += int(accepted.sum())
            local_accepted += local
    recorded, cv = torch.stack(states), torch.stack(cvs).numpy()     # (rounds, chains, D), (rounds, chains, d)
    log_w = (beta * bias.value(cv.reshape(-1, cv.shape[-1]))).reshape(recorded.shape[:2])
    record = ChainRecord(recorded, log_w, torch.stack(energies).numpy(), cost, bias.n_hills,
                         time.perf_counter() - start)
    kept_rounds = r.sweeps - r.burn_in
    trips = round_trips(cv[:, :, 0], system.cv_spec.lower[0], system.cv_spec.upper[0])
    extra = {"global_acceptance": global_accepted / (kept_rounds * r.chains),
             "local_acceptance": local_accepted / (kept_rounds * r.chains * system.n_sites),
             "round_trips_per_chain": trips.tolist(), "mean_round_trips": float(trips.mean())}
    return finish_chain_run(ctx, record, bias, extra)


def _round(state, target, sampler, generator):
    """One sweep of local moves, one global move, an order refresh; returns (state, global
    accepted mask, local accepts, EnergyCost: a full energy per proposal, a local change per trial)."""
    n_chains, n_sites = state.x.shape
    state, local = local_moves(state, target, generator, n_sites)
    state, accepted = global_move(state, target, sampler, generator)
    state = refresh_orders(state, sampler, generator)
    return state, accepted, local, EnergyCost(n_chains, n_chains * n_sites)


def round_trips(cv: np.ndarray, lower: float, upper: float) -> np.ndarray:
    """Round trips per chain of a CV trace float ``(rounds, chains)``: from the lowest decile of
    [lower, upper] to the highest and back (or the other way), counted when completed; int64 (chains,)."""
    low, high = lower + 0.1 * (upper - lower), upper - 0.1 * (upper - lower)
    ends = np.where(cv <= low, -1, np.where(cv >= high, 1, 0))          # which end each state is at
    rounds = np.arange(cv.shape[0])[:, None]
    last = np.maximum.accumulate(np.where(ends != 0, rounds, -1), axis=0)   # latest round at an end
    columns = np.broadcast_to(np.arange(cv.shape[1]), cv.shape)
    side = np.where(last >= 0, ends[np.maximum(last, 0), columns], 0)   # the end visited last
    crossings = ((side[1:] != side[:-1]) & (side[:-1] != 0)).sum(axis=0)  # end-to-end transits
    return crossings // 2
