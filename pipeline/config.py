"""Run configuration: YAML files with dotted overrides, validated into frozen dataclasses.

A configuration file describes one *campaign*: a system, a list of temperatures and a list of
methods.  :func:`expand_runs` turns it into one :class:`RunSpec` per (method, temperature).

Example (every key except ``methods``, ``system.name``, ``system.L`` and one of
``system.beta`` / ``system.temperature`` is optional; defaults are listed in the dataclasses)::

    name: ising16            # default: the file's stem
    seed: 0
    methods: [metadns, mdns, sw]
    system: {name: ising, L: 16, beta: [0.28, 0.4407, 0.6]}
    bias: {gamma: 10, sigma: 0.05, height_per_cycle: 0.5}
    training: {outer_iterations: 500, batch_size: 128}

Units: lattice models measure energies in J and temperatures in J/k_B (k_B = 1), so
``beta = 1 / temperature``.  The bias ``sigma`` and grid bounds are in CV units, and
``height_per_cycle`` is in k_BT per outer training cycle.

Overrides are ``"dotted.key=value"`` strings whose value is parsed with ``yaml.safe_load``
(``bias.gamma=5``, ``system.beta=[0.3,0.6]``, ``methods=metadns``).  Overriding one of
``system.beta`` / ``system.temperature`` drops the other one coming from the file.

Every problem raises :class:`ConfigError`, whose ``field`` is the dotted key at fault and whose
message says how to fix it; the checks of single values (numbers, choices, declared
registry options) are in :mod:`pipeline.config_values`.

Size: this module is longer than the project's ~400-line guide (about 950 lines) on
purpose: it holds the frozen dataclass and the parser of every section side by side, the
YAML loading and the run expansion, so that the whole schema is read in one place.  The
``system.*`` and ``sampler.*`` options are not written here: they are declared by the
registries (systems.registry, pipeline.registry) and checked generically.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import itertools
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from pipeline.errors import ConfigError  # defined there, part of this module's interface
from pipeline.config_values import (check_bool, check_choice, check_float, check_int, describe,
                                     float_list, float_or_list, int_or_list, list_entry, parse_parameters,
                                     unknown_key_error)
from pipeline.registry import DEFAULT_SAMPLER_FAMILY, METHODS as METHOD_REGISTRY, SAMPLER_FAMILIES
from systems.registry import SYSTEMS

__all__ = [
    "METHODS",
    "SYSTEM_NAMES",
    "SECTION_KEYS",
    "TOP_LEVEL_KEYS",
    "ConfigError",
    "SystemConfig",
    "SamplerConfig",
    "BiasConfig",
    "TrainingConfig",
    "SamplingConfig",
    "ReferenceConfig",
    "DistributedConfig",
    "Config",
    "RunSpec",
    "BiasGrid",
    "load_config",
    "config_from_dict",
    "apply_overrides",
    "canonical_json",
    "config_hash",
    "expand_runs",
    "campaign_folder",
    "grid_points",
    "temperature_tag",
    "validate_bias_grid",
]

METHODS: tuple[str, ...] = tuple(METHOD_REGISTRY)
"""Method names accepted in ``methods`` (the registered methods, pipeline.registry)."""

SYSTEM_NAMES: tuple[str, ...] = tuple(SYSTEMS)
"""System names accepted in ``system.name`` (the registered systems, systems.registry)."""

INITIALISATIONS: tuple[str, ...] = ("none", "previous_temperature")
"""Values of ``training.initialise_from``."""
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")
"""Values of ``training.device``."""
WDCE_PRECISIONS: tuple[str, ...] = ("float32", "bf16")
"""Values of ``training.wdce_precision``."""
CHAIN_LOSSES: tuple[str, ...] = ("likelihood", "wdce")
"""Values of ``training.chain_loss`` (how ``metadns-mcmc`` trains its proposal)."""


# --------------------------------------------------------------------------------------------
# Dataclasses
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SystemConfig:
    """The physical system: ``name`` (a registered system, systems.registry.SYSTEMS), its
    declared parameters ``params`` (validated, defaults filled in) and exactly one of
    ``beta`` / ``temperature`` (a tuple, > 0).

    Temperatures are in the system's temperature unit (J/k_B for the lattice models, k_B = 1;
    kelvin for alloys, k_B in eV/K), beta in 1/energy unit.
    """

    name: str
    params: dict[str, Any]
    beta: tuple[float, ...] | None = None
    temperature: tuple[float, ...] | None = None

    @property
    def boltzmann_constant(self) -> float:
        """k_B in energy unit per temperature unit (the system's registry trait)."""
        return SYSTEMS[self.name].traits["boltzmann_constant"]

    def has_trait(self, trait: str) -> bool:
        """Whether the registered system declares ``trait`` (e.g. ``chemical_potential``)."""
        return bool(SYSTEMS[self.name].traits.get(trait))

    @property
    def betas(self) -> tuple[float, ...]:
        """Inverse temperatures 1/(k_B T), in 1/energy unit, in the order given."""
        if self.beta is not None:
            return self.beta
        return tuple(1.0 / (self.boltzmann_constant * t) for t in self.temperature)

    @property
    def temperatures(self) -> tuple[float, ...]:
        """Temperatures 1/(k_B β), in the system's temperature unit, in the order given."""
        if self.temperature is not None:
            return self.temperature
        return tuple(1.0 / (self.boltzmann_constant * b) for b in self.beta)

    def system_params(self) -> dict[str, Any]:
        """Keyword parameters of the system's factory (a copy)."""
        return copy.deepcopy(self.params)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, **copy.deepcopy(self.params)}
        if self.beta is not None:
            out["beta"] = list(self.beta)
        else:
            out["temperature"] = list(self.temperature)
        return out


@dataclass(frozen=True)
class SamplerConfig:
    """The sampler: ``family`` (a name of pipeline.registry.SAMPLER_FAMILIES) and that
    family's options, validated and with defaults filled in (each family declares its own;
    e.g. masked_diffusion: denoiser, sites_per_step, schedule, hidden, layers, heads).
    In YAML the options sit beside ``family``: ``sampler: {family: autoregressive, hidden: 4}``."""

    family: str = DEFAULT_SAMPLER_FAMILY
    options: Mapping[str, Any] = dataclasses.field(
        default_factory=lambda: SAMPLER_FAMILIES[DEFAULT_SAMPLER_FAMILY].defaults())

    def to_dict(self) -> dict[str, Any]:
        return {"family": self.family, **_plain(dict(self.options))}


