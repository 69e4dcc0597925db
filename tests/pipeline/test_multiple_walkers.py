"""Multiple-walker MetaDNS (training.walkers > 1): several samplers fill one bias."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline import estimators as est
from pipeline.bias import WellTemperedGridBias
from pipeline.config import config_from_dict, expand_runs
from pipeline.build import build_system, derive_seed
from pipeline.campaign import prepare_campaign
from pipeline.methods.trained import make_trainer
from pipeline.runner import RunContext, RunServices, run_campaign
from systems.exact import exact_ensemble

BETA = 0.6
TINY = {
    "seed": 7, "methods": ["metadns"], "system": {"name": "ising", "L": 4, "beta": BETA},
    "sampler": {"denoiser": "lattice", "sites_per_step": 4, "hidden": 8, "layers": 1},
    "bias": {"gamma": 10, "sigma": 0.1, "height_per_cycle": 0.5},
    "training": {"outer_iterations": 4, "batch_size": 16, "inner_steps": 2, "maskings": 2, "walkers": 3},
}


def multi_walker_trainer(raw: dict):
    config = config_from_dict(raw, "walkers")
    spec = expand_runs(config)[0]
    ctx = RunContext(config, spec, build_system(config), None, derive_seed(config.seed, spec.run_name), {}, False,
                     None, RunServices())
    return make_trainer(ctx, ctx.system.energy)


def test_walkers_share_one_bias_filled_in_walker_order():
    trainer = multi_walker_trainer(TINY)
    trainer.train(progress=False)
    walkers, rounds, batch = 3, 4, 16
    hills = trainer.bias.hills
    assert trainer.bias.n_hills == walkers * rounds * batch == trainer.history[-1].n_hills
    assert trainer.bias.n_depositions == walkers * rounds       # one deposit call per walker per round
    # Replaying the logged deposits into a fresh bias, call by call, gives V and every height:
    # each call's hills were computed against V as the previous walker's call left it.
    replay = WellTemperedGridBias(**trainer.bias.settings)
    for call in range(1, trainer.bias.n_depositions + 1):
        mine = hills["time"] == call
        np.testing.assert_array_equal(replay.deposit(hills["centres"][mine]), hills["heights"][mine])
    np.testing.assert_array_equal(replay.values, trainer.bias.values)
    for walker in trainer.walkers:  # each walker's copy holds the same bias
        assert walker.bias.state_dict() == trainer.bias.state_dict()
    # walkers are distinct samplers (own seeds): their first fresh batches differ
    first_calls = [hills["centres"][hills["time"] == w + 1] for w in range(walkers)]
    assert not np.array_equal(first_calls[0], first_calls[1])


def test_resumed_multi_walker_training_equals_uninterrupted():
    whole = multi_walker_trainer(TINY)
    whole.train(progress=False)
    first = multi_walker_trainer({**TINY, "training": {**TINY["training"], "outer_iterations": 2}})
    first.train(progress=False)
    state = first.state_dict()
    second = multi_walker_trainer(TINY)
    second.load_state_dict(state)
    second.train(progress=False)
    assert [r.loss for r in second.history] == [r.loss for r in whole.history]
    np.testing.assert_array_equal(second.bias.values, whole.bias.values)
    a, b = whole.sample_final(50), second.sample_final(50)
    assert torch.equal(a.x, b.x) and torch.equal(a.log_q, b.log_q)
    with pytest.raises(ValueError, match="same training.walkers"):
        multi_walker_trainer({**TINY, "training": {**TINY["training"], "walkers": 2}}).load_state_dict(state)


def test_final_samples_are_split_over_walkers_with_the_mixture_likelihood():
    """4 + 3 + 3 samples, one block per walker; log q is that of the walkers' equal mixture,
    log((1/3) Σ_w q_w(x, σ)), with every q_w re-scored independently here."""
    trainer = multi_walker_trainer(TINY)
    trainer.train(progress=False)
    batch = trainer.sample_final(10)
    assert batch.x.shape == (10, 16)
    per_walker = torch.stack([w.ema_sampler.log_prob(batch.x, batch.order) for w in trainer.walkers])
    mixture = torch.logsumexp(per_walker, dim=0) - math.log(3)
    np.testing.assert_allclose(batch.log_q.numpy(), mixture.numpy(), rtol=0, atol=1e-6)  # float32 network
    # the blocks are the walkers' own draws: same x as each walker sampling alone
    alone = multi_walker_trainer(TINY)
    alone.train(progress=False)
    start = 0
    for walker, count in zip(alone.walkers, (4, 3, 3)):
        own = walker.sample_final(count)
        assert torch.equal(own.x, batch.x[start:start + count])
        start += count


def test_mixture_weights_recover_z_when_walkers_hold_disjoint_modes():
    """Two 'walkers' that each sample one half of a 4-state target (q_A on {0, 1}, q_B on
    {2, 3}, 1e-7 elsewhere, as for two Ising modes): per-walker weights put ln Z low by ln 2, mixture weights
    (what sample_final's log q gives) recover ln Z and P(state ≥ 2) within 3 SE."""
    target = np.array([1.0, 2.0, 3.0, 4.0])            # unnormalised, Z = 10
    held, stray = 0.5 - 1e-7, 1e-7                    # ≈ 0.004 stray draws expected in 40,000
    q = np.array([[held, held, stray, stray], [stray, stray, held, held]])
    rng = np.random.default_rng(5)
    blocks = [rng.choice(4, size=20000, p=qw) for qw in q]
    states = np.concatenate(blocks)
    mixture_log_q = np.log(q.mean(axis=0))[states]
    log_w = np.log(target[states]) - mixture_log_q
    ln_z, ln_z_err = est.log_partition_function(log_w)
    assert abs(ln_z - math.log(10.0)) < 3 * ln_z_err
    upper, upper_err = est.weighted_mean_and_stderr((states >= 2).astype(float), log_w)
    assert abs(upper - 0.7) < 3 * upper_err
    own_log_w = np.concatenate([np.log(target[b] / qw[b]) for b, qw in zip(blocks, q)])
    own_ln_z, own_err = est.log_partition_function(own_log_w)
    assert abs(own_ln_z - (math.log(10.0) - math.log(2.0))) < 3 * own_err


@pytest.mark.slow
def test_multi_walker_reweighting_matches_exact_enumeration(tmp_path):
    config = config_from_dict({
        **TINY, "seed": 11,
        "sampler": {"denoiser": "lattice", "sites_per_step": 2, "hidden": 16, "layers": 2},
        "bias": {"gamma": 10, "sigma": 0.05, "height_per_cycle": 0.5},
        "training": {"outer_iterations": 40, "batch_size": 64, "inner_steps": 4, "maskings": 4,
                     "learning_rate": 2e-3, "walkers": 2, "threads": 1},
        "sampling": {"n_samples": 6000, "batch_size": 3000},
    }, "walkers_l4")
    (result,) = run_campaign(prepare_campaign(config, tmp_path, resume=False), progress=False)
    obs = pd.read_parquet(result.run_dir / "observables.parquet")
    rows = obs[obs.estimator == "likelihood"].set_index("observable")
    exact = exact_ensemble(build_system(config), BETA).expectations()
    for name in ("energy_per_site", "abs_magnetisation"):
        value, stderr = rows.loc[name, "value"], rows.loc[name, "stderr"]
        assert 0 < stderr < 0.05
        assert abs(value - exact[name]) < 3 * stderr, (name, value, stderr, exact[name])
    assert result.summary["hills"] == 2 * 40 * 64
    assert result.summary["walker_seeds"] == [derive_seed(result.summary["seed"], f"walker{w}") for w in range(2)]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error shown where no GPU is visible")
def test_cuda_device_without_a_gpu_is_a_config_error(tmp_path):
    from pipeline.config import ConfigError

    config = config_from_dict({**TINY, "training": {**TINY["training"], "device": "cuda"}}, "gpu")
    with pytest.raises(ConfigError) as error:
        prepare_campaign(config, tmp_path, resume=False)
    assert error.value.field == "training.device"
    assert not any(tmp_path.iterdir())
