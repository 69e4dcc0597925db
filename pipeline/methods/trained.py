"""Trained-sampler methods of a run: ``metadns`` (bias on), ``mdns`` (no bias) and
``mdns-warmstart`` (no bias, first iterations at ``training.warmstart_beta``), for any
sampler family (docs/method.md §5–6).

One run: build the trainer (one sampler, or several walkers sharing the bias), resume from
its checkpoint or start from the previous temperature's sampler, train with the run's
callbacks, draw fresh samples from the frozen EMA sampler, and estimate with every
weighting: ``likelihood`` (−βE − log q, asymptotically exact), ``bias`` (βV), the
``biased_target`` ESS and, optionally, an independence Metropolis–Hastings chain.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

import numpy as np
import torch

from pipeline import estimators as est
from pipeline import plots
from pipeline.build import build_bias, build_trainer, build_walker, walker_seed
from pipeline.callbacks import Checkpoint, EveryIteration, FesRmseHistory
from pipeline.coverage_check import coverage_check, warning_of
from pipeline.devices import device_usage
from pipeline.methods.delta_mu import delta_mu_scan
from pipeline.reference_data import cv_bin_edges, histogram_inputs
from pipeline.registry import METHODS, WEIGHTINGS
from pipeline.run_outputs import (EnergyCost, cost_rows, observable_row, run_summary, write_history, write_run_outputs,
                                  write_samples)
from pipeline.training import DualLoopTrainer, MultiWalkerTrainer, call_in_order, train

LOW_ESS_FRACTION = 0.01
LOW_COVERAGE = 0.9

__all__ = ["run", "make_trainer", "trained_sampler_states", "LOW_ESS_FRACTION", "LOW_COVERAGE"]


def run(ctx) -> dict:
    """Train, sample and estimate one trained-method run; returns its summary."""
    config = ctx.config
    energy_fn = ctx.services.energy or ctx.system.energy
    trainer = make_trainer(ctx, energy_fn)
    checkpoint = ctx.run_dir / "checkpoints" / "checkpoint.pt"
    if checkpoint.exists():
        trainer.load_state_dict(torch.load(checkpoint, weights_only=False, map_location="cpu"))
    elif ctx.initial_sampler_from is not None:
        _start_from_previous_temperature(trainer, ctx.initial_sampler_from)
    reference_fes = ctx.reference.fes_kT if ctx.reference is not None and trainer.bias is not None else None
    callbacks = []
    if reference_fes is not None:
        callbacks.append(FesRmseHistory(trainer.bias, reference_fes))
    if ctx.services.report_progress is not None:   # before the checkpoint: it may stop an orphaned actor
        ctx.services.report_progress(trainer)
        callbacks.append(EveryIteration(ctx.services.report_progress))
    callbacks.append(Checkpoint(checkpoint, config.training.checkpoint_every))
    train(trainer, callbacks, progress=ctx.progress)

    # Fresh i.i.d. samples from the frozen EMA sampler with the frozen bias (§6).
    start = time.perf_counter()
    batch = trainer.sample_final(config.sampling.n_samples, batch_size=config.sampling.batch_size)
    generation_s = time.perf_counter() - start
    return _estimate_and_write(ctx, trainer, batch, energy_fn, generation_s, reference_fes is not None)


def make_trainer(ctx, energy_fn):
    """The run's DualLoopTrainer, or a MultiWalkerTrainer with ``training.walkers`` > 1 (walkers
    in this process, or Ray actors from ``services.make_walkers``)."""
    config, spec, system = ctx.config, ctx.spec, ctx.system
    t = config.training
    method = METHODS[spec.method]
    bias = _run_bias(ctx, t.batch_size) if method.traits["bias"] else None
    device = ctx.device.device
    if t.walkers == 1:
        return build_trainer(config, spec, system, ctx.seed, energy_fn, bias, device)
    if ctx.services.make_walkers is not None:
        walkers, call = ctx.services.make_walkers(ctx)   # each walker actor takes the device Ray gave it
    else:
        walkers = [build_walker(config, spec, system, ctx.seed, w, energy_fn, device) for w in range(t.walkers)]
        call = call_in_order
    return MultiWalkerTrainer(walkers, bias, spec.beta, t, method.traits["warmstart"], system.cv_spec, call)


def _run_bias(ctx, hills_per_cycle: int):
    """The run's bias, wrapped by the services (e.g. as a bias-server client)."""
    bias = build_bias(ctx.config, ctx.system, ctx.spec.beta, hills_per_cycle)
    return ctx.services.make_bias(bias) if ctx.services.make_bias is not None else bias


