"""The MetaDNS dual training loop (docs/method.md §5).

Size (over the ~400-line guide): the dual loop, its replay buffer and the multiple-walker
mixture share one state (bias, EMA, optimiser, RNG) and are kept together for that reason.

One outer iteration:
  1. draw a fresh batch of B samples (x, order, log q) from the EMA sampler;
  2. deposit one well-tempered hill per fresh sample into the bias (MetaDNS only),
     all against the same snapshot of V;
  3. take N_inner gradient steps of the sampler family's loss on that batch (plus
     replay-buffer samples when enabled), with log-weights log w = −β[E(x) + V(ξ(x))] − log q
     under the current V (WDCE for masked diffusion);
  4. update the EMA copy after every gradient step.
Hills are deposited on fresh samples only; reused samples never deposit again.

Methods share this engine: ``metadns`` (bias on), ``mdns`` (no bias) and
``mdns-warmstart`` (no bias; the first iterations train at a higher temperature).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from pipeline.bias import WellTemperedGridBias
from pipeline.config import TrainingConfig
from pipeline.estimators import kish_ess
from pipeline.sampler.base import SampleBatch, Sampler, batch_on_cpu


@dataclass(frozen=True)
class IterationRecord:
    """What one outer iteration reports (one row of the training history)."""

    iteration: int
    beta: float
    loss: float
    ess_fraction: float        # Kish ESS / B of the fresh batch for the (biased) training target
    max_bias_kT: float         # max V / kT after this iteration's deposition (0 without bias)
    cv_coverage: float         # fraction of the CV range spanned so far by fresh samples
    n_hills: int               # hills deposited so far
    energy_evaluations: int    # energies computed so far (one per fresh sample)
    wall_time_s: float         # seconds since the start of training (accumulated over resumes)
    fes_rmse_kT: float = math.nan  # RMSE of the bias's F against a reference (runner; NaN: none)


class CVStratifiedReplayBuffer:
    """Past samples kept evenly across CV strata (a training heuristic only).

    Samples came from older models, so their weights are not exact importance weights:
    never use the buffer for estimates (docs/method.md §5). Their energies are stored with
    them, so replaying a sample costs no energy evaluation.
    """

    def __init__(self, capacity: int):
        if capacity < 1:
            raise ValueError(f"replay buffer capacity must be ≥ 1, got {capacity}")
        self.capacity = capacity
        self.x = torch.empty(0, 0, dtype=torch.int64)
        self.log_q = torch.empty(0, dtype=torch.float64)
        self.energy = torch.empty(0, dtype=torch.float64)
        self.stratum = torch.empty(0, dtype=torch.int64)

    def __len__(self) -> int:
        return int(self.log_q.shape[0])

    def add(self, x: torch.Tensor, log_q: torch.Tensor, energy: torch.Tensor, stratum: torch.Tensor) -> None:
        """Append samples (x int64 (B,D), log q (B,), energy float64 (B,), CV stratum id (B,));
        keep ≤ capacity.

        Eviction keeps the newest samples of each stratum, with the largest per-stratum
        quota c such that Σ_s min(count_s, c) ≤ capacity.
        """
        energy = energy.to(torch.float64)
        if len(self) == 0:
            self.x = x.clone()
            self.log_q, self.energy, self.stratum = log_q.clone(), energy.clone(), stratum.clone()
        else:
            self.x = torch.cat([self.x, x])
            self.log_q = torch.cat([self.log_q, log_q])
            self.energy = torch.cat([self.energy, energy])
            self.stratum = torch.cat([self.stratum, stratum])
        if len(self) <= self.capacity:
            return
        _, inverse, counts = torch.unique(self.stratum, return_inverse=True, return_counts=True)
        quota = self._largest_quota(counts)
        # Rank within stratum, newest (largest index) first.
        age_order = torch.arange(len(self) - 1, -1, -1)
        key = inverse[age_order] * len(self) + torch.arange(len(self))
        sorted_idx = age_order[torch.argsort(key)]
        sorted_strata = inverse[sorted_idx]
        starts = torch.cumsum(counts, 0) - counts
        rank = torch.arange(len(self)) - starts[sorted_strata]
        keep = torch.sort(sorted_idx[rank < quota]).values
        self.x, self.log_q, self.energy, self.stratum = self.x[keep], self.log_q[keep], self.energy[keep], self.stratum[keep]

    def _largest_quota(self, counts: torch.Tensor) -> int:
        low, high = 0, int(counts.max())
        while low < high:
            mid = (low + high + 1) // 2
            if int(torch.clamp(counts, max=mid).sum()) <= self.capacity:
                low = mid
            else:
                high = mid - 1
        return low

    def draw(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """n samples uniformly with replacement: (x (n,D), log q at generation (n,), energy (n,)).
        The indices are drawn on the generator's device (the training device)."""
        idx = torch.randint(len(self), (n,), generator=generator, device=generator.device).cpu()
        return self.x[idx], self.log_q[idx], self.energy[idx]

    def state_dict(self) -> dict:
        return {"capacity": self.capacity, "x": self.x, "log_q": self.log_q, "energy": self.energy,
                "stratum": self.stratum}

    def load_state_dict(self, state: dict, energy_fn=None) -> int:
        """Restore the buffer; a checkpoint written before energies were stored has them
        recomputed with ``energy_fn``. Returns the number of energies that cost."""
        self.capacity = int(state["capacity"])
        self.x, self.log_q, self.stratum = state["x"], state["log_q"], state["stratum"]
        if "energy" in state:
            self.energy = state["energy"]
            return 0
        if energy_fn is None:
            raise ValueError("this replay buffer was saved without energies: pass energy_fn to recompute them")
        self.energy = energy_fn(self.x).to(torch.float64) if len(self) else torch.empty(0, dtype=torch.float64)
        return len(self)


