"""history.parquet of the biased chain methods (``mcmc-metad``, ``metadns-mcmc``): one row per
block of the chains, checked against what the run really did.

Ising L = 3 (exact reference, so ``mcmc-metad`` has an FES RMSE), 4 chains, a few blocks. The
acceptance rates are counted independently by wrapping the functions that make the accept
decisions (``metropolis_trial`` for local moves, ``global_move`` for neural proposals) and
grouping their calls by block; hills and energy evaluations are compared with the summary and
the deposits in HILLS. A ``metadns-mcmc`` run interrupted and resumed writes the same history
as an uninterrupted one, wall times aside.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from pipeline import estimators as est
from pipeline import neural_mcmc
from pipeline.campaign import prepare_campaign
from pipeline.config import config_from_dict
from pipeline.methods import neural_chains
from pipeline.runner import execute_run
from systems import reference_samplers

CHAINS, SITES = 4, 9
BASE = {
    "seed": 5, "system": {"name": "ising", "L": 3, "beta": 0.4},
    "sampler": {"hidden": 4, "layers": 1, "sites_per_step": 3},
    "bias": {"gamma": 5, "sigma": 0.2, "height_per_cycle": 0.5},
    "training": {"outer_iterations": 3, "batch_size": 8, "inner_steps": 1, "maskings": 1, "threads": 1,
                 "checkpoint_every": 2},
    "reference": {"chains": CHAINS, "sweeps": 7, "burn_in": 1, "deposit_every": 2},
}
NEURAL_KERNELS = {"local and global": {}, "global only": {"local_sweeps": 0}, "local only": {"global_moves": False}}


def run(raw: dict, root):
    campaign = prepare_campaign(config_from_dict(raw, "history"), root, resume=True)
    [spec] = campaign.runs
    return execute_run(campaign, spec, progress=False)


@pytest.fixture
def decisions(monkeypatch):
    """Accepted counts of every local Metropolis trial call, (accepted chains, chains), and the
    accept masks and proposal log-weights of every global move, in call order."""
    seen = {"local": [], "global": []}

    def counted_trial(original):
        def trial(system, x, beta, generator, bias_energy=None):
            x_new, accepted, delta = original(system, x, beta, generator, bias_energy)
            seen["local"].append((int(accepted.sum()), accepted.numel()))
            return x_new, accepted, delta
        return trial

    original_global = neural_mcmc.global_move

    def counted_global(*args, **kwargs):
        state, accept, log_w = original_global(*args, **kwargs)
        seen["global"].append((accept.numpy().copy(), log_w.numpy().copy()))
        return state, accept, log_w

    monkeypatch.setattr(reference_samplers, "metropolis_trial", counted_trial(reference_samplers.metropolis_trial))
    monkeypatch.setattr(neural_mcmc, "metropolis_trial", counted_trial(neural_mcmc.metropolis_trial))
    monkeypatch.setattr(neural_mcmc, "global_move", counted_global)
    return seen


def block_acceptance(local: list[tuple[int, int]], trials_per_block: list[int]) -> np.ndarray:
    """Accepted / tried of consecutive groups of trial calls, one group per block (NaN: no trial)."""
    counts = np.asarray(local, dtype=np.float64).reshape(-1, 2)
    ends = np.cumsum(trials_per_block)
    assert len(counts) == ends[-1]
    running = np.vstack([np.zeros(2), np.cumsum(counts, axis=0)])
    sums = running[ends] - running[ends - trials_per_block]
    return np.where(sums[:, 1] > 0, sums[:, 0], np.nan) / sums[:, 1]


def assert_common(history: pd.DataFrame, run_dir, adaptive_blocks: int, blocks: int) -> dict:
    """What every chain history must satisfy; returns the run's summary."""
    summary = json.loads((run_dir / "summary.json").read_text())
    assert history.iteration.tolist() == list(range(1, blocks + 1))
    assert history.phase.tolist() == ["adaptive"] * adaptive_blocks + ["production"] * (blocks - adaptive_blocks)
    hills = history.n_hills.to_numpy()
    assert (np.diff(hills) >= 0).all() and hills[-1] == summary["hills"]
    np.testing.assert_array_equal(hills, CHAINS * np.minimum(history.iteration, adaptive_blocks))
    deposits = {line.split()[0] for line in (run_dir / "HILLS").read_text().splitlines() if not line.startswith("#")}
    assert deposits == {str(k) for k in range(1, adaptive_blocks + 1)}    # HILLS time: the deposit call
    assert history.energy_evaluations.is_monotonic_increasing
    assert history.energy_evaluations.iloc[-1] == summary["energy_evaluations"]
    max_v = history.max_bias_kT.to_numpy()
    assert (max_v > 0).all() and (np.diff(max_v[:adaptive_blocks]) > 0).all()
    assert (max_v[adaptive_blocks:] == max_v[adaptive_blocks - 1]).all()          # V frozen in production
    coverage = history.cv_coverage.to_numpy()
    assert (np.diff(coverage) >= 0).all() and ((coverage >= 0) & (coverage <= 1)).all()
    assert history.wall_time_s.is_monotonic_increasing and history.beta.eq(0.4).all()
    schema = pq.read_schema(run_dir / "history.parquet")
    assert {name: schema.field(name).metadata[b"unit"] for name in ("max_bias_kT", "wall_time_s", "beta")} == \
        {"max_bias_kT": b"kT", "wall_time_s": b"s", "beta": b"1/J"}
    return summary