def trained_sampler_states(checkpoint: dict) -> list[dict]:
    """The EMA sampler weights held by a finished run's checkpoint: one per walker for a
    trained method, the single sampler of a ``metadns-mcmc`` run (its ``trainer`` entry)."""
    if "walkers" in checkpoint:
        return [w["ema_sampler"] for w in checkpoint["walkers"]]
    return [checkpoint.get("trainer", checkpoint)["ema_sampler"]]


def _start_from_previous_temperature(trainer, run_dir: Path) -> None:
    """Warm start: each walker takes the EMA sampler of the finished run in ``run_dir`` (its
    walker of the same index, modulo that run's walker count)."""
    states = trained_sampler_states(torch.load(run_dir / "checkpoints" / "checkpoint.pt", weights_only=False,
                                               map_location="cpu"))
    if isinstance(trainer, MultiWalkerTrainer):
        trainer.call(trainer.walkers, "start_from", [(states[w % len(states)],) for w in range(len(trainer.walkers))])
    else:
        trainer.start_from(states[0])


def _estimate_and_write(ctx, trainer, batch, energy_fn, generation_s: float, with_rmse: bool) -> dict:
    config, spec, system = ctx.config, ctx.spec, ctx.system
    bias = trainer.bias
    x = batch.x
    energy = energy_fn(x).numpy()
    cv = system.cv(x).numpy()
    bias_energy = bias.value(cv) if bias is not None else np.zeros(len(energy))
    log_q = batch.log_q.numpy()
    inputs = {"energy": energy, "bias_energy": bias_energy, "log_q": log_q, "beta": spec.beta}
    weightings = {name: entry.load()(*(inputs[key] for key in entry.traits["inputs"]))
                  for name, entry in WEIGHTINGS.items()}
    log_w_lik = weightings["likelihood"]
    log_w_biased_target = est.log_weights_biased_target(energy, bias_energy, log_q, spec.beta)
    observables = {k: v.numpy() for k, v in system.observables(x, energy).items()}
    n = len(energy)
    cost = EnergyCost(trainer.energy_evaluations + n)   # training batches and these final samples

    rows = []
    for estimator, log_w in weightings.items():
        ess = est.kish_ess(log_w)
        for name, values in observables.items():
            mean, stderr = est.weighted_mean_and_stderr(values, log_w)
            rows.append(observable_row(ctx, estimator, name, system.observable_units[name], mean, stderr, ess, n))
    ess_lik, ess_biased_target = est.kish_ess(log_w_lik), est.kish_ess(log_w_biased_target)
    ln_z, ln_z_err = est.log_partition_function(log_w_lik)
    rows.append(observable_row(ctx, "likelihood", "log_partition_function", "1", ln_z, ln_z_err, ess_lik, n))
    rows.append(observable_row(ctx, "biased_target", "ess_fraction", "1", ess_biased_target / n, math.nan,
                               ess_biased_target, n))
    rows.append(observable_row(ctx, "likelihood", "ess_fraction", "1", ess_lik / n, math.nan, ess_lik, n))
    acceptance = math.nan
    if config.sampling.metropolis_hastings:
        # Walkers' samples come in blocks, one mixture component each: propose them in a random order.
        chain_idx, acceptance = est.independence_metropolis_hastings(log_w_lik, np.random.default_rng(ctx.seed),
                                                                     shuffle=config.training.walkers > 1)
        for name, values in observables.items():
            mean, stderr = est.mcmc_mean_and_stderr(values[chain_idx][:, None])
            rows.append(observable_row(ctx, "mh", name, system.observable_units[name], mean, stderr, math.nan, n))
        rows.append(observable_row(ctx, "mh", "acceptance_rate", "1", acceptance, math.nan, math.nan, n))
    history = trainer.history
    hills = bias.n_hills if bias is not None else 0
    check = _coverage_check(ctx, trainer, energy_fn, cv, log_w_lik)
    if check is not None:
        cost += EnergyCost(check["energy_evaluations"]["full"], check["energy_evaluations"]["local"])
    rows += cost_rows(ctx, n, cost, hills, trainer.elapsed_s, generation_s)

    hist_values, hist_edges = histogram_inputs(system, cv, cv_bin_edges(system))
    histograms = {estimator: (est.weighted_histogram(hist_values, log_w, hist_edges),
                              est.weighted_histogram(energy / system.n_sites, log_w,
                                                     system.energy_per_site_bin_edges()))
                  for estimator, log_w in weightings.items()}
    fes_samples = est.fes_from_samples(hist_values, log_w_lik, hist_edges)
    fes_bias = bias.free_energy() if bias is not None else None
    scan = delta_mu_scan(ctx, "likelihood", observables, log_w_lik, x.sum(dim=1).numpy().astype(np.float64), cv,
                         hist_values, hist_edges, _independent_mean, est.fes_from_samples)
    rows += scan["rows"]

    ctx.metadata.update(device_usage(ctx.device.device))
    write_run_outputs(ctx, rows, histograms, fes_samples, fes_bias, bias, scan["fes"])
    order = batch.order.to(torch.int16).numpy() if batch.order is not None else None
    write_samples(ctx, x.to(torch.int8).numpy(), order, energy, cv, log_q, weightings["bias"], log_w_lik)
    if history:
        write_history(ctx, [dataclasses.asdict(record) for record in history])
        plots.plot_bias_growth(ctx.run_dir / "bias_growth.png", [r.iteration for r in history],
                               [r.max_bias_kT for r in history], [r.cv_coverage for r in history],
                               title=f"{spec.run_name}: bias growth and CV coverage")

    ess_fraction = ess_lik / n
    coverage = history[-1].cv_coverage if history else math.nan
    extra = {"initialised_from": ctx.initial_sampler_from.name} if ctx.initial_sampler_from else {}
    if config.training.walkers > 1:
        extra["walker_seeds"] = [walker_seed(ctx.seed, w) for w in range(config.training.walkers)]
        extra["walker_devices"] = trainer.call(trainer.walkers, "device_name")
    if with_rmse:
        extra["fes_rmse_history"] = [(r.n_hills, r.energy_evaluations, r.fes_rmse_kT) for r in history]
    warnings = _warnings(ess_fraction, coverage)
    if check is not None:
        extra["coverage_check"] = check
        warnings += [w for w in [warning_of(check, system.cv_spec.names)] if w]
    return run_summary(ctx, warnings, **extra, ess_fraction=ess_fraction,
                       cv_coverage=coverage, mh_acceptance=acceptance, training_wall_time_s=trainer.elapsed_s,
                       generation_wall_time_s=generation_s, n_samples=n, **cost.figures(), hills=hills)


