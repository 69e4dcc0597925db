"""The sampler protocol (pipeline.sampler.base), checked for every sampler family against
exact enumeration on tiny lattices (Ising L=2, L=3; Potts q=3 L=2), in float64 and float32.

Truth used here: for a fixed generation order a family's q(·|order) is a normalised
distribution over all q^D states; ``log_prob`` must return the log-probability of exactly
what ``sample`` generated; sample frequencies follow exp(log q); the training loss has a
gradient, and following it on a weighted target p* raises Σ p* log q (forward-KL property);
state_dict round trips.  MDNS is checked with one fixed order (its q(x|σ) is exact per σ);
exact-likelihood families have ``order = None``.
"""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats

from pipeline.sampler import MaskedDiffusionSampler, build_denoiser
from pipeline.sampler.autoregressive import AutoregressiveSampler
from systems.exact import enumerate_states, exact_ensemble
from systems.registry import make_system


def _masked_diffusion(system):
    sampler = MaskedDiffusionSampler(build_denoiser("lattice", system, hidden=8, layers=2), system.n_sites,
                                     system.n_states, sites_per_step=2, schedule="cosine")
    with torch.no_grad():  # sharpen the conditionals so that context matters a lot
        sampler.denoiser.head.weight.mul_(4.0)
    return sampler


def _autoregressive(system):
    sampler = AutoregressiveSampler(system.n_sites, system.n_states, hidden=2, layers=2)
    with torch.no_grad():  # the initialisation is nearly uniform: sharpen it for these tests
        for parameter in sampler.parameters():
            parameter.mul_(4.0)
    return sampler


# One constructor per sampler family: factory(system) -> sampler of the protocol (float32).
FAMILIES = {
    "masked_diffusion": _masked_diffusion,
    "autoregressive": _autoregressive,
}

SYSTEMS = {
    "ising_L2": lambda: make_system("ising", L=2),
    "ising_L3": lambda: make_system("ising", L=3),
    "potts3_L2": lambda: make_system("potts", L=2, q=3),
}
DTYPES = {"float64": torch.float64, "float32": torch.float32}
SUM_TOLERANCE = {"float64": 1e-10, "float32": 1e-6}
LOG_Q_TOLERANCE = {"float64": 1e-12, "float32": 5e-6}

family_axis = pytest.mark.parametrize("family", sorted(FAMILIES))
dtype_axis = pytest.mark.parametrize("dtype", sorted(DTYPES))
system_axis = pytest.mark.parametrize("system_name", sorted(SYSTEMS))


def make(family: str, system, dtype: str, seed: int = 0):
    with torch.random.fork_rng():  # seeded initialisation without touching the global RNG state
        torch.manual_seed(seed)
        return FAMILIES[family](system).to(DTYPES[dtype])


def fixed_order(sampler, n: int, seed: int = 7):
    """One generation order repeated n times ((n, D) int64), or None for exact-q(x) families."""
    order = sampler.sample(1, torch.Generator().manual_seed(seed)).order
    return None if order is None else order.expand(n, -1)


def sample_with_order(sampler, order, n: int, generator: torch.Generator, batch_size=None):
    """n samples; with the given fixed order for families that draw random orders."""
    if order is None:
        return sampler.sample(n, generator, batch_size=batch_size)
    return sampler.sample_given_order(order[:1].expand(n, -1), generator, batch_size=batch_size)


def all_states(system) -> torch.Tensor:
    return enumerate_states(system.n_sites, system.n_states).long()


def state_index(x: torch.Tensor, n_states: int) -> torch.Tensor:
    """Row of x in enumerate_states order (site 0 the most significant digit)."""
    powers = n_states ** torch.arange(x.shape[1] - 1, -1, -1)
    return (x * powers).sum(1)


# ----------------------------------------------------------------------------- normalisation
@family_axis
@dtype_axis
@system_axis
def test_probabilities_of_all_states_sum_to_one(family, dtype, system_name):
    system = SYSTEMS[system_name]()
    sampler = make(family, system, dtype)
    states = all_states(system)
    log_q = sampler.log_prob(states, fixed_order(sampler, len(states)))
    assert log_q.dtype == torch.float64 and log_q.shape == (len(states),)
    assert float(torch.logsumexp(log_q, 0).exp()) == pytest.approx(1.0, abs=SUM_TOLERANCE[dtype])
    # the model is far from uniform, so a bookkeeping error could not hide
    assert float(log_q.max() - log_q.min()) > 0.5


# ----------------------------------------------------------------------------- log q bookkeeping
@family_axis
@dtype_axis
@system_axis
def test_log_prob_reproduces_sample_log_q(family, dtype, system_name):
    system = SYSTEMS[system_name]()
    sampler = make(family, system, dtype)
    sampler.train()
    batch = sampler.sample(300, torch.Generator().manual_seed(5), batch_size=128)
    x, order, log_q = batch
    assert x.dtype == torch.int64 and x.shape == (300, system.n_sites)
    assert log_q.dtype == torch.float64 and log_q.shape == (300,) and not log_q.requires_grad
    assert order is None or order.shape == x.shape
    assert sampler.training  # sampling leaves the training mode as it was
    for batch_size in (None, 128, 7):
        rescored = sampler.log_prob(x, order, batch_size=batch_size)
        assert torch.allclose(rescored, log_q, rtol=0, atol=LOG_Q_TOLERANCE[dtype])
    again = sampler.sample(300, torch.Generator().manual_seed(5), batch_size=128)
    assert torch.equal(again.x, x) and torch.equal(again.log_q, log_q)  # reproducible per generator state


