"""Executing runs: one (method, temperature) of a config, and a campaign of them.

Layout written under ``OUT/<config name>/<method>_<temperature tag>/`` (README "Outputs"):
config.yaml, observables.parquet, fes.parquet, histograms.parquet, samples.parquet,
HILLS (biased methods), fes.png, cv_histogram.png, bias_growth.png (trained methods),
checkpoints/checkpoint.pt (trained methods), summary.json (written last: its presence
marks a finished run). Every file is written atomically.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import torch
import yaml

from pipeline import estimators as est
from pipeline import plots
from pipeline.bias import WellTemperedGridBias
from pipeline.config import (Config, ConfigError, RunSpec, config_from_dict, config_hash, expand_runs,
                             validate_bias_grid)
from pipeline.outputs import (atomic_write_bytes, atomic_write_text, fes_table, observables_table,
                              provenance_metadata, remove_stale_temporaries, samples_table, write_parquet, write_yaml)
from pipeline.references import ChainRecord, run_mcmc_metadynamics, run_metropolis, run_swendsen_wang
from pipeline.sampler import MaskedDiffusionSampler, build_denoiser
from pipeline.training import DualLoopTrainer, MultiWalkerTrainer, call_in_order
from systems.exact import iterate_states
from systems.registry import make_system

NEURAL_METHODS = ("metadns", "mdns", "mdns-warmstart")
UNBIASED_REFERENCES = ("sw", "metropolis")      # preferred reference for comparisons, in order
EXACT_ENUMERATION_LIMIT = 3 ** 16               # states (Potts q=3 4×4, Ising 5×5); up to it comparisons use exact values
LOW_ESS_FRACTION = 0.01
LOW_COVERAGE = 0.9


class RunFolderExists(Exception):
    """A run folder exists and --resume was not given."""


@dataclass
class Campaign:
    """All runs of one config (one grid point of it), in execution order (unbiased
    references first).  ``point`` is the grid-point tag ("" without a grid)."""

    config: Config
    root: Path
    runs: list[RunSpec]
    resume: bool
    point: str = ""
    extended: frozenset[str] = frozenset()   # finished runs to continue with a larger budget

    def seed_of(self, spec: RunSpec) -> int:
        """The run's seed: derived from the config seed, the grid point and the run name."""
        return derive_seed(self.config.seed, f"{self.point}/{spec.run_name}" if self.point else spec.run_name)

    def previous_temperature(self, spec: RunSpec) -> RunSpec | None:
        """The run of the same method at the preceding temperature of the config's list."""
        ladder = [r for r in expand_runs(self.config) if r.method == spec.method]
        index = next(i for i, r in enumerate(ladder) if r.run_name == spec.run_name)
        return ladder[index - 1] if index > 0 else None


@dataclass
class RunServices:
    """Where a run gets its energies and its bias.  The defaults compute both in-process; the
    Ray executor (pipeline/distributed) passes an energy-evaluator pool and a bias-server client.

    ``energy``: x int64 (B, D) → float64 (B,) in the system's energy unit (None: system.energy).
    ``make_bias``: turns the run's freshly built WellTemperedGridBias into the object the run
    deposits into and reads (same interface), e.g. a client of a bias-server actor.
    ``report_progress(trainer)``: called when training starts (after a resume, at the
    checkpoint's iteration) and after every outer iteration, e.g. to feed a driver's bars.
    ``make_walkers(ctx)``: the walkers of a multiple-walker run and the function that calls
    their methods (see MultiWalkerTrainer), e.g. trainer actors; None builds them here.
    """

    energy: Callable[[torch.Tensor], torch.Tensor] | None = None
    make_bias: Callable[[WellTemperedGridBias], WellTemperedGridBias] | None = None
    report_progress: Callable[[DualLoopTrainer], None] | None = None
    make_walkers: Callable[["RunContext"], tuple[list, Callable]] | None = None


@dataclass
class RunContext:
    config: Config
    spec: RunSpec
    system: object
    run_dir: Path
    seed: int
    metadata: dict
    progress: bool
    reference: "ReferenceData | None"
    services: RunServices = field(default_factory=RunServices)
    initial_sampler_from: Path | None = None   # finished run whose EMA sampler starts this one


@dataclass
class ReferenceData:
    """What comparisons are made against: exact enumeration or an unbiased chain run."""

    label: str
    cv_histogram: np.ndarray          # probabilities on the CV bins (flattened)
    energy_histogram: np.ndarray      # probabilities on the E/N bins
    fes_kT: np.ndarray                # F on the CV grid (NaN where unknown), min 0


@dataclass
class RunResult:
    """A finished run: its spec, folder and summary.json content; ``node`` names the Ray node
    that executed it ("" in-process; not written to disk)."""

    spec: RunSpec
    run_dir: Path
    summary: dict = field(default_factory=dict)
    node: str = ""


# ----------------------------------------------------------------------------- setup
def build_system(config: Config):
    """The configured system; a rejected parameter becomes a ConfigError naming its key."""
    try:
        return make_system(config.system.name, **config.system.system_params())
    except (ValueError, FileNotFoundError) as error:
        message = str(error)
        key = next((k for k in config.system.system_params() if message.startswith(k) or f" {k} " in message), None)
        if key is None and config.system.name == "alloy":
            key = "energy"  # backend problems: model files, calculators
        raise ConfigError(f"system.{key}" if key else "system", message) from error