@dataclass(frozen=True)
class BiasConfig:
    """Well-tempered grid bias.

    ``gamma`` > 1 is the bias factor (ΔT = (γ−1)T); ``sigma`` the Gaussian width in CV units
    (scalar or per CV dimension); ``height_per_cycle`` the hill height summed over one outer
    cycle, in k_BT (per hill h0 = height_per_cycle·kT / batch_size, see :meth:`hill_height`).
    ``grid_points`` / ``grid_min`` / ``grid_max``: ``None`` means aligned to the CV's attainable
    values and spanning the CV range; scalars apply to every dimension; lists give one value per
    dimension (checked against the CV by :func:`validate_bias_grid`). ``edge_correction``
    reflects hills at the CV edges (or, on an irregular 2-D domain the system names, scales
    them on its attainable nodes), so that the bias F is exact at the edges (pipeline/bias.py).
    """

    gamma: float = 10.0
    sigma: float | tuple[float, ...] = 0.05
    height_per_cycle: float = 0.5
    grid_points: int | tuple[int, ...] | None = None
    grid_min: float | tuple[float, ...] | None = None
    grid_max: float | tuple[float, ...] | None = None
    edge_correction: bool = True

    def hill_height(self, kT: float, hills_per_cycle: int) -> float:
        """Initial height h0 of one hill in energy units: height_per_cycle·kT / hills_per_cycle."""
        if not kT > 0:
            raise ValueError(f"kT must be > 0, got {kT}")
        if int(hills_per_cycle) < 1:
            raise ValueError(f"hills_per_cycle must be >= 1, got {hills_per_cycle}")
        return self.height_per_cycle * kT / int(hills_per_cycle)


@dataclass(frozen=True)
class TrainingConfig:
    """Dual training loop (WDCE + bias deposition) and the warm-start baseline.

    One outer iteration draws ``batch_size`` fresh samples, deposits their hills and takes
    ``inner_steps`` gradient steps on them with ``maskings`` random maskings per sample.
    ``replay_buffer_size`` 0 disables the buffer; ``threads`` None uses all cores;
    ``checkpoint_every`` is in outer iterations.  ``initialise_from: previous_temperature``
    starts each neural run from the trained (EMA) sampler of the same method at the
    preceding temperature of the list (warm start along a temperature ladder; the bias
    starts empty, since it belongs to its temperature).  ``walkers`` > 1 trains that many
    samplers on one shared bias (multiple-walker MetaDNS; see MultiWalkerTrainer).
    ``device``: where the networks train and sample (``auto``: CUDA when usable, else CPU,
    said on the console and in summary.json; pipeline/devices.py); energies, CVs and weights
    stay on the CPU in float64.  ``deterministic``: torch's deterministic algorithms on CUDA
    (bitwise-repeatable GPU training, somewhat slower; CPU runs are repeatable without it).
    ``wdce_precision``: ``bf16`` runs the WDCE training forward/backward under bfloat16
    autocast (GPUs); generation and log q stay float32.
    ``temperature_reweighting_steps`` (``metadns-mcmc`` with ``initialise_from:
    previous_temperature``): rounds of maximum-likelihood training on the hotter rung's
    production states, resampled with weights that carry them to this temperature (TA-BG),
    before the first adaptive round; used only when the Kish ESS of those weights is at least
    ``temperature_reweighting_min_ess`` states, otherwise the run starts from the hotter
    sampler and chain states as they are. 0 turns the reweighting off.
    ``chain_loss`` (``metadns-mcmc``): what the sampler learns from in each adaptive round:
    ``likelihood``, maximum likelihood on the chain states (no energy evaluated), or ``wdce``,
    the MetaDNS loss on ``batch_size`` fresh draws weighted for π_V (their energies counted).
    """

    outer_iterations: int = 500
    batch_size: int = 128
    inner_steps: int = 10
    maskings: int = 16
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    ema_decay_max: float = 0.9999
    replay_buffer_size: int = 0
    warmstart_beta: float = 0.28
    warmstart_iterations: int = 200
    checkpoint_every: int = 1
    threads: int | None = None
    initialise_from: str = "none"
    walkers: int = 1
    device: str = "auto"
    deterministic: bool = False
    wdce_precision: str = "float32"
    temperature_reweighting_steps: int = 0
    temperature_reweighting_min_ess: float = 100.0
    chain_loss: str = "likelihood"


@dataclass(frozen=True)
class SamplingConfig:
    """Fresh samples from the trained model: how many, in batches of ``batch_size``, and
    whether an independence Metropolis–Hastings pass is also reported.

    ``delta_mu_grid`` (alloys only, eV): chemical-potential differences to which the run's
    samples are reweighted (observables and F(s) per Δμ). ``coverage_check_sweeps`` rounds of
    ``coverage_check_chains`` exact chains on the frozen bias check a biased trained run for a
    missed basin (pipeline/coverage_check.py); 0 sweeps turns the check off.
    """

    n_samples: int = 10000
    batch_size: int = 2000
    metropolis_hastings: bool = True
    delta_mu_grid: tuple[float, ...] = ()
    coverage_check_sweeps: int = 500
    coverage_check_chains: int = 32


@dataclass(frozen=True)
class ReferenceConfig:
    """MCMC references (sw, metropolis, mcmc-metad) and metadns-mcmc: parallel chains, sweeps
    (rounds) per chain, discarded burn-in sweeps (< sweeps), and sweeps between hills for
    mcmc-metad (each chain deposits one hill). metadns-mcmc only, its production kernel:
    ``local_sweeps`` sweeps of single-site moves per round (0: global moves only) and
    ``global_moves`` (False: local moves only); the adaptive phase always makes both."""

    chains: int = 64
    sweeps: int = 2000
    burn_in: int = 200
    deposit_every: int = 1
    local_sweeps: int = 1
    global_moves: bool = True


