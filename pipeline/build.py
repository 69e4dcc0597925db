"""The composition root: a validated Config → the objects of one run.

Every caller builds through here — the runner, Tune trials, walker and evaluator actors —
so "where is X built?" has one answer: the system (systems/registry.py), the bias on the
system's CV, the sampler of ``sampler.family`` (pipeline/registry.py), trainers and walkers,
and the per-run config and seeds.  :func:`check_buildable` is the build stage of validation:
it may import torch but never needs the run's device.
"""

from __future__ import annotations

import hashlib

import torch

from pipeline.bias import WellTemperedGridBias
from pipeline.config import Config, ConfigError, RunSpec, expand_runs, validate_bias_grid
from pipeline.devices import check_energy_device, choose_device
from pipeline.registry import METHODS, SAMPLER_FAMILIES
from pipeline.training import DualLoopTrainer
from systems.parameters import ParameterError
from systems.registry import ENERGY_BACKENDS, SYSTEMS, make_system

__all__ = ["build_system", "energy_device", "energy_on_cuda", "build_bias", "build_sampler", "build_trainer", "build_walker",
           "restrict_to_run", "derive_seed", "walker_seed", "check_buildable", "check_sampler"]


def energy_device(config: Config) -> str | None:
    """The ``system.energy.device`` of the configured backend (e.g. MACE's "cuda"), or None
    when the system has no energy backend or the backend takes no device."""
    energy = config.system.params.get("energy")
    if not isinstance(energy, dict) or "name" not in energy:
        return None
    if "device" not in ENERGY_BACKENDS[energy["name"]].parameter_names:
        return None
    return str(energy.get("device", ENERGY_BACKENDS[energy["name"]].parameter("device").default))


def energy_on_cuda(config: Config) -> bool:
    """True when the configured energy backend runs on a CUDA device (``system.energy.device``)."""
    return (energy_device(config) or "cpu").startswith("cuda")


def build_system(config: Config, energy_on_cpu: bool = False):
    """The configured system; a rejected parameter becomes a ConfigError naming its key.

    ``energy_on_cpu``: build the energy backend on the CPU whatever its ``device`` (validation
    on a machine that is not the run's, e.g. a login node without GPUs)."""
    params = config.system.system_params()
    backend_device = energy_device(config)
    if energy_on_cpu and backend_device is not None:
        params["energy"]["device"] = "cpu"
    elif backend_device is not None:
        check_energy_device(backend_device)
    try:
        return make_system(config.system.name, **params)
    except ParameterError as error:
        raise ConfigError(f"system.{error.parameter}", error.message) from error
    except (ValueError, FileNotFoundError) as error:
        message = str(error)
        key = next((k for k in params if message.startswith(k) or f" {k} " in message), None)
        if key is None:  # backend problems (model files, calculators) belong to the backend's key
            key = next((p.name for p in SYSTEMS[config.system.name].parameters if p.kind == "registry"), None)
        raise ConfigError(f"system.{key}" if key else "system", message) from error


def build_bias(config: Config, system, beta: float, hills_per_cycle: int) -> WellTemperedGridBias:
    """Grid bias for this run on the system's CV: h0 = height_per_cycle·kT / hills_per_cycle
    (docs/method.md §3); with ``bias.edge_correction`` on the system's attainable nodes when it
    names them (an irregular 2-D domain)."""
    grid = validate_bias_grid(config, system.cv_spec)
    kT = 1.0 / beta
    try:
        bias = WellTemperedGridBias(grid.lower, grid.upper, grid.grid_points, grid.sigma, config.bias.gamma,
                                    kT, config.bias.hill_height(kT, hills_per_cycle),
                                    cv_spacing=system.cv_spec.spacing, edge_correction=config.bias.edge_correction)
        attainable = system.attainable_cv() if config.bias.edge_correction else None
        if attainable is None:
            return bias
        return WellTemperedGridBias(**{**bias.settings, "attainable_nodes": bias.flat_node_index(attainable)})
    except ValueError as error:
        raise ConfigError("bias.grid_points", str(error)) from error