def build_bias(config: Config, system, beta: float, hills_per_cycle: int) -> WellTemperedGridBias:
    """Grid bias for this run: h0 = height_per_cycle·kT / hills_per_cycle (ALGORITHM.md §3)."""
    grid = validate_bias_grid(config, system.cv_spec)
    kT = 1.0 / beta
    try:
        return WellTemperedGridBias(grid.lower, grid.upper, grid.grid_points, grid.sigma, config.bias.gamma,
                                    kT, config.bias.hill_height(kT, hills_per_cycle),
                                    cv_spacing=system.cv_spec.spacing)
    except ValueError as error:
        raise ConfigError("bias.grid_points", str(error)) from error


def build_sampler(config: Config, system) -> MaskedDiffusionSampler:
    s = config.sampler
    sizes = {"hidden": s.hidden, "layers": s.layers}
    if s.denoiser == "transformer":
        sizes["heads"] = s.heads
    denoiser = build_denoiser(s.denoiser, system, **sizes)
    return MaskedDiffusionSampler(denoiser, system.n_sites, system.n_states, sites_per_step=s.sites_per_step,
                                  schedule=s.schedule)


def run_config_dict(config: Config, spec: RunSpec) -> dict:
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


def prepare_campaign(config: Config, out_root: Path, resume: bool, point: str = "") -> Campaign:
    """Validate everything that can be checked before any file is written.

    Runs go to ``out_root/<config name>/[<point>/]<run name>``.  With ``resume``, an existing
    run folder must have been made with the same settings (its config.yaml equals this run's
    resolved config); otherwise RunFolderExists.
    """
    system = build_system(config)
    runs = expand_runs(config)
    for spec in runs:
        build_bias(config, system, spec.beta, config.training.batch_size)
    if any(spec.method in NEURAL_METHODS for spec in runs):
        training_device(config)  # a GPU asked for but not visible is a configuration error
        try:
            build_sampler(config, system)
        except ValueError as error:
            field = next((f"sampler.{key}" for key in ("sites_per_step", "heads", "hidden", "layers")
                          if key in str(error)), "sampler")
            raise ConfigError(field, str(error)) from error
    root = Path(out_root) / config.name / point if point else Path(out_root) / config.name
    existing = [spec for spec in runs if (root / spec.run_name).exists()]
    if existing and not resume:
        raise RunFolderExists(f"run folder(s) {', '.join(s.run_name for s in existing)} already exist under "
                              f"{root}; pass --resume to continue them or choose another --out")
    extended = set()
    for spec in existing:
        saved = root / spec.run_name / "config.yaml"
        if not saved.exists():
            continue
        change = _resume_change(yaml.safe_load(saved.read_text()), run_config_dict(config, spec), spec.method)
        if change == "different":
            raise RunFolderExists(f"cannot resume {root / spec.run_name}: it was made with other settings "
                                  f"(compare its config.yaml); use another --out or the original settings")
        if change == "shorter":
            raise RunFolderExists(f"cannot resume {root / spec.run_name} with fewer training.outer_iterations "
                                  "than it was made with (compare its config.yaml); a budget can only grow")
        if change == "extend":
            extended.add(spec.run_name)
    priority = {m: i for i, m in enumerate(UNBIASED_REFERENCES)}
    runs.sort(key=lambda r: priority.get(r.method, len(priority)))
    return Campaign(config, root, runs, resume, point, frozenset(extended))


# Settings a finished neural run can be continued with: more training iterations (from its last
# checkpoint, as if it had been given the larger budget from the start) or another number of
# final samples (drawn again from the same trained sampler).  Reference runs ignore both.
EXTENDABLE_SETTINGS = (("training", "outer_iterations"), ("sampling", "n_samples"))


def _resume_change(saved: dict, wanted: dict, method: str) -> str:
    """How the settings ``wanted`` for a run relate to those its folder was made with:
    "same", "extend" (only EXTENDABLE_SETTINGS differ and the budget does not shrink),
    "shorter" (fewer outer iterations, nothing else changed) or "different".  The saved
    config is read through the current schema, so keys added since (at their defaults) do not
    block a resume; how a run is laid onto Ray actors (``distributed``) does not change results."""
    try:
        saved = config_from_dict(saved).to_dict()
    except ConfigError:
        return "different"
    saved.pop("distributed", None)
    wanted = {k: dict(v) if isinstance(v, dict) else v for k, v in wanted.items() if k != "distributed"}
    shorter = method in NEURAL_METHODS and wanted["training"]["outer_iterations"] < saved["training"]["outer_iterations"]
    differs = False
    for section, key in EXTENDABLE_SETTINGS:
        differs |= wanted[section][key] != saved[section][key]
        wanted[section][key] = saved[section][key]
    if wanted != saved:
        return "different"
    if shorter:
        return "shorter"
    return "extend" if differs and method in NEURAL_METHODS else "same"


