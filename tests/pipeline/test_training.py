"""Unit tests of the dual loop's pieces: replay-buffer eviction, warm-start schedule, deposits."""

import pytest
import torch

from pipeline.bias import WellTemperedGridBias
from pipeline.config import TrainingConfig
from pipeline.sampler import MaskedDiffusionSampler, build_denoiser
from pipeline.training import CVStratifiedReplayBuffer, DualLoopTrainer
from systems.registry import make_system


def test_replay_buffer_keeps_newest_samples_evenly_across_strata():
    buffer = CVStratifiedReplayBuffer(capacity=6)
    # 8 samples of stratum 0 (ids 0..7), then 2 of stratum 1 (ids 8, 9) and 1 of stratum 2 (id 10).
    ids = torch.arange(11)
    strata = torch.tensor([0] * 8 + [1, 1, 2])
    buffer.add(ids[:8, None], ids[:8].double(), -ids[:8].double(), strata[:8])
    assert len(buffer) == 6 and buffer.x[:, 0].tolist() == [2, 3, 4, 5, 6, 7]  # newest of stratum 0
    buffer.add(ids[8:, None], ids[8:].double(), -ids[8:].double(), strata[8:])
    # quota c = 3: Σ min(count, 3) = 3 + 2 + 1 = 6 ≤ capacity; stratum 0 keeps its 3 newest.
    assert sorted(buffer.x[:, 0].tolist()) == [5, 6, 7, 8, 9, 10]
    assert torch.equal(buffer.log_q, buffer.x[:, 0].double())
    assert torch.equal(buffer.energy, -buffer.x[:, 0].double())     # energies travel with their samples
    x, log_q, energy = buffer.draw(20, torch.Generator().manual_seed(0))
    assert torch.equal(energy, -x[:, 0].double()) and torch.equal(log_q, x[:, 0].double())


def test_replay_buffer_from_an_old_checkpoint_recomputes_and_counts_its_energies():
    buffer = CVStratifiedReplayBuffer(capacity=4)
    old_state = {"capacity": 4, "x": torch.ones(3, 2, dtype=torch.int64), "log_q": torch.zeros(3),
                 "stratum": torch.zeros(3, dtype=torch.int64)}
    assert buffer.load_state_dict(old_state, energy_fn=lambda x: x.sum(dim=1).double()) == 3
    assert buffer.energy.tolist() == [2.0, 2.0, 2.0]
    with pytest.raises(ValueError, match="energy_fn"):
        buffer.load_state_dict(old_state)


def tiny_trainer(**kwargs):
    system = make_system("ising", L=4)
    sampler = MaskedDiffusionSampler(build_denoiser("lattice", system, hidden=8, layers=1), 16, 2, sites_per_step=4)
    settings = TrainingConfig(outer_iterations=3, batch_size=16, inner_steps=1, maskings=2,
                              warmstart_beta=0.2, warmstart_iterations=2)
    return DualLoopTrainer(system, sampler, 0.6, settings, seed=5, **kwargs)


def test_warmstart_schedule_trains_hot_first_without_bias():
    bias = WellTemperedGridBias.aligned(-1.0, 1.0, 2 / 16, sigma=0.05, gamma=10.0, kT=1 / 0.6, hill_height=0.01)
    trainer = tiny_trainer(bias=bias, warmstart=True)
    trainer.train(progress=False)
    assert [r.beta for r in trainer.history] == [0.2, 0.2, 0.6, 0.6, 0.6]
    # No hills during the warm start; B hills per outer iteration afterwards.
    assert [r.n_hills for r in trainer.history] == [0, 0, 16, 32, 48]
    assert [r.energy_evaluations for r in trainer.history] == [16, 32, 48, 64, 80]


def test_without_warmstart_the_schedule_is_the_target():
    trainer = tiny_trainer()
    trainer.train(progress=False)
    assert [r.beta for r in trainer.history] == [0.6, 0.6, 0.6]
    assert all(r.n_hills == 0 and r.max_bias_kT == 0 for r in trainer.history)


def test_ema_tracks_the_trained_weights():
    """After gradient step t = 1..k the EMA is decay_t·EMA + (1 − decay_t)·θ_t with
    decay_t = min(ema_decay_max, (1 + t)/(10 + t)), starting from the initial weights θ_0;
    θ_t is recorded right after each optimizer step and the EMA recomputed in float64.
    ema_decay_max = 0.3 caps the schedule from t = 3 on, so both branches of the min count."""
    system = make_system("ising", L=4)
    sampler = MaskedDiffusionSampler(build_denoiser("lattice", system, hidden=8, layers=1), 16, 2, sites_per_step=4)
    settings = TrainingConfig(outer_iterations=3, batch_size=16, inner_steps=2, maskings=2, ema_decay_max=0.3)
    trainer = DualLoopTrainer(system, sampler, 0.6, settings, seed=5)
    initial = [p.detach().double().clone() for p in trainer.sampler.parameters()]
    assert all(torch.equal(e.double(), p) for e, p in zip(trainer.ema_sampler.parameters(), initial))
    recorded = []
    trainer.optimizer.register_step_post_hook(
        lambda optimizer, args, kwargs: recorded.append([p.detach().double().clone() for p in trainer.sampler.parameters()]))
    trainer.train(progress=False)

    k = settings.outer_iterations * settings.inner_steps
    assert len(recorded) == k == trainer.gradient_steps
    expected = initial
    for t, weights in enumerate(recorded, start=1):
        decay = min(settings.ema_decay_max, (1.0 + t) / (10.0 + t))
        expected = [decay * e + (1.0 - decay) * w for e, w in zip(expected, weights)]
    ema = [p.detach().double() for p in trainer.ema_sampler.parameters()]
    assert len(ema) == len(expected) > 0
    for got, want in zip(ema, expected):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    # the check is not vacuous: training moved the weights, and the EMA lags the final model
    assert any(not torch.equal(a, b) for a, b in zip(initial, recorded[-1]))
    assert max(float((e - w).abs().max()) for e, w in zip(ema, recorded[-1])) > 1e-4
    assert all(not p.requires_grad for p in trainer.ema_sampler.parameters())
