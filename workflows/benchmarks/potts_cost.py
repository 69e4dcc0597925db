"""Cost to accuracy on Potts q = 3: MetaDNS against MCMC WT-MetaD, in the same run.

For each β of the workflow (default workflows/paper/potts_q3_L4.yaml: L = 4, β ∈ {0.5, 1.005,
1.2}) both methods run (or resume) and, after every deposition, the RMSE in k_BT between the
bias's free energy −γ/(γ−1)·V and the exact F(p1, p2) from enumerating all 3^16 states
(best constant offset removed; every attainable CV value counts). Larger lattices (``--set
system.L=8``) have no exact F: a Swendsen–Wang run at each β is added and its F, known only
where its samples went (the low-F region), is the reference instead. Printed per run: the
deposition cycles, hills and energy evaluations spent when the RMSE first falls to
``--target`` (1 k_BT), and the final RMSE. Paper (GPU budgets): MetaDNS 14k–50k vs MCMC
WT-MetaD 36k–107k deposition steps.

Costs are counted as each method spends them: MetaDNS one full-configuration energy per fresh
sample (B = 128 hills per cycle); MCMC one single-site energy difference per trial flip
(64 chains, one hill per chain per sweep).

    python workflows/benchmarks/potts_cost.py --profile cpu
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from pipeline import plots
from pipeline.config import load_config
from pipeline.estimators import cost_to_target
from pipeline.build import build_system
from pipeline.campaign import prepare_campaign
from pipeline.reference_data import has_exact_reference
from pipeline.runner import run_campaign

HERE = Path(__file__).resolve().parent
DEFAULT_CONFIG = HERE.parent / "paper" / "potts_q3_L4.yaml"
METHODS = ("mcmc-metad", "metadns")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--target", type=float, default=1.0, help="FES RMSE to reach, k_BT")
    parser.add_argument("--out", type=Path, default=Path("runs/benchmarks"))
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()

    config = load_config(args.config, args.overrides, profile=args.profile)
    exact = has_exact_reference(build_system(config))
    methods = METHODS if exact else ("sw", *METHODS)
    config = load_config(args.config, [*args.overrides, f"methods=[{','.join(methods)}]"], profile=args.profile)
    campaign = prepare_campaign(config, args.out / f"potts_cost_L{config.system.params['L']}_{args.profile}", resume=True)
    results = run_campaign(campaign, progress=True)

    rows, panels = [], {}
    for result in results:
        if result.spec.method not in METHODS:
            continue
        history = json.loads((result.run_dir / "summary.json").read_text())["fes_rmse_history"]
        spec = result.spec
        rows.append({"beta": spec.beta, "method": spec.method, **cost_to_target(history, args.target),
                     "wall_time_s": result.summary.get("wall_time_s", result.summary.get("training_wall_time_s"))})
        hills, _, rmse = zip(*history)
        panels.setdefault(f"β = {spec.beta:g}", {})[spec.method] = (hills, rmse)
    table = pd.DataFrame(rows).sort_values(["beta", "method"])
    text = table.to_string(index=False, float_format="{:.4g}".format)
    print(text)
    stem = args.out / f"potts_cost_L{config.system.params['L']}_{args.profile}"
    Path(f"{stem}.txt").write_text(text + "\n")
    plots.plot_fes_convergence(f"{stem}.png", panels, args.target, "hills deposited",
                               title=f"Potts q = 3, L = {config.system.params['L']}: FES RMSE against "
                               + ("exact enumeration" if exact else "Swendsen–Wang"))
    print(f"\nwritten to {stem}.txt and {stem}.png")


if __name__ == "__main__":
    main()
