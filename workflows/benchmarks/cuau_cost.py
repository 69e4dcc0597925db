"""Cost to accuracy on Cu–Au: energy evaluations until F(x_Au) is within a target of the reference.

Usage (from the repository root), with finished runs at one temperature of the reference's cell,
e.g. from `metadns run workflows/cuau_64.yaml --profile cpu-cost`:
    python workflows/benchmarks/cuau_cost.py RUN_DIR [RUN_DIR ...] \\
        [--reference workflows/benchmarks/data/cuau_reference_64] [--target 1.0] [--f-max 8] \\
        [--energy-rate BATCH=CONFIGS_PER_S ...]

For each run (mcmc-metad, metadns or metadns-mcmc) the bias is rebuilt deposit by deposit from
its HILLS file (whose heights are h·γ/(γ−1), so the summed Gaussians give −k_BT·F + const), and
F(x_Au) from the bias is compared after every deposit with the mchammer reference F (RMSE in
k_BT, best constant removed, on the compositions where the reference F ≤ ``--f-max``). The
energy evaluations spent up to each deposit follow from the run's settings, every local ΔE
counted as one full evaluation, as with a machine-learned potential without a cheap ΔE (a
MACE model's receptive field spans the whole 64-site cell):

* mcmc-metad: the chains' starting energies, then chains·D single-site trials per sweep;
* metadns: ``training.batch_size`` fresh samples per outer iteration (replayed samples carry
  their energies);
* metadns-mcmc: the starting energies, then per adaptive round chains·(max(1, local sweeps)·D)
  local trials and one proposal per chain.

The run's F from its samples (``fes.parquet``, after production or final sampling) is given
with the run's total evaluations. ``--energy-rate`` projects the evaluations to wall time with a
measured throughput of an expensive backend at the batch each method evaluates (chains for
the MCMC methods, ``training.batch_size`` for MetaDNS), e.g. the MACE rates of BENCHMARKS.md;
the network's own time is reported separately as the CE run's wall time per deposit.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from pipeline.estimators import fes_rmse

DEFAULT_REFERENCE = Path(__file__).parent / "data" / "cuau_reference_64"
METHODS = ("mcmc-metad", "metadns", "metadns-mcmc")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+", help="finished run folders (one temperature)")
    parser.add_argument("--reference", type=Path, default=DEFAULT_REFERENCE, help="cuau_reference.py output folder")
    parser.add_argument("--target", type=float, default=1.0, help="F RMSE target, k_BT")
    parser.add_argument("--f-max", type=float, default=8.0, help="compare where the reference F ≤ this (k_BT)")
    parser.add_argument("--energy-rate", nargs="*", default=[], metavar="BATCH=RATE",
                        help="configurations/s of an expensive backend at a batch size (e.g. 8=133 64=48)")
    args = parser.parse_args(argv)
    try:
        args.rates = {int(b): float(r) for b, r in (item.split("=") for item in args.energy_rate)}
    except ValueError:
        parser.error("--energy-rate takes BATCH=CONFIGS_PER_S pairs, e.g. --energy-rate 8=133 64=48")
    for run in args.runs:
        if not (run / "HILLS").is_file() or not (run / "summary.json").is_file():
            parser.error(f"{run} is not a finished biased run (no HILLS or summary.json)")
    return args


def bias_free_energy_history(hills_path: Path, grid: np.ndarray, kT: float) -> tuple[np.ndarray, np.ndarray]:
    """(deposit indices (T,), F in k_BT (T, G) on ``grid`` after each deposit) from a 1-D HILLS file."""
    table = np.loadtxt(hills_path, comments="#", ndmin=2)
    times, centres, sigmas, heights = table[:, 0].astype(np.int64), table[:, 1], table[:, 2], table[:, 3]
    kernels = heights[:, None] * np.exp(-0.5 * ((grid[None, :] - centres[:, None]) / sigmas[:, None]) ** 2)
    deposits, first = np.unique(times, return_index=True)
    per_deposit = np.add.reduceat(kernels, first, axis=0)                    # rows sorted by time
    return deposits, -np.cumsum(per_deposit, axis=0) / kT


def evaluations_per_deposit(config: dict, n_sites: int) -> tuple[float, float, int]:
    """(evaluations before the first deposit, evaluations per deposit, batch each evaluates)."""
    method, reference, training = config["methods"][0], config.get("reference", {}), config.get("training", {})
    chains = reference.get("chains", 64)
    if method == "mcmc-metad":
        return chains, reference.get("deposit_every", 1) * chains * n_sites, chains
    if method == "metadns-mcmc":
        return chains, chains * (max(1, reference.get("local_sweeps", 1)) * n_sites + 1), chains
    if method == "metadns":
        if training.get("walkers", 1) != 1:
            raise ValueError("metadns runs with several walkers are not supported here (hills per deposit differ)")
        return 0.0, training.get("batch_size", 128), training.get("batch_size", 128)
    raise ValueError(f"method {method!r} has no bias to compare; use one of {METHODS}")


def analyse(run: Path, reference: pd.DataFrame, target: float, f_max: float, rates: dict[int, float]) -> dict:
    config = yaml.safe_load((run / "config.yaml").read_text())
    summary = json.loads((run / "summary.json").read_text())
    temperature, kT = float(summary["temperature"]), 1.0 / float(summary["beta"])
    ref = reference[reference.temperature_K == temperature].sort_values("x_au")
    if ref.empty:
        raise ValueError(f"{run}: the reference has no {temperature:g} K")
    grid, ref_free = ref.x_au.to_numpy(), ref.free_energy_kT.to_numpy()
    compared = ref_free <= f_max
    n_sites = len(grid) - 1
    deposits, history = bias_free_energy_history(run / "HILLS", grid, kT)
    rmse = np.array([fes_rmse(f[compared], ref_free[compared])[0] for f in history])
    start, per_deposit, batch = evaluations_per_deposit(config, n_sites)
    evaluations = start + deposits * per_deposit
    reached = np.flatnonzero(rmse <= target)
    fes = pd.read_parquet(run / "fes.parquet")
    samples = fes[(fes.source == "samples") & (fes.delta_mu == 0.0)].sort_values("x_Au").free_energy_kT.to_numpy()
    samples_rmse = fes_rmse(samples[compared], ref_free[compared])[0]
    wall = float(summary.get("wall_time_s", summary.get("training_wall_time_s")))   # chains; trained runs
    wall_per_deposit = wall / max(len(deposits), 1)
    row = {"run": run.name, "method": config["methods"][0], "T_K": temperature, "deposits": len(deposits),
           "final_bias_rmse_kT": float(rmse[-1]), "best_bias_rmse_kT": float(rmse.min()),
           "deposits_to_target": int(deposits[reached[0]]) if reached.size else math.nan,
           "evaluations_to_target": float(evaluations[reached[0]]) if reached.size else math.nan,
           "samples_rmse_kT": samples_rmse, "total_evaluations": float(summary["energy_evaluations"]),
           "batch": batch, "ce_wall_s": wall, "ce_wall_per_deposit_s": wall_per_deposit}
    if rates:
        rate = rates.get(batch) or rates[min(rates, key=lambda b: abs(b - batch))]
        row["projected_energy_s_to_target"] = row["evaluations_to_target"] / rate
        row["projected_wall_s_to_target"] = row["projected_energy_s_to_target"] + wall_per_deposit * row["deposits_to_target"]
    return row


def main(argv=None) -> int:
    args = parse_args(argv)
    reference = pd.read_csv(args.reference / "reference.csv")
    rows = [analyse(run, reference, args.target, args.f_max, args.rates) for run in args.runs]
    table = pd.DataFrame(rows)
    with pd.option_context("display.width", 200, "display.max_columns", None):
        print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