@dataclass(frozen=True)
class DistributedConfig:
    """How the Ray executor lays a run onto actors (results do not depend on it).

    ``evaluators``: energy-evaluator actors serving the runs of this config (0, the default:
    trainers compute energies in-process — right for cheap energies such as cluster
    expansions, which cost less than sending a configuration to another process; use ≥ 1
    for expensive backends such as MACE or ASE calculators); ``cpus_per_evaluator`` / ``cpus_per_run`` are Ray CPU
    requests (fractions allowed, so a 2-core machine never deadlocks); ``gpus_per_run``
    "auto" requests one GPU per trained sampler (each walker actor of a multiple-walker run;
    none for reference chains or a walkers' coordinator) when the cluster has GPUs and
    ``training.device`` is not cpu; a number is that request (fractions share a GPU);
    ``gpus_per_evaluator``: GPUs of each energy-evaluator actor (for backends with
    ``device: cuda``, e.g. MACE); ``max_batch`` caps the
    configurations per evaluator call (requests are split and coalesced to it);
    ``max_in_flight`` calls queued per evaluator before callers wait (back-pressure);
    ``run_retries``: how often a run lost to the cluster (its node or actor process died) is
    started again, from its last checkpoint, before the campaign fails.
    """

    evaluators: int = 0
    cpus_per_evaluator: float = 0.25
    cpus_per_run: float = 1.0
    gpus_per_run: float | str = "auto"
    gpus_per_evaluator: float = 0.0
    max_batch: int = 4096
    max_in_flight: int = 2
    run_retries: int = 2


@dataclass(frozen=True)
class Config:
    """A validated campaign configuration.  Build with :func:`load_config` or
    :func:`config_from_dict`; :meth:`to_dict` gives the fully resolved mapping."""

    name: str
    seed: int
    methods: tuple[str, ...]
    system: SystemConfig
    sampler: SamplerConfig = SamplerConfig()
    bias: BiasConfig = BiasConfig()
    training: TrainingConfig = TrainingConfig()
    sampling: SamplingConfig = SamplingConfig()
    reference: ReferenceConfig = ReferenceConfig()
    distributed: DistributedConfig = DistributedConfig()
    tune: dict | None = None  # validated by pipeline.distributed.tune (Ray Tune search space)
    grid: dict | None = None  # dotted key → list of values; see grid_points

    def to_dict(self) -> dict[str, Any]:
        """Fully resolved plain mapping (defaults filled, lists not tuples), YAML/JSON dumpable;
        ``config_from_dict(c.to_dict(), c.name) == c``."""
        out: dict[str, Any] = {"name": self.name, "seed": self.seed, "methods": list(self.methods)}
        out["system"] = self.system.to_dict()
        out["sampler"] = self.sampler.to_dict()
        for section in ("bias", "training", "sampling", "reference", "distributed"):
            out[section] = _plain(dataclasses.asdict(getattr(self, section)))
        if self.tune is not None:
            out["tune"] = _plain(copy.deepcopy(self.tune))
        if self.grid is not None:
            out["grid"] = _plain(copy.deepcopy(self.grid))
        return out


@dataclass(frozen=True)
class RunSpec:
    """One run of a campaign: a method at one temperature.

    ``beta`` in 1/energy unit, ``temperature`` in J/k_B (lattice models);
    ``run_name = f"{method}_{temperature_tag}"`` (see :func:`temperature_tag`).
    """

    method: str
    beta: float
    temperature: float
    temperature_tag: str
    run_name: str


@dataclass(frozen=True)
class BiasGrid:
    """Bias grid resolved against a CV (one entry per CV dimension, CV units)."""

    lower: tuple[float, ...]
    upper: tuple[float, ...]
    grid_points: tuple[int, ...]
    sigma: tuple[float, ...]


def _plain(value: Any) -> Any:
    """Tuples to lists, recursively, so the result is YAML/JSON friendly."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


# --------------------------------------------------------------------------------------------
# Value parsers: each takes (value, field) and returns the normalised value or raises
# --------------------------------------------------------------------------------------------

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")

# --------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------

_REQUIRED = object()

_SYSTEM_KEYS = ("name", *dict.fromkeys(name for entry in SYSTEMS.values() for name in entry.parameter_names),
                "beta", "temperature")
_SECTION_CLASSES = {
    "bias": BiasConfig,
    "training": TrainingConfig,
    "sampling": SamplingConfig,
    "reference": ReferenceConfig,
    "distributed": DistributedConfig,
}
SECTION_KEYS: dict[str, tuple[str, ...]] = {
    "system": _SYSTEM_KEYS,
    "sampler": ("family", *dict.fromkeys(name for entry in SAMPLER_FAMILIES.values() for name in entry.parameter_names)),
    **{name: tuple(f.name for f in dataclasses.fields(cls)) for name, cls in _SECTION_CLASSES.items()},
}
"""Valid keys of each section."""
TOP_LEVEL_KEYS: tuple[str, ...] = ("name", "seed", "methods", *SECTION_KEYS, "tune", "grid")
"""Valid top-level keys."""


def _section(raw: Mapping, section: str) -> dict:
    """The mapping of one section (empty if absent), with unknown keys rejected."""
    valid = SECTION_KEYS[section]
    value = raw.get(section)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(section, f"must be a mapping with keys among {', '.join(valid)}; got {describe(value)}")
    for key in value:
        if key not in valid:
            raise unknown_key_error(f"{section}.{key}", key, valid)
    return dict(value)


def _parse_system(raw: Mapping) -> SystemConfig:
    """``system``: a registered name, that system's declared parameters and the temperatures."""
    s = _section(raw, "system")
    if "name" not in s:
        raise ConfigError("system.name", f"is required: one of {', '.join(SYSTEM_NAMES)}")
    name = check_choice(s.pop("name"), "system.name", SYSTEM_NAMES)
    temperatures = {key: s.pop(key) for key in ("beta", "temperature") if key in s}
    entry = SYSTEMS[name]
    for key in s:
        if key not in entry.parameter_names:
            owners = [other for other, e in SYSTEMS.items() if key in e.parameter_names]
            raise ConfigError(f"system.{key}", f"{key} is a parameter of {', '.join(owners)}, not of {name}; remove it "
                                               f"(parameters of {name}: {', '.join(entry.parameter_names)})")
    params = parse_parameters(s, entry, "system", owner=f"system {name}")
    return _with_temperatures(temperatures, SystemConfig(name=name, params=params))


