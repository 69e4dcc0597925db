"""``metadns report DIR``: one dataset, summary, plots and (alloys) phase diagram for a campaign.

Size (slightly over the ~400-line guide): the report's dataset, summary, plots and phase
diagram read the same run folders and are one job.

Every finished run folder under DIR (any depth; a folder with ``summary.json``, as
``metadns run`` writes last) is collected.  Written under DIR:

* ``dataset/observables/system=<name>/temperature=<tag>/part-0.parquet`` and
  ``dataset/fes/…`` — hive-partitioned Parquet datasets of every run's observables and FES.
  Partition keys are strings: ``system`` and ``temperature`` = the run's temperature tag
  (``T800.0000``, ``beta0.6000``; :func:`pipeline.config.temperature_tag`).  Because the key
  ``temperature`` holds the tag, the numeric temperature is the column ``temperature_value``.
  Added columns: ``campaign`` (the run folder's parent, relative to DIR), ``run``; FES rows
  also get ``system``, ``method``, ``temperature_value``, ``beta`` and one column per CV
  (null where a run has another CV).  The whole ``dataset`` folder is replaced at once
  (written beside it, then renamed).  Read it with
  ``pyarrow.dataset.dataset(DIR / "dataset" / "observables", partitioning="hive")``.
* ``summary.parquet`` (printed too): one row per run, headline observables of the run's main
  estimator (``mcmc`` for chains, ``likelihood`` for trained samplers) at the run's own Δμ.
* ``runs.parquet``: one row per run with its resolved configuration flattened to dotted
  columns (``training.outer_iterations``, …; :func:`runs_table`), to filter or group runs by
  any setting.
* ``plots/<campaign>/observables_vs_temperature.png`` and ``plots/<campaign>/fes_<method>.png``.
* alloys: ``phase_diagram.parquet`` and ``phase_diagram.png`` (:mod:`pipeline.phase_diagram`).
  Per (campaign, temperature) the FES comes from the first method of
  :data:`FES_PRIORITY` with at least two visited compositions: MetaDNS's likelihood-weighted
  samples FES, then MCMC WT-MetaD's, then the others; within a run the ``samples`` FES at the
  run's Δμ, else the ``bias`` FES.  Phases are labelled from ⟨η | x⟩ computed on that run's
  samples (likelihood weights, chain weights for MCMC runs).

Every table carries its columns' units as field metadata (:func:`report_units`): those the
runs' systems agree on; a column whose unit differs between runs (temperature in a report over
lattice-model and alloy runs) carries none.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import torch
import yaml
from tqdm.auto import tqdm

from pipeline import phase_diagram as pd_
from pipeline import plots
from pipeline.config import config_from_dict
from pipeline.errors import NoFinishedRuns  # defined there, part of this module's interface
from pipeline.outputs import (FES_UNITS, METADATA_PREFIX, provenance_metadata, schema_with_units, system_units,
                              write_parquet)
from systems.registry import SYSTEMS

__all__ = ["FES_PRIORITY", "RunFolder", "find_runs", "report_units", "dataset_tables", "write_dataset",
           "summary_table", "phase_diagram_points", "make_report", "report_command"]

FES_PRIORITY: tuple[str, ...] = ("metadns-mcmc", "metadns", "mcmc-metad", "mdns-warmstart", "mdns", "metropolis", "sw")
DATASET = "dataset"
SKIPPED_FOLDERS = (DATASET, "plots")


@dataclass
class RunFolder:
    """One finished run: its folder, identity and the parsed summary.json / config.yaml."""

    path: Path
    campaign: str
    run: str
    method: str
    temperature_tag: str
    temperature: float
    beta: float
    system_name: str
    delta_mu: float
    summary: dict
    config: dict
    _system: object = field(default=None, repr=False)

    @property
    def temperature_kind(self) -> str:
        return "beta" if self.temperature_tag.startswith("beta") else "T"


# ----------------------------------------------------------------------------- discovery
def find_runs(root: Path) -> list[RunFolder]:
    """Every finished run folder under ``root`` (recursive search for summary.json), sorted by
    campaign, method, temperature.  Hidden folders, ``dataset/`` and ``plots/`` are skipped; a
    folder with summary.json but no observables.parquet/fes.parquet/config.yaml is reported on
    stderr and skipped."""
    root = Path(root)
    runs = []
    for summary_path in sorted(root.rglob("summary.json")):
        relative = summary_path.relative_to(root).parts
        if any(part.startswith(".") for part in relative) or (len(relative) > 1 and relative[0] in SKIPPED_FOLDERS):
            continue
        folder = summary_path.parent
        missing = [name for name in ("observables.parquet", "fes.parquet", "config.yaml")
                   if not (folder / name).exists()]
        if missing:
            print(f"metadns report: skipping {folder}: no {', '.join(missing)}", file=sys.stderr)
            continue
        summary = json.loads(summary_path.read_text())
        config = yaml.safe_load((folder / "config.yaml").read_text())
        method = summary["method"]
        run = summary.get("run", folder.name)
        tag = run[len(method) + 1:] if run.startswith(method + "_") else folder.name.split("_", 1)[-1]
        campaign_path = folder.parent.relative_to(root).as_posix() if folder != root else "."
        campaign = root.resolve().name if campaign_path == "." else campaign_path
        system = config.get("system", {})
        runs.append(RunFolder(folder, campaign, run, method, tag, float(summary["temperature"]),
                              float(summary["beta"]), str(system.get("name", "unknown")),
                              float(system.get("delta_mu", 0.0) or 0.0), summary, config))
    runs.sort(key=lambda r: (r.campaign, r.method, r.temperature))
    return runs


def _system_of(run: RunFolder, cache: dict):
    """The run's system, built from its config.yaml (cached per system block); None if the
    config no longer validates (e.g. written by another version)."""
    from pipeline.build import build_system  # noqa: PLC0415 - torch

    key = json.dumps({k: v for k, v in run.config.get("system", {}).items() if k not in ("beta", "temperature")},
                     sort_keys=True, default=str)
    if key not in cache:
        try:
            cache[key] = build_system(config_from_dict(run.config, run.config.get("name", run.campaign)))
        except Exception as error:  # noqa: BLE001 - report and fall back to the observables table
            print(f"metadns report: cannot rebuild the system of {run.path} ({error}); "
                  "headline observables are guessed from its observables table", file=sys.stderr)
            cache[key] = None
    return cache[key]


def report_units(runs: list[RunFolder], systems: dict) -> dict[str, str]:
    """Column units (:func:`pipeline.outputs.system_units`) that every run naming the column
    agrees on; only the system-independent ones (:data:`pipeline.outputs.NAMED_UNITS`, which
    the writers add) when a run's system cannot be rebuilt."""
    built = [_system_of(run, systems) for run in runs]
    if any(system is None for system in built):
        return {}
    units: dict[str, str] = {}
    disputed: set[str] = set()
    for per_run in map(system_units, built):
        for name, unit in per_run.items():
            if units.setdefault(name, unit) != unit:
                disputed.add(name)
    return {name: unit for name, unit in units.items() if name not in disputed}