def run_campaign(campaign: Campaign, progress: bool = True) -> list[RunResult]:
    """Execute every run of the campaign in order; returns their summaries."""
    campaign.root.mkdir(parents=True, exist_ok=True)
    if campaign.config.training.threads is not None:
        torch.set_num_threads(campaign.config.training.threads)
    results = []
    for spec in campaign.runs:
        if progress:
            print(f"== {campaign.config.name}: {spec.run_name}", flush=True)
        results.append(execute_run(campaign, spec, progress))
    return results


def execute_run(campaign: Campaign, spec: RunSpec, progress: bool = True,
                services: RunServices | None = None) -> RunResult:
    """Run one (method, temperature) of the campaign, or return its summary if it finished."""
    config = campaign.config
    run_dir = campaign.root / spec.run_name
    summary_path = run_dir / "summary.json"
    if summary_path.exists():
        if spec.run_name not in campaign.extended:
            return RunResult(spec, run_dir, json.loads(summary_path.read_text()))
        summary_path.unlink()   # continued with a larger budget: unfinished until it ends again
    run_dir.mkdir(parents=True, exist_ok=True)
    for folder in (run_dir, run_dir / "checkpoints"):
        remove_stale_temporaries(folder)
    system = build_system(config)
    seed = campaign.seed_of(spec)
    write_yaml(run_dir / "config.yaml", run_config_dict(config, spec))
    metadata = provenance_metadata(config.to_dict(), seed, extra={"run": spec.run_name})
    ctx = RunContext(config, spec, system, run_dir, seed, metadata, progress,
                     _reference_for(campaign, spec, system), services or RunServices(),
                     _initial_sampler_run(campaign, spec))
    if spec.method in NEURAL_METHODS:
        summary = _run_neural(ctx)
    else:
        summary = _run_reference(ctx)
    for warning in summary["warnings"]:
        print(f"WARNING [{spec.run_name}]: {warning}", flush=True)
    atomic_write_text(summary_path, json.dumps(summary, indent=2, default=float))
    return RunResult(spec, run_dir, summary)


def _initial_sampler_run(campaign: Campaign, spec: RunSpec) -> Path | None:
    """With ``training.initialise_from: previous_temperature``, the finished run of the same
    neural method at the preceding temperature (None for the first temperature)."""
    if campaign.config.training.initialise_from != "previous_temperature" or spec.method not in NEURAL_METHODS:
        return None
    previous = campaign.previous_temperature(spec)
    if previous is None:
        return None
    folder = campaign.root / previous.run_name
    if not (folder / "summary.json").exists():
        raise RuntimeError(f"{spec.run_name} starts from {previous.run_name} (training.initialise_from: "
                           "previous_temperature), which has not finished; run the temperatures in order")
    return folder


# ----------------------------------------------------------------------------- bins and references
def cv_bin_edges(system) -> list[np.ndarray]:
    """One bin per attainable CV value per dimension (fixed for a system)."""
    spec = system.cv_spec
    return est.bin_edges_for_cv_grid(spec.lower, spec.upper, spec.spacing)


def has_exact_reference(system) -> bool:
    """Whether ``system`` is small enough (EXACT_ENUMERATION_LIMIT states) to be compared with
    exact enumeration instead of a reference chain run."""
    return system.n_states ** system.n_sites <= EXACT_ENUMERATION_LIMIT


def _cv_grid_shape(system) -> tuple[int, ...]:
    """Number of CV bins per dimension (one per attainable value)."""
    return tuple(len(e) - 1 for e in cv_bin_edges(system))


def _histogram_inputs(system, cv: np.ndarray, edges):
    return (cv[:, 0], edges[0]) if len(edges) == 1 else (cv, edges)


def _reference_for(campaign: Campaign, spec: RunSpec, system) -> ReferenceData | None:
    """Exact enumeration for tiny systems, else a finished unbiased chain run at this β."""
    if has_exact_reference(system):
        return _exact_reference(system, spec.beta)
    for method in UNBIASED_REFERENCES:
        if method == spec.method:
            return None
        folder = campaign.root / f"{method}_{spec.temperature_tag}"
        if (folder / "summary.json").exists():
            reference = _load_reference(folder, method)
            return replace(reference, fes_kT=reference.fes_kT.reshape(_cv_grid_shape(system)))
    return None


def _exact_reference(system, beta, chunk_size: int = 2**18) -> ReferenceData:
    """Exact CV and E/N histograms and F(CV) by streaming every state in chunks of
    ``chunk_size``: each chunk's normalised histogram is scaled by its own ln Z share and
    accumulated in log space, so memory stays one chunk and tiny probabilities keep their
    float64 precision (3^16 Potts states: about 30 s on one core)."""
    cv_edges = cv_bin_edges(system)
    shape = _cv_grid_shape(system)
    energy_edges = system.energy_per_site_bin_edges()
    log_cv = np.full(int(np.prod(shape)), -np.inf)
    log_energy = np.full(len(energy_edges) - 1, -np.inf)
    for states in iterate_states(system.n_sites, system.n_states, chunk_size):
        x = states.long()
        energy = system.energy(x).numpy()
        log_w = -beta * energy
        chunk_log_z = np.logaddexp.reduce(log_w)
        values, edges = _histogram_inputs(system, system.cv(x).numpy(), cv_edges)
        cv_hist, _ = est.weighted_histogram(values, log_w, edges)
        e_hist, _ = est.weighted_histogram(energy / system.n_sites, log_w, energy_edges)
        with np.errstate(divide="ignore"):
            log_cv = np.logaddexp(log_cv, np.log(cv_hist.ravel()) + chunk_log_z)
            log_energy = np.logaddexp(log_energy, np.log(e_hist) + chunk_log_z)
    log_cv -= np.logaddexp.reduce(log_cv)
    log_energy -= np.logaddexp.reduce(log_energy)
    fes = np.where(np.isfinite(log_cv), -log_cv, np.nan)
    fes -= np.nanmin(fes)
    return ReferenceData("exact", np.exp(log_cv), np.exp(log_energy), fes.reshape(shape))


