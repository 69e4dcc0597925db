"""``metadns tune``: Ray Tune sweeps of config keys with ASHA early stopping.

Size (over the ~400-line guide): the search-space grammar, the trial function and the
result table of one Tune sweep are one job; splitting them would scatter the sweep's contract.

A config's ``tune:`` section names a search space over dotted config keys; every trial
trains one sampler (``metadns`` by default, or ``mdns``) at one of the config's temperatures,
exactly as ``metadns run`` builds it (through :mod:`pipeline.build`, so ``training.device``
and ``sampler.family`` are honoured; ``training.walkers`` must be 1), and every
``report_every`` outer iterations draws fresh samples from the EMA sampler and reports an
objective to Tune, whose ASHA scheduler stops the trials that fall behind. Keys of the section (all optional)::

    tune:
      space:                      # dotted config key -> distribution (default: γ, h, σ below)
        bias.gamma: {loguniform: [3, 30]}
        bias.height_per_cycle: {loguniform: [0.1, 2.0]}
        bias.sigma: {loguniform: [0.02, 0.2]}
        # also {uniform: [lo, hi]}, {randint: [lo, hi]} (both ends included),
        # {choice: [a, b, ...]} (drawn at random), {grid: [a, b, ...]} (every value)
      num_samples: 8              # random draws; each grid combination is repeated this often
      objective: auto             # auto | js_cv | fes_rmse | coverage_ess
      method: metadns             # metadns | mdns
      temperature: null           # one value of system.beta (or system.temperature); default first
      reference: null             # a finished sw/metropolis run folder at that temperature
      grace_period: null          # outer iterations before ASHA may stop a trial (default T/10)
      reduction_factor: 3         # ASHA keeps the best 1/reduction_factor at each rung
      report_every: null          # outer iterations between reports (default T/20, at least 1)
      eval_samples: 1000          # fresh samples per report
      max_concurrent_trials: null # default: as many as the CPUs (and GPUs) allow
      cpus_per_trial: 1           # Ray CPU request per trial (fractions allowed)
      gpus_per_trial: auto        # auto: 1 when the cluster has GPUs and training.device is not cpu, else 0
      checkpoint_every: 1         # reports between a trial's checkpoints
      max_failures: 2             # restarts of a failed trial, each from its last checkpoint

Objectives (each computed on likelihood-weighted fresh samples, log w = −βE − log q(x|σ)):
``js_cv`` Jensen–Shannon divergence (nats, in [0, ln 2]) between the CV histogram and the
reference one on one bin per attainable CV value (minimised); ``fes_rmse`` RMSE in k_BT of
F(s) = −ln P(s) against the reference F, best constant offset removed, where CV values the
samples missed count as holding one effective sample, F = max(0, ln(ESS·P_max)), so missing
a mode is penalised rather than excused (minimised); ``coverage_ess`` the fraction of the CV
range spanned by the samples (min over CV dimensions) times the physical ESS/n (maximised).
The reference is ``reference`` when given, else exact enumeration for systems with at most
3^16 states (reference_data.EXACT_ENUMERATION_LIMIT); ``auto`` picks ``js_cv`` with a reference and ``coverage_ess`` without.

Outputs under ``DIR/<name>/tune/``: ``config.yaml`` (the sweep's config, written when it
starts), ``trials.parquet`` (one row per trial), ``history.parquet`` (one row per report),
``best.yaml`` (the config with the best trial's values, ``tune`` removed, ready for
``metadns run``) and Ray's own ``ray_results/``. The best trial is the one with the best final
objective among the trials that ran the full budget (a trial ASHA stopped was behind at its
last rung).

Each trial trains on the device Ray assigned it (pipeline.devices, as a trainer actor of
``metadns run``) and every ``checkpoint_every`` reports hands Tune a checkpoint: a folder with
the trainer's ``checkpoint.pt`` (the format of ``metadns run --resume``). A trial Tune restarts
(after a failure, up to ``max_failures`` times, or in a resumed sweep) continues from it.
``metadns tune --resume`` continues an interrupted sweep of the same config from Tune's saved
experiment state (:func:`run_tune`).
"""

from __future__ import annotations

import difflib
import itertools
import json
import math
import os
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import yaml

from pipeline import estimators as est
from pipeline.config import (Config, ConfigError, apply_overrides, canonical_json, config_from_dict, config_hash,
                             expand_runs, load_config)
from pipeline.errors import RunFailed, TuneFolderExists, setup_errors
from pipeline.outputs import atomic_write_text, provenance_metadata, write_parquet, write_yaml
from pipeline.build import build_bias, build_system, build_trainer, check_sampler, derive_seed, restrict_to_run
from pipeline.callbacks import Checkpoint
from pipeline.campaign import UNBIASED_REFERENCES
from pipeline.devices import choose_device, configure_numerics, keep_freed_host_memory
from pipeline.reference_data import (EXACT_ENUMERATION_LIMIT, ReferenceData, cv_bin_edges, cv_grid_shape,
                                     exact_reference, histogram_inputs, has_exact_reference, load_reference)
from pipeline.registry import METHODS
from pipeline.training import train

__all__ = [
    "DISTRIBUTIONS",
    "OBJECTIVES",
    "OBJECTIVE_MODES",
    "DEFAULT_SPACE",
    "TUNE_KEYS",
    "SpaceEntry",
    "TuneSettings",
    "TrialSpec",
    "TunePlan",
    "parse_tune_settings",
    "plan_tune",
    "trial_objectives",
    "train_trial",
    "trial_resources",
    "run_tune",
    "tune_command",
]