# ----------------------------------------------------------------------------- dataset
def _strip_metadata(table: pa.Table) -> pa.Table:
    """The table without schema and field metadata (a run's units are re-attached for the
    whole report: concatenation would keep the first run's)."""
    return table.cast(pa.schema([field.remove_metadata() for field in table.schema]))


def dataset_tables(runs: list[RunFolder], progress: bool = False) -> tuple[pa.Table, pa.Table]:
    """(observables, fes) tables of all runs with the dataset columns (module docstring);
    the partition columns ``system`` and ``temperature`` (tag) are strings."""
    observables, fes = [], []
    for run in tqdm(runs, desc="reading runs", disable=not progress):
        obs = _strip_metadata(pq.read_table(run.path / "observables.parquet"))
        n = obs.num_rows
        obs = obs.rename_columns(["temperature_value" if c == "temperature" else c for c in obs.column_names])
        obs = obs.add_column(0, "run", pa.array([run.run] * n, pa.string()))
        obs = obs.add_column(0, "campaign", pa.array([run.campaign] * n, pa.string()))
        obs = obs.append_column("temperature", pa.array([run.temperature_tag] * n, pa.string()))
        observables.append(obs)
        table = _strip_metadata(pq.read_table(run.path / "fes.parquet"))
        n = table.num_rows
        leading = {"campaign": run.campaign, "run": run.run, "method": run.method}
        for position, (name, value) in enumerate(leading.items()):
            table = table.add_column(position, name, pa.array([value] * n, pa.string()))
        table = table.add_column(3, "temperature_value", pa.array([run.temperature] * n, pa.float64()))
        table = table.add_column(4, "beta", pa.array([run.beta] * n, pa.float64()))
        table = table.append_column("system", pa.array([run.system_name] * n, pa.string()))
        table = table.append_column("temperature", pa.array([run.temperature_tag] * n, pa.string()))
        fes.append(table)
    return (pa.concat_tables(observables, promote_options="default"),
            pa.concat_tables(fes, promote_options="default"))


