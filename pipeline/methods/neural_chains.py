"""``metadns-mcmc``: exact MCMC on the metadynamics-biased target, with the neural sampler as
a global proposal, trained on the chains' own states (docs/method.md §10).

``reference.chains`` chains run rounds of: ``reference.local_sweeps`` sweeps of local moves
(D single-site trials per chain per sweep under E + V), one independence proposal per chain
from the EMA sampler, and an order refresh (pipeline/neural_mcmc.py); ``reference.global_moves:
false`` leaves out the last two. These two keys choose the production kernel: the adaptive
phase always makes both kinds of moves (at least one local sweep), so that the states the
sampler learns from explore.

* **Adaptive phase** (``training.outer_iterations`` rounds): after each round every chain
  deposits a well-tempered hill at its CV (h0 = h_cycle·kT / chains), and the sampler takes
  ``training.inner_steps`` maximum-likelihood steps on the chain states (its own loss with
  uniform weights), or with ``training.chain_loss: wdce`` WDCE steps on fresh draws weighted
  for π_V, as MetaDNS trains (their energies are counted).
* **Warm start** (``training.initialise_from: previous_temperature``): the run takes the EMA
  sampler of the finished run at the next hotter temperature and, when that was a metadns-mcmc
  run, its chain states. With ``training.temperature_reweighting_steps`` > 0 (TA-BG), the
  hotter rung's production states, drawn from π_{V_h} at β_h, get the weights
  log w = −(β − β_h)·E(x) + β_h·V_h(ξ(x)) that carry them to this temperature without bias (the
  run's own bias starts empty); the sampler first trains on them (maximum likelihood on states
  resampled by w) and the chains start from states resampled by w. Reweighting cannot create a
  basin the hotter rung never visited, and when the Kish ESS of w is below
  ``training.temperature_reweighting_min_ess`` the run starts from the hotter sampler and chain
  states as they are. No energy is evaluated: the hotter rung's energies are reused.
* **Production** (``reference.sweeps`` rounds): sampler and V frozen, so the chain is a
  fixed-kernel MCMC on π_V. The first ``reference.burn_in`` rounds are discarded; the rest are
  recorded with log w = βV(ξ(x)), exact for π_V, and their errors account for autocorrelation.

The summary adds the production acceptance rate of global proposals, the local acceptance
rate and the number of round trips each chain makes across the CV range the chains sample. A
round trip runs from the lowest to the highest decile of the production states' first CV (its
10th and 90th percentiles over all chains, under π_V) and back. Deciles of the CV's whole range
would count nothing where V cannot reach its ends (the alloy's x_Au near 0 and 1 at low T).
Every round adds a row to history.parquet (:meth:`NeuralChainRun.step`). The whole run state
(chains, sampler, optimiser, bias, random generator, recorded states, history rows) is
checkpointed every ``training.checkpoint_every`` rounds, so an interrupted run resumed with
``--resume`` continues bitwise as if it had not stopped.
"""

from __future__ import annotations

import math
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from pipeline import estimators as est
from pipeline.bias import WellTemperedGridBias
from pipeline.build import build_bias, build_trainer
from pipeline.callbacks import Checkpoint
from pipeline.methods.chains import ChainHistory, ChainRecord, finish_chain_run
from pipeline.methods.trained import trained_sampler_states
from pipeline.neural_mcmc import BiasedTarget, ChainState, chain_round, start_chains
from pipeline.run_outputs import EnergyCost
from pipeline.sampler.base import batch_on_cpu

__all__ = ["run", "NeuralChainRun", "reweighted_log_weights", "round_trips"]

_STATE_FORMAT = "metadns.NeuralChainRun/1"


def run(ctx) -> dict:
    """Adaptive rounds, then production (resumed from the run's checkpoint if there is one);
    returns the run's summary."""
    chains = NeuralChainRun(ctx)
    checkpoint_path = ctx.run_dir / "checkpoints" / "checkpoint.pt"
    if checkpoint_path.exists():
        chains.load_state_dict(torch.load(checkpoint_path, weights_only=False, map_location="cpu"))
    elif ctx.initial_sampler_from is not None:
        chains.start_from_hotter_run(ctx.initial_sampler_from)
    checkpoint = Checkpoint(checkpoint_path, ctx.config.training.checkpoint_every)
    with tqdm(total=chains.total_rounds, initial=chains.iteration, desc="metadns-mcmc", unit="round",
              disable=not ctx.progress) as bar:
        while not chains.finished:
            chains.step()
            checkpoint(chains)
            bar.set_postfix_str(chains.progress_line(), refresh=False)
            bar.update()
    return chains.finish()