def build_sampler(config: Config, system):
    """The sampler of ``sampler.family`` with its options, on the CPU (moved by build_trainer)."""
    family = SAMPLER_FAMILIES[config.sampler.family]
    try:
        return family.load()(system, dict(config.sampler.options), config.training)
    except ParameterError as error:
        raise ConfigError(f"sampler.{error.parameter}", error.message) from error


def build_trainer(config: Config, spec: RunSpec, system, seed: int, energy_fn, bias,
                  device: torch.device | None = None) -> DualLoopTrainer:
    """One trainer of a run: its sampler initialised from ``seed`` (all later randomness comes
    from its generator, seeded with ``seed`` too), training towards π_V with ``bias`` on
    ``device`` (None: :func:`pipeline.devices.choose_device` of ``training.device`` here).
    Parameters are initialised on the CPU, so they do not depend on the device."""
    if device is None:
        device = choose_device(config.training.device).device
    torch.manual_seed(seed)  # parameter initialisation only; all sampling uses explicit generators
    sampler = build_sampler(config, system).to(device)
    return DualLoopTrainer(system, sampler, spec.beta, config.training, bias=bias, seed=seed,
                           warmstart=METHODS[spec.method].traits["warmstart"], energy_fn=energy_fn)


def walker_seed(run_seed: int, index: int) -> int:
    """Seed of walker ``index`` of a multiple-walker run."""
    return derive_seed(run_seed, f"walker{index}")


def build_walker(config: Config, spec: RunSpec, system, run_seed: int, index: int, energy_fn,
                 device: torch.device | None = None) -> DualLoopTrainer:
    """Walker ``index`` of a multiple-walker run: its own seed and its own copy of the bias
    (which the MultiWalkerTrainer keeps equal to the shared one), on ``device`` (see build_trainer)."""
    bias = build_bias(config, system, spec.beta, config.training.batch_size) if METHODS[spec.method].traits["bias"] \
        else None
    return build_trainer(config, spec, system, walker_seed(run_seed, index), energy_fn, bias, device)


def restrict_to_run(config: Config, spec: RunSpec) -> dict:
    """The resolved config of one run: the campaign's config restricted to this run's method
    and temperature. ``metadns run`` on it (saved as the run's config.yaml) repeats the run
    (same name and run name, hence the same derived seed)."""
    resolved = config.to_dict()
    resolved.pop("tune", None)  # a search space describes a sweep, not one run
    resolved["methods"] = [spec.method]
    system = resolved["system"]
    key = "beta" if "beta" in system else "temperature"
    system[key] = [spec.beta if key == "beta" else spec.temperature]
    return resolved


def derive_seed(seed: int, run_name: str) -> int:
    """Independent, reproducible seed for one run of a campaign."""
    digest = hashlib.sha256(f"{seed}:{run_name}".encode()).digest()
    return int.from_bytes(digest[:6], "little")


def check_buildable(config: Config, check_device: bool = True):
    """The build stage of validation: the system, every run's bias and, for trained methods,
    the sampler can be built — all on the CPU, so validation never needs the run's device.
    ``check_device``: also refuse a ``training.device`` this process cannot serve
    (:func:`pipeline.devices.choose_device`; ``metadns run``); ``metadns submit`` validates for
    another machine and passes False.  Returns the system."""
    system = build_system(config, energy_on_cpu=True)
    runs = expand_runs(config)
    for spec in runs:
        build_bias(config, system, spec.beta, config.training.batch_size)
    if any(METHODS[spec.method].traits["trained"] for spec in runs):
        if check_device:
            choose_device(config.training.device)
        check_sampler(config, system)
    return system


def check_sampler(config: Config, system) -> None:
    """Build the sampler once on the CPU; a rejected option becomes a ConfigError naming it."""
    try:
        build_sampler(config, system)  # a rejected option (ParameterError) is a ConfigError already
    except ValueError as error:
        if isinstance(error, ConfigError):
            raise
        raise ConfigError("sampler", str(error)) from error