def _replace_folder(source: Path, target: Path) -> None:
    """Move the finished folder ``source`` onto ``target`` (renames only; the old one is
    restored if the second rename fails, then deleted)."""
    backup = None
    if target.exists():
        backup = target.parent / f".{target.name}.{uuid.uuid4().hex}.old"
        os.replace(target, backup)
    try:
        os.replace(source, target)
    except BaseException:
        if backup is not None:
            os.replace(backup, target)
        raise
    if backup is not None:
        shutil.rmtree(backup)


def write_dataset(root: Path, tables: dict[str, pa.Table], metadata: dict[str, str]) -> Path:
    """Write ``root/dataset/<name>/system=…/temperature=…/part-0.parquet`` for each table,
    replacing the whole ``dataset`` folder at once.  Returns the dataset folder."""
    root = Path(root)
    for stale in list(root.glob(f".{DATASET}.*.tmp")) + list(root.glob(f".{DATASET}.*.old")):
        shutil.rmtree(stale, ignore_errors=True)
    staging = root / f".{DATASET}.{uuid.uuid4().hex}.tmp"
    stored = {(METADATA_PREFIX + k).encode(): str(v).encode() for k, v in metadata.items()}
    try:
        for name, table in tables.items():
            ds.write_dataset(table.replace_schema_metadata(stored), staging / name, format="parquet",
                             partitioning=["system", "temperature"], partitioning_flavor="hive",
                             basename_template="part-{i}.parquet", existing_data_behavior="error")
        _replace_folder(staging, root / DATASET)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return root / DATASET


# ----------------------------------------------------------------------------- summary table
def _main_estimator(obs: pd.DataFrame) -> str:
    return "mcmc" if (obs.estimator == "mcmc").any() else "likelihood"


def _own_rows(obs: pd.DataFrame, run: RunFolder) -> pd.DataFrame:
    """Rows of the run's own ensemble (reweighted Δμ rows left out)."""
    return obs[np.isclose(obs.delta_mu.to_numpy(), run.delta_mu, rtol=0, atol=1e-12)] if "delta_mu" in obs else obs


def summary_table(runs: list[RunFolder], systems: dict) -> pd.DataFrame:
    """One row per run: identity, headline observables ± stderr of the main estimator, ESS
    fraction (trained samplers), cost and the number of warnings."""
    rows = []
    for run in runs:
        obs = _own_rows(pd.read_parquet(run.path / "observables.parquet"), run)
        estimator = _main_estimator(obs)
        mine = obs[obs.estimator == estimator].drop_duplicates("observable").set_index("observable")
        system = _system_of(run, systems)
        headline = getattr(system, "headline_observables", None) or tuple(
            name for name in mine.index if not name.startswith("correlation_r") and name != "log_partition_function")
        row = {"campaign": run.campaign, "run": run.run, "system": run.system_name, "method": run.method,
               "temperature": run.temperature, "temperature_tag": run.temperature_tag, "beta": run.beta,
               "delta_mu": run.delta_mu, "estimator": estimator}
        for name in headline:
            row[name] = float(mine.loc[name, "value"]) if name in mine.index else math.nan
            row[f"{name}_stderr"] = float(mine.loc[name, "stderr"]) if name in mine.index else math.nan
        ess = obs[(obs.estimator == "likelihood") & (obs.observable == "ess_fraction")]
        row["ess_fraction"] = float(ess.value.iloc[0]) if len(ess) else math.nan
        cost = obs[obs.estimator == "cost"].drop_duplicates("observable").set_index("observable").value
        row["wall_time_s"] = float(cost.get("training_wall_time", math.nan) + cost.get("generation_wall_time", 0.0))
        row["energy_evaluations"] = float(cost.get("energy_evaluations", math.nan))
        row["hills"] = float(cost.get("bias_depositions", math.nan))
        row["n_samples"] = int(run.summary.get("n_samples", mine["n_samples"].max() if len(mine) else 0))
        row["warnings"] = len(run.summary.get("warnings", []))
        rows.append(row)
    return pd.DataFrame(rows)