def _load_reference(folder: Path, method: str) -> ReferenceData:
    hist = pd.read_parquet(folder / "histograms.parquet")
    fes = pd.read_parquet(folder / "fes.parquet")
    mine = hist[hist.estimator == "mcmc"]
    cv_hist = mine[mine.quantity == "cv"].sort_values("bin").probability.to_numpy()
    e_hist = mine[mine.quantity == "energy_per_site"].sort_values("bin").probability.to_numpy()
    return ReferenceData(method, cv_hist, e_hist, fes[fes.source == "samples"].free_energy_kT.to_numpy())


# ----------------------------------------------------------------------------- neural methods
def build_walker(config: Config, spec: RunSpec, system, seed: int, energy_fn, bias) -> DualLoopTrainer:
    """One trainer of a run: its sampler initialised from ``seed`` (all later randomness comes
    from its generator, seeded with ``seed`` too), training towards π_V with ``bias``."""
    torch.manual_seed(seed)  # parameter initialisation only; all sampling uses explicit generators
    sampler = build_sampler(config, system).to(training_device(config))
    return DualLoopTrainer(system, sampler, spec.beta, config.training, bias=bias, seed=seed,
                           warmstart=spec.method == "mdns-warmstart", energy_fn=energy_fn)


def training_device(config: Config) -> torch.device:
    """The device of ``training.device`` (``auto``: CUDA when visible, else CPU)."""
    wanted = config.training.device
    if wanted == "cuda" and not torch.cuda.is_available():
        raise ConfigError("training.device", "is cuda but no CUDA device is visible to this process; "
                                             "use auto or cpu, or run on a GPU node")
    return torch.device("cuda" if wanted == "cuda" or (wanted == "auto" and torch.cuda.is_available()) else "cpu")


def walker_seed(run_seed: int, index: int) -> int:
    """Seed of walker ``index`` of a multiple-walker run."""
    return derive_seed(run_seed, f"walker{index}")


def build_run_walker(config: Config, spec: RunSpec, system, run_seed: int, index: int, energy_fn) -> DualLoopTrainer:
    """Walker ``index`` of a multiple-walker run: its own seed and its own copy of the bias
    (which the MultiWalkerTrainer keeps equal to the shared one)."""
    bias = build_bias(config, system, spec.beta, config.training.batch_size) if spec.method == "metadns" else None
    return build_walker(config, spec, system, walker_seed(run_seed, index), energy_fn, bias)


def _trainer(ctx: RunContext, energy_fn):
    """The run's DualLoopTrainer, or a MultiWalkerTrainer with ``training.walkers`` > 1 (walkers
    in this process, or Ray actors from ``services.make_walkers``)."""
    config, spec, system = ctx.config, ctx.spec, ctx.system
    t = config.training
    bias = _run_bias(ctx, t.batch_size) if spec.method == "metadns" else None
    if t.walkers == 1:
        return build_walker(config, spec, system, ctx.seed, energy_fn, bias)
    if ctx.services.make_walkers is not None:
        walkers, call = ctx.services.make_walkers(ctx)
    else:
        walkers = [build_run_walker(config, spec, system, ctx.seed, w, energy_fn) for w in range(t.walkers)]
        call = call_in_order
    return MultiWalkerTrainer(walkers, bias, spec.beta, t, spec.method == "mdns-warmstart", system.cv_spec, call)


def _start_from_previous_temperature(trainer, run_dir: Path) -> None:
    """Warm start: each walker takes the EMA sampler of the finished run in ``run_dir`` (its
    walker of the same index, modulo that run's walker count)."""
    trained = torch.load(run_dir / "checkpoints" / "checkpoint.pt", weights_only=False, map_location="cpu")
    states = [w["ema_sampler"] for w in trained["walkers"]] if "walkers" in trained else [trained["ema_sampler"]]
    if isinstance(trainer, MultiWalkerTrainer):
        trainer.call(trainer.walkers, "start_from", [(states[w % len(states)],) for w in range(len(trainer.walkers))])
    else:
        trainer.start_from(states[0])


