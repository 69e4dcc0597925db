"""The comparison table printed at the end of ``metadns run``: one row per run with its
headline observables (main estimator), ESS, JS divergences against the reference and cost;
written to ``comparison.parquet`` beside the runs (docs/outputs.md), with the units of the
campaign's system and JS divergences in nats as field metadata."""

from __future__ import annotations

import pandas as pd

from pipeline import estimators as est
from pipeline.build import build_system
from pipeline.campaign import Campaign
from pipeline.outputs import provenance_metadata, system_units, write_parquet
from pipeline.registry import METHODS
from pipeline.runner import RunResult, campaign_reference

__all__ = ["main_estimator", "comparison_table", "write_and_print_comparison"]


def main_estimator(method: str) -> str:
    """The estimator a method's headline figures use: its ``estimator`` trait, else
    ``likelihood`` for trained samplers and ``mcmc`` for chains."""
    traits = METHODS[method].traits
    return traits.get("estimator", "likelihood" if traits["trained"] else "mcmc")


def comparison_table(campaign: Campaign, results: list[RunResult], system) -> pd.DataFrame:
    """One row per run: headline observables (main estimator), ESS, JS vs the reference
    (``system``: the campaign's, :func:`pipeline.build.build_system`)."""
    rows = []
    for result in results:
        obs = pd.read_parquet(result.run_dir / "observables.parquet")
        obs = obs[obs.delta_mu == float(system.chemical_potential)]  # the run's own ensemble
        hist = pd.read_parquet(result.run_dir / "histograms.parquet")
        estimator = main_estimator(result.spec.method)
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
        reference = campaign_reference(campaign, result.spec, system)
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


def write_and_print_comparison(campaign: Campaign, results: list[RunResult]) -> pd.DataFrame:
    """Write ``comparison.parquet`` under the campaign folder and print the table."""
    system = build_system(campaign.config)
    table = comparison_table(campaign, results, system)
    js_units = {column: "nat" for column in table.columns if column.startswith("js_")}
    write_parquet(table, campaign.root / "comparison.parquet",
                  provenance_metadata(campaign.config.to_dict(), campaign.config.seed),
                  {**system_units(system), **js_units})
    with pd.option_context("display.max_columns", None, "display.width", 200,
                           "display.float_format", "{:.4g}".format):
        print(table.to_string(index=False))
    return table
