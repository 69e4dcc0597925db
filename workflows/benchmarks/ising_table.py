"""Paper Ising table: MDNS, warm-start MDNS and MetaDNS against Swendsen–Wang.

Runs (or resumes) the workflow configs and prints, per β, the JS divergences of the
magnetisation and E/N histograms (fixed bins: one per attainable value) against SW,
⟨|m|⟩, C(1), P(m>0) and the physical ESS/n. JS for trained samplers uses likelihood
weights; the bias-weight value stands beside it, and js_cv_floor is the JS that sampling
noise alone gives at the run's ESS (a JS near it is limited by sample size, not by bias).
Paper (L = 16, β = 0.6): MetaDNS JS(m) = 0.046, MDNS 0.22 (collapsed). Our goal: ≤ 0.01.

    python workflows/benchmarks/ising_table.py --profile cpu-walkers   # L = 16 MetaDNS rows
    python workflows/benchmarks/ising_table.py --profile cpu           # MDNS, warm-start MDNS rows

Runs go to runs/benchmarks/L<L>_<profile>/ and are resumed there (finished runs are reused).
The L = 8 comparison at equal budget (MDNS collapses, MetaDNS does not) is the quickstart,
workflows/quickstart.yaml. BENCHMARKS.md records the measured tables.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from pipeline.config import load_config
from pipeline.campaign import prepare_campaign
from pipeline.comparison import comparison_table
from pipeline.runner import run_campaign

HERE = Path(__file__).resolve().parent
PAPER_CONFIGS = sorted((HERE.parent / "paper").glob("ising_l16_beta*.yaml"))
COLUMNS = ["beta", "method", "js_cv", "js_cv_floor", "js_cv_bias_weights", "js_energy_per_site",
           "js_energy_per_site_bias_weights", "abs_magnetisation", "abs_magnetisation_stderr", "correlation_r1", "positive_magnetisation",
           "positive_magnetisation_stderr", "ess_fraction", "energy_evaluations", "wall_time_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="*", type=Path, default=PAPER_CONFIGS)
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--L", type=int, default=None, help="lattice size (default: the configs' 16)")
    parser.add_argument("--out", type=Path, default=Path("runs/benchmarks"))
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()

    overrides = list(args.overrides)
    if args.L is not None:
        overrides += [f"system.L={args.L}", f"bias.grid_points={args.L * args.L + 1}"]
    tables = []
    for path in args.configs:
        config = load_config(path, overrides, profile=args.profile)
        campaign = prepare_campaign(config, args.out / f"L{config.system.params['L']}_{args.profile}", resume=True)
        tables.append(comparison_table(campaign, run_campaign(campaign, progress=True)))
    table = pd.concat(tables, ignore_index=True)
    table = table[[c for c in COLUMNS if c in table.columns]].sort_values(["beta", "method"])
    text = table.to_string(index=False, float_format="{:.4g}".format)
    print(text)
    target = args.out / f"ising_table_L{args.L or 16}_{args.profile}.txt"
    target.write_text(text + "\n")
    print(f"\nwritten to {target}")


if __name__ == "__main__":
    main()