# ----------------------------------------------------------------------------- distribution of samples
def pooled_chi_square_p_value(counts: torch.Tensor, probabilities: torch.Tensor) -> float:
    """scipy chisquare p-value after pooling all cells with expected count < 5 into one."""
    probabilities = probabilities / probabilities.sum()
    expected = probabilities * counts.sum()
    small = expected < 5
    observed_cells = torch.cat([counts[~small], counts[small].sum()[None]]) if small.any() else counts
    expected_cells = torch.cat([expected[~small], expected[small].sum()[None]]) if small.any() else expected
    return float(stats.chisquare(observed_cells.numpy(), expected_cells.numpy()).pvalue)


@family_axis
@dtype_axis
@system_axis
def test_sample_frequencies_match_probabilities(family, dtype, system_name):
    system = SYSTEMS[system_name]()
    sampler = make(family, system, dtype)
    states = all_states(system)
    order = fixed_order(sampler, len(states))
    probabilities = sampler.log_prob(states, order).exp()
    n = 20000
    batch = sample_with_order(sampler, order, n, torch.Generator().manual_seed(21))
    index = state_index(batch.x, system.n_states)
    counts = torch.bincount(index, minlength=len(states)).to(torch.float64)
    assert pooled_chi_square_p_value(counts, probabilities) > 1e-3
    assert torch.allclose(batch.log_q, probabilities.log()[index], rtol=0, atol=LOG_Q_TOLERANCE[dtype])


# ----------------------------------------------------------------------------- training loss
@family_axis
@dtype_axis
def test_loss_backward_returns_a_finite_scalar_and_fills_gradients(family, dtype):
    system = SYSTEMS["ising_L3"]()
    sampler = make(family, system, dtype)
    batch = sampler.sample(64, torch.Generator().manual_seed(3))
    sampler.zero_grad(set_to_none=True)
    loss = sampler.loss_backward(batch.x, torch.zeros(64, dtype=torch.float64), batch.log_q,
                                 torch.Generator().manual_seed(4))
    if isinstance(loss, torch.Tensor):   # a 0-dim tensor kept on the sampler's device
        assert loss.dim() == 0 and loss.device == sampler.device and not loss.requires_grad
    assert math.isfinite(float(loss))
    gradients = [p.grad for p in sampler.parameters() if p.grad is not None]
    assert gradients and any(float(g.abs().sum()) > 0 for g in gradients)
    assert all(bool(torch.isfinite(g).all()) for g in gradients)


def weighted_log_likelihood(sampler, states, target_prob, orders) -> float:
    """Σ_x p*(x) log q(x | σ), averaged over the given fixed orders (None: exact q)."""
    if orders is None:
        return float((target_prob * sampler.log_prob(states, None)).sum())
    return sum(float((target_prob * sampler.log_prob(states, o.expand(len(states), -1))).sum())
               for o in orders) / len(orders)


@family_axis
@dtype_axis
def test_training_on_a_weighted_target_raises_its_log_likelihood(family, dtype):
    """Forward-KL property: all states weighted by p* (Ising L=2 at β=0.8) as the training
    batch; 50 Adam steps of loss_backward raise Σ p* log q."""
    system = SYSTEMS["ising_L2"]()
    sampler = make(family, system, dtype)
    states = all_states(system)
    target = exact_ensemble(system, 0.8).log_prob.to(torch.float64)
    uniform_log_q = torch.full((len(states),), -system.n_sites * math.log(system.n_states), dtype=torch.float64)
    log_weights = target - uniform_log_q  # as if the states had been drawn uniformly
    probe = sampler.sample(8, torch.Generator().manual_seed(9)).order
    before = weighted_log_likelihood(sampler, states, target.exp(), probe)
    optimizer = torch.optim.Adam(sampler.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(10)
    for _ in range(50):
        optimizer.zero_grad(set_to_none=True)
        sampler.loss_backward(states, log_weights, uniform_log_q, generator)
        optimizer.step()
    after = weighted_log_likelihood(sampler, states, target.exp(), probe)
    entropy = -float((target.exp() * target).sum())  # the largest attainable value is −entropy
    assert after > before + 0.2 * (-entropy - before), (before, after, -entropy)


# ----------------------------------------------------------------------------- checkpoints
@family_axis
@dtype_axis
def test_state_dict_round_trip_gives_identical_log_prob(family, dtype):
    system = SYSTEMS["potts3_L2"]()
    sampler = make(family, system, dtype, seed=0)
    other = make(family, system, dtype, seed=1)
    states = all_states(system)
    order = fixed_order(sampler, len(states))
    assert not torch.equal(other.log_prob(states, order), sampler.log_prob(states, order))
    other.load_state_dict(sampler.state_dict())
    assert torch.equal(other.log_prob(states, order), sampler.log_prob(states, order))


@family_axis
def test_random_order_is_an_order_log_prob_accepts_and_normalises_over_x(family):
    """``random_order`` gives None (exact q(x)) or valid orders drawn independently of x; for a
    drawn σ, q(·|σ) sums to 1 over all states (a move that redraws σ keeps an exact likelihood)."""
    system = SYSTEMS["potts3_L2"]()
    sampler = make(family, system, "float64")
    generator = torch.Generator().manual_seed(3)
    orders = sampler.random_order(5, generator)
    states = all_states(system)
    if orders is None:
        assert sampler.sample(2, generator).order is None
        return
    assert orders.shape == (5, system.n_sites) and orders.dtype == torch.int64
    assert len({tuple(row.tolist()) for row in orders}) > 1  # drawn, not one fixed order
    for sigma in orders[:2]:
        log_q = sampler.log_prob(states, sigma.expand(len(states), -1))
        assert abs(float(torch.logsumexp(log_q, 0).exp()) - 1.0) < 1e-10