def _format_summary(table: pd.DataFrame, runs: list[RunFolder], systems: dict) -> str:
    """Printable summary: per campaign, headline values as "value ± stderr"."""
    blocks = []
    for campaign, group in table.groupby("campaign", sort=True):
        run = next(r for r in runs if r.campaign == campaign)
        system = _system_of(run, systems)
        headline = [c for c in group.columns if f"{c}_stderr" in group.columns and group[c].notna().any()]
        if system is not None:
            headline = [c for c in system.headline_observables if c in group.columns]
        shown = pd.DataFrame({"run": group.run, "method": group.method})
        shown["T" if run.temperature_kind == "T" else "beta"] = group.temperature if run.temperature_kind == "T" \
            else group.beta
        shown["delta_mu"] = group.delta_mu
        shown["est."] = group.estimator
        for name in headline:
            shown[name] = [f"{v:.4g} ± {e:.2g}" if np.isfinite(e) else f"{v:.4g}"
                           for v, e in zip(group[name], group[f"{name}_stderr"])]
        shown["ESS/n"] = group.ess_fraction.map(lambda v: f"{v:.3g}" if np.isfinite(v) else "-")
        shown["wall s"] = group.wall_time_s.map("{:.1f}".format)
        shown["energy evals"] = group.energy_evaluations.map("{:.3g}".format)
        shown["warnings"] = group.warnings
        blocks.append(f"== {campaign} ({group.system.iloc[0]})\n" + shown.to_string(index=False))
    return "\n\n".join(blocks)


# ----------------------------------------------------------------------------- FES selection and phase data
def _fes_curve(run: RunFolder, source: str | None = None):
    """(cv names, x axis (K,), F (K,), stderr (K,), source) of a run's FES at its own Δμ,
    marginalised onto the first CV for 2-D CVs; None when no source has two finite points."""
    table = pd.read_parquet(run.path / "fes.parquet")
    if "delta_mu" in table:
        table = table[np.isclose(table.delta_mu.to_numpy(), run.delta_mu, rtol=0, atol=1e-12)]
    cv_names = [c for c in table.columns if c not in ("free_energy_kT", "stderr", "source", "delta_mu")]
    for candidate in ((source,) if source else ("samples", "bias")):
        mine = table[table.source == candidate]
        if mine.free_energy_kT.notna().sum() < 2:
            continue
        if len(cv_names) == 1:
            mine = mine.sort_values(cv_names[0])
            axis, free, err = (mine[cv_names[0]].to_numpy(), mine.free_energy_kT.to_numpy(), mine.stderr.to_numpy())
        else:
            axis, free, err = pd_.marginal_free_energy(mine[cv_names[:2]].to_numpy(), mine.free_energy_kT.to_numpy(),
                                                      mine.stderr.to_numpy())
        if np.isfinite(free).sum() >= 2:
            return cv_names, axis, free, err, candidate
    return None


def _conditional_lro(run: RunFolder, system, grid: np.ndarray) -> np.ndarray:
    """⟨η | x⟩ on the composition grid from the run's samples (NaN if unavailable)."""
    samples_path = run.path / "samples.parquet"
    if system is None or "long_range_order" not in getattr(system, "observable_units", {}) \
            or not samples_path.exists():
        return np.full(grid.shape, np.nan)
    fraction = f"cv_{system.fraction_name}"
    table = pq.read_table(samples_path, columns=["configuration", "energy", fraction, "log_w_likelihood", "log_w_bias"])
    configurations = table.column("configuration").combine_chunks()
    x = torch.from_numpy(configurations.flatten().to_numpy(zero_copy_only=False).astype(np.int64)
                         .reshape(len(configurations), -1))
    energy = torch.from_numpy(table.column("energy").to_numpy())   # stored: the backend is not called again
    eta = np.concatenate([system.observables(chunk, chunk_energy)["long_range_order"].numpy()
                          for chunk, chunk_energy in zip(x.split(8192), energy.split(8192))])
    log_w = table.column("log_w_likelihood").to_numpy()
    if not np.isfinite(log_w).any():
        log_w = table.column("log_w_bias").to_numpy()
    return pd_.conditional_mean(table.column(fraction).to_numpy(), eta, log_w, grid)