def _with_temperatures(s: Mapping, system: SystemConfig) -> SystemConfig:
    """``system`` with its ``beta`` or ``temperature`` list parsed from the section ``s``."""
    has_beta, has_temperature = s.get("beta") is not None, s.get("temperature") is not None
    if has_beta and has_temperature:
        raise ConfigError("system.beta", "give exactly one of system.beta and system.temperature, not both")
    if not (has_beta or has_temperature):
        example = SYSTEMS[system.name].traits["temperature_example"]
        raise ConfigError("system.beta", f"give exactly one of system.beta or system.temperature, e.g. {example}")
    key = "beta" if has_beta else "temperature"
    values = float_list(s[key], f"system.{key}", gt=0, example=f"`{key}: [0.28, 0.6]`")
    if len(set(values)) != len(values):
        raise ConfigError(f"system.{key}", f"values must be distinct, got {list(values)}; remove the repeats")
    return dataclasses.replace(system, beta=values if has_beta else None, temperature=None if has_beta else values)


def _parse_sampler(raw: Mapping) -> SamplerConfig:
    s = _section(raw, "sampler")
    family = check_choice(s.pop("family", DEFAULT_SAMPLER_FAMILY), "sampler.family", tuple(SAMPLER_FAMILIES))
    return SamplerConfig(family, parse_parameters(s, SAMPLER_FAMILIES[family], "sampler",
                                                  owner=f"sampler.family {family}"))


def _parse_bias(raw: Mapping) -> BiasConfig:
    s, d = _section(raw, "bias"), BiasConfig()
    bias = BiasConfig(
        gamma=check_float(s.get("gamma", d.gamma), "bias.gamma", gt=1, example="`gamma: 10`"),
        sigma=float_or_list(s.get("sigma", d.sigma), "bias.sigma", gt=0, example="`sigma: 0.05`"),
        height_per_cycle=check_float(
            s.get("height_per_cycle", d.height_per_cycle), "bias.height_per_cycle", gt=0,
            example="`height_per_cycle: 0.5`",
        ),
        grid_points=int_or_list(
            s.get("grid_points"), "bias.grid_points", ge=2, allow_none=True,
            example="`grid_points: null` (aligned to the CV) or `grid_points: 257`",
        ),
        grid_min=float_or_list(s.get("grid_min"), "bias.grid_min", allow_none=True, example="`grid_min: -1.0`"),
        grid_max=float_or_list(s.get("grid_max"), "bias.grid_max", allow_none=True, example="`grid_max: 1.0`"),
        edge_correction=check_bool(s.get("edge_correction", d.edge_correction), "bias.edge_correction"),
    )
    # Consistency that does not need the CV: list lengths agree, min < max.
    lengths = {
        key: len(getattr(bias, key))
        for key in ("sigma", "grid_points", "grid_min", "grid_max")
        if isinstance(getattr(bias, key), tuple)
    }
    if len(set(lengths.values())) > 1:
        raise ConfigError(
            "bias." + sorted(lengths)[-1],
            f"list-valued bias settings must have one entry per CV dimension; got lengths {lengths}",
        )
    if bias.grid_min is not None and bias.grid_max is not None:
        lo, hi = np.broadcast_arrays(np.atleast_1d(bias.grid_min), np.atleast_1d(bias.grid_max))
        if np.any(lo >= hi):
            raise ConfigError("bias.grid_max", f"must exceed bias.grid_min in every dimension ({bias.grid_min} vs {bias.grid_max})")
    return bias


def _parse_training(raw: Mapping) -> TrainingConfig:
    s, d = _section(raw, "training"), TrainingConfig()

    def get(key):
        return s.get(key, getattr(d, key))

    threads = get("threads")
    return TrainingConfig(
        outer_iterations=check_int(get("outer_iterations"), "training.outer_iterations", ge=1),
        batch_size=check_int(get("batch_size"), "training.batch_size", ge=1, example="`batch_size: 128`"),
        inner_steps=check_int(get("inner_steps"), "training.inner_steps", ge=1, example="`inner_steps: 10`"),
        maskings=check_int(get("maskings"), "training.maskings", ge=1, example="`maskings: 16`"),
        learning_rate=check_float(get("learning_rate"), "training.learning_rate", gt=0, example="`learning_rate: 1.0e-3`"),
        weight_decay=check_float(get("weight_decay"), "training.weight_decay", ge=0, example="`weight_decay: 0.0`"),
        ema_decay_max=check_float(get("ema_decay_max"), "training.ema_decay_max", ge=0, lt=1, example="`ema_decay_max: 0.9999`"),
        replay_buffer_size=check_int(get("replay_buffer_size"), "training.replay_buffer_size", ge=0, example="`replay_buffer_size: 0` (off)"),
        warmstart_beta=check_float(get("warmstart_beta"), "training.warmstart_beta", gt=0, example="`warmstart_beta: 0.28`"),
        warmstart_iterations=check_int(get("warmstart_iterations"), "training.warmstart_iterations", ge=0),
        checkpoint_every=check_int(get("checkpoint_every"), "training.checkpoint_every", ge=1),
        threads=None if threads is None else check_int(threads, "training.threads", ge=1, example="`threads: null` (all cores) or `threads: 4`"),
        initialise_from=check_choice(get("initialise_from"), "training.initialise_from", INITIALISATIONS),
        walkers=check_int(get("walkers"), "training.walkers", ge=1, example="`walkers: 4`"),
        device=check_choice(get("device"), "training.device", DEVICES),
        deterministic=check_bool(get("deterministic"), "training.deterministic"),
        wdce_precision=check_choice(get("wdce_precision"), "training.wdce_precision", WDCE_PRECISIONS),
        temperature_reweighting_steps=check_int(get("temperature_reweighting_steps"),
                                                "training.temperature_reweighting_steps", ge=0,
                                                example="`temperature_reweighting_steps: 50` (0: off)"),
        temperature_reweighting_min_ess=check_float(get("temperature_reweighting_min_ess"),
                                                    "training.temperature_reweighting_min_ess", gt=0,
                                                    example="`temperature_reweighting_min_ess: 100`"),
        chain_loss=check_choice(get("chain_loss"), "training.chain_loss", CHAIN_LOSSES),
    )