class CVRangeSeen:
    """Running min and max of the CVs of fresh samples; ``coverage`` is the smallest fraction
    of a CV dimension's range they span (a mode-collapse warning sign, not an estimate)."""

    def __init__(self, cv_spec):
        self._lower = np.asarray(cv_spec.lower, dtype=np.float64)
        self._range = np.asarray(cv_spec.upper, dtype=np.float64) - self._lower
        self.low = np.full(cv_spec.dim, np.inf)
        self.high = np.full(cv_spec.dim, -np.inf)

    def update(self, cv: np.ndarray) -> float:
        """Widen by CV values (B, d); returns the coverage so far."""
        self.low = np.minimum(self.low, cv.min(axis=0))
        self.high = np.maximum(self.high, cv.max(axis=0))
        return float(((self.high - self.low) / self._range).min())

    def state(self) -> tuple[np.ndarray, np.ndarray]:
        return self.low.copy(), self.high.copy()

    def load(self, state) -> None:
        self.low, self.high = (np.asarray(a) for a in state)


class DualLoopTrainer:
    """Trains a sampler (any family of the protocol in pipeline.sampler.base) on
    π_V ∝ exp(−β[E + V]) with the dual loop.

    ``bias=None`` trains plain MDNS (V ≡ 0). With ``warmstart``, the first
    ``settings.warmstart_iterations`` outer iterations train at ``settings.warmstart_beta``
    without bias, then ``settings.outer_iterations`` follow at ``beta``. All randomness
    comes from one torch Generator seeded with ``seed`` and saved in checkpoints, so a
    resumed run repeats an uninterrupted one exactly on CPU.

    The generator lives on the sampler's device, so orders, reveal draws and maskings are drawn
    where they are used; a checkpoint from another device type resumes with a reseeded
    generator (said on the console), since CPU and CUDA generators have different states.

    ``energy_fn`` (x int64 (B, D) → float64 (B,), the system's energy unit) replaces
    ``system.energy`` — the Ray layer passes an energy-evaluator pool here; ``bias`` may be any
    object with the WellTemperedGridBias interface (the Ray layer's bias-server client).
    """

    def __init__(self, system, sampler: Sampler, beta: float,
                 settings: TrainingConfig, bias: WellTemperedGridBias | None = None,
                 seed: int = 0, warmstart: bool = False, energy_fn=None):
        if beta <= 0:
            raise ValueError(f"beta must be > 0, got {beta}")
        self.system = system
        self.energy_fn = energy_fn if energy_fn is not None else system.energy
        self.sampler = sampler
        self.ema_sampler = copy.deepcopy(sampler).requires_grad_(False)
        self.beta = float(beta)
        self.settings = settings
        self.warmstart_iterations = settings.warmstart_iterations if warmstart else 0
        self.total_iterations = settings.outer_iterations + self.warmstart_iterations
        self.bias = bias
        self.optimizer = torch.optim.AdamW(sampler.parameters(), lr=settings.learning_rate,
                                           weight_decay=settings.weight_decay)
        self.seed = int(seed)
        self.generator = torch.Generator(device=sampler.device).manual_seed(seed)
        self.iteration = 0
        self.gradient_steps = 0
        self.energy_evaluations = 0
        self.elapsed_s = 0.0
        self.history: list[IterationRecord] = []
        spec = system.cv_spec
        self._cv_lower = np.asarray(spec.lower, dtype=np.float64)
        self._cv_upper = np.asarray(spec.upper, dtype=np.float64)
        self._cv_spacing = np.asarray(spec.spacing, dtype=np.float64)
        self._cv_seen = CVRangeSeen(spec)
        self.replay = (CVStratifiedReplayBuffer(settings.replay_buffer_size)
                       if settings.replay_buffer_size > 0 else None)
        self._pending = None  # (fresh batch, energy, cv, coverage, start time) between draw and learn

    # ----------------------------------------------------------------- schedule
    def beta_at(self, iteration: int) -> float:
        """Inverse temperature used at outer iteration ``iteration`` (warm start first)."""
        return float(self.settings.warmstart_beta) if iteration < self.warmstart_iterations else self.beta

    def bias_active_at(self, iteration: int) -> bool:
        return self.bias is not None and iteration >= self.warmstart_iterations

    @property
    def finished(self) -> bool:
        return self.iteration >= self.total_iterations

    # ----------------------------------------------------------------- one iteration
    def _bias_energy(self, cv: torch.Tensor, active: bool) -> torch.Tensor:
        if not active:
            return torch.zeros(cv.shape[0], dtype=torch.float64)
        return torch.from_numpy(self.bias.value(cv.numpy()))

    def _log_weights(self, energy, bias_energy, log_q, beta) -> torch.Tensor:
        """log w = −β(E + V) − log q (float64, unnormalised)."""
        return -beta * (energy + bias_energy) - log_q

    def _cv_strata(self, cv: torch.Tensor) -> torch.Tensor:
        """Flattened index of the CV node nearest to each sample, (B,) int64."""
        nodes = np.rint((cv.numpy() - self._cv_lower) / self._cv_spacing).astype(np.int64)
        n_nodes = np.rint((self._cv_upper - self._cv_lower) / self._cv_spacing).astype(np.int64) + 1
        return torch.from_numpy(np.ravel_multi_index(tuple(nodes.T), tuple(n_nodes)))

    def _ema_update(self) -> None:
        t = self.gradient_steps
        decay = min(self.settings.ema_decay_max, (1.0 + t) / (10.0 + t))
        with torch.no_grad():
            torch._foreach_lerp_(list(self.ema_sampler.parameters()), list(self.sampler.parameters()), 1.0 - decay)

    def train_on(self, x: torch.Tensor, log_weights: torch.Tensor, log_q: torch.Tensor) -> float:
        """``settings.inner_steps`` gradient steps of the sampler's loss on one batch (x int64
        (B, D), log-weights and log q float64 (B,)), each followed by the EMA update; returns the
        mean loss.  Zero log-weights give maximum likelihood on x (neural-proposal MCMC)."""
        self.sampler.train()
        loss_total = 0.0   # a float, or a tensor on the device (one synchronisation per iteration)
        for _ in range(self.settings.inner_steps):
            self.optimizer.zero_grad(set_to_none=True)
            loss_total = loss_total + self.sampler.loss_backward(x, log_weights, log_q, self.generator)
            self.optimizer.step()
            self.gradient_steps += 1
            self._ema_update()
        return float(loss_total) / self.settings.inner_steps

    def step(self) -> IterationRecord:
        """Run one outer iteration and return its record."""
        cv = self.draw()
        if self.bias_active_at(self.iteration):
            self.bias.deposit(cv)
        return self.learn()

    def draw(self) -> np.ndarray:
        """First half of an outer iteration: a fresh batch from the EMA sampler with its
        energies and CVs, kept for :meth:`learn`.  Returns the CVs, float64 (B, d): the
        hills this iteration deposits (by :meth:`step`, or by a multiple-walker coordinator)."""
        start = time.perf_counter()
        fresh = batch_on_cpu(self.ema_sampler.sample(self.settings.batch_size, self.generator))
        energy = self.energy_fn(fresh.x)
        cv = self.system.cv(fresh.x)
        self.energy_evaluations += self.settings.batch_size
        coverage = self._cv_seen.update(cv.numpy())
        self._pending = (fresh, energy, cv, coverage, start)
        return cv.numpy().astype(np.float64)

    def learn(self, deposits=None, values=None) -> IterationRecord:
        """Second half: N_inner WDCE steps on the drawn batch, weighted under V after this
        iteration's deposits.  A coordinator that deposited elsewhere passes ``deposits``
        [(centres (B, d), heights (B,)) in deposit order] and ``values`` (V after them);
        they are logged into this trainer's copy of the bias first."""
        if self._pending is None:
            raise RuntimeError("learn() needs a batch from draw() first")
        fresh, energy, cv, coverage, start = self._pending
        self._pending = None
        s = self.settings
        beta = self.beta_at(self.iteration)
        bias_on = self.bias_active_at(self.iteration)
        for centres, heights in deposits or ():
            self.bias.record_deposit(centres, heights, values)

        # Weights under the target the next N_inner steps train towards (V after deposition).
        train_x, train_log_q = fresh.x, fresh.log_q
        log_w = self._log_weights(energy, self._bias_energy(cv, bias_on), fresh.log_q, beta)
        fresh_ess_fraction = kish_ess(log_w.numpy()) / s.batch_size
        if self.replay is not None:
            if len(self.replay) > 0:
                old_x, old_log_q, old_energy = self.replay.draw(s.batch_size, self.generator)
                old_cv = self.system.cv(old_x)
                old_log_w = self._log_weights(old_energy, self._bias_energy(old_cv, bias_on), old_log_q, beta)
                train_x = torch.cat([fresh.x, old_x])
                train_log_q = torch.cat([fresh.log_q, old_log_q])
                log_w = torch.cat([log_w, old_log_w])
            self.replay.add(fresh.x, fresh.log_q, energy, self._cv_strata(cv))

        mean_loss = self.train_on(train_x, log_w, train_log_q)

        self.iteration += 1
        self.elapsed_s += time.perf_counter() - start
        kT = 1.0 / beta
        record = IterationRecord(
            iteration=self.iteration,
            beta=beta,
            loss=mean_loss,
            ess_fraction=float(fresh_ess_fraction),
            max_bias_kT=float(self.bias.values.max() / kT) if self.bias is not None else 0.0,
            cv_coverage=coverage,
            n_hills=int(self.bias.n_hills) if self.bias is not None else 0,
            energy_evaluations=self.energy_evaluations,
            wall_time_s=self.elapsed_s,
        )
        self.history.append(record)
        return record

    def train(self, callbacks=(), progress: bool = True) -> list[IterationRecord]:
        """Run the remaining outer iterations (see :func:`train`); returns the full history."""
        return train(self, callbacks, progress)

    def sample_final(self, n: int, batch_size: int | None = None):
        """n fresh samples (SampleBatch, on the CPU) from the EMA sampler, drawn with the
        trainer's generator."""
        return batch_on_cpu(self.ema_sampler.sample(n, self.generator, batch_size=batch_size))

    def score_final(self, x: torch.Tensor, order: torch.Tensor | None, batch_size: int | None = None) -> torch.Tensor:
        """log q(x, order) under the EMA sampler: float64 (n,) on the CPU, in nats.  x (n, D)
        and order (n, D) in any integer dtype (walkers pass int8 / int16 to cut transfer);
        order None for samplers with an exact q(x)."""
        order = order.long() if order is not None else None
        return self.ema_sampler.log_prob(x.long(), order, batch_size=batch_size).cpu()

    def device_name(self) -> str:
        """Where this trainer's sampler lives, e.g. "cpu" or "cuda:0"."""
        return str(self.sampler.device)

    def start_from(self, ema_state: dict) -> None:
        """Set the sampler and its EMA copy to a trained EMA sampler's weights (warm start)."""
        self.sampler.load_state_dict(ema_state)
        self.ema_sampler.load_state_dict(ema_state)

    # ----------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict:
        """Everything needed to continue exactly where training stopped."""
        return {
            "iteration": self.iteration,
            "gradient_steps": self.gradient_steps,
            "energy_evaluations": self.energy_evaluations,
            "elapsed_s": self.elapsed_s,
            "sampler": self.sampler.state_dict(),
            "ema_sampler": self.ema_sampler.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "bias": self.bias.state_dict() if self.bias is not None else None,
            "replay": self.replay.state_dict() if self.replay is not None else None,
            "cv_seen": self._cv_seen.state(),
            "history": [dataclasses.asdict(r) for r in self.history],
        }

    def _restore_generator(self, saved: torch.Tensor) -> None:
        """Continue the saved random stream; a state saved on another device type (its size
        differs) cannot be, and the generator is reseeded from the seed and iteration instead."""
        if saved.numel() == self.generator.get_state().numel():
            self.generator.set_state(saved)
            return
        self.generator.manual_seed(self.seed + 1_000_003 * self.iteration)
        print(f"NOTE: the checkpoint's random generator was saved on another device type than "
              f"{self.generator.device}; resumed with a reseeded generator (a new random stream)", flush=True)

    def load_state_dict(self, state: dict) -> None:
        if "walkers" in state:
            raise ValueError(f"checkpoint holds {len(state['walkers'])} walkers, this run trains one; "
                             "resume with the same training.walkers")
        self.iteration = int(state["iteration"])
        self.gradient_steps = int(state["gradient_steps"])
        self.energy_evaluations = int(state["energy_evaluations"])
        self.elapsed_s = float(state["elapsed_s"])
        self.sampler.load_state_dict(state["sampler"])
        self.ema_sampler.load_state_dict(state["ema_sampler"])
        self.optimizer.load_state_dict(state["optimizer"])
        self._restore_generator(state["generator"])
        if (state["bias"] is None) != (self.bias is None):
            raise ValueError("checkpoint and run disagree on whether a bias is used")
        if self.bias is not None:
            self.bias.load_state_dict(state["bias"])
        if self.replay is not None and state["replay"] is not None:
            self.energy_evaluations += self.replay.load_state_dict(state["replay"], self.energy_fn)
        self._cv_seen.load(state["cv_seen"])
        self.history = [IterationRecord(**r) for r in state["history"]]


