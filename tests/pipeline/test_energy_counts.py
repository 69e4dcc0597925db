"""Every energy a run computes is counted, and only those (summary.json and the cost rows).

A counting backend: the Ising model's full energy and single-site ΔE are wrapped so that every
configuration passed to either is counted. Each method runs one campaign run on Ising L=6 (too
large for the exact reference, which would add energy calls that are not the run's), with a
replay buffer, the Metropolis–Hastings pass and a warm start where the method has them; the
counted calls must equal the run's ``full_energy_evaluations`` and ``local_energy_changes`` (and, for
the biased chain methods, the last ``energy_evaluations`` of history.parquet).
"""

from __future__ import annotations

import pandas as pd
import pytest

from pipeline.campaign import prepare_campaign
from pipeline.config import config_from_dict
from pipeline.runner import execute_run
from systems.ising import IsingModel

CONFIG = {
    "seed": 4, "system": {"name": "ising", "L": 6, "beta": 0.4},
    "sampler": {"hidden": 8, "layers": 1, "sites_per_step": 6},
    "bias": {"gamma": 5, "sigma": 0.1},
    "training": {"outer_iterations": 6, "batch_size": 16, "inner_steps": 1, "maskings": 2, "threads": 1,
                 "replay_buffer_size": 32, "warmstart_iterations": 3},
    "sampling": {"n_samples": 40, "batch_size": 20, "metropolis_hastings": True},
    "reference": {"chains": 8, "sweeps": 12, "burn_in": 2, "deposit_every": 2},
}


@pytest.fixture
def counted(monkeypatch):
    """Counts of configurations passed to the Ising full energy and to its ΔE."""
    counts = {"full": 0, "local": 0}
    full, local = IsingModel._energy, IsingModel._energy_change

    def counting_energy(self, x):
        counts["full"] += x.shape[0]
        return full(self, x)

    def counting_change(self, x, sites, new_states):
        counts["local"] += x.shape[0]
        return local(self, x, sites, new_states)

    monkeypatch.setattr(IsingModel, "_energy", counting_energy)
    monkeypatch.setattr(IsingModel, "_energy_change", counting_change)
    return counts


@pytest.mark.parametrize("method, chain_loss", [("metadns", "likelihood"), ("mdns-warmstart", "likelihood"),
                                               ("mcmc-metad", "likelihood"), ("metropolis", "likelihood"),
                                               ("sw", "likelihood"), ("metadns-mcmc", "likelihood"),
                                               ("metadns-mcmc", "wdce")])
def test_energy_counters_equal_the_energy_calls_made(tmp_path, counted, method, chain_loss):
    raw = {**CONFIG, "methods": [method], "training": {**CONFIG["training"], "chain_loss": chain_loss}}
    campaign = prepare_campaign(config_from_dict(raw, "counts"), tmp_path, resume=False)
    [spec] = campaign.runs
    counted["full"] = counted["local"] = 0
    result = execute_run(campaign, spec, progress=False)
    summary = result.summary
    assert (summary["full_energy_evaluations"], summary["local_energy_changes"]) == (counted["full"], counted["local"])
    assert summary["energy_evaluations"] == counted["full"] + counted["local"]
    assert counted["full"] > 0
    if method == "metadns-mcmc":   # starting states, a proposal per chain per round, WDCE's fresh draws
        rounds, adaptive, chains = 6 + 12, 6, CONFIG["reference"]["chains"]
        fresh = adaptive * CONFIG["training"]["batch_size"] if chain_loss == "wdce" else 0
        assert counted["full"] == chains + rounds * chains + fresh
    cost = pd.read_parquet(result.run_dir / "observables.parquet").query("estimator == 'cost'").set_index("observable")
    for name in ("energy_evaluations", "full_energy_evaluations", "local_energy_changes"):
        assert cost.loc[name, "value"] == summary[name]
    if method in ("mcmc-metad", "metadns-mcmc"):   # the chain history's last block ends the run's count
        history = pd.read_parquet(result.run_dir / "history.parquet")
        assert history.energy_evaluations.iloc[-1] == counted["full"] + counted["local"]
