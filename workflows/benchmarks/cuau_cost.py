"""Cost to accuracy on Cu–Au: energy evaluations until F(x_Au) is within a target of the reference.

Usage (from the repository root), with finished runs at one temperature of the reference's cell,
e.g. from `metadns run workflows/cuau_64.yaml --profile cpu-cost`:
    python workflows/benchmarks/cuau_cost.py RUN_DIR [RUN_DIR ...] \\
        [--reference workflows/benchmarks/data/cuau_reference_64] [--target 1.0] [--f-max 8] \\
        [--energy-rate CONFIGS_PER_S]

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
measured throughput of an expensive backend (configurations/s; the MACE backend evaluates any
request in chunks of its own batch size, so one rate serves every method: measure it with
``mace_speed.py``), plus the CE run's wall time per deposit for the network and bookkeeping
(the whole run's time divided by its deposits: an upper bound).
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
    parser.add_argument("--energy-rate", type=float, default=None,
                        help="configurations/s of an expensive backend (e.g. MACE from mace_speed.py)")
    args = parser.parse_args(argv)
    if args.energy_rate is not None and not args.energy_rate > 0:
        parser.error(f"--energy-rate must be > 0 configurations/s, got {args.energy_rate}")
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


def evaluations_per_deposit(config: dict, n_sites: int) -> tuple[float, float]:
    """(evaluations before the first deposit, evaluations per deposit)."""
    method, reference, training = config["methods"][0], config.get("reference", {}), config.get("training", {})
    chains = reference.get("chains", 64)
    if method == "mcmc-metad":
        return chains, reference.get("deposit_every", 1) * chains * n_sites
    if method == "metadns-mcmc":
        return chains, chains * (max(1, reference.get("local_sweeps", 1)) * n_sites + 1)
    if method == "metadns":
        if training.get("walkers", 1) != 1:
            raise ValueError("metadns runs with several walkers are not supported here (hills per deposit differ)")
        return 0.0, training.get("batch_size", 128)
    raise ValueError(f"method {method!r} has no bias to compare; use one of {METHODS}")


def analyse(run: Path, reference: pd.DataFrame, target: float, f_max: float, rate: float | None) -> dict:
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
    start, per_deposit = evaluations_per_deposit(config, n_sites)
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
           "ce_wall_s": wall, "ce_wall_per_deposit_s": wall_per_deposit}
    if rate is not None:
        row["projected_energy_s_to_target"] = row["evaluations_to_target"] / rate
        row["projected_wall_s_to_target"] = row["projected_energy_s_to_target"] + wall_per_deposit * row["deposits_to_target"]
    return row


def main(argv=None) -> int:
    args = parse_args(argv)
    reference = pd.read_csv(args.reference / "reference.csv")
    rows = [analyse(run, reference, args.target, args.f_max, args.energy_rate) for run in args.runs]
    table = pd.DataFrame(rows)
    with pd.option_context("display.width", 200, "display.max_columns", None):
        print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