def _parse_sampling(raw: Mapping) -> SamplingConfig:
    s, d = _section(raw, "sampling"), SamplingConfig()
    return SamplingConfig(
        n_samples=check_int(s.get("n_samples", d.n_samples), "sampling.n_samples", ge=2, example="`n_samples: 10000`"),
        batch_size=check_int(s.get("batch_size", d.batch_size), "sampling.batch_size", ge=1, example="`batch_size: 2000`"),
        metropolis_hastings=check_bool(s.get("metropolis_hastings", d.metropolis_hastings), "sampling.metropolis_hastings"),
        delta_mu_grid=_delta_mu_grid(s.get("delta_mu_grid", d.delta_mu_grid)),
        coverage_check_sweeps=check_int(s.get("coverage_check_sweeps", d.coverage_check_sweeps),
                                        "sampling.coverage_check_sweeps", ge=0,
                                        example="`coverage_check_sweeps: 500` (0 turns the check off)"),
        coverage_check_chains=check_int(s.get("coverage_check_chains", d.coverage_check_chains),
                                        "sampling.coverage_check_chains", ge=2, example="`coverage_check_chains: 32`"),
    )


def _delta_mu_grid(value: Any) -> tuple[float, ...]:
    if value is None or (isinstance(value, (list, tuple)) and not value):
        return ()
    if isinstance(value, (list, tuple)):
        values = tuple(check_float(v, "sampling.delta_mu_grid", example="`delta_mu_grid: [-0.1, 0.0, 0.1]` (eV)")
                       for v in value)
    else:
        values = (check_float(value, "sampling.delta_mu_grid", example="`delta_mu_grid: [-0.1, 0.0, 0.1]` (eV)"),)
    if len(set(values)) != len(values):
        raise ConfigError("sampling.delta_mu_grid", f"values must be distinct, got {list(values)}")
    return tuple(sorted(values))


def _parse_reference(raw: Mapping) -> ReferenceConfig:
    s, d = _section(raw, "reference"), ReferenceConfig()
    reference = ReferenceConfig(
        chains=check_int(s.get("chains", d.chains), "reference.chains", ge=1, example="`chains: 64`"),
        sweeps=check_int(s.get("sweeps", d.sweeps), "reference.sweeps", ge=1, example="`sweeps: 2000`"),
        burn_in=check_int(s.get("burn_in", d.burn_in), "reference.burn_in", ge=0, example="`burn_in: 200`"),
        deposit_every=check_int(s.get("deposit_every", d.deposit_every), "reference.deposit_every", ge=1),
        local_sweeps=check_int(s.get("local_sweeps", d.local_sweeps), "reference.local_sweeps", ge=0),
        global_moves=check_bool(s.get("global_moves", d.global_moves), "reference.global_moves"),
    )
    if reference.local_sweeps == 0 and not reference.global_moves:
        raise ConfigError("reference.global_moves",
                          "with reference.local_sweeps: 0 the chains would never move; keep global_moves: true "
                          "or give local_sweeps >= 1")
    if reference.sweeps - reference.burn_in < 2:
        raise ConfigError(
            "reference.burn_in",
            f"must leave at least 2 recorded sweeps (reference.sweeps={reference.sweeps}, "
            f"burn_in={reference.burn_in}); lower burn_in or raise sweeps",
        )
    return reference


def _parse_distributed(raw: Mapping) -> DistributedConfig:
    s, d = _section(raw, "distributed"), DistributedConfig()
    gpus = s.get("gpus_per_run", d.gpus_per_run)
    if gpus != "auto":
        gpus = check_float(gpus, "distributed.gpus_per_run", ge=0, example="`gpus_per_run: auto` (or 0, 0.5, 1)")
    return DistributedConfig(
        evaluators=check_int(s.get("evaluators", d.evaluators), "distributed.evaluators", ge=0, example="`evaluators: 2`"),
        cpus_per_evaluator=check_float(s.get("cpus_per_evaluator", d.cpus_per_evaluator),
                                  "distributed.cpus_per_evaluator", gt=0, example="`cpus_per_evaluator: 0.25`"),
        cpus_per_run=check_float(s.get("cpus_per_run", d.cpus_per_run), "distributed.cpus_per_run", gt=0,
                            example="`cpus_per_run: 1`"),
        gpus_per_run=gpus,
        gpus_per_evaluator=check_float(s.get("gpus_per_evaluator", d.gpus_per_evaluator), "distributed.gpus_per_evaluator",
                                       ge=0, example="`gpus_per_evaluator: 0.25` (or 0, 1)"),
        max_batch=check_int(s.get("max_batch", d.max_batch), "distributed.max_batch", ge=1, example="`max_batch: 4096`"),
        max_in_flight=check_int(s.get("max_in_flight", d.max_in_flight), "distributed.max_in_flight", ge=1,
                           example="`max_in_flight: 2`"),
        run_retries=check_int(s.get("run_retries", d.run_retries), "distributed.run_retries", ge=0,
                              example="`run_retries: 2`"),
    )


def _parse_tune(raw: Mapping) -> dict | None:
    """The ``tune`` section as a plain mapping (its keys are checked by the tune command)."""
    value = raw.get("tune")
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise ConfigError("tune", f"must be a mapping (search space and scheduler settings); got {describe(value)}")
    return copy.deepcopy(dict(value))