def _run_neural(ctx: RunContext) -> dict:
    config, spec, system = ctx.config, ctx.spec, ctx.system
    t = config.training
    energy_fn = ctx.services.energy or system.energy
    trainer = _trainer(ctx, energy_fn)
    bias = trainer.bias
    checkpoint = ctx.run_dir / "checkpoints" / "checkpoint.pt"
    if checkpoint.exists():
        trainer.load_state_dict(torch.load(checkpoint, weights_only=False, map_location="cpu"))
    elif ctx.initial_sampler_from is not None:
        _start_from_previous_temperature(trainer, ctx.initial_sampler_from)

    def save_checkpoint(tr: DualLoopTrainer) -> None:
        if tr.iteration % t.checkpoint_every == 0 or tr.finished:
            buffer = io.BytesIO()
            torch.save(tr.state_dict(), buffer)
            checkpoint.parent.mkdir(exist_ok=True)
            atomic_write_bytes(checkpoint, buffer.getvalue())

    report = ctx.services.report_progress or (lambda tr: None)
    # Cost to accuracy: the bias's F against the reference after every deposition.
    reference_fes = ctx.reference.fes_kT if ctx.reference is not None and bias is not None else None

    def after_iteration(tr: DualLoopTrainer) -> None:
        if reference_fes is not None:
            tr.history[-1] = replace(tr.history[-1], fes_rmse_kT=est.fes_rmse(bias.free_energy(), reference_fes)[0])
        save_checkpoint(tr)
        report(tr)

    report(trainer)
    trainer.train(progress=ctx.progress, on_iteration=after_iteration)

    # Fresh i.i.d. samples from the frozen EMA sampler with the frozen bias (§6).
    start = time.perf_counter()
    batch = trainer.sample_final(config.sampling.n_samples, batch_size=config.sampling.batch_size)
    generation_s = time.perf_counter() - start
    x = batch.x
    energy = energy_fn(x).numpy()
    cv = system.cv(x).numpy()
    bias_energy = bias.value(cv) if bias is not None else np.zeros(len(energy))
    log_q = batch.log_q.numpy()
    log_w_lik = est.log_weights_likelihood(energy, log_q, spec.beta)
    log_w_bias = est.log_weights_bias(bias_energy, spec.beta)
    log_w_biased_target = est.log_weights_biased_target(energy, bias_energy, log_q, spec.beta)
    observables = {k: v.numpy() for k, v in system.observables(x).items()}
    n = len(energy)

    rows = []
    for estimator, log_w in (("likelihood", log_w_lik), ("bias", log_w_bias)):
        ess = est.kish_ess(log_w)
        for name, values in observables.items():
            mean, stderr = est.weighted_mean_and_stderr(values, log_w)
            rows.append(_row(ctx, estimator, name, system.observable_units[name], mean, stderr, ess, n))
    ess_lik, ess_biased_target = est.kish_ess(log_w_lik), est.kish_ess(log_w_biased_target)
    ln_z, ln_z_err = est.log_partition_function(log_w_lik)
    rows.append(_row(ctx, "likelihood", "log_partition_function", "1", ln_z, ln_z_err, ess_lik, n))
    rows.append(_row(ctx, "biased_target", "ess_fraction", "1", ess_biased_target / n, math.nan,
                     ess_biased_target, n))
    rows.append(_row(ctx, "likelihood", "ess_fraction", "1", ess_lik / n, math.nan, ess_lik, n))
    acceptance = math.nan
    if config.sampling.metropolis_hastings:
        # Walkers' samples come in blocks, one mixture component each: propose them in a random order.
        chain_idx, acceptance = est.independence_metropolis_hastings(log_w_lik, np.random.default_rng(ctx.seed),
                                                                     shuffle=t.walkers > 1)
        for name, values in observables.items():
            mean, stderr = est.mcmc_mean_and_stderr(values[chain_idx][:, None])
            rows.append(_row(ctx, "mh", name, system.observable_units[name], mean, stderr, math.nan, n))
        rows.append(_row(ctx, "mh", "acceptance_rate", "1", acceptance, math.nan, math.nan, n))
    history = trainer.history
    rows += _cost_rows(ctx, n, trainer.energy_evaluations + n, bias.n_hills if bias is not None else 0,
                       trainer.elapsed_s, generation_s)

    edges = cv_bin_edges(system)
    hist_values, hist_edges = _histogram_inputs(system, cv, edges)
    histograms = {}
    for estimator, log_w in (("likelihood", log_w_lik), ("bias", log_w_bias)):
        histograms[estimator] = (est.weighted_histogram(hist_values, log_w, hist_edges),
                                 est.weighted_histogram(energy / system.n_sites, log_w,
                                                        system.energy_per_site_bin_edges()))
    fes_samples = est.fes_from_samples(hist_values, log_w_lik, hist_edges)
    fes_bias = bias.free_energy() if bias is not None else None
    scan = _delta_mu_scan(ctx, observables, log_w_lik, x, cv, hist_values, hist_edges)
    rows += scan["rows"]

    _write_common(ctx, rows, histograms, fes_samples, fes_bias, bias, scan["fes"])
    write_parquet(samples_table(x.to(torch.int8).numpy(), batch.order.to(torch.int16).numpy(), energy, cv,
                                system.cv_spec.names, log_q, log_w_bias, log_w_lik),
                  ctx.run_dir / "samples.parquet", ctx.metadata)
    if history:
        plots.plot_bias_growth(ctx.run_dir / "bias_growth.png", [r.iteration for r in history],
                               [r.max_bias_kT for r in history], [r.cv_coverage for r in history],
                               title=f"{spec.run_name}: bias growth and CV coverage")

    ess_fraction = ess_lik / n
    coverage = history[-1].cv_coverage if history else math.nan
    warnings = []
    if ess_fraction < LOW_ESS_FRACTION:
        warnings.append(f"physical-target ESS/n = {ess_fraction:.4f} is below {LOW_ESS_FRACTION}: "
                        "likelihood-weighted estimates are unreliable")
    if coverage < LOW_COVERAGE:
        warnings.append(f"fresh samples spanned only {coverage:.0%} of the CV range during training: "
                        "the sampler may have missed a mode (ESS alone does not reveal mode collapse)")
    extra = {"initialised_from": ctx.initial_sampler_from.name} if ctx.initial_sampler_from else {}
    if t.walkers > 1:
        extra["walker_seeds"] = [walker_seed(ctx.seed, w) for w in range(t.walkers)]
    if reference_fes is not None:
        extra["fes_rmse_history"] = [(r.n_hills, r.energy_evaluations, r.fes_rmse_kT) for r in history]
    return _summary(ctx, warnings, **extra, ess_fraction=ess_fraction, cv_coverage=coverage,
                    mh_acceptance=acceptance, training_wall_time_s=trainer.elapsed_s,
                    generation_wall_time_s=generation_s, n_samples=n,
                    energy_evaluations=trainer.energy_evaluations + n,
                    hills=bias.n_hills if bias is not None else 0)