def train(trainer, callbacks=(), progress: bool = True) -> list[IterationRecord]:
    """Run the remaining outer iterations of ``trainer`` (DualLoopTrainer or
    MultiWalkerTrainer) with a progress bar.

    After each iteration every callback is called in order as ``callback(trainer)``; one that
    returns False stops training after that iteration (the others of that iteration still
    run).  Callbacks do the run's bookkeeping — checkpoints, FES-RMSE history, progress and
    Tune reports (pipeline.callbacks).  Returns the full history."""
    bar = tqdm(total=trainer.total_iterations, initial=trainer.iteration,
               desc="outer iteration", disable=not progress, dynamic_ncols=True)
    with bar:
        while not trainer.finished:
            record = trainer.step()
            bar.update(1)
            bar.set_postfix(loss=f"{record.loss:.3g}", ess=f"{record.ess_fraction:.2f}",
                            maxV_kT=f"{record.max_bias_kT:.2f}",
                            coverage=f"{record.cv_coverage:.2f}", refresh=False)
            answers = [callback(trainer) for callback in callbacks]
            if any(answer is False for answer in answers):
                break
    return trainer.history


def call_in_order(walkers, method: str, per_walker_args=None) -> list:
    """``getattr(walker, method)(*args)`` for each walker in order (walkers in this process)."""
    args = per_walker_args if per_walker_args is not None else [()] * len(walkers)
    return [getattr(walker, method)(*a) for walker, a in zip(walkers, args)]