def _parse_grid(raw: Mapping) -> dict | None:
    """The ``grid`` section: dotted config key → non-empty list of values (checked per point)."""
    value = raw.get("grid")
    if value is None:
        return None
    example = "e.g. `grid: {system.delta_mu: [-0.1, 0.0, 0.1]}`"
    if not isinstance(value, Mapping) or not value:
        raise ConfigError("grid", f"must map dotted config keys to lists of values, {example}; got {describe(value)}")
    for key, values in value.items():
        if not isinstance(key, str) or key.split(".")[0] in ("name", "seed", "grid", "tune", "profiles"):
            raise ConfigError(f"grid.{key}", "cannot be swept: grid keys are config keys such as "
                                             "system.delta_mu or bias.sigma (a point's name and seed come from the file)")
        if not isinstance(values, (list, tuple)) or not values:
            raise ConfigError(f"grid.{key}", f"must be a non-empty list of values, {example}; got {describe(values)}")
    return copy.deepcopy(dict(value))


def _grid_value_tag(value: Any, index: int) -> str:
    """Folder-safe text of one grid value: numbers and simple strings as written, else its index."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return np.format_float_positional(value, unique=True, trim="-")
    if isinstance(value, str) and _NAME.match(value):
        return value
    return f"v{index}"


def _grid_point_dicts(raw: Mapping, grid: Mapping) -> list[tuple[str, dict]]:
    """(tag, raw config) per point of the product of the grid's lists, first key outermost.

    Tags are ``key=value`` joined by ``,`` with the key's last part (its full dotted form
    when two keys share a last part), e.g. ``delta_mu=-0.05``.  Raises ConfigError naming
    ``grid.<key>`` when a point is not a valid configuration.
    """
    base = {k: v for k, v in raw.items() if k != "grid"}
    keys = list(grid)
    last_parts = [k.split(".")[-1] for k in keys]
    labels = [part if last_parts.count(part) == 1 else key for key, part in zip(keys, last_parts)]
    points: list[tuple[str, dict]] = []
    for combination in itertools.product(*(list(enumerate(grid[k])) for k in keys)):
        overrides, tags = [], []
        for key, label, (index, value) in zip(keys, labels, combination):
            overrides.append(f"{key}={json.dumps(_plain(value))}")
            tags.append(f"{label}={_grid_value_tag(value, index)}")
        tag = ",".join(tags)
        try:
            point = apply_overrides(base, overrides)
            config_from_dict(point, name=str(raw.get("name", "grid")))
        except ConfigError as error:
            key = next((k for k in keys if error.field == k or error.field.startswith(k + ".")), error.field)
            raise ConfigError(f"grid.{key}", f"point {tag}: {error.message}") from None
        points.append((tag, point))
    if len({tag for tag, _ in points}) != len(points):
        raise ConfigError("grid", "two points get the same folder name; give distinct values")
    return points


def grid_points(config: Config) -> list[tuple[str, Config]]:
    """The configurations a file describes: ``[("", config)]`` without a ``grid``, else one
    ``(tag, config)`` per grid point (see :func:`_grid_point_dicts`); each point's runs go to
    ``OUT/<name>/<tag>/``."""
    if config.grid is None:
        return [("", config)]
    return [(tag, config_from_dict(point, name=config.name))
            for tag, point in _grid_point_dicts(config.to_dict(), config.grid)]


def _parse_methods(raw: Mapping) -> tuple[str, ...]:
    if raw.get("methods") is None:
        raise ConfigError("methods", f"is required: a list among {', '.join(METHODS)}, e.g. `methods: [metadns, sw]`")
    value = raw["methods"]
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not items:
        raise ConfigError("methods", f"must be a method name or a non-empty list among {', '.join(METHODS)}")
    methods = tuple(list_entry(check_choice, m, i, "methods", METHODS) for i, m in enumerate(items))
    if len(set(methods)) != len(methods):
        raise ConfigError("methods", f"lists a method twice ({list(methods)}); remove the repeat")
    return methods


def config_from_dict(d: Mapping[str, Any], name: str | None = None) -> Config:
    """Validate a raw mapping (as read from YAML) into a :class:`Config`.

    ``name`` is used when ``d`` has no ``name`` key.  Raises :class:`ConfigError`.
    """
    if not isinstance(d, Mapping):
        raise ConfigError("", f"a configuration must be a mapping of {', '.join(TOP_LEVEL_KEYS)}; got {describe(d)}")
    for key in d:
        if key not in TOP_LEVEL_KEYS:
            raise unknown_key_error(str(key), key, TOP_LEVEL_KEYS)
    run_name = d.get("name", name)
    if run_name is None:
        raise ConfigError("name", "is required when the configuration does not come from a file, e.g. `name: ising16`")
    if not isinstance(run_name, str) or not _NAME.match(run_name):
        raise ConfigError(
            "name",
            f"must be a non-empty string of letters, digits, '.', '_' or '-' (it names output folders); got {run_name!r}",
        )
    seed = check_int(d.get("seed", 0), "seed", ge=0, example="`seed: 0`")
    methods, system = _parse_methods(d), _parse_system(d)
    sampling = _parse_sampling(d)
    if sampling.delta_mu_grid and not system.has_trait("chemical_potential"):
        raise ConfigError("sampling.delta_mu_grid", f"Δμ reweighting applies to semi-grand-canonical systems "
                          f"({', '.join(SYSTEMS.with_trait('chemical_potential'))}) only; remove it for {system.name}")
    for method in methods:
        needed = METHOD_REGISTRY[method].traits.get("requires")
        if needed and not system.has_trait(needed):
            raise ConfigError("methods", f"{method} ({METHOD_REGISTRY[method].doc}) needs {needed.replace('_', ' ')}, "
                              f"which only {', '.join(SYSTEMS.with_trait(needed))} have, not {system.name}; use "
                              f"metropolis or mcmc-metad as the reference")
    training = _parse_training(d)
    if training.temperature_reweighting_steps and (
            "metadns-mcmc" not in methods or training.initialise_from != "previous_temperature"):
        raise ConfigError("training.temperature_reweighting_steps",
                          "reweights the hotter rung's chain states, so it needs `methods` to include metadns-mcmc "
                          "and `training.initialise_from: previous_temperature`; set it to 0 otherwise")
    grid = _parse_grid(d)
    if grid is not None:
        _grid_point_dicts(d, grid)  # every point must be a valid configuration
    return Config(
        name=run_name,
        seed=seed,
        methods=methods,
        system=system,
        sampler=_parse_sampler(d),
        bias=_parse_bias(d),
        training=training,
        sampling=sampling,
        reference=_parse_reference(d),
        distributed=_parse_distributed(d),
        tune=_parse_tune(d),
        grid=grid,
    )


# --------------------------------------------------------------------------------------------
# Loading and overrides
# --------------------------------------------------------------------------------------------


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys instead of keeping the last one."""