def phase_diagram_points(runs: list[RunFolder], systems: dict) -> list[pd_.PhasePoint]:
    """One :class:`~pipeline.phase_diagram.PhasePoint` per (alloy campaign, temperature), from
    the best available FES (:data:`FES_PRIORITY`)."""
    priority = {m: i for i, m in enumerate(FES_PRIORITY)}
    groups: dict[tuple[str, str], list[RunFolder]] = {}
    for run in runs:
        if run.system_name in SYSTEMS and SYSTEMS[run.system_name].traits.get("chemical_potential"):
            groups.setdefault((run.campaign, run.temperature_tag), []).append(run)
    points = []
    for (campaign, tag), candidates in sorted(groups.items()):
        for run in sorted(candidates, key=lambda r: (priority.get(r.method, len(priority)), r.method)):
            curve = _fes_curve(run)
            if curve is None:
                continue
            cv_names, axis, free, err, source = curve
            system = _system_of(run, systems)
            n_sites = system.n_sites if system is not None else int(round(1.0 / np.min(np.diff(axis))))
            lro = _conditional_lro(run, system, axis)
            points.append(pd_.PhasePoint(run.temperature, axis, free, run.delta_mu, n_sites, err, lro,
                                         info={"campaign": campaign, "temperature_tag": tag, "method": run.method,
                                               "fes_source": source, "cv": cv_names[0],
                                               "run_warnings": len(run.summary.get("warnings", [])),
                                               "coverage_check": run.summary.get("coverage_check", {})
                                               .get("verdict", "not run")}))
            break
        else:
            print(f"metadns report: no usable FES for {campaign} at {tag}: no phase-diagram row", file=sys.stderr)
    return points


# ----------------------------------------------------------------------------- plots
def _campaign_plots(root: Path, runs: list[RunFolder], summary: pd.DataFrame, systems: dict) -> list[Path]:
    written = []
    for campaign in sorted({r.campaign for r in runs}):
        mine = [r for r in runs if r.campaign == campaign]
        folder = root / "plots" / campaign
        table = summary[summary.campaign == campaign]
        kind = mine[0].temperature_kind
        system = _system_of(mine[0], systems)
        headline = list(system.headline_observables) if system is not None else \
            [c[:-len("_stderr")] for c in table.columns if c.endswith("_stderr")]
        panels = {}
        for name in headline:
            if name not in table or not table[name].notna().any():
                continue
            panels[name] = {method: ((g.temperature if kind == "T" else g.beta).to_numpy(), g[name].to_numpy(),
                                     g[f"{name}_stderr"].to_numpy()) for method, g in table.groupby("method")}
        if panels:
            written.append(plots.plot_observables_vs_temperature(
                folder / "observables_vs_temperature.png", panels, "T" if kind == "T" else "β",
                title=f"{campaign}: main estimator per method"))
        for method in sorted({r.method for r in mine}):
            curves, axis, names = {}, None, None
            for run in sorted((r for r in mine if r.method == method), key=lambda r: r.temperature):
                curve = _fes_curve(run, "samples") or _fes_curve(run)
                if curve is None or (axis is not None and not np.array_equal(curve[1], axis)):
                    continue
                names, axis = curve[0], curve[1]
                curves[f"{run.temperature_tag} ({curve[4]})"] = (curve[2], curve[3])
            if curves:
                written.append(plots.plot_fes(folder / f"fes_{method}.png", axis, curves, [names[0]],
                                              title=f"{campaign}: {method} free energy per temperature"))
    return written


# ----------------------------------------------------------------------------- entry points
@dataclass
class Report:
    """What :func:`make_report` wrote and computed."""

    runs: list[RunFolder]
    dataset: Path
    summary: pd.DataFrame
    phase_diagram: pd.DataFrame | None
    plots: list[Path]
    text: str