DISTRIBUTIONS: tuple[str, ...] = ("loguniform", "uniform", "randint", "choice", "grid")
"""Kinds of search-space entries."""
OBJECTIVES: tuple[str, ...] = ("auto", "js_cv", "fes_rmse", "coverage_ess")
OBJECTIVE_MODES: dict[str, str] = {"js_cv": "min", "fes_rmse": "min", "coverage_ess": "max"}
"""Whether each objective is minimised or maximised."""
DEFAULT_SPACE: dict[str, dict[str, list[float]]] = {
    "bias.gamma": {"loguniform": [3.0, 30.0]},
    "bias.height_per_cycle": {"loguniform": [0.1, 2.0]},
    "bias.sigma": {"loguniform": [0.02, 0.2]},
}
"""Search space used when ``tune.space`` is absent: the well-tempered bias factor γ, the hill
height per cycle (k_BT) and the Gaussian width σ (CV units)."""
TUNE_KEYS: tuple[str, ...] = ("space", "num_samples", "objective", "method", "temperature", "reference",
                              "grace_period", "reduction_factor", "report_every", "eval_samples",
                              "max_concurrent_trials", "cpus_per_trial", "gpus_per_trial", "checkpoint_every",
                              "max_failures")
"""Valid keys of the ``tune`` section."""
TUNE_METHODS: tuple[str, ...] = tuple(name for name in METHODS if METHODS[name].traits["trained"]
                                   and not METHODS[name].traits["warmstart"]
                                   and METHODS[name].traits.get("tunable", True))
# Keys a trial may not change: they define the campaign, the temperature, the seed or the budget
# ASHA allocates.
_FIXED_HEADS = ("name", "seed", "methods", "system", "tune")
_FIXED_KEYS = ("training.outer_iterations",)
OBJECTIVE_METRIC = "objective"
ITERATION_METRIC = "outer_iteration"
"""Outer iterations a trial has trained (ASHA's time attribute; Tune's ``training_iteration``
counts the reports of one attempt)."""
SWEEP_CONFIG = "config.yaml"
"""The sweep's config in its tune folder: ``--resume`` continues only the same sweep."""
CHECKPOINT_FILE = "checkpoint.pt"
"""The trainer's state in a trial's Tune checkpoint (pipeline.callbacks.Checkpoint's format)."""
TRIAL_STATE_FILE = "trial.json"
"""Beside it: the trial's wall time so far."""
KEEP_CHECKPOINTS = 2
"""Tune checkpoints kept per trial; Tune then saves its experiment state at least every
KEEP_CHECKPOINTS checkpoints of a trial, so a killed sweep resumes from a recent one."""


# ----------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class SpaceEntry:
    """One swept key: ``kind`` in :data:`DISTRIBUTIONS`; ``values`` = [lo, hi] for ranges,
    the candidate values for ``choice`` / ``grid``."""

    key: str
    kind: str
    values: tuple


@dataclass(frozen=True)
class TuneSettings:
    """The validated ``tune`` section (iterations are outer training iterations)."""

    space: tuple[SpaceEntry, ...]
    num_samples: int
    objective: str               # as given (may be "auto")
    method: str
    temperature_index: int       # index into the config's temperatures
    reference: Path | None       # absolute path of a finished sw/metropolis run folder
    grace_period: int
    reduction_factor: float
    report_every: int
    eval_samples: int
    max_concurrent_trials: int | None
    cpus_per_trial: float
    gpus_per_trial: float | str  # a number, or "auto"
    checkpoint_every: int        # reports between checkpoints
    max_failures: int


@dataclass(frozen=True)
class TrialSpec:
    """One trial: its index, the values it sets (dotted key → value), its seed and the full,
    validated config dict it trains with (one method, one temperature, no ``tune``)."""

    index: int
    overrides: dict
    seed: int
    config: dict


@dataclass(frozen=True)
class TunePlan:
    """Everything a sweep needs, checked before anything is written or Ray is started."""

    config: Config
    settings: TuneSettings
    objective: str               # resolved (never "auto")
    mode: str                    # "min" or "max"
    beta: float
    trials: tuple[TrialSpec, ...]
    reference: ReferenceData | None
    max_t: int                   # outer iterations of a full trial
    out_dir: Path                # DIR/<name>/tune (absolute)


def _describe(value: Any) -> str:
    return f"{value!r} (a {type(value).__name__})"


def _number(value: Any, field: str, *, integer: bool = False, gt=None, ge=None, example: str) -> float | int:
    """A number (int where ``integer``) within bounds, else ConfigError naming ``field``."""
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    if ok and integer:
        ok = float(value).is_integer()
    if ok and gt is not None:
        ok = value > gt
    if ok and ge is not None:
        ok = value >= ge
    if not ok:
        kind = "an integer" if integer else "a number"
        bound = f" > {gt}" if gt is not None else f" >= {ge}" if ge is not None else ""
        raise ConfigError(field, f"must be {kind}{bound}, got {_describe(value)}; e.g. {example}")
    return int(value) if integer else float(value)


def _parse_space_entry(key: Any, spec: Any) -> SpaceEntry:
    field = f"tune.space.{key}"
    example = "`bias.gamma: {loguniform: [3, 30]}`"
    if not isinstance(key, str) or not key:
        raise ConfigError("tune.space", f"keys must be dotted config keys like 'bias.gamma', got {key!r}")
    head = key.split(".")[0]
    if head in _FIXED_HEADS or key in _FIXED_KEYS:
        raise ConfigError(field, "cannot be swept: name, seed, methods, system.* (use tune.temperature to pick "
                          "the temperature), tune.* and training.outer_iterations (the budget ASHA allocates) "
                          "are fixed for a sweep; remove this entry")
    if not isinstance(spec, Mapping) or len(spec) != 1 or next(iter(spec)) not in DISTRIBUTIONS:
        raise ConfigError(field, f"must be one distribution, a mapping with one key among {', '.join(DISTRIBUTIONS)}, "
                          f"e.g. {example} or `{{grid: [5, 10, 20]}}`; got {spec!r}")
    kind, values = next(iter(spec.items()))
    if not isinstance(values, (list, tuple)) or not values:
        raise ConfigError(field, f"{kind} needs a non-empty list, e.g. {example}; got {values!r}")
    if kind in ("loguniform", "uniform", "randint"):
        if len(values) != 2:
            raise ConfigError(field, f"{kind} needs [low, high], got {list(values)!r}")
        lo, hi = (_number(v, field, integer=kind == "randint", example=f"`{{{kind}: [1, 10]}}`") for v in values)
        if kind == "loguniform" and not lo > 0:
            raise ConfigError(field, f"loguniform needs 0 < low, got low = {lo}; use uniform for ranges reaching 0")
        if (hi < lo) if kind == "randint" else not hi > lo:
            raise ConfigError(field, f"{kind} needs low < high, got [{lo}, {hi}]")
        values = (lo, hi)
    return SpaceEntry(key, kind, tuple(values))


