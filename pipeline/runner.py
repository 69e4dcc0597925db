"""Executing runs: one (method, temperature) of a campaign, and a campaign of them in order.

Layout written under ``OUT/<config name>/<method>_<temperature tag>/`` (docs/outputs.md):
config.yaml, observables.parquet, fes.parquet, histograms.parquet, samples.parquet,
HILLS (biased methods), fes.png, cv_histogram.png, bias_growth.png (trained methods),
checkpoints/checkpoint.pt (trained methods), summary.json (written last: its presence
marks a finished run).  Every file is written atomically.  What a method does is its own
module's business (pipeline/methods/, looked up in pipeline/registry.py).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from pipeline.build import build_system, restrict_to_run
from pipeline.campaign import UNBIASED_REFERENCES, Campaign
from pipeline.config import Config, RunSpec
from pipeline.devices import DeviceChoice, choose_device, configure_numerics, device_report, keep_freed_host_memory
from pipeline.errors import RunFailed
from pipeline.outputs import atomic_write_text, provenance_metadata, remove_stale_temporaries, write_yaml
from pipeline.progress_lines import ProgressLines
from pipeline.reference_data import ReferenceData, reference_for
from pipeline.registry import METHODS

__all__ = ["RunServices", "RunContext", "RunResult", "run_campaign", "execute_run", "campaign_reference", "CPU_ONLY"]

CPU_ONLY = DeviceChoice(torch.device("cpu"), "the method runs on the CPU")
"""The device of methods that train no network (reference chains)."""


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
    make_bias: Callable | None = None
    report_progress: Callable | None = None
    make_walkers: Callable[["RunContext"], tuple[list, Callable]] | None = None


@dataclass
class RunContext:
    """Everything a method needs to execute one run (passed to its registered entry point)."""

    config: Config
    spec: RunSpec
    system: object
    run_dir: Path
    seed: int
    metadata: dict
    progress: bool
    reference: ReferenceData | None
    services: RunServices = field(default_factory=RunServices)
    initial_sampler_from: Path | None = None   # finished run whose EMA sampler starts this one
    device: DeviceChoice = CPU_ONLY            # where a trained method's networks run


@dataclass
class RunResult:
    """A finished run: its spec, folder and summary.json content; ``node`` names the Ray node
    that executed it ("" in-process; not written to disk)."""

    spec: RunSpec
    run_dir: Path
    summary: dict = field(default_factory=dict)
    node: str = ""


def run_campaign(campaign: Campaign, progress: bool = True, lines: ProgressLines | None = None) -> list[RunResult]:
    """Execute every run of the campaign in order; returns their summaries.  ``lines``: a
    printer of periodic one-line progress that every trained run feeds (batch jobs)."""
    campaign.root.mkdir(parents=True, exist_ok=True)
    if campaign.config.training.threads is not None:
        torch.set_num_threads(campaign.config.training.threads)
    results = []
    for spec in campaign.runs:
        if progress:
            print(f"== {campaign.config.name}: {spec.run_name}", flush=True)
        label = f"{campaign.point}/{spec.run_name}" if campaign.point else spec.run_name
        services = None if lines is None else RunServices(report_progress=lines.reporter(label))
        results.append(execute_run(campaign, spec, progress, services))
    return results


def campaign_reference(campaign: Campaign, spec: RunSpec, system) -> ReferenceData | None:
    """What run ``spec`` of the campaign is compared against (exact enumeration or a finished
    unbiased reference run of the campaign at its temperature)."""
    return reference_for(campaign.root, spec.method, spec.temperature_tag, system, spec.beta, UNBIASED_REFERENCES)


def execute_run(campaign: Campaign, spec: RunSpec, progress: bool = True,
                services: RunServices | None = None) -> RunResult:
    """Run one (method, temperature) of the campaign, or return its summary if it finished.

    A trained method's device is chosen first (pipeline.devices), so a run that cannot have the
    device it needs fails before it writes anything."""
    config = campaign.config
    run_dir = campaign.root / spec.run_name
    summary_path = run_dir / "summary.json"
    if summary_path.exists() and spec.run_name not in campaign.extended:
        return RunResult(spec, run_dir, json.loads(summary_path.read_text()))
    device = CPU_ONLY
    if METHODS[spec.method].traits["trained"] and config.training.walkers > 1 and services is not None \
            and services.make_walkers is not None:
        device = DeviceChoice(torch.device("cpu"), f"coordinator of {config.training.walkers} walker actors, each "
                                                   "training on the device Ray assigned it (walker_devices)")
    elif METHODS[spec.method].traits["trained"]:
        device = choose_device(config.training.device)
        configure_numerics(device.device, config.training.deterministic)
        if device.fell_back:
            print(f"NOTE [{spec.run_name}]: {device.reason}", flush=True)
    keep_freed_host_memory()
    if summary_path.exists():
        summary_path.unlink()   # continued with a larger budget: unfinished until it ends again
    run_dir.mkdir(parents=True, exist_ok=True)
    for folder in (run_dir, run_dir / "checkpoints"):
        remove_stale_temporaries(folder)
    system = build_system(config)
    seed = campaign.seed_of(spec)
    write_yaml(run_dir / "config.yaml", restrict_to_run(config, spec))
    metadata = provenance_metadata(config.to_dict(), seed, extra={"run": spec.run_name, **device_report(device)})
    ctx = RunContext(config, spec, system, run_dir, seed, metadata, progress,
                     campaign_reference(campaign, spec, system), services or RunServices(),
                     _initial_sampler_run(campaign, spec), device)
    summary = METHODS[spec.method].load()(ctx)
    for warning in summary["warnings"]:
        print(f"WARNING [{spec.run_name}]: {warning}", flush=True)
    atomic_write_text(summary_path, json.dumps(summary, indent=2, default=float))
    return RunResult(spec, run_dir, summary)


def _initial_sampler_run(campaign: Campaign, spec: RunSpec) -> Path | None:
    """With ``training.initialise_from: previous_temperature``, the finished run of the same
    trained method at the preceding temperature (None for the first temperature)."""
    if campaign.config.training.initialise_from != "previous_temperature" or not METHODS[spec.method].traits["trained"]:
        return None
    previous = campaign.previous_temperature(spec)
    if previous is None:
        return None
    folder = campaign.root / previous.run_name
    if not (folder / "summary.json").exists():
        raise RunFailed(f"{spec.run_name} starts from {previous.run_name} (training.initialise_from: "
                         "previous_temperature), which has not finished; run the temperatures in order")
    return folder