# ----------------------------------------------------------------------------- reference methods
def _run_reference(ctx: RunContext) -> dict:
    config, spec, system = ctx.config, ctx.spec, ctx.system
    r = config.reference
    generator = torch.Generator().manual_seed(ctx.seed)
    bias = None
    if spec.method == "sw":
        record = run_swendsen_wang(system, spec.beta, r.chains, r.sweeps, r.burn_in, generator, ctx.progress)
    elif spec.method == "metropolis":
        record = run_metropolis(system, spec.beta, r.chains, r.sweeps, r.burn_in, generator, ctx.progress)
    else:
        # The chains deposit once per sweep from one process: a local bias (a bias server
        # would add a round trip per sweep and share nothing).
        bias = build_bias(config, system, spec.beta, r.chains)
        reference_fes = ctx.reference.fes_kT if ctx.reference is not None else None
        record = run_mcmc_metadynamics(system, spec.beta, bias, r.chains, r.sweeps, r.burn_in,
                                       r.deposit_every, generator, reference_fes, ctx.progress)
    return _summarise_chains(ctx, record, bias)


def _run_bias(ctx: RunContext, hills_per_cycle: int):
    bias = build_bias(ctx.config, ctx.system, ctx.spec.beta, hills_per_cycle)
    return ctx.services.make_bias(bias) if ctx.services.make_bias is not None else bias


def _summarise_chains(ctx: RunContext, record: ChainRecord, bias) -> dict:
    system = ctx.system
    n_steps, n_chains, D = record.states.shape
    flat = record.states.reshape(-1, D).long()
    energy = system.energy(flat).numpy()
    cv = system.cv(flat).numpy()
    observables = {k: v.numpy().reshape(n_steps, n_chains) for k, v in system.observables(flat).items()}
    n = n_steps * n_chains
    log_w = record.log_w
    rows = []
    for name, values in observables.items():
        mean, stderr = est.chain_weighted_mean_and_stderr(values, log_w)
        rows.append(_row(ctx, "mcmc", name, system.observable_units[name], mean, stderr, math.nan, n))
    rows += _cost_rows(ctx, n, record.energy_evaluations, record.hills, record.wall_time_s, 0.0)

    edges = cv_bin_edges(system)
    hist_values, hist_edges = _histogram_inputs(system, cv, edges)
    e_site = energy / system.n_sites
    histograms = {"mcmc": (_chain_histogram(hist_values, log_w, hist_edges, n_steps, n_chains),
                           _chain_histogram(e_site, log_w, system.energy_per_site_bin_edges(), n_steps, n_chains))}
    fes_samples = est.fes_from_samples(hist_values, log_w.ravel(), hist_edges)
    # stderr of F from the chain-aware histogram errors: σ_F = σ_P / P.
    p, p_err = histograms["mcmc"][0]
    with np.errstate(divide="ignore", invalid="ignore"):
        fes_samples = (fes_samples[0], np.where(p > 0, p_err / p, np.nan))
    _write_common(ctx, rows, histograms, fes_samples, bias.free_energy() if bias is not None else None, bias)
    # Chain states were not generated by the neural sampler: order −1, log q and
    # likelihood weights NaN; log_w_bias holds the chain's physical-target weight.
    states = record.states.reshape(-1, D).numpy()
    no_likelihood = np.full(n, np.nan)
    write_parquet(samples_table(states, np.full(states.shape, -1), energy, cv, system.cv_spec.names,
                                no_likelihood, log_w.ravel(), no_likelihood),
                  ctx.run_dir / "samples.parquet", ctx.metadata)
    extra = {}
    if record.fes_rmse_history:
        extra["fes_rmse_history"] = record.fes_rmse_history
    return _summary(ctx, [], n_samples=n, energy_evaluations=record.energy_evaluations,
                    hills=record.hills, wall_time_s=record.wall_time_s, **extra)