def _coverage_check(ctx, trainer, energy_fn, cv, log_w) -> dict | None:
    """The missing-basin check of a biased run (pipeline/coverage_check.py), or None when the
    run has no bias or ``sampling.coverage_check_sweeps`` is 0."""
    sampling = ctx.config.sampling
    if trainer.bias is None or sampling.coverage_check_sweeps == 0:
        return None
    estimates = [est.weighted_mean_and_stderr(cv[:, k], log_w) for k in range(cv.shape[1])]
    sampler = trainer.ema_sampler if isinstance(trainer, DualLoopTrainer) else None   # walker actors: local moves
    return coverage_check(ctx.system, ctx.spec.beta, trainer.bias, sampler, energy_fn,
                          np.array([m for m, _ in estimates]), np.array([e for _, e in estimates]),
                          sampling.coverage_check_chains, sampling.coverage_check_sweeps,
                          len(ctx.config.system.betas), ctx.seed + 7919, ctx.progress)


def _independent_mean(values, log_w):
    """Weighted mean, SE and Kish ESS of independent samples."""
    return (*est.weighted_mean_and_stderr(values, log_w), est.kish_ess(log_w))


def _warnings(ess_fraction: float, coverage: float) -> list[str]:
    warnings = []
    if ess_fraction < LOW_ESS_FRACTION:
        warnings.append(f"physical-target ESS/n = {ess_fraction:.4f} is below {LOW_ESS_FRACTION}: "
                        "likelihood-weighted estimates are unreliable")
    if coverage < LOW_COVERAGE:
        warnings.append(f"fresh samples spanned only {coverage:.0%} of the CV range during training: "
                        "the sampler may have missed a mode (ESS alone does not reveal mode collapse)")
    return warnings