class NeuralChainRun:
    """The state of one ``metadns-mcmc`` run; :meth:`step` runs one round (adaptive, then
    production), :meth:`state_dict` / :meth:`load_state_dict` checkpoint all of it.

    ``iteration`` counts the rounds done (the Checkpoint callback's protocol, with ``finished``)."""

    def __init__(self, ctx):
        config, system, beta = ctx.config, ctx.system, ctx.spec.beta
        self.ctx = ctx
        self.n_chains = config.reference.chains
        self.adaptive_rounds = config.training.outer_iterations
        self.total_rounds = self.adaptive_rounds + config.reference.sweeps
        self.burn_in = config.reference.burn_in
        self.local_trials = config.reference.local_sweeps * system.n_sites   # per chain per round
        self.global_moves = config.reference.global_moves
        energy_fn = ctx.services.energy or system.energy
        self.bias = build_bias(config, system, beta, self.n_chains)
        self.trainer = build_trainer(config, ctx.spec, system, ctx.seed, energy_fn, None, ctx.device.device)
        self.target = BiasedTarget(system, beta, self.bias.value, energy_fn)
        generator = self.trainer.generator
        initial = torch.randint(system.n_states, (self.n_chains, system.n_sites), generator=generator,
                                device=generator.device).cpu()
        self.state = start_chains(initial, self.target, self.trainer.ema_sampler, generator)
        self.cost = EnergyCost(self.n_chains)   # the starting states
        self.iteration = 0
        self.global_accepted = self.local_accepted = 0
        self.recorded: dict[str, list[torch.Tensor]] = {"x": [], "energy": [], "cv": []}
        self.elapsed_s = 0.0
        self.warm_start: dict = {}
        self.history = ChainHistory(system, beta, self.bias)

    def start_from_hotter_run(self, run_dir: Path) -> None:
        """Warm start from the finished run in ``run_dir`` at a higher temperature (module
        docstring): its EMA sampler, and for a metadns-mcmc run its chain states, reweighted to
        this temperature when ``training.temperature_reweighting_steps`` > 0 and their Kish ESS
        allows. Records what was done in ``warm_start`` (the summary's ``warm_start``)."""
        start = time.perf_counter()
        saved = torch.load(run_dir / "checkpoints" / "checkpoint.pt", weights_only=False, map_location="cpu")
        self.trainer.start_from(trained_sampler_states(saved)[0])
        self.warm_start = {"from": run_dir.name, "mode": "sampler"}
        if saved.get("format") != _STATE_FORMAT or saved["recorded"]["x"] is None:
            return
        settings = self.ctx.config.training
        x = saved["recorded"]["x"].reshape(-1, saved["recorded"]["x"].shape[-1]).long()
        log_w = reweighted_log_weights(saved, self.target.beta)
        kish = est.kish_ess(log_w)
        self.warm_start.update(hotter_states=len(log_w), kish_ess=kish)
        generator = self.trainer.generator
        if settings.temperature_reweighting_steps and kish >= settings.temperature_reweighting_min_ess:
            weights = torch.from_numpy(est.normalized_weights(log_w)).to(generator.device)
            no_weights = torch.zeros(self.n_chains, dtype=torch.float64)
            for _ in range(settings.temperature_reweighting_steps):
                batch = torch.multinomial(weights, self.n_chains, replacement=True, generator=generator).cpu()
                self.trainer.train_on(x[batch], no_weights, no_weights)
            initial = x[torch.multinomial(weights, self.n_chains, replacement=True, generator=generator).cpu()]
            self.warm_start["mode"] = "reweighted"
        else:
            initial = saved["chains"]["x"]
            self.warm_start["mode"] = "sampler and chain states"
            if settings.temperature_reweighting_steps:
                print(f"NOTE: {self.ctx.spec.run_name}: the Kish ESS of the hotter rung's states reweighted to this "
                      f"temperature is {kish:.1f} < training.temperature_reweighting_min_ess = "
                      f"{settings.temperature_reweighting_min_ess:g}; starting from the hotter sampler and chain "
                      "states without reweighting", flush=True)
        self.state = start_chains(initial, self.target, self.trainer.ema_sampler, generator)
        self.cost += EnergyCost(self.n_chains)
        self.elapsed_s += time.perf_counter() - start

    @property
    def finished(self) -> bool:
        return self.iteration >= self.total_rounds

    def step(self) -> None:
        """One round: local sweep, global move, order refresh; then in the adaptive phase a hill
        per chain and ML steps on the chain states, in production the states recorded after
        burn-in. Appends the round's history row: ``local_acceptance`` and ``global_acceptance``
        of the round, ``ess_fraction`` (Kish ESS / chains of the round's global proposals for π_V)
        and the training ``loss`` (NaN where the round made no such move or step)."""
        start = time.perf_counter()
        sampler, generator = self.trainer.ema_sampler, self.trainer.generator
        adaptive = self.iteration < self.adaptive_rounds
        local_trials = max(self.local_trials, self.state.x.shape[1]) if adaptive else self.local_trials
        global_moves = adaptive or self.global_moves
        state, local, accepted, proposal_log_w = chain_round(self.state, self.target, generator, local_trials,
                                                             sampler if global_moves else None)
        # a full energy per proposal, a ΔE per local trial
        self.cost += EnergyCost(self.n_chains if global_moves else 0, self.n_chains * local_trials)
        loss = math.nan
        if adaptive:
            self.bias.deposit(state.cv.numpy())
            loss = self._train_proposal(state.x)
            state = replace(state, log_q=None)   # the sampler changed: log q of the states is stale
        elif self.iteration - self.adaptive_rounds >= self.burn_in:
            self.recorded["x"].append(state.x.to(torch.int8))
            self.recorded["energy"].append(state.energy)
            self.recorded["cv"].append(state.cv)
            self.global_accepted += int(accepted.sum())
            self.local_accepted += local
        self.state = state
        self.iteration += 1
        self.elapsed_s += time.perf_counter() - start
        ess, global_rate = math.nan, math.nan
        if global_moves:
            ess, global_rate = est.kish_ess(proposal_log_w.numpy()) / self.n_chains, float(accepted.double().mean())
        local_rate = local / (self.n_chains * local_trials) if local_trials else math.nan
        self.history.add(self.iteration, "adaptive" if adaptive else "production", state.cv.numpy(), self.cost,
                         self.elapsed_s, loss=loss, ess_fraction=ess, local_acceptance=local_rate,
                         global_acceptance=global_rate)

    def _train_proposal(self, chain_x: torch.Tensor) -> float:
        """``training.inner_steps`` steps of the sampler's loss: maximum likelihood on the chain
        states x int64 (C, D), or (``training.chain_loss: wdce``) WDCE on ``training.batch_size``
        fresh draws with log w = −β[E + V(ξ)] − log q under the bias after this round's deposit.
        Returns the mean loss."""
        if self.ctx.config.training.chain_loss == "likelihood":
            no_weights = torch.zeros(chain_x.shape[0], dtype=torch.float64)
            return self.trainer.train_on(chain_x, no_weights, no_weights)
        fresh = batch_on_cpu(self.trainer.ema_sampler.sample(self.ctx.config.training.batch_size,
                                                            self.trainer.generator))
        x = fresh.x.to(torch.int64)
        log_q = fresh.log_q.to(torch.float64)
        log_w = self.target.log_density(self.target.energy(x), self.target.system.cv(x).to(torch.float64)) - log_q
        self.cost += EnergyCost(x.shape[0])
        return self.trainer.train_on(x, log_w, log_q)

    def progress_line(self) -> str:
        return f"max V {self.bias.values.max() * self.target.beta:.1f} kT"

    def finish(self) -> dict:
        """The production record through :func:`finish_chain_run`; returns the summary."""
        system, beta = self.ctx.system, self.target.beta
        recorded = torch.stack(self.recorded["x"])                      # (rounds, chains, D)
        cv = torch.stack(self.recorded["cv"]).numpy()                   # (rounds, chains, d)
        log_w = (beta * self.bias.value(cv.reshape(-1, cv.shape[-1]))).reshape(recorded.shape[:2])
        record = ChainRecord(recorded, log_w, torch.stack(self.recorded["energy"]).numpy(), self.cost,
                             self.bias.n_hills, self.elapsed_s, history=self.history.rows)
        kept = recorded.shape[0] * self.n_chains
        trips = round_trips(cv[:, :, 0], *np.quantile(cv[:, :, 0], [0.1, 0.9]))
        extra = {"global_acceptance": self.global_accepted / kept if self.global_moves else float("nan"),
                 "local_acceptance": self.local_accepted / (kept * self.local_trials) if self.local_trials else float("nan"),
                 "round_trips_per_chain": trips.tolist(), "mean_round_trips": float(trips.mean())}
        if self.warm_start:
            extra["warm_start"] = self.warm_start
        return finish_chain_run(self.ctx, record, self.bias, extra)

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        s = self.state
        return {"format": _STATE_FORMAT, "iteration": self.iteration, "adaptive_rounds": self.adaptive_rounds,
                "burn_in": self.burn_in, "trainer": self.trainer.state_dict(),
                "bias": self.bias.state_dict(),
                "chains": {"x": s.x, "order": s.order, "energy": s.energy, "cv": s.cv, "log_q": s.log_q},
                "cost": (self.cost.full, self.cost.local), "accepted": (self.global_accepted, self.local_accepted),
                "recorded": {k: torch.stack(v) if v else None for k, v in self.recorded.items()},
                "elapsed_s": self.elapsed_s, "warm_start": self.warm_start, "history": self.history.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if state.get("format") != _STATE_FORMAT:
            raise ValueError("this checkpoint was not written by a metadns-mcmc run of this version; "
                             "start the run afresh (delete its folder or run without --resume)")
        if state["chains"]["x"].shape[0] != self.n_chains:
            raise ValueError(f"checkpoint holds {state['chains']['x'].shape[0]} chains, this run has "
                             f"reference.chains = {self.n_chains}; resume with the same reference.chains")
        self.iteration = int(state["iteration"])
        phases = (state["adaptive_rounds"], state["burn_in"])
        if phases != (self.adaptive_rounds, self.burn_in) and self.iteration > min(phases[0], self.adaptive_rounds):
            raise ValueError(f"this run left its adaptive phase with training.outer_iterations = {phases[0]} and "
                             f"reference.burn_in = {phases[1]}; resume it with those (reference.sweeps may grow)")
        self.trainer.load_state_dict(state["trainer"])
        self.bias.load_state_dict(state["bias"])
        self.state = ChainState(**state["chains"])
        self.cost = EnergyCost(*state["cost"])
        self.global_accepted, self.local_accepted = state["accepted"]
        self.recorded = {k: list(v) if v is not None else [] for k, v in state["recorded"].items()}
        self.elapsed_s = float(state["elapsed_s"])
        self.warm_start = state.get("warm_start", {})
        if "history" in state:   # checkpoints written before history.parquet lack it
            self.history.load_state_dict(state["history"])


def reweighted_log_weights(hotter: dict, beta: float) -> np.ndarray:
    """TA-BG log-weights float64 ``(rounds·chains,)`` that carry the production states of a
    metadns-mcmc checkpoint ``hotter`` (drawn from π_{V_h} at β_h = 1/kT of its bias) to the
    unbiased target at ``beta``: log w = −(β − β_h)·E(x) + β_h·V_h(ξ(x)), unnormalised."""
    bias = WellTemperedGridBias(**hotter["bias"]["settings"])
    bias.load_state_dict(hotter["bias"])
    beta_hot = 1.0 / bias.kT
    recorded = hotter["recorded"]
    energy = recorded["energy"].reshape(-1).numpy().astype(np.float64)
    cv = recorded["cv"].reshape(energy.shape[0], -1).numpy().astype(np.float64)
    return -(beta - beta_hot) * energy + beta_hot * bias.value(cv)


def round_trips(cv: np.ndarray, low: float, high: float) -> np.ndarray:
    """Round trips per chain of a CV trace float ``(rounds, chains)``: from at or below ``low``
    to at or above ``high`` and back (or the other way), counted when completed; int64 (chains,)."""
    ends = np.where(cv <= low, -1, np.where(cv >= high, 1, 0))          # which end each state is at
    rounds = np.arange(cv.shape[0])[:, None]
    last = np.maximum.accumulate(np.where(ends != 0, rounds, -1), axis=0)   # latest round at an end
    columns = np.broadcast_to(np.arange(cv.shape[1]), cv.shape)
    side = np.where(last >= 0, ends[np.maximum(last, 0), columns], 0)   # the end visited last
    crossings = ((side[1:] != side[:-1]) & (side[:-1] != 0)).sum(axis=0)  # end-to-end transits
    return crossings // 2