def _chain_histogram(values, log_w, edges, n_steps, n_chains):
    """Bin probabilities with autocorrelation-aware stderr (one indicator series per bin)."""
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
    for b in np.unique(idx):  # loop over occupied bins, not samples
        probabilities[b], stderr[b] = est.chain_weighted_mean_and_stderr((idx == b).astype(np.float64), log_w)
    shape = n_bins if flat_edges is not None else (len(edges[0]) - 1, len(edges[1]) - 1)
    return probabilities.reshape(shape), stderr.reshape(shape)


# ----------------------------------------------------------------------------- writing
def _row(ctx: RunContext, estimator, observable, unit, value, stderr, ess, n, delta_mu=None) -> dict:
    """One observables.parquet row; ``delta_mu`` defaults to the run's own Δμ (0 for lattice models)."""
    if delta_mu is None:
        delta_mu = getattr(ctx.system, "delta_mu", 0.0)
    return {"system": ctx.system.name, "method": ctx.spec.method, "temperature": ctx.spec.temperature,
            "beta": ctx.spec.beta, "delta_mu": float(delta_mu), "estimator": estimator, "observable": observable,
            "unit": unit, "value": float(value), "stderr": float(stderr), "ess": float(ess),
            "n_samples": int(n)}


def _cost_rows(ctx, n, energy_evaluations, hills, training_s, generation_s) -> list[dict]:
    return [_row(ctx, "cost", "energy_evaluations", "count", energy_evaluations, math.nan, math.nan, n),
            _row(ctx, "cost", "bias_depositions", "hills", hills, math.nan, math.nan, n),
            _row(ctx, "cost", "training_wall_time", "s", training_s, math.nan, math.nan, n),
            _row(ctx, "cost", "generation_wall_time", "s", generation_s, math.nan, math.nan, n)]


def _delta_mu_scan(ctx: RunContext, observables, log_w, x, cv, hist_values, hist_edges) -> dict:
    """Reweight likelihood-weighted alloy samples to each Δμ of ``sampling.delta_mu_grid``.

    log w_Δμ' = log w + β(Δμ' − Δμ_run)·N₁ (ALGORITHM.md §6).  Returns ``rows`` (observables at
    each Δμ' other than the run's, ``energy_per_site`` left out since E_Δμ depends on Δμ) and
    ``fes``: Δμ' → (F, stderr) on the run's CV grid; writes ``delta_mu_scan.png``.
    """
    grid = ctx.config.sampling.delta_mu_grid
    if not grid:
        return {"rows": [], "fes": {}}
    system, beta = ctx.system, ctx.spec.beta
    n_solute = x.sum(dim=1).numpy().astype(np.float64)
    run_delta_mu = system.delta_mu
    rows, fes, fraction, fraction_err, composition_fes = [], {}, [], [], {}
    fraction_edges = cv_bin_edges(system)[0]
    for delta_mu in grid:
        shifted = est.reweight_chemical_potential(log_w, n_solute, beta, run_delta_mu, delta_mu)
        ess = est.kish_ess(shifted)
        for name, values in observables.items():
            mean, stderr = est.weighted_mean_and_stderr(values, shifted)
            if name == system.fraction_name:
                fraction.append(mean)
                fraction_err.append(stderr)
            if name != "energy_per_site" and delta_mu != run_delta_mu:
                rows.append(_row(ctx, "likelihood", name, system.observable_units[name], mean, stderr, ess,
                                 len(values), delta_mu=delta_mu))
        fes[delta_mu] = est.fes_from_samples(hist_values, shifted, hist_edges)
        composition_fes[delta_mu] = est.fes_from_samples(cv[:, 0], shifted, fraction_edges)[0]
    centres = 0.5 * (fraction_edges[1:] + fraction_edges[:-1])
    plots.plot_delta_mu_scan(ctx.run_dir / "delta_mu_scan.png", np.asarray(grid), np.asarray(fraction),
                             np.asarray(fraction_err), centres, composition_fes, system.fraction_name,
                             title=f"{ctx.spec.run_name}: reweighted from Δμ = {run_delta_mu:g} eV")
    return {"rows": rows, "fes": {d: f for d, f in fes.items() if d != run_delta_mu}}


