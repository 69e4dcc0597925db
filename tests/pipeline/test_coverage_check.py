"""The missing-basin check of biased trained runs (pipeline/coverage_check.py).

A MetaDNS run that covers the target (Ising L=4 in its disordered phase) passes it; one that has
collapsed onto the m > 0 basin (Ising L=6 at β = 0.6 after 4 iterations) is flagged, on the
console and in summary.json, although its ESS alone would not show it. The check can be
switched off, and its chains start spread over the CV range.
"""

from __future__ import annotations

from pathlib import Path

import torch

from pipeline.campaign import prepare_campaign
from pipeline.config import config_from_dict
from pipeline.coverage_check import spread_starts
from pipeline.runner import execute_run
from systems.registry import make_system


def metadns_run(L, beta, outer_iterations, root: Path, **sampling):
    raw = {"methods": ["metadns"], "seed": 1, "system": {"name": "ising", "L": L, "beta": beta},
           "sampler": {"hidden": 8, "layers": 2, "sites_per_step": 2}, "bias": {"sigma": 0.1},
           "training": {"outer_iterations": outer_iterations, "batch_size": 64, "inner_steps": 2, "threads": 1},
           "sampling": {"n_samples": 2000, **sampling}}
    campaign = prepare_campaign(config_from_dict(raw, "coverage"), root, resume=False)
    return execute_run(campaign, campaign.runs[0], progress=False)


def test_a_run_that_covers_the_target_passes(tmp_path):
    summary = metadns_run(4, 0.3, 40, tmp_path).summary
    check = summary["coverage_check"]
    assert check["verdict"] == "agree", check
    assert not any(w.startswith("coverage check") for w in summary["warnings"])
    assert summary["local_energy_changes"] == check["energy_evaluations"]["local"] == 32 * 500 * 16


def test_a_collapsed_run_is_flagged(tmp_path, capsys):
    summary = metadns_run(6, 0.6, 4, tmp_path).summary
    assert summary["coverage_check"]["verdict"] != "agree"
    [warning] = [w for w in summary["warnings"] if w.startswith("coverage check")]
    assert warning in capsys.readouterr().out


def test_the_check_can_be_switched_off(tmp_path):
    summary = metadns_run(4, 0.3, 3, tmp_path, coverage_check_sweeps=0).summary
    assert "coverage_check" not in summary and summary["local_energy_changes"] == 0


def test_starts_span_the_cv_range_pure_states_included():
    system = make_system("potts", L=8, q=3)
    starts = spread_starts(9, system.n_sites, system.n_states, torch.Generator().manual_seed(0))
    dominant = torch.arange(9) % 3
    share = (starts == dominant[:, None]).double().mean(dim=1)    # the share of each chain's own state
    assert share[-1] == 1.0 and share[0] < 0.5                  # uniform at one end, pure at the other
    expected = 1 / 3 + (2 / 3) * torch.linspace(0, 1, 9, dtype=torch.float64)
    assert torch.all((share - expected).abs() < 0.15)
