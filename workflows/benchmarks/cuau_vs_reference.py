"""Compare a Cu–Au phase-diagram campaign with the independent mchammer reference.

Usage (from the repository root, after `metadns run workflows/cuau_phase_diagram.yaml ...`):
    python workflows/benchmarks/cuau_vs_reference.py runs/cuau_phase_diagram \\
        [--reference workflows/benchmarks/data/cuau_reference_64] [--method metadns-mcmc] [--out DIR]

For every temperature of the campaign (Δμ = 0 runs of ``--method``) it compares, against the
reference built by ``cuau_reference.py`` on the same cell and CE:

* ⟨x_Au⟩ and its difference in combined standard errors;
* F(x_Au) from the run's samples (``fes.parquet``, source = samples) with the best constant
  removed, RMSE over the compositions where the reference F ≤ ``--f-max`` k_BT (8 by default);
* F(¼) − F(½), both gauged the same way, with errors;
* the run's mixing figures: ESS and τ_int of x_Au and of the energy, split-R̂ of x_Au, the
  acceptance of global proposals (chain methods' ``summary.json``).

It prints one Markdown table, writes it as ``vs_reference.csv``, draws the F(x_Au) curves
(``fes_vs_reference.png``) and the T–x diagram of the campaign beside the reference's
(``phase_diagram_vs_reference.png``: common tangents with tie-lines only where a skipped
composition lies more than 3 SE above the hull, pipeline/phase_diagram.py). The reference
records no order parameter, so its one-phase ranges are labelled "unknown".
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from pipeline.estimators import fes_rmse
from pipeline.phase_diagram import PhasePoint, phase_diagram_table
from pipeline.plots import plot_phase_diagram

DEFAULT_REFERENCE = Path(__file__).parent / "data" / "cuau_reference_64"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("campaign", type=Path, help="campaign folder (holds the run folders)")
    parser.add_argument("--reference", type=Path, default=DEFAULT_REFERENCE, help="cuau_reference.py output folder")
    parser.add_argument("--method", default="metadns-mcmc", help="which method's runs to compare")
    parser.add_argument("--f-max", type=float, default=8.0, help="compare F where the reference F ≤ this (k_BT)")
    parser.add_argument("--out", type=Path, default=None, help="where to write (default: the campaign folder)")
    args = parser.parse_args(argv)
    for name, folder in (("campaign", args.campaign), ("--reference", args.reference)):
        if not folder.is_dir():
            parser.error(f"{name} {folder} is not a folder")
    for table in ("reference.csv", "summary.csv"):
        if not (args.reference / table).is_file():
            parser.error(f"--reference {args.reference} has no {table}: run cuau_reference.py --assemble there")
    return args


def campaign_runs(campaign: Path, method: str) -> list[Path]:
    """Run folders of ``method`` at Δμ = 0 under ``campaign``, sorted by temperature."""
    runs = []
    for summary_path in campaign.rglob("summary.json"):
        summary = json.loads(summary_path.read_text())
        if summary.get("method") == method and summary.get("config", {}).get("system", {}).get("delta_mu", 0.0) == 0.0:
            runs.append((float(summary["temperature"]), summary_path.parent))
    return [run for _, run in sorted(runs)]


def quarter_half_gap(x: np.ndarray, free: np.ndarray, err: np.ndarray) -> tuple[float, float]:
    """F(¼) − F(½) in k_BT and its error (errors of the two nodes added in quadrature)."""
    quarter, half = int(np.argmin(np.abs(x - 0.25))), int(np.argmin(np.abs(x - 0.5)))
    return float(free[quarter] - free[half]), float(math.hypot(err[quarter], err[half]))


def compare_run(run: Path, reference: pd.DataFrame, reference_summary: pd.Series, f_max: float) -> tuple[dict, dict]:
    """One temperature: the table row and the curves (x, run F aligned to the reference, its
    error, reference F, its error, compared mask) for the FES plot."""
    summary = json.loads((run / "summary.json").read_text())
    temperature = float(summary["temperature"])
    observables = pd.read_parquet(run / "observables.parquet")
    x_row = observables[(observables.observable == "x_Au") & (observables.estimator != "cost")].iloc[0]
    fes = pd.read_parquet(run / "fes.parquet")
    fes = fes[(fes.source == "samples") & (fes.delta_mu == 0.0)].sort_values("x_Au")
    ref = reference[reference.temperature_K == temperature].sort_values("x_au")
    if len(ref) != len(fes) or not np.allclose(ref.x_au.to_numpy(), fes.x_Au.to_numpy()):
        raise ValueError(f"{run}: its composition grid differs from the reference's at {temperature:g} K "
                         "(another cell? compare runs of the reference's cell)")
    x = fes.x_Au.to_numpy()
    free, free_err = fes.free_energy_kT.to_numpy(), fes.stderr.to_numpy()
    ref_free, ref_err = ref.free_energy_kT.to_numpy(), ref.free_energy_err_kT.to_numpy()
    compared = ref_free <= f_max
    rmse, coverage = fes_rmse(free[compared], ref_free[compared], align="mean")
    both = compared & np.isfinite(free)
    offset = float(np.mean(free[both] - ref_free[both]))
    gap_run, gap_run_err = quarter_half_gap(x, free, free_err)
    gap_ref, gap_ref_err = quarter_half_gap(x, ref_free, ref_err)
    diagnostics = summary.get("chain_diagnostics", {})
    energy_key = "formation_energy_per_atom" if "formation_energy_per_atom" in diagnostics else "energy_per_site"
    x_diag, e_diag = diagnostics.get("x_Au", {}), diagnostics.get(energy_key, {})
    x_sigma = math.hypot(float(x_row.stderr), float(reference_summary.mean_x_au_err))
    row = {"T_K": temperature, "x_Au": float(x_row.value), "x_Au_se": float(x_row.stderr),
           "x_Au_ref": float(reference_summary.mean_x_au), "x_Au_ref_se": float(reference_summary.mean_x_au_err),
           "x_diff_sigma": abs(float(x_row.value) - float(reference_summary.mean_x_au)) / x_sigma,
           "F_rmse_kT": rmse, "F_nodes": int(compared.sum()), "F_coverage": coverage,
           "gap_quarter_half_kT": float(gap_run), "gap_se": gap_run_err, "gap_ref_kT": gap_ref,
           "gap_ref_se": gap_ref_err, "gap_diff_sigma": abs(gap_run - gap_ref) / math.hypot(gap_run_err, gap_ref_err),
           "ess_x": x_diag.get("ess", math.nan), "tau_x": x_diag.get("tau_int", math.nan),
           "ess_E": e_diag.get("ess", math.nan), "tau_E": e_diag.get("tau_int", math.nan),
           "rhat_x": x_diag.get("rhat", math.nan), "global_acceptance": summary.get("global_acceptance", math.nan),
           "energy_evaluations": summary.get("energy_evaluations", math.nan),
           "wall_time_s": summary.get("wall_time_s", math.nan)}
    row["ess_goal"] = 1000 if temperature >= 600 else 200
    row["goals_met"] = bool(row["x_diff_sigma"] <= 3 and rmse <= 0.5 and min(row["ess_x"], row["ess_E"]) >= row["ess_goal"])
    curves = {"x": x, "F": free - offset, "F_err": free_err, "F_ref": ref_free, "F_ref_err": ref_err,
              "compared": compared}
    return row, curves


def markdown(table: pd.DataFrame) -> str:
    lines = ["| T (K) | ⟨x_Au⟩ run | ⟨x_Au⟩ reference | diff (σ) | F RMSE (k_BT, nodes) | F(¼)−F(½) run | reference | "
             "ESS_x (τ_int) | ESS_E (τ_int) | R̂(x) | global acc. | goals |",
             "|" + "---|" * 12]
    for r in table.itertuples():
        lines.append(f"| {r.T_K:.0f} | {r.x_Au:.4f} ± {r.x_Au_se:.4f} | {r.x_Au_ref:.4f} ± {r.x_Au_ref_se:.4f} | "
                     f"{r.x_diff_sigma:.1f} | {r.F_rmse_kT:.2f} ({r.F_nodes}) | {r.gap_quarter_half_kT:.2f} ± {r.gap_se:.2f} | "
                     f"{r.gap_ref_kT:.2f} ± {r.gap_ref_se:.2f} | {r.ess_x:,.0f} ({r.tau_x:.1f}) | {r.ess_E:,.0f} ({r.tau_E:.1f}) | "
                     f"{r.rhat_x:.2f} | {r.global_acceptance:.3f} | {'met' if r.goals_met else 'NOT met'} |")
    return "\n".join(lines)


def plot_fes_curves(path: Path, temperatures: list[float], curves: list[dict], f_max: float) -> None:
    columns = min(5, len(curves))
    rows = math.ceil(len(curves) / columns)
    figure = Figure(figsize=(3.2 * columns, 2.8 * rows), layout="constrained")
    axes = np.atleast_1d(figure.subplots(rows, columns, squeeze=False)).ravel()
    for ax, temperature, c in zip(axes, temperatures, curves):
        ax.errorbar(c["x"], c["F"], yerr=c["F_err"], fmt="o", markersize=2.5, color="tab:blue", label="run (samples)")
        ax.plot(c["x"], c["F_ref"], "-", color="black", linewidth=1.0, label="reference")
        ax.axhline(f_max, color="gray", linestyle=":", linewidth=0.8)
        ax.set_ylim(-1, 2.5 * f_max)
        ax.set_title(f"{temperature:g} K", fontsize="small")
        ax.set_xlabel("x_Au")
        ax.set_ylabel("F / k_BT")
    for ax in axes[len(curves):]:
        ax.set_visible(False)
    axes[0].legend(fontsize="x-small")
    figure.suptitle(f"F(x_Au): run (best constant removed over reference F ≤ {f_max:g} k_BT) and reference")
    FigureCanvasAgg(figure)
    figure.savefig(path, dpi=120)


def reference_phase_rows(reference: pd.DataFrame, n_sites: int) -> pd.DataFrame:
    points = [PhasePoint(temperature=float(t), x=group.x_au.to_numpy(), free_energy_kT=group.free_energy_kT.to_numpy(),
                         delta_mu=0.0, n_sites=n_sites, stderr_kT=group.free_energy_err_kT.to_numpy())
              for t, group in reference.sort_values("x_au").groupby("temperature_K")]
    return phase_diagram_table(points)


def main(argv=None) -> int:
    args = parse_args(argv)
    out = args.out or args.campaign
    out.mkdir(parents=True, exist_ok=True)
    runs = campaign_runs(args.campaign, args.method)
    if not runs:
        print(f"error: no finished {args.method} runs at Δμ = 0 under {args.campaign}", file=sys.stderr)
        return 2
    reference = pd.read_csv(args.reference / "reference.csv")
    reference_summary = pd.read_csv(args.reference / "summary.csv").set_index("temperature_K")
    rows, curves = [], []
    for run in runs:
        temperature = float(json.loads((run / "summary.json").read_text())["temperature"])
        if temperature not in reference_summary.index:
            print(f"skipping {run.name}: the reference has no {temperature:g} K")
            continue
        row, curve = compare_run(run, reference, reference_summary.loc[temperature], args.f_max)
        rows.append(row)
        curves.append(curve)
    table = pd.DataFrame(rows)
    table.to_csv(out / "vs_reference.csv", index=False)
    print(markdown(table))
    plot_fes_curves(out / "fes_vs_reference.png", table.T_K.tolist(), curves, args.f_max)

    n_sites = int(reference.n_au.max())
    ours = pd.read_parquet(args.campaign / "phase_diagram.parquet")
    ours = ours[(ours.method == args.method) & (ours.fes_source == "samples") & ours.temperature.isin(table.T_K)]
    theirs = reference_phase_rows(reference[reference.temperature_K.isin(table.T_K)], n_sites)
    panels = pd.concat([ours.assign(panel=f"{args.method} (this campaign)"),
                        theirs.assign(panel="reference (mchammer + TI)")], ignore_index=True)
    plot_phase_diagram(out / "phase_diagram_vs_reference.png", panels.temperature, panels.kind, panels.x_left,
                       panels.x_right, panels.phase_left, panels.phase_right, panel=panels.panel, x_label="x_Au",
                       title=f"{n_sites}-site Cu–Au cell, Δμ = 0")
    for label, rows_ in (("campaign", ours), ("reference", theirs)):
        ties = rows_[rows_.kind == "two_phase"]
        print(f"{label}: two-phase regions at " + (", ".join(f"{r.temperature:g} K [{r.x_left:.3f}, {r.x_right:.3f}]"
                                                             for r in ties.itertuples()) or "none"))
    print(f"wrote {out / 'vs_reference.csv'}, {out / 'fes_vs_reference.png'}, {out / 'phase_diagram_vs_reference.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