def _write_common(ctx: RunContext, rows, histograms, fes_samples, fes_bias, bias, fes_by_delta_mu=None) -> None:
    system, spec = ctx.system, ctx.spec
    write_parquet(observables_table(rows), ctx.run_dir / "observables.parquet", ctx.metadata)

    edges = cv_bin_edges(system)
    centres = [0.5 * (e[1:] + e[:-1]) for e in edges]
    grid = np.stack(np.meshgrid(*centres, indexing="ij"), axis=-1).reshape(-1, len(centres))
    run_delta_mu = float(getattr(system, "delta_mu", 0.0))
    tables = [fes_table(system.cv_spec.names, grid, fes_samples[0].ravel(), fes_samples[1].ravel(), "samples",
                        run_delta_mu)]
    if fes_bias is not None:
        bias_grid = np.stack(np.meshgrid(*bias.axes, indexing="ij"), axis=-1).reshape(-1, bias.dim)
        tables.append(fes_table(system.cv_spec.names, bias_grid, fes_bias.ravel(),
                                np.full(fes_bias.size, np.nan), "bias", run_delta_mu))
    for delta_mu, (free, stderr) in (fes_by_delta_mu or {}).items():
        tables.append(fes_table(system.cv_spec.names, grid, free.ravel(), stderr.ravel(), "samples", delta_mu))
    write_parquet(pa.concat_tables(tables), ctx.run_dir / "fes.parquet", ctx.metadata)

    hist_rows = []
    e_edges = system.energy_per_site_bin_edges()
    for estimator, ((cv_p, cv_err), (e_p, e_err)) in histograms.items():
        for quantity, p, err, lo, hi in (
                ("cv", cv_p.ravel(), cv_err.ravel(), None, None),
                ("energy_per_site", e_p, e_err, e_edges[:-1], e_edges[1:])):
            frame = pd.DataFrame({"estimator": estimator, "quantity": quantity, "bin": np.arange(p.size),
                                  "probability": p, "stderr": err})
            frame["bin_lower"] = lo if lo is not None else np.nan
            frame["bin_upper"] = hi if hi is not None else np.nan
            hist_rows.append(frame)
    write_parquet(pd.concat(hist_rows, ignore_index=True), ctx.run_dir / "histograms.parquet", ctx.metadata)

    if bias is not None:
        bias.write_hills(ctx.run_dir / "HILLS", system.cv_spec.names)

    ref = ctx.reference
    main_estimator = "mcmc" if "mcmc" in histograms else "likelihood"
    if system.cv_spec.dim == 1:
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
    else:
        plots.plot_fes(ctx.run_dir / "fes.png", centres, {"samples": (fes_samples[0], None)},
                       system.cv_spec.names, title=f"{spec.run_name}: free energy (samples)")


def _on_centres(bias, fes_bias, centres):
    """Bias FES (on the bias grid) read at the histogram bin centres (nearest node)."""
    return fes_bias[np.argmin(np.abs(bias.axes[0][None, :] - centres[:, None]), axis=1)]


def _summary(ctx: RunContext, warnings: list[str], **figures) -> dict:
    return {"run": ctx.spec.run_name, "method": ctx.spec.method, "beta": ctx.spec.beta,
            "temperature": ctx.spec.temperature, "seed": ctx.seed,
            "config_hash": config_hash(ctx.config), "warnings": warnings, **figures}


# ----------------------------------------------------------------------------- comparison table
def comparison_table(campaign: Campaign, results: list[RunResult]) -> pd.DataFrame:
    """One row per run: headline observables (main estimator), ESS, JS vs the reference."""
    rows = []
    system = build_system(campaign.config)
    for result in results:
        obs = pd.read_parquet(result.run_dir / "observables.parquet")
        obs = obs[obs.delta_mu == float(getattr(system, "delta_mu", 0.0))]  # the run's own ensemble
        hist = pd.read_parquet(result.run_dir / "histograms.parquet")
        estimator = "mcmc" if result.spec.method not in NEURAL_METHODS else "likelihood"
        row = {"run": result.spec.run_name, "method": result.spec.method, "beta": result.spec.beta,
               "estimator": estimator}
        mine = obs[obs.estimator == estimator].set_index("observable")
        for name in system.headline_observables:
            row[name] = mine.loc[name, "value"]
            row[f"{name}_stderr"] = mine.loc[name, "stderr"]
        ess = None
        if estimator == "likelihood":
            ess_row = obs[(obs.estimator == "likelihood") & (obs.observable == "ess_fraction")].iloc[0]
            row["ess_fraction"], ess = ess_row.value, ess_row.ess
        reference = _reference_for(campaign, result.spec, system)
        if reference is not None:
            # JS with the run's main estimator, and for trained samplers also with bias weights.
            for weights, suffix in ((estimator, ""), ("bias", "_bias_weights")):
                mine_h = hist[hist.estimator == weights]
                if mine_h.empty:
                    continue
                for quantity, ref_p in (("cv", reference.cv_histogram), ("energy_per_site", reference.energy_histogram)):
                    p = mine_h[mine_h.quantity == quantity].sort_values("bin").probability.to_numpy()
                    row[f"js_{quantity}{suffix}"] = est.js_divergence(p, ref_p)
            if ess is not None:
                # what sampling noise alone would give at this ESS: JS near it is limited by ESS
                row["js_cv_floor"] = est.js_sampling_floor(reference.cv_histogram, max(ess, 1.0))
            row["reference"] = reference.label
        cost = obs[obs.estimator == "cost"].set_index("observable").value
        row["energy_evaluations"] = cost["energy_evaluations"]
        row["hills"] = cost["bias_depositions"]
        row["wall_time_s"] = cost["training_wall_time"] + cost["generation_wall_time"]
        rows.append(row)
    return pd.DataFrame(rows)


def print_comparison(campaign: Campaign, results: list[RunResult]) -> pd.DataFrame:
    table = comparison_table(campaign, results)
    write_parquet(table, campaign.root / "comparison.parquet",
                  provenance_metadata(campaign.config.to_dict(), campaign.config.seed))
    with pd.option_context("display.max_columns", None, "display.width", 200,
                           "display.float_format", "{:.4g}".format):
        print(table.to_string(index=False))
    return table