def parse_tune_settings(config: Config) -> TuneSettings:
    """Validate ``config.tune`` (shapes and ranges only; see :func:`plan_tune` for the checks
    against the config itself). Raises ConfigError naming ``tune.<key>``."""
    raw = config.tune or {}
    for key in raw:
        if key not in TUNE_KEYS:
            close = difflib.get_close_matches(str(key), TUNE_KEYS, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"tune.{key}", f"unknown key {key!r}. Valid keys here: {', '.join(TUNE_KEYS)}.{hint}")
    space_raw = raw.get("space")
    if space_raw is None:
        space_raw = DEFAULT_SPACE
    if not isinstance(space_raw, Mapping) or not space_raw:
        raise ConfigError("tune.space", "must be a non-empty mapping of dotted config keys to distributions, "
                          f"e.g. `space: {{bias.gamma: {{loguniform: [3, 30]}}}}`; got {space_raw!r}")
    space = tuple(_parse_space_entry(k, v) for k, v in space_raw.items())

    def get(key, default):
        value = raw.get(key)
        return default if value is None else value

    outer = config.training.outer_iterations
    num_samples = _number(get("num_samples", 8), "tune.num_samples", integer=True, ge=1, example="`num_samples: 8`")
    objective = get("objective", "auto")
    if objective not in OBJECTIVES:
        raise ConfigError("tune.objective", f"must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
    method = get("method", "metadns")
    if method not in TUNE_METHODS:
        raise ConfigError("tune.method", f"must be one of {', '.join(TUNE_METHODS)} (trained samplers), got {method!r}")
    if method not in config.methods:
        raise ConfigError("tune.method", f"is {method!r}, which is not among the config's methods "
                                         f"({', '.join(config.methods)}); add it to `methods` or set "
                                         f"`tune.method` to one of them")
    kind = "beta" if config.system.beta is not None else "temperature"
    given = config.system.beta if kind == "beta" else config.system.temperature
    temperature = raw.get("temperature")
    if temperature is None:
        index = 0
    else:
        value = _number(temperature, "tune.temperature", gt=0, example=f"`temperature: {given[0]}`")
        matches = [i for i, g in enumerate(given) if math.isclose(g, value, rel_tol=1e-9)]
        if not matches:
            raise ConfigError("tune.temperature", f"{value} is not one of the config's system.{kind} values "
                              f"{list(given)}; give one of them (it is read as system.{kind})")
        index = matches[0]
    reference = raw.get("reference")
    if reference is not None:
        if not isinstance(reference, (str, os.PathLike)) or not str(reference):
            raise ConfigError("tune.reference", f"must be the path of a finished sw or metropolis run folder, "
                              f"got {_describe(reference)}")
        reference = Path(reference).expanduser().resolve()
    grace = _number(get("grace_period", max(1, outer // 10)), "tune.grace_period", integer=True, ge=1,
                    example="`grace_period: 20`")
    if grace > outer:
        raise ConfigError("tune.grace_period", f"{grace} exceeds training.outer_iterations = {outer}; "
                          "ASHA could never stop a trial; use a smaller value")
    factor = _number(get("reduction_factor", 3), "tune.reduction_factor", gt=1, example="`reduction_factor: 3`")
    every = _number(get("report_every", max(1, outer // 20)), "tune.report_every", integer=True, ge=1,
                    example="`report_every: 10`")
    if every > outer:
        raise ConfigError("tune.report_every", f"{every} exceeds training.outer_iterations = {outer}; "
                          "use at most that")
    eval_samples = _number(get("eval_samples", 1000), "tune.eval_samples", integer=True, ge=2,
                           example="`eval_samples: 1000`")
    concurrent = raw.get("max_concurrent_trials")
    if concurrent is not None:
        concurrent = _number(concurrent, "tune.max_concurrent_trials", integer=True, ge=1,
                             example="`max_concurrent_trials: 2`")
    cpus = _number(get("cpus_per_trial", 1.0), "tune.cpus_per_trial", gt=0, example="`cpus_per_trial: 0.5`")
    gpus = get("gpus_per_trial", "auto")
    if gpus != "auto":
        gpus = _number(gpus, "tune.gpus_per_trial", ge=0, example="`gpus_per_trial: auto` (or 0, 0.5, 1)")
        device = config.training.device
        if device == "cpu" and gpus > 0:
            raise ConfigError("tune.gpus_per_trial", f"is {gpus:g} but training.device is cpu, so the GPUs would "
                              "sit idle; use gpus_per_trial: auto or 0, or training.device: auto")
        if device == "cuda" and gpus == 0:
            raise ConfigError("tune.gpus_per_trial", "is 0 but training.device is cuda, so no trial could train; "
                              "use gpus_per_trial: auto or > 0 (e.g. 0.5), or training.device: auto")
    checkpoint_every = _number(get("checkpoint_every", 1), "tune.checkpoint_every", integer=True, ge=1,
                               example="`checkpoint_every: 2`")
    failures = _number(get("max_failures", 2), "tune.max_failures", integer=True, ge=0,
                       example="`max_failures: 2`")
    return TuneSettings(space, num_samples, objective, method, index, reference, grace, factor, every,
                        eval_samples, concurrent, cpus, gpus, checkpoint_every, failures)


# ----------------------------------------------------------------------------- trials
def _override_strings(overrides: Mapping[str, Any]) -> list[str]:
    # JSON text is valid YAML for apply_overrides; scientific notation is accepted as a number.
    return [f"{key}={json.dumps(value)}" for key, value in overrides.items()]


def _base_trial_dict(config: Config, settings: TuneSettings) -> dict:
    """The config restricted to the tuned method and temperature, without ``tune``."""
    spec = next(r for r in expand_runs(config) if r.method == settings.method
                and r.beta == config.system.betas[settings.temperature_index])
    return restrict_to_run(config, spec)


def _apply(base: dict, overrides: Mapping[str, Any], name: str) -> Config:
    return config_from_dict(apply_overrides(base, _override_strings(overrides)), name=name)


def _check_value(base: dict, entry: SpaceEntry, value: Any, system, beta: float, method: str) -> None:
    """Raise ConfigError("tune.space.<key>") if ``entry.key`` is not a settable config key or
    setting it to ``value`` breaks the config."""
    field = f"tune.space.{entry.key}"
    try:
        raw = apply_overrides(base, _override_strings({entry.key: value}))
    except ConfigError as error:
        raise ConfigError(field, f"is not a config key that can be set: {error.message}") from None
    try:
        _check_buildable(config_from_dict(raw, name=base["name"]), system, beta, method)
    except ConfigError as error:
        if error.field == entry.key:
            hint = "; sweep integer keys with {randint: [lo, hi]}, {choice: [...]} or {grid: [...]}" \
                if entry.kind in ("uniform", "loguniform") and "integer" in error.message else ""
            raise ConfigError(field, f"value {value!r} is not valid here: {error.message}{hint}") from None
        raise ConfigError(field, f"value {value!r} makes {error.field or 'the config'} invalid: "
                          f"{error.message}") from None


def _check_buildable(trial: Config, system, beta: float, method: str) -> None:
    """What ``metadns run`` checks before training: the bias grid and the network."""
    build_bias(trial, system, beta, trial.training.batch_size)
    if METHODS[method].traits["trained"]:
        check_sampler(trial, system)
    if trial.training.walkers > 1:
        raise ConfigError("training.walkers", f"is {trial.training.walkers}, but a Tune trial trains one sampler; "
                          "tune with walkers: 1 and run the best config with more walkers")


def _sample_trials(settings: TuneSettings, seed: int) -> list[dict]:
    """Every trial's values: the grid's Cartesian product repeated ``num_samples`` times, each
    with fresh draws of the random entries (numpy Generator seeded from the config seed)."""
    rng = np.random.default_rng(derive_seed(seed, "tune-space"))
    grid_entries = [e for e in settings.space if e.kind == "grid"]
    combos = list(itertools.product(*(e.values for e in grid_entries))) or [()]
    trials = []
    for _ in range(settings.num_samples):
        for combo in combos:
            chosen = dict(zip((e.key for e in grid_entries), combo))
            values = {}
            for entry in settings.space:
                if entry.kind == "grid":
                    values[entry.key] = chosen[entry.key]
                elif entry.kind == "choice":
                    values[entry.key] = entry.values[int(rng.integers(len(entry.values)))]
                elif entry.kind == "randint":
                    values[entry.key] = int(rng.integers(entry.values[0], entry.values[1] + 1))
                elif entry.kind == "uniform":
                    values[entry.key] = float(rng.uniform(*entry.values))
                else:
                    lo, hi = np.log(entry.values)
                    values[entry.key] = float(np.exp(rng.uniform(lo, hi)))
            trials.append(values)
    return trials


def _resolve_reference(settings: TuneSettings, config: Config, system, beta: float) -> ReferenceData | None:
    """The given reference run folder, else exact enumeration for tiny systems, else None."""
    folder = settings.reference
    if folder is None:
        if has_exact_reference(system):
            return exact_reference(system, beta)
        return None
    summary_path, config_path = folder / "summary.json", folder / "config.yaml"
    if not summary_path.is_file() or not config_path.is_file():
        raise ConfigError("tune.reference", f"{folder} is not a finished run folder (summary.json and config.yaml "
                          "are written by `metadns run`); run the sw or metropolis reference first")
    summary = json.loads(summary_path.read_text())
    method = summary.get("method")
    if method not in UNBIASED_REFERENCES:
        raise ConfigError("tune.reference", f"{folder} is a {method!r} run; point to an unbiased "
                          f"{' or '.join(UNBIASED_REFERENCES)} run")
    saved = config_from_dict(yaml.safe_load(config_path.read_text()))
    ours = {k: v for k, v in config.system.to_dict().items() if k not in ("beta", "temperature")}
    theirs = {k: v for k, v in saved.system.to_dict().items() if k not in ("beta", "temperature")}
    if ours != theirs or not math.isclose(saved.system.betas[0], beta, rel_tol=1e-9):
        raise ConfigError("tune.reference", f"{folder} was run on another system or temperature "
                          f"({theirs}, beta {saved.system.betas[0]}) than the sweep ({ours}, beta {beta}); "
                          "point to a reference of the same system at the tuned temperature")
    reference = load_reference(folder, method)
    n_bins = int(np.prod(cv_grid_shape(system)))
    if reference.cv_histogram.size != n_bins:
        raise ConfigError("tune.reference", f"{folder} has {reference.cv_histogram.size} CV bins, the system "
                          f"{n_bins}; point to a reference of the same system")
    return reference


def plan_tune(config: Config, out_root: str | Path) -> TunePlan:
    """Validate the ``tune`` section against the config and draw every trial.

    Checks each swept key by applying it (``apply_overrides`` + ``config_from_dict``) at the
    ends of its range / at each of its values, then every drawn trial the way ``metadns run``
    would (bias grid, network). Raises ConfigError naming ``tune.<key>``; writes nothing.
    """
    settings = parse_tune_settings(config)
    system = build_system(config)
    beta = config.system.betas[settings.temperature_index]
    base = _base_trial_dict(config, settings)
    for entry in settings.space:
        candidates = list(entry.values)
        if entry.kind in ("uniform", "loguniform"):  # an interior, non-integral value too (integer keys)
            lo, hi = entry.values
            candidates.append(lo + (hi - lo) / math.pi)
        for value in candidates:
            _check_value(base, entry, value, system, beta, settings.method)
    trials = []
    for index, overrides in enumerate(_sample_trials(settings, config.seed)):
        try:
            trial_config = _apply(base, overrides, config.name)
            _check_buildable(trial_config, system, beta, settings.method)
        except ConfigError as error:
            field = f"tune.space.{error.field}" if error.field in overrides else "tune.space"
            raise ConfigError(field, f"trial {index} ({overrides}) is invalid: {error.message}") from None
        seed = derive_seed(config.seed, f"tune-trial-{index}:{canonical_json(overrides)}")
        trials.append(TrialSpec(index, overrides, seed, trial_config.to_dict()))
    reference = _resolve_reference(settings, config, system, beta)
    objective = settings.objective
    if objective == "auto":
        objective = "js_cv" if reference is not None else "coverage_ess"
    if objective in ("js_cv", "fes_rmse") and reference is None:
        raise ConfigError("tune.objective", f"{objective} needs a reference: this system has more than "
                          f"{EXACT_ENUMERATION_LIMIT} states, so set tune.reference to a finished sw or metropolis "
                          "run folder at the tuned temperature, or use objective: coverage_ess")
    return TunePlan(config, settings, objective, OBJECTIVE_MODES[objective], beta, tuple(trials), reference,
                    config.training.outer_iterations, (Path(out_root) / config.name / "tune").resolve())


# ----------------------------------------------------------------------------- objectives
def trial_objectives(system, beta: float, x: torch.Tensor, log_q, reference: ReferenceData | None) -> dict:
    """Every objective on one batch of fresh samples.

    x: int64 (n, D) configurations; log_q: (n,) path log-likelihoods under the generating
    orders (nats); beta in 1/energy unit. Weights are the likelihood weights −βE − log q.
    Returns ``ess_fraction`` (Kish ESS/n), ``cv_coverage`` (fraction of the CV range spanned,
    min over dimensions), ``coverage_ess`` (their product) and, with a reference, ``js_cv``
    (nats), ``fes_rmse`` (k_BT) and ``fes_coverage`` (fraction of the reference's finite F
    values that the samples reached).
    """
    energy = system.energy(x).numpy()
    cv = system.cv(x).numpy()
    log_w = est.log_weights_likelihood(energy, log_q, beta)
    n = len(energy)
    ess = est.kish_ess(log_w)
    spec = system.cv_spec
    span = (cv.max(axis=0) - cv.min(axis=0)) / (np.asarray(spec.upper) - np.asarray(spec.lower))
    out = {"ess_fraction": ess / n, "cv_coverage": float(span.min())}
    out["coverage_ess"] = out["cv_coverage"] * out["ess_fraction"]
    if reference is None:
        return out
    edges = cv_bin_edges(system)
    values, edges = histogram_inputs(system, cv, edges)
    probability, _ = est.weighted_histogram(values, log_w, edges)
    out["js_cv"] = est.js_divergence(probability.ravel(), reference.cv_histogram)
    free = np.full(probability.size, np.nan)
    filled = probability.ravel() > 0
    p_max = probability.max()
    free[filled] = -np.log(probability.ravel()[filled] / p_max)
    ref_fes = np.asarray(reference.fes_kT, dtype=np.float64).ravel()
    missing = np.isfinite(ref_fes) & ~filled
    out["fes_coverage"] = float(1.0 - missing.sum() / np.isfinite(ref_fes).sum())
    free[missing] = max(0.0, math.log(ess * p_max))  # one effective sample in the bin
    out["fes_rmse"] = est.fes_rmse(free, ref_fes, align="mean")[0]
    return out


# ----------------------------------------------------------------------------- Ray trainable
def train_trial(plan: TunePlan, index: int, report: Callable[[dict, Path | None], None],
                restore: Path | None = None) -> None:
    """Train trial ``index`` of the plan as ``metadns run`` would and call
    ``report(metrics, checkpoint)`` every ``report_every`` outer iterations (and after the last one).

    The device is :func:`pipeline.devices.choose_device` of ``training.device`` in this process
    (in a Tune trial: the GPUs Ray assigned it). ``checkpoint`` is a folder holding the trainer's
    ``checkpoint.pt`` and ``trial.json`` every ``checkpoint_every`` reports (None otherwise; it
    is deleted when ``report`` returns); ``restore``: such a folder to continue from, whose
    iteration is reported again first (Tune may keep a checkpoint whose report it lost when the
    trial died).
    ``metrics``: ``outer_iteration`` (outer iterations done), ``objective`` (the plan's), every
    value of :func:`trial_objectives` on ``eval_samples`` fresh samples from the EMA sampler
    (a generator seeded from the trial seed and the iteration, so evaluating never changes
    training and a restored trial reports what an uninterrupted one would), ``trial``,
    ``seed``, ``loss``, ``max_bias_kT``, ``wall_time_s`` (since the trial started, summed over
    restarts), ``resumed_from`` (outer iterations restored from a checkpoint, 0 for a fresh
    start) and ``device``. Torch uses max(1, ⌊cpus_per_trial⌋) threads. Deterministic on CPU.
    """
    start = time.perf_counter()
    torch.set_num_threads(max(1, int(plan.settings.cpus_per_trial)))
    trial = plan.trials[int(index)]
    config = config_from_dict(trial.config)
    device = choose_device(config.training.device).device
    configure_numerics(device, config.training.deterministic)
    keep_freed_host_memory()
    system = build_system(config)
    spec = expand_runs(config)[0]
    bias = build_bias(config, system, plan.beta, config.training.batch_size) if METHODS[spec.method].traits["bias"] \
        else None
    trainer = build_trainer(config, spec, system, trial.seed, system.energy, bias, device)
    earlier_s = 0.0
    if restore is not None:
        trainer.load_state_dict(torch.load(restore / CHECKPOINT_FILE, weights_only=False, map_location="cpu"))
        earlier_s = json.loads((restore / TRIAL_STATE_FILE).read_text())["wall_time_s"]
    callback = TuneReport(plan, trial, config, system, report, start - earlier_s, trainer.iteration)
    if restore is not None:
        report(callback.metrics(trainer), None)
    train(trainer, [callback], progress=False)


class TuneReport:
    """Training callback of a trial: every ``report_every`` outer iterations (and after the
    last one) evaluate the objectives on fresh EMA samples and call ``report(metrics,
    checkpoint)`` (see :func:`train_trial`)."""

    def __init__(self, plan: TunePlan, trial, config: Config, system, report: Callable[[dict, Path | None], None],
                 start: float, resumed_from: int):
        self.plan, self.trial, self.config, self.system, self.report, self.start, self.resumed_from = \
            plan, trial, config, system, report, start, resumed_from

    def __call__(self, trainer) -> None:
        s = self.plan.settings
        if trainer.iteration % s.report_every and not trainer.finished:
            return
        metrics = self.metrics(trainer)
        if trainer.finished or (trainer.iteration // s.report_every) % s.checkpoint_every:
            self.report(metrics, None)
            return
        with tempfile.TemporaryDirectory(prefix="metadns-tune-") as folder:
            Checkpoint(Path(folder) / CHECKPOINT_FILE, every=1)(trainer)
            atomic_write_text(Path(folder) / TRIAL_STATE_FILE, json.dumps({"wall_time_s": metrics["wall_time_s"]}))
            self.report(metrics, Path(folder))

    def metrics(self, trainer) -> dict:
        """What the trial reports after the trainer's current outer iteration."""
        s = self.plan.settings
        record = trainer.history[-1]
        sampler = trainer.ema_sampler
        evaluation = torch.Generator(device=sampler.device).manual_seed(
            derive_seed(self.trial.seed, f"evaluation-{trainer.iteration}"))
        batch = sampler.sample(s.eval_samples, evaluation, batch_size=self.config.sampling.batch_size)
        metrics = trial_objectives(self.system, self.plan.beta, batch.x.cpu(), batch.log_q.cpu(), self.plan.reference)
        return {ITERATION_METRIC: trainer.iteration, OBJECTIVE_METRIC: metrics[self.plan.objective], **metrics,
                "trial": self.trial.index, "seed": self.trial.seed, "loss": record.loss,
                "max_bias_kT": record.max_bias_kT, "wall_time_s": time.perf_counter() - self.start,
                "resumed_from": self.resumed_from, "device": str(sampler.device)}


def _run_trial(params: dict, plan: TunePlan) -> None:
    """Ray Tune function trainable: :func:`train_trial` reporting to Tune (ASHA reads
    ``outer_iteration`` and ``objective``), continued from the trial's last Tune checkpoint
    when Tune restarts it."""
    from ray import tune  # noqa: PLC0415 - inside the trial's worker

    def report(metrics: dict, folder: Path | None) -> None:
        tune.report(metrics, checkpoint=None if folder is None else tune.Checkpoint.from_directory(folder))

    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        train_trial(plan, int(params["trial"]), report)
        return
    with checkpoint.as_directory() as folder:
        train_trial(plan, int(params["trial"]), report, Path(folder))


def trial_resources(plan: TunePlan) -> dict[str, float]:
    """What each trial asks the connected Ray cluster for: ``{"cpu": cpus_per_trial, "gpu": …}``.
    ``gpus_per_trial: auto`` is the rule of a trained sampler of ``metadns run``
    (:func:`pipeline.distributed.executor.sampler_gpus` with ``gpus_per_run: auto``). Raises
    ConfigError naming ``tune.<key>`` when the cluster could never run a trial."""
    from pipeline.distributed.executor import sampler_gpus  # noqa: PLC0415 - imports ray
    from pipeline.distributed.session import cluster_cpus, cluster_gpus  # noqa: PLC0415

    s, config = plan.settings, plan.config
    gpus = s.gpus_per_trial
    if gpus == "auto":
        gpus = sampler_gpus(replace(config, distributed=replace(config.distributed, gpus_per_run="auto")))
    if config.training.device == "cuda" and gpus == 0:
        raise ConfigError("tune.gpus_per_trial", f"is auto and training.device is cuda, but the Ray cluster has no "
                          f"GPU ({cluster_gpus():g}); run on a cluster with GPUs or use training.device: auto")
    for key, need, have in (("cpus_per_trial", s.cpus_per_trial, cluster_cpus()),
                            ("gpus_per_trial", gpus, cluster_gpus())):
        if need > have + 1e-9:
            raise ConfigError(f"tune.{key}", f"a trial asks for {need:g} but the Ray cluster has {have:g}, so no "
                              f"trial could start; lower tune.{key} or use a larger cluster")
    return {"cpu": s.cpus_per_trial, "gpu": float(gpus)}


def _ray_tune(plan: TunePlan, resources: dict[str, float], progress: bool):
    """Run the sweep on the connected Ray, or continue the one saved in the tune folder;
    returns the ResultGrid."""
    from ray import tune  # noqa: PLC0415
    from ray.tune.schedulers import ASHAScheduler  # noqa: PLC0415

    s = plan.settings
    trainable = tune.with_resources(tune.with_parameters(_run_trial, plan=plan), resources)
    experiment = _experiment(plan)
    if tune.Tuner.can_restore(experiment):   # a tune folder with an experiment exists only with --resume
        tuner = tune.Tuner.restore(str(experiment), trainable=trainable, resume_unfinished=True, resume_errored=True)
        return tuner.fit()
    scheduler = ASHAScheduler(time_attr=ITERATION_METRIC, max_t=plan.max_t, grace_period=s.grace_period,
                              reduction_factor=s.reduction_factor)
    tuner = tune.Tuner(
        trainable,
        param_space={"trial": tune.grid_search([t.index for t in plan.trials])},
        tune_config=tune.TuneConfig(metric=OBJECTIVE_METRIC, mode=plan.mode, scheduler=scheduler,
                                    num_samples=1, max_concurrent_trials=s.max_concurrent_trials,
                                    reuse_actors=True),
        run_config=tune.RunConfig(name=plan.config.name, storage_path=str(plan.out_dir / "ray_results"),
                                  verbose=1 if progress else 0,
                                  failure_config=tune.FailureConfig(max_failures=s.max_failures),
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=KEEP_CHECKPOINTS)),
    )
    return tuner.fit()


def _experiment(plan: TunePlan) -> Path:
    """Tune's experiment folder of the sweep."""
    return plan.out_dir / "ray_results" / plan.config.name


def _sweep_ended(plan: TunePlan) -> bool:
    """Whether every trial had ended (finished, stopped by ASHA or failed) when Tune last saved
    the experiment state. After an interruption Tune saves it and then stops the running
    trials, which the ResultGrid then shows as terminated."""
    from ray import tune  # noqa: PLC0415

    trials = tune.ExperimentAnalysis(str(_experiment(plan))).trials
    return len(trials) == len(plan.trials) and all(t.status in ("TERMINATED", "ERROR") for t in trials)


# ----------------------------------------------------------------------------- outputs
def _swept_columns(plan: TunePlan) -> dict[str, list]:
    """One Parquet-friendly column per swept key: a key with any list/mapping value is written
    as JSON text for every trial, so each column has one type."""
    columns = {}
    for entry in plan.settings.space:
        values = [t.overrides[entry.key] for t in plan.trials]
        if any(isinstance(v, (list, tuple, dict)) for v in values):
            values = [json.dumps(v) for v in values]
        columns[entry.key] = values
    return columns


def _collect(plan: TunePlan, results) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(trials table, history table) from a Ray ResultGrid. A trial restarted from a checkpoint
    reported some outer iterations twice; the later report of each is kept."""
    sign = 1.0 if plan.mode == "min" else -1.0
    swept = _swept_columns(plan)
    component_names = ("js_cv", "fes_rmse", "fes_coverage", "cv_coverage", "ess_fraction", "coverage_ess")
    rows, histories = [], []
    by_index = {}
    for result in results:
        by_index[int(result.config["trial"])] = result
    for trial in plan.trials:
        result = by_index.get(trial.index)
        row = {"trial": trial.index, **{k: v[trial.index] for k, v in swept.items()}, "seed": trial.seed}
        frame = None if result is None else result.metrics_dataframe
        error = None if result is None else result.error
        if frame is not None and not frame.empty and OBJECTIVE_METRIC in frame:
            frame = frame.drop_duplicates(ITERATION_METRIC, keep="last").sort_values(ITERATION_METRIC)
            last = frame.iloc[-1]
            objective = frame[OBJECTIVE_METRIC].to_numpy(dtype=np.float64)
            row.update(iterations=int(last[ITERATION_METRIC]), final_objective=float(objective[-1]),
                       best_objective=float(objective[np.argmin(sign * objective)]),
                       stopped_early=bool(error is None and int(last[ITERATION_METRIC]) < plan.max_t),
                       reports=len(frame), wall_time_s=float(last["wall_time_s"]), device=str(last["device"]))
            row.update({f"final_{c}": float(last[c]) if c in last else math.nan for c in component_names})
            history = pd.DataFrame({"trial": trial.index, "iteration": frame[ITERATION_METRIC].astype(np.int64),
                                    "objective": objective,
                                    **{c: frame[c].astype(np.float64) for c in component_names if c in frame},
                                    "wall_time_s": frame["wall_time_s"].astype(np.float64),
                                    "resumed_from": frame["resumed_from"].astype(np.int64)})
            histories.append(history)
        else:
            row.update(iterations=0, final_objective=math.nan, best_objective=math.nan, stopped_early=False,
                       reports=0, wall_time_s=math.nan, device="")
            row.update({f"final_{c}": math.nan for c in component_names})
        row["error"] = "" if error is None else f"{type(error).__name__}: {error}"[:2000]
        rows.append(row)
    trials = pd.DataFrame(rows)
    history = pd.concat(histories, ignore_index=True) if histories else pd.DataFrame(
        {"trial": pd.Series(dtype=np.int64), "iteration": pd.Series(dtype=np.int64),
         "objective": pd.Series(dtype=np.float64)})
    return trials, history


def best_trial(plan: TunePlan, trials: pd.DataFrame) -> int:
    """Index of the best trial: best final objective among trials that ran the full budget
    (all finished trials if none did). Raises RuntimeError when no trial reported."""
    ok = trials[(trials.error == "") & trials.final_objective.notna()]
    if ok.empty:
        raise RuntimeError("no trial reported an objective; see the errors in trials.parquet and ray_results/")
    full = ok[ok.iterations >= plan.max_t]
    pool = full if not full.empty else ok
    values = pool.final_objective.to_numpy()
    position = int(np.argmin(values) if plan.mode == "min" else np.argmax(values))
    return int(pool.trial.iloc[position])


def best_config_dict(plan: TunePlan, index: int) -> dict:
    """The base config (all its methods and temperatures) with trial ``index``'s values
    applied and ``tune`` removed, validated."""
    base = plan.config.to_dict()
    base.pop("tune", None)
    return _apply(base, plan.trials[index].overrides, plan.config.name).to_dict()


def write_outputs(plan: TunePlan, trials: pd.DataFrame, history: pd.DataFrame, source: str) -> int:
    """Write trials.parquet, history.parquet and best.yaml (atomically); returns the best index."""
    metadata = provenance_metadata(plan.config.to_dict(), plan.config.seed,
                                   extra={"objective": plan.objective, "mode": plan.mode,
                                          "method": plan.settings.method, "beta": plan.beta,
                                          "space": canonical_json({e.key: {e.kind: list(e.values)}
                                                                   for e in plan.settings.space})})
    # JS divergences in nats, FES RMSEs in k_BT; the objective columns in the objective's unit
    # (coverage_ess, a fraction, has none)
    component_units = {"js_cv": "nat", "fes_rmse": "kT"}
    units = {f"{prefix}{name}": unit for name, unit in component_units.items() for prefix in ("", "final_")}
    if plan.objective in component_units:
        units |= dict.fromkeys(("objective", "final_objective", "best_objective"), component_units[plan.objective])
    write_parquet(trials, plan.out_dir / "trials.parquet", metadata, units)
    write_parquet(history, plan.out_dir / "history.parquet", metadata, units)
    index = best_trial(plan, trials)
    row = trials.set_index("trial").loc[index]
    header = (f"# Best trial {index} of `metadns tune {source}` ({len(trials)} trials, ASHA): {plan.objective} = "
              f"{row.final_objective:.6g} ({plan.mode}imised) for {plan.settings.method} at beta = {plan.beta:.6g}\n"
              f"# after {int(row.iterations)} outer iterations; trial seed {int(row.seed)} "
              f"(`metadns run` derives its own seeds from `seed`).\n"
              f"# Swept: {', '.join(f'{k} = {v!r}' for k, v in plan.trials[index].overrides.items())}\n")
    text = yaml.safe_dump(best_config_dict(plan, index), sort_keys=False, default_flow_style=False, allow_unicode=True)
    atomic_write_text(plan.out_dir / "best.yaml", header + text)
    return index


def print_trials(plan: TunePlan, trials: pd.DataFrame, best: int) -> None:
    keys = [e.key for e in plan.settings.space]
    columns = ["trial", *keys, "iterations", "stopped_early", "final_objective", "best_objective", "wall_time_s"]
    table = trials[columns].sort_values("final_objective", ascending=plan.mode == "min", na_position="last")
    with pd.option_context("display.max_columns", None, "display.width", 200, "display.float_format", "{:.4g}".format):
        print(f"objective: {plan.objective} ({plan.mode}imised), {plan.settings.method} at beta = {plan.beta:.6g}")
        print(table.to_string(index=False))
    print(f"best trial: {best}; config written to {plan.out_dir / 'best.yaml'}")


def check_same_sweep(plan: TunePlan) -> None:
    """Raise TuneFolderExists unless the tune folder's config.yaml is the plan's config (same
    config_hash), naming the keys that differ."""
    saved = plan.out_dir / SWEEP_CONFIG
    if not saved.is_file():
        raise TuneFolderExists(f"cannot resume {plan.out_dir}: it holds no {SWEEP_CONFIG} (written when a sweep "
                               "starts), so it cannot be checked to be this sweep; remove it or choose another --out")
    try:
        stored = config_from_dict(yaml.safe_load(saved.read_text())).to_dict()
    except ConfigError:
        stored = {}
    wanted = plan.config.to_dict()
    if config_hash(stored) == config_hash(wanted):
        return
    from pipeline.campaign_report import flatten_config  # noqa: PLC0415 - only for this message

    old, new = flatten_config(stored), flatten_config(wanted)
    changed = sorted(key for key in old.keys() | new.keys() if old.get(key) != new.get(key))
    raise TuneFolderExists(f"cannot resume {plan.out_dir}: it holds another sweep (config hash "
                           f"{config_hash(stored)}, this one {config_hash(wanted)}; differing keys: "
                           f"{', '.join(changed)}); resume with the settings of its {SWEEP_CONFIG}, or choose "
                           "another --out")


def run_tune(plan: TunePlan, address: str | None = None, progress: bool = True, source: str = "",
             resume: bool = False) -> pd.DataFrame:
    """Run a planned sweep on Ray and write its outputs; returns the trials table.

    An existing tune folder is refused (TuneFolderExists) unless ``resume``; then it must hold
    the same sweep (:func:`check_same_sweep`), and Tune's saved experiment is continued:
    unfinished and errored trials from their last checkpoints, finished ones kept. A sweep that
    stops before every trial ended (SIGINT, SIGUSR1) saves its state and raises RunFailed."""
    if plan.out_dir.exists():
        if not resume:
            raise TuneFolderExists(f"{plan.out_dir} already exists; pass --resume to continue its sweep, or remove "
                                   "it or choose another --out")
        check_same_sweep(plan)
    from pipeline.distributed.session import ray_session  # noqa: PLC0415

    with ray_session(address):
        resources = trial_resources(plan)
        plan.out_dir.mkdir(parents=True, exist_ok=True)
        if not (plan.out_dir / SWEEP_CONFIG).exists():
            write_yaml(plan.out_dir / SWEEP_CONFIG, plan.config.to_dict())
        results = _ray_tune(plan, resources, progress)
        ended = _sweep_ended(plan)
    if not ended:
        raise RunFailed(f"the sweep stopped before all its trials ended; Tune saved its state, continue it with "
                        f"`metadns tune {source or 'CONFIG'} --out {plan.out_dir.parent.parent} --resume` (and "
                        "the same --set and --profile options)")
    trials, history = _collect(plan, results)
    best = write_outputs(plan, trials, history, source)
    print_trials(plan, trials, best)
    return trials


def tune_command(config_path: str | Path, out: str | Path = "runs", overrides: Sequence[str] = (),
                 profile: str | None = None, address: str | None = None, progress: bool = True,
                 resume: bool = False) -> int:
    """``metadns tune``: returns 0.  An invalid config, or an existing tune folder without
    ``resume`` or holding another sweep, raise a SetupError before anything is written
    (``metadns`` exits 2); a failure or an interruption during the sweep propagates (exit 1)."""
    with setup_errors(FileNotFoundError):
        config = load_config(config_path, overrides, profile=profile)
        plan = plan_tune(config, out)
    run_tune(plan, address, progress, source=str(config_path), resume=resume)
    return 0