class MultiWalkerTrainer:
    """Multiple-walker MetaDNS: several DualLoopTrainers ("walkers", each with its own
    sampler, optimiser, generator and copy of the bias) that fill one shared bias.

    One round (outer iteration): every walker draws a fresh batch; the walkers' hills are
    deposited into the shared ``bias`` in walker order (one deposit call per walker, each
    against V as the previous walker left it); every walker logs all those hills into its
    copy and trains under the common V.  Deposition order is fixed, so the result does not
    depend on where walkers run: ``call(walkers, method, per_walker_args)`` maps a method
    over them and returns the results in walker order (in turn here; in parallel for Ray
    actors).  Final samples are split evenly over the walkers' EMA samplers and carry the
    log q of the walkers' equal mixture (``sample_final``).
    """

    def __init__(self, walkers: list, bias: WellTemperedGridBias | None, beta: float,
                 settings: TrainingConfig, warmstart: bool, cv_spec, call=call_in_order):
        if len(walkers) < 2:
            raise ValueError(f"a multiple-walker trainer needs at least 2 walkers, got {len(walkers)}")
        self.walkers = walkers
        self.bias = bias
        self.beta = float(beta)
        self.settings = settings
        self.warmstart_iterations = settings.warmstart_iterations if warmstart else 0
        self.total_iterations = settings.outer_iterations + self.warmstart_iterations
        self.call = call
        self.iteration = 0
        self.energy_evaluations = 0
        self.elapsed_s = 0.0
        self.history: list[IterationRecord] = []
        self._cv_seen = CVRangeSeen(cv_spec)

    @property
    def finished(self) -> bool:
        return self.iteration >= self.total_iterations

    def step(self) -> IterationRecord:
        """One round; returns the combined record (mean loss and ESS over walkers, coverage
        of all walkers' fresh samples together, hills and energies of all walkers)."""
        start = time.perf_counter()
        cvs = self.call(self.walkers, "draw")
        deposits, values = [], None
        if self.bias is not None and self.iteration >= self.warmstart_iterations:
            deposits = [(cv, self.bias.deposit(cv)) for cv in cvs]
            values = self.bias.values
        records = self.call(self.walkers, "learn", [(deposits, values)] * len(self.walkers))
        coverage = self._cv_seen.update(np.concatenate(cvs))
        self.iteration += 1
        self.energy_evaluations += sum(len(cv) for cv in cvs)
        self.elapsed_s += time.perf_counter() - start
        beta = records[0].beta
        record = IterationRecord(
            iteration=self.iteration, beta=beta,
            loss=float(np.mean([r.loss for r in records])),
            ess_fraction=float(np.mean([r.ess_fraction for r in records])),
            max_bias_kT=float(self.bias.values.max() * beta) if self.bias is not None else 0.0,
            cv_coverage=coverage,
            n_hills=int(self.bias.n_hills) if self.bias is not None else 0,
            energy_evaluations=self.energy_evaluations, wall_time_s=self.elapsed_s)
        self.history.append(record)
        return record

    def train(self, callbacks=(), progress: bool = True) -> list[IterationRecord]:
        """Run the remaining outer iterations (see :func:`train`); returns the full history."""
        return train(self, callbacks, progress)

    def sample_final(self, n: int, batch_size: int | None = None):
        """n samples from the walkers' equal mixture, split as evenly as possible over the
        walkers (one block per walker, in walker order).

        log_q is the mixture's path log-likelihood log((1/W) Σ_w q_w(x, σ)): every sample is
        re-scored by the other walkers (the order σ is drawn the same way by all of them).
        Likelihood weights with it are the balance-heuristic multiple-importance weights,
        right whichever modes the walkers hold.  With each walker's own q_w instead, a mode
        held by two walkers would count twice, and with walkers in disjoint modes the ln Z
        estimate comes out ln W too low."""
        n_walkers = len(self.walkers)
        counts = [n // n_walkers + (w < n % n_walkers) for w in range(n_walkers)]
        batches = self.call(self.walkers, "sample_final", [(c, batch_size) for c in counts])
        x, own_log_q = torch.cat([b.x for b in batches]), torch.cat([b.log_q for b in batches])
        order = torch.cat([b.order for b in batches]) if batches[0].order is not None else None
        owner = torch.repeat_interleave(torch.arange(n_walkers), torch.tensor(counts))
        others = [owner != w for w in range(n_walkers)]
        scores = self.call(self.walkers, "score_final",
                           [(x[m].to(torch.int8), order[m].to(torch.int16) if order is not None else None, batch_size)
                            for m in others])
        log_q = torch.empty((n_walkers, x.shape[0]), dtype=torch.float64)
        log_q[owner, torch.arange(x.shape[0])] = own_log_q
        for walker, (mask, score) in enumerate(zip(others, scores)):  # loop over walkers
            log_q[walker, mask] = score
        return SampleBatch(x, order, torch.logsumexp(log_q, dim=0) - math.log(n_walkers))

    def state_dict(self) -> dict:
        return {"walkers": self.call(self.walkers, "state_dict"), "iteration": self.iteration,
                "energy_evaluations": self.energy_evaluations, "elapsed_s": self.elapsed_s,
                "bias": self.bias.state_dict() if self.bias is not None else None,
                "cv_seen": self._cv_seen.state(),
                "history": [dataclasses.asdict(r) for r in self.history]}

    def load_state_dict(self, state: dict) -> None:
        if "walkers" not in state or len(state["walkers"]) != len(self.walkers):
            raise ValueError(f"checkpoint holds {len(state.get('walkers', [None]))} walker(s), this run has "
                             f"{len(self.walkers)}; resume with the same training.walkers")
        self.call(self.walkers, "load_state_dict", [(s,) for s in state["walkers"]])
        if self.bias is not None:
            self.bias.load_state_dict(state["bias"])
        self.iteration = int(state["iteration"])
        self.energy_evaluations = int(state["energy_evaluations"])
        self.elapsed_s = float(state["elapsed_s"])
        self._cv_seen.load(state["cv_seen"])
        self.history = [IterationRecord(**r) for r in state["history"]]