def _construct_mapping_no_duplicates(loader, node, deep=False):
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            mark = key_node.start_mark
            raise ConfigError(str(key), f"appears twice in the same mapping (line {mark.line + 1}); keep one")
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping_no_duplicates)


def apply_overrides(raw: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Return a deep copy of ``raw`` with ``"dotted.key=value"`` overrides applied.

    Keys must exist in the schema (top-level key or ``section.key``); values are parsed with
    ``yaml.safe_load``.  Setting ``system.beta`` removes a ``system.temperature`` coming from
    ``raw`` and vice versa.  Raises :class:`ConfigError` for malformed or unknown overrides.
    """
    if isinstance(overrides, str):
        raise ConfigError("", "overrides must be a list of 'dotted.key=value' strings, not one string")
    out = copy.deepcopy(dict(raw))
    overridden: set[str] = set()
    for override in overrides:
        if not isinstance(override, str) or "=" not in override:
            field = override.strip() if isinstance(override, str) else ""
            raise ConfigError(field, f"malformed override {override!r}: write it as 'dotted.key=value', e.g. 'bias.gamma=5'")
        key, text = override.split("=", 1)
        key = key.strip()
        parts = key.split(".")
        if not key or any(not p for p in parts):
            raise ConfigError(key, f"malformed override {override!r}: the key before '=' must be like 'bias.gamma'")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(key, f"override value {text!r} is not valid YAML ({exc.__class__.__name__}); quote or fix it") from None
        head = parts[0]
        if head not in TOP_LEVEL_KEYS:
            raise unknown_key_error(key, head, TOP_LEVEL_KEYS)
        if len(parts) == 1:
            out[head] = value
        elif head == "tune":
            out["tune"] = _override_tune(out.get("tune"), parts[1:], value, key)
        elif head not in SECTION_KEYS:
            raise ConfigError(key, f"{head!r} is not a section; override it as '{head}=value'")
        elif len(parts) > 2 or parts[1] not in SECTION_KEYS[head]:
            raise unknown_key_error(key, ".".join(parts[1:]), SECTION_KEYS[head])
        else:
            section = out.get(head)
            if section is None:
                section = {}
            elif not isinstance(section, Mapping):
                raise ConfigError(head, f"must be a mapping to take the override {override!r}; got {describe(section)}")
            section = dict(section)
            section[parts[1]] = value
            if head == "system" and parts[1] in ("beta", "temperature"):
                other = "temperature" if parts[1] == "beta" else "beta"
                if f"system.{other}" not in overridden:
                    section.pop(other, None)
            out[head] = section
        overridden.add(key)
    return out


def _override_tune(section: Any, keys: list[str], value: Any, key: str) -> dict:
    """``tune.<key>=value`` sets one key of the raw ``tune`` mapping and
    ``tune.space.<dotted config key>=value`` one search-space entry; their contents are
    validated by the tune command (pipeline.distributed.tune)."""
    if section is None:
        section = {}
    elif not isinstance(section, Mapping):
        raise ConfigError("tune", f"must be a mapping to take the override {key!r}; got {describe(section)}")
    section = copy.deepcopy(dict(section))
    if keys[0] == "space" and len(keys) > 1:
        space = section.get("space") or {}
        if not isinstance(space, Mapping):
            raise ConfigError("tune.space", f"must be a mapping to take the override {key!r}; got {describe(space)}")
        section["space"] = {**space, ".".join(keys[1:]): value}
    elif len(keys) == 1:
        section[keys[0]] = value
    else:
        raise ConfigError(key, "override the tune section as 'tune.<key>=value' or 'tune.space.<config key>=value'")
    return section


def load_config(path: str | Path, overrides: Sequence[str] = (), profile: str | None = None) -> Config:
    """Read a YAML configuration, apply a named profile and ``overrides`` and validate it.

    A file may hold ``profiles: {NAME: {dotted.key: value, ...}}`` (e.g. ``cpu`` and ``gpu``
    budgets of the same study); ``profile`` picks one, applied before ``overrides``
    ("dotted.key=value", applied last).  ``name`` defaults to the file's stem.  Raises
    :class:`ConfigError` (message includes the file) for invalid content, FileNotFoundError
    if the file is missing.
    """
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    try:
        try:
            raw = yaml.load(text, Loader=_StrictLoader)
        except yaml.YAMLError as exc:
            raise ConfigError("", f"not valid YAML: {exc}") from None
        if raw is None:
            raw = {}
        if not isinstance(raw, Mapping):
            raise ConfigError("", f"the file must hold a mapping of {', '.join(TOP_LEVEL_KEYS)}; got {describe(raw)}")
        raw = dict(raw)
        profiles = raw.pop("profiles", None) or {}
        profile_overrides = _profile_overrides(profiles, profile)
        return config_from_dict(apply_overrides(raw, [*profile_overrides, *overrides]), name=path.stem)
    except ConfigError as exc:
        raise ConfigError(exc.field, f"{exc.message} (while loading {path})") from None


def _profile_overrides(profiles: Any, profile: str | None) -> list[str]:
    """The chosen profile's entries as "dotted.key=<JSON value>" override strings."""
    if not isinstance(profiles, Mapping) or not all(isinstance(v, Mapping) for v in profiles.values()):
        raise ConfigError("profiles", "must map profile names to mappings of dotted keys, "
                                      "e.g. profiles: {cpu: {training.outer_iterations: 500}}")
    if profile is None:
        return []
    if profile not in profiles:
        available = ", ".join(map(str, profiles)) or "none defined in this file"
        raise ConfigError("profile", f"unknown profile {profile!r}; available: {available}")
    return [f"{key}={json.dumps(value)}" for key, value in profiles[profile].items()]


# --------------------------------------------------------------------------------------------
# Hashing, runs, bias grid
# --------------------------------------------------------------------------------------------


def canonical_json(d: Mapping[str, Any]) -> str:
    """Canonical JSON text (sorted keys, no spaces, shortest float repr) of a plain mapping."""
    return json.dumps(_plain(dict(d)), sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def config_hash(config: Config | Mapping[str, Any]) -> str:
    """First 16 hex characters of sha256 of the canonical JSON of ``config.to_dict()``.

    A mapping is hashed as given (pass ``to_dict()`` output).  Equal configurations (e.g.
    ``gamma: 10`` and ``gamma: 10.0``, or a default written out) share a hash; any change of
    a value, including ``name``, changes it.
    """
    d = config.to_dict() if isinstance(config, Config) else config
    return hashlib.sha256(canonical_json(d).encode("ascii")).hexdigest()[:16]


def temperature_tag(value: float, kind: str = "beta") -> str:
    """Filesystem-safe tag of a temperature: ``kind`` ("beta" or "T") then the value.

    The value is written with 4 decimals (``beta0.6000``, ``T2.2690``) when that is exact,
    otherwise as the shortest positional decimal that round-trips (``beta0.440686793509772``),
    so distinct values always get distinct tags and a value's tag never depends on the others.
    """
    if kind not in ("beta", "T"):
        raise ValueError(f"kind must be 'beta' or 'T', got {kind!r}")
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"value must be a finite number > 0, got {value!r}")
    fixed = f"{value:.4f}"
    if float(fixed) == value:
        return kind + fixed
    return kind + np.format_float_positional(value, unique=True, trim="-")


def campaign_folder(out_root: str | Path, name: str, point: str = "") -> Path:
    """Where a campaign's run folders go: ``out_root/<name>/[<point>/]`` (``point``: the grid-point tag)."""
    return Path(out_root) / name / point if point else Path(out_root) / name


def expand_runs(config: Config) -> list[RunSpec]:
    """One :class:`RunSpec` per (method, temperature): methods in the order given, each over
    the temperatures in the order given.  Tags use β when the config gives ``beta`` and
    T when it gives ``temperature`` (see :func:`temperature_tag`)."""
    system = config.system
    kind = "beta" if system.beta is not None else "T"
    given = system.beta if system.beta is not None else system.temperature
    runs = []
    for method in config.methods:
        for value, beta, temperature in zip(given, system.betas, system.temperatures):
            tag = temperature_tag(value, kind)
            runs.append(RunSpec(method, beta, temperature, tag, f"{method}_{tag}"))
    return runs


def _per_dim(value, dim: int, field: str, names: Sequence[str]) -> tuple | None:
    if value is None:
        return None
    if isinstance(value, tuple):
        if len(value) != dim:
            raise ConfigError(
                field,
                f"has {len(value)} entries but the CV has {dim} dimension(s) ({', '.join(names)}); "
                f"give one value per dimension or a single value",
            )
        return value
    return (value,) * dim


def validate_bias_grid(config: Config, cv_spec: Any, *, tolerance: float = 1e-9) -> BiasGrid:
    """Check the bias settings against a CV and return the resolved per-dimension grid.

    ``cv_spec`` needs ``.names``, ``.lower``, ``.upper``, ``.dim`` and optionally ``.spacing``
    (distance between attainable CV values).  A grid fits the CV when its nodes are the CV's
    attainable values and its range is the CV's range, so: list lengths of sigma /
    grid_points / grid_min / grid_max equal ``dim``; grid_min / grid_max, when given, equal
    the CV's lower / upper (within ``tolerance`` times the range); explicit ``grid_points``
    equal the aligned count round((upper − lower) / spacing) + 1, which ``grid_points: null``
    resolves to (a CV without spacing needs explicit grid_points).  The returned bounds are
    the CV's.  Raises :class:`ConfigError` naming the field.
    """
    bias = config.bias
    dim = int(cv_spec.dim)
    names = tuple(cv_spec.names)
    lower = tuple(float(v) for v in cv_spec.lower)
    upper = tuple(float(v) for v in cv_spec.upper)
    spacing = getattr(cv_spec, "spacing", None)
    spacing = None if spacing is None else tuple(float(v) for v in spacing)

    sigma = _per_dim(bias.sigma, dim, "bias.sigma", names)
    points = _per_dim(bias.grid_points, dim, "bias.grid_points", names)
    bounds = (("grid_min", "lower", bias.grid_min, lower), ("grid_max", "upper", bias.grid_max, upper))
    for key, end, value, cv_end in bounds:
        given = _per_dim(value, dim, f"bias.{key}", names)
        if given is None:
            continue
        for k in range(dim):
            if abs(given[k] - cv_end[k]) > tolerance * max(1.0, upper[k] - lower[k]):
                raise ConfigError(
                    f"bias.{key}",
                    f"{given[k]} is not the {end} end of CV {names[k]!r}, which ranges over [{lower[k]}, {upper[k]}]; "
                    f"the grid must span exactly the CV range: set {key}: {cv_end[k]} or leave it null",
                )

    resolved_points = []
    for k in range(dim):
        if spacing is None:
            if points is None:
                raise ConfigError(
                    "bias.grid_points", f"CV {names[k]!r} has no spacing to align to; give grid_points explicitly"
                )
            resolved_points.append(points[k])
            continue
        aligned = int(round((upper[k] - lower[k]) / spacing[k])) + 1
        if points is not None and points[k] != aligned:
            misfit = "several CV values would share a node" if points[k] < aligned else \
                "nodes would lie between the CV values"
            raise ConfigError(
                "bias.grid_points",
                f"{points[k]} nodes do not fit CV {names[k]!r}, which takes {aligned} values (spacing "
                f"{spacing[k]:.6g} over [{lower[k]}, {upper[k]}]): {misfit}; "
                f"use grid_points: null (aligned) or exactly {aligned}",
            )
        resolved_points.append(aligned)
    return BiasGrid(lower=lower, upper=upper, grid_points=tuple(resolved_points), sigma=sigma)
