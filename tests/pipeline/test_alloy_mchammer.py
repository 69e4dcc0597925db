"""MetaDNS on the paper's Cu–Au cluster expansion against icet's mchammer (an independent sampler).

Semi-grand-canonical at 1200 K and Δμ = 0 on a 32-site cell: ⟨x_Au⟩ and ⟨E_f⟩/atom agree within
3 combined standard errors (MetaDNS: delta-method errors of likelihood weights; mchammer:
autocorrelation-aware errors of several independent chains).  Canonical: ⟨E_f⟩ at fixed
x_Au = 1/4 from mchammer's CanonicalEnsemble against MetaDNS's likelihood-weighted samples
with exactly that composition (the semi-grand-canonical samples conditioned on N_Au).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from pipeline import estimators as est
from pipeline.config import config_from_dict
from pipeline.campaign import prepare_campaign
from pipeline.runner import run_campaign
from systems.alloys.cluster_expansion import PAPER_CUAU_CE
from systems.alloys.fcc import FCCLattice
from systems.alloys.mchammer_reference import run_mchammer

CELL = {"size": [2, 2, 2], "cell": "conventional", "lattice_constant": 3.8}  # 32 sites
TEMPERATURE = 1200.0
N_SITES = 32


@pytest.fixture(scope="module")
def metadns_samples(tmp_path_factory):
    config = config_from_dict({
        "methods": ["metadns"], "seed": 5,
        "system": {"name": "alloy", **CELL, "energy": {"name": "cluster_expansion", "model": "cuau_paper"},
                   "temperature": [TEMPERATURE]},
        "sampler": {"hidden": 32, "layers": 3, "sites_per_step": 2},
        "bias": {"gamma": 10, "sigma": 0.05, "height_per_cycle": 0.5},
        "training": {"outer_iterations": 150, "batch_size": 128, "inner_steps": 5, "maskings": 8,
                     "learning_rate": 2.0e-3, "threads": 1},
        "sampling": {"n_samples": 8000},
    }, "cuau32")
    campaign = prepare_campaign(config, tmp_path_factory.mktemp("runs"), resume=False)
    (result,) = run_campaign(campaign, progress=False)
    samples = pd.read_parquet(result.run_dir / "samples.parquet")
    occupations = np.stack(samples.configuration.to_numpy()).astype(np.int64)
    return {"n_au": occupations.sum(1), "energy": samples.energy.to_numpy(), "log_w": samples.log_w_likelihood.to_numpy(),
            "observables": pd.read_parquet(result.run_dir / "observables.parquet")}


def mchammer_chains(ensemble: str, quantity: str, n_chains: int = 4, **kwargs) -> tuple[float, float]:
    """Mean and autocorrelation-aware standard error over independent mchammer chains."""
    supercell = FCCLattice(CELL["size"], CELL["cell"], CELL["lattice_constant"]).reference_atoms("Cu")
    chains = [run_mchammer(PAPER_CUAU_CE, supercell, TEMPERATURE, ensemble=ensemble, n_sweeps=1500,
                           burn_in_sweeps=100, seed=seed, **kwargs)[quantity] for seed in range(n_chains)]
    return est.mcmc_mean_and_stderr(np.stack(chains, axis=1).astype(np.float64))


def assert_agree(ours: tuple[float, float], theirs: tuple[float, float], label: str) -> None:
    combined = math.hypot(ours[1], theirs[1])
    assert combined > 0
    assert abs(ours[0] - theirs[0]) < 3 * combined, f"{label}: MetaDNS {ours} vs mchammer {theirs}"


@pytest.mark.slow
def test_semi_grand_canonical_composition_and_energy_agree_with_mchammer(metadns_samples):
    rows = metadns_samples["observables"]
    rows = rows[(rows.estimator == "likelihood")].set_index("observable")
    fraction = (rows.loc["x_Au", "value"], rows.loc["x_Au", "stderr"])
    formation = (rows.loc["formation_energy_per_atom", "value"], rows.loc["formation_energy_per_atom", "stderr"])
    assert fraction[1] < 0.01 and formation[1] < 1e-3
    mc_fraction = mchammer_chains("semi_grand_canonical", "fraction")
    per_atom = mchammer_chains("semi_grand_canonical", "formation_energy")
    assert_agree(fraction, mc_fraction, "x_Au")
    assert_agree(formation, (per_atom[0] / N_SITES, per_atom[1] / N_SITES), "E_f per atom")


@pytest.mark.slow
def test_canonical_energy_at_quarter_gold_agrees_with_mchammer(metadns_samples):
    n_au = N_SITES // 4
    mask = metadns_samples["n_au"] == n_au
    assert mask.sum() > 100, "too few MetaDNS samples at x_Au = 1/4 to condition on"
    ours = est.weighted_mean_and_stderr(metadns_samples["energy"][mask] / N_SITES, metadns_samples["log_w"][mask])
    initial = np.zeros(N_SITES, dtype=np.int64)
    initial[:n_au] = 1
    theirs = mchammer_chains("canonical", "formation_energy", initial_occupation=initial)
    assert_agree(ours, (theirs[0] / N_SITES, theirs[1] / N_SITES), "canonical E_f per atom at x_Au = 1/4")