def flatten_config(config: Mapping, prefix: str = "") -> dict:
    """Nested config sections as dotted keys (``training.outer_iterations``); lists stay values."""
    flat = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_config(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def runs_table(runs: list[RunFolder]) -> pd.DataFrame:
    """One row per finished run: campaign, run, method, temperature_tag, temperature, beta,
    config_hash, then every key of its resolved config.yaml flattened to dotted names. A column
    whose values are not all of one scalar type (lists, or numbers beside strings) holds them
    as JSON text, so that Parquet can store it."""
    rows = [{"campaign": r.campaign, "run": r.run, "method": r.method, "temperature_tag": r.temperature_tag,
             "temperature": r.temperature, "beta": r.beta, "config_hash": r.summary.get("config_hash", ""),
             **flatten_config(r.config)} for r in runs]
    table = pd.DataFrame(rows)
    for column in table.columns[7:]:
        kinds = {type(v) for v in table[column] if v is not None}
        if len(kinds) > 1 and kinds <= {int, float}:
            continue
        if len(kinds) > 1 or kinds & {list, tuple, dict}:
            table[column] = [None if v is None else json.dumps(v) for v in table[column]]
    return table


def make_report(root: Path, progress: bool = True) -> Report:
    """Collect the finished runs under ``root`` and write the dataset, summary, plots and
    (alloys) phase diagram (module docstring).  Raises :class:`NoFinishedRuns`."""
    root = Path(root)
    if not root.is_dir():
        raise NoFinishedRuns(f"{root} is not a folder")
    runs = find_runs(root)
    if not runs:
        raise NoFinishedRuns(f"no finished runs under {root} (a run folder is finished when it holds summary.json); "
                             f"run `metadns run CONFIG --out {root}` first")
    systems: dict = {}
    hashes = {f"{r.campaign}/{r.run}": r.summary.get("config_hash", "") for r in runs}
    metadata = provenance_metadata({"report": hashes}, 0, extra={"report_runs": len(runs)})
    units = report_units(runs, systems)
    observables, fes = dataset_tables(runs, progress)
    dataset = write_dataset(root, {"observables": observables.cast(schema_with_units(observables.schema, units)),
                                   "fes": fes.cast(schema_with_units(fes.schema, {**units, **FES_UNITS}))}, metadata)
    summary = summary_table(runs, systems)
    write_parquet(summary, root / "summary.parquet", metadata, units)
    write_parquet(runs_table(runs), root / "runs.parquet", metadata, units)
    text = _format_summary(summary, runs, systems)
    written = _campaign_plots(root, runs, summary, systems)
    phase = None
    points = phase_diagram_points(runs, systems)
    if points:
        phase = pd_.phase_diagram_table(points).sort_values(["campaign", "temperature", "x_left", "x_right"],
                                                             kind="stable", ignore_index=True)
        write_parquet(phase, root / "phase_diagram.parquet", metadata, units)
        written.append(plots.plot_phase_diagram(
            root / "phase_diagram.png", phase.temperature, phase.kind, phase.x_left, phase.x_right,
            phase.phase_left, phase.phase_right, panel=phase.campaign, x_label=points[0].info["cv"],
            title="common tangent of f(x); bars: one phase, tie-lines: two-phase",
            unreliable=phase.coverage_check.isin(["disagree", "inconclusive"])))
        hidden = ["cv", "n_sites", "n_unvisited"] + (["campaign"] if phase.campaign.nunique() == 1 else [])
        shown = phase.drop(columns=hidden)
        with pd.option_context("display.width", 200, "display.max_columns", None,
                               "display.float_format", "{:.4g}".format):
            text += "\n\n== phase diagram (" + ", ".join(sorted(phase.campaign.unique())) + ")\n" + \
                shown.to_string(index=False)
    return Report(runs, dataset, summary, phase, written, text)


def report_command(directory: Path, quiet: bool = False) -> int:
    """Handler of ``metadns report DIR [--quiet]``: returns 0; raises :class:`NoFinishedRuns`
    when there is nothing to report (``metadns`` exits 2) and whatever failed while reading
    or writing (exit 1)."""
    report = make_report(Path(directory), progress=not quiet)
    print(report.text)
    print(f"\n{len(report.runs)} runs; dataset {report.dataset}; summary {Path(directory) / 'summary.parquet'}"
          + (f"; phase diagram {Path(directory) / 'phase_diagram.parquet'}" if report.phase_diagram is not None else "")
          + f"; {len(report.plots)} plots")
    return 0