def test_mcmc_metad_history(tmp_path, decisions):
    result = run({**BASE, "methods": ["mcmc-metad"]}, tmp_path)
    history = pd.read_parquet(result.run_dir / "history.parquet")
    sweeps = [2, 2, 2, 2, 2, 2, 1]          # 3 deposition blocks of deposit_every, 7 production sweeps
    summary = assert_common(history, result.run_dir, 3, len(sweeps))
    assert {"loss", "ess_fraction", "global_acceptance"}.isdisjoint(history.columns)
    expected = block_acceptance(decisions["local"], [s * SITES for s in sweeps])
    np.testing.assert_allclose(history.local_acceptance, expected, rtol=0, atol=1e-15)
    assert ((expected > 0) & (expected < 1)).all()
    rmse = history.fes_rmse_kT.to_numpy()
    assert np.isfinite(rmse[:3]).all() and np.isnan(rmse[3:]).all()
    assert summary["fes_rmse_history"] == history[["n_hills", "energy_evaluations", "fes_rmse_kT"]].iloc[:3] \
        .to_numpy().tolist()


@pytest.mark.parametrize("kernel", NEURAL_KERNELS)
def test_metadns_mcmc_history(tmp_path, decisions, kernel):
    raw = {**BASE, "methods": ["metadns-mcmc"], "reference": {**BASE["reference"], **NEURAL_KERNELS[kernel]}}
    result = run(raw, tmp_path)
    history = pd.read_parquet(result.run_dir / "history.parquet")
    adaptive, production = 3, 7
    assert_common(history, result.run_dir, adaptive, adaptive + production)
    local_trials = raw["reference"].get("local_sweeps", 1) * SITES
    trials = [SITES] * adaptive + [local_trials] * production    # adaptive rounds make at least one sweep
    np.testing.assert_allclose(history.local_acceptance, block_acceptance(decisions["local"], trials),
                               rtol=0, atol=1e-15)
    global_rounds = adaptive + (production if raw["reference"].get("global_moves", True) else 0)
    assert len(decisions["global"]) == global_rounds
    accepts = np.array([accept.mean() for accept, _ in decisions["global"]])
    ess = np.array([est.kish_ess(log_w) / CHAINS for _, log_w in decisions["global"]])
    nan_tail = np.full(adaptive + production - global_rounds, np.nan)
    np.testing.assert_allclose(history.global_acceptance, np.r_[accepts, nan_tail], rtol=0, atol=1e-15)
    np.testing.assert_allclose(history.ess_fraction, np.r_[ess, nan_tail], rtol=1e-12)
    rates = history[["local_acceptance", "global_acceptance", "ess_fraction"]].to_numpy()
    assert ((rates[np.isfinite(rates)] >= 0) & (rates[np.isfinite(rates)] <= 1)).all()
    assert (history.ess_fraction.dropna() > 0).all()
    loss = history.loss.to_numpy()
    assert np.isfinite(loss[:adaptive]).all() and np.isnan(loss[adaptive:]).all()
    assert "fes_rmse_kT" not in history


def test_metadns_mcmc_history_survives_a_resume(tmp_path, monkeypatch):
    raw = {**BASE, "methods": ["metadns-mcmc"]}
    whole = run(raw, tmp_path / "whole")
    original_step = neural_chains.NeuralChainRun.step

    def interrupt_round_6(self):
        if self.iteration == 5:
            raise KeyboardInterrupt
        original_step(self)

    monkeypatch.setattr(neural_chains.NeuralChainRun, "step", interrupt_round_6)
    with pytest.raises(KeyboardInterrupt):
        run(raw, tmp_path / "parts")
    checkpoint = tmp_path / "parts" / whole.run_dir.relative_to(tmp_path / "whole") / "checkpoints" / "checkpoint.pt"
    saved = torch.load(checkpoint, weights_only=False)
    assert saved["iteration"] == 4 and len(saved["history"]["rows"]) == 4
    monkeypatch.setattr(neural_chains.NeuralChainRun, "step", original_step)
    resumed = run(raw, tmp_path / "parts")
    a, b = (pd.read_parquet(r.run_dir / "history.parquet").drop(columns="wall_time_s") for r in (whole, resumed))
    pd.testing.assert_frame_equal(a, b)
