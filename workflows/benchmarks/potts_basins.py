"""Basin shares and FES of Potts chain runs against Swendsen–Wang, from finished run folders.

Usage (from the repository root, after e.g.
`metadns run workflows/paper/potts_q3_L16.yaml --profile cpu-mcmc`):
    python workflows/benchmarks/potts_basins.py runs/potts_q3_L16 [--method metadns-mcmc] [--f-max 8] [--min-counts 100]

For each β with a run of ``--method`` and an ``sw`` run, from their ``samples.parquet`` (chain
runs store rounds × chains in order, with log_w_bias = βV(ξ(x)) the weight of each state
for the unbiased target):

* the share of each ordered basin, a state belonging to the basin of its majority Potts state,
  as a weighted mean over the correlated chains with an autocorrelation-aware SE, and the
  split-R̂ of each basin's indicator across chains (near 1 only when the chains move between
  basins; chains frozen where they started can give shares near ⅓ with a tiny SE, so read
  the shares together with R̂ and the chains' basin changes);
* the RMSE in k_BT of the run's F(p1, p2) from samples against SW's (``fes.parquet``, source =
  samples, best constant removed), on the CV nodes where F_SW ≤ ``--f-max`` k_BT and SW has at
  least ``--min-counts`` samples.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import yaml

from pipeline import estimators as est


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("campaign", type=Path, help="campaign folder holding the run folders")
    parser.add_argument("--method", default="metadns-mcmc", help="chain method compared with sw")
    parser.add_argument("--f-max", type=float, default=8.0, help="compare F where F_SW ≤ this (k_BT)")
    parser.add_argument("--min-counts", type=int, default=100, help="fewest SW samples on a compared node")
    args = parser.parse_args(argv)
    if not args.campaign.is_dir():
        parser.error(f"campaign {args.campaign} is not a folder")
    return args


def runs_by_beta(campaign: Path, method: str) -> dict[float, Path]:
    found = {}
    for path in campaign.rglob("summary.json"):
        summary = json.loads(path.read_text())
        if summary.get("method") == method:
            found[round(float(summary["beta"]), 6)] = path.parent
    return found


def run_config(run: Path) -> dict:
    return yaml.safe_load((run / "config.yaml").read_text())


def chain_samples(run: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(configurations int (steps, chains, D), log-weights (steps, chains), CV (steps·chains, 2))."""
    chains = int(run_config(run)["reference"]["chains"])
    table = pq.read_table(run / "samples.parquet", columns=["configuration", "log_w_bias", "cv_p1", "cv_p2"])
    flat = table.column("configuration").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    n = table.num_rows
    states = flat.reshape(n // chains, chains, -1)
    log_w = np.nan_to_num(table.column("log_w_bias").to_numpy(), nan=0.0).reshape(n // chains, chains)
    cv = np.stack([table.column("cv_p1").to_numpy(), table.column("cv_p2").to_numpy()], axis=1)
    return states, log_w, cv


def basin_shares(states: np.ndarray, log_w: np.ndarray, q: int) -> list[dict]:
    """Per Potts state s: share of states whose majority state is s (mean, SE, split-R̂), and
    how many chains were ever in that basin."""
    counts = np.stack([(states == s).sum(axis=2) for s in range(q)], axis=2)    # (steps, chains, q)
    majority = counts.argmax(axis=2)
    rows = []
    for s in range(q):
        indicator = (majority == s).astype(np.float64)
        mean, stderr = est.chain_weighted_mean_and_stderr(indicator, log_w)
        rows.append({"basin": s, "share": mean, "stderr": stderr, "rhat": est.split_rhat(indicator),
                     "chains_visiting": int(indicator.any(axis=0).sum())})
    return rows


def basin_changes(states: np.ndarray, q: int) -> float:
    """Mean number of majority-state changes per chain over the recorded rounds."""
    counts = np.stack([(states == s).sum(axis=2) for s in range(q)], axis=2)
    majority = counts.argmax(axis=2)
    return float((majority[1:] != majority[:-1]).sum(axis=0).mean())


def _nearest(axis: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Index of the nearest entry of the increasing ``axis`` for each value."""
    upper = np.searchsorted(axis, values).clip(1, axis.size - 1)
    return np.where(np.abs(values - axis[upper - 1]) <= np.abs(axis[upper] - values), upper - 1, upper)


def fes_rmse_against_sw(run: Path, sw: Path, sw_cv: np.ndarray, f_max: float, min_counts: int) -> tuple[float, int]:
    """RMSE (k_BT) of the run's F(p1, p2) from samples against SW's on well-sampled nodes."""
    ours, theirs = (pd.read_parquet(r / "fes.parquet") for r in (run, sw))
    ours = ours[ours.source == "samples"].set_index(["p1", "p2"]).free_energy_kT
    theirs = theirs[theirs.source == "samples"].set_index(["p1", "p2"]).free_energy_kT
    counts = np.zeros(len(theirs), dtype=np.int64)
    axes = [np.unique(theirs.index.get_level_values(k)) for k in range(2)]   # the FES grid is a product
    index = [_nearest(axis, sw_cv[:, k]) for k, axis in enumerate(axes)]
    lookup = pd.MultiIndex.from_arrays([axes[0][index[0]], axes[1][index[1]]])
    np.add.at(counts, theirs.index.get_indexer(lookup), 1)
    reference = theirs.to_numpy() - np.nanmin(theirs.to_numpy())
    compared = (counts >= min_counts) & (reference <= f_max)
    rmse, _ = est.fes_rmse(ours.reindex(theirs.index).to_numpy()[compared], reference[compared], align="mean")
    return rmse, int(compared.sum())


def main(argv=None) -> int:
    args = parse_args(argv)
    ours, references = runs_by_beta(args.campaign, args.method), runs_by_beta(args.campaign, "sw")
    common = sorted(set(ours) & set(references))
    if not common:
        print(f"error: no β with both a {args.method} and an sw run under {args.campaign}", file=sys.stderr)
        return 2
    for beta in common:
        run, sw = ours[beta], references[beta]
        q = int(run_config(run)["system"]["q"])
        states, log_w, _ = chain_samples(run)
        sw_states, sw_log_w, sw_cv = chain_samples(sw)
        rmse, nodes = fes_rmse_against_sw(run, sw, sw_cv, args.f_max, args.min_counts)
        print(f"β = {beta:g}: {args.method} F(p1, p2) RMSE against SW {rmse:.2f} k_BT on {nodes} nodes "
              f"(F_SW ≤ {args.f_max:g} k_BT, ≥ {args.min_counts} SW samples); basin changes per chain "
              f"{basin_changes(states, q):.1f} ({args.method}), {basin_changes(sw_states, q):.1f} (sw)")
        print("| run | basin | share | SE | share − ⅓ (SE) | split-R̂ | chains visiting |")
        print("|---|---|---|---|---|---|---|")
        for label, (s, w) in ((args.method, (states, log_w)), ("sw", (sw_states, sw_log_w))):
            for row in basin_shares(s, w, q):
                print(f"| {label} | {row['basin']} | {row['share']:.3f} | {row['stderr']:.3f} | "
                      f"{(row['share'] - 1 / q) / row['stderr']:+.1f} | {row['rhat']:.3f} | {row['chains_visiting']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
