"""MDNS sampler against exact enumeration on tiny lattices.

Truth used here: an any-order autoregressive model with a fixed order is a normalised
distribution over all q^D states; the sampler's reported log q must be the log-probability
of exactly what it generated; with random orders the generated distribution is the average
of q(x|σ) over the order distribution (enumerated over all D! permutations for D = 4).
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from scipy import stats

from pipeline.sampler import (
    LatticeLocalDenoiser,
    MaskedDiffusionSampler,
    TransformerDenoiser,
    build_denoiser,
    cosine_group_sizes,
    group_sizes,
)
from pipeline.sampler.denoisers import torus_fourier_features


# ----------------------------------------------------------------------------- tiny lattices
class TinySystem:
    """Duck-typed stand-in for a LatticeSystem: neighbours, coordinates, n_states."""

    def __init__(self, neighbours, coordinates, n_states):
        self.neighbours = neighbours
        self.coordinates = coordinates
        self.n_states = n_states
        self.n_sites = neighbours.shape[0]


def square_system(L: int, n_states: int) -> TinySystem:
    """Periodic L×L square lattice, site = row·L + col, neighbours right/left/down/up."""
    site = torch.arange(L * L)
    row, col = site // L, site % L
    neighbours = torch.stack([row * L + (col + 1) % L, row * L + (col - 1) % L,
                              ((row + 1) % L) * L + col, ((row - 1) % L) * L + col], dim=1)
    coordinates = torch.stack([row, col], dim=1).to(torch.float64)
    return TinySystem(neighbours, coordinates, n_states)


def ring_system(n_sites: int, n_states: int) -> TinySystem:
    site = torch.arange(n_sites)
    neighbours = torch.stack([(site + 1) % n_sites, (site - 1) % n_sites], dim=1)
    return TinySystem(neighbours, site[:, None].to(torch.float64), n_states)


def all_states(n_states: int, n_sites: int) -> torch.Tensor:
    """All q^D configurations, int64 (q^D, D)."""
    index = torch.arange(n_states ** n_sites)
    powers = n_states ** torch.arange(n_sites - 1, -1, -1)
    return (index[:, None] // powers) % n_states


def make_sampler(kind: str, system: TinySystem, sites_per_step=1, dtype=torch.float64, seed=0):
    sizes = {"hidden": 16, "layers": 2} if kind == "lattice" else {"hidden": 16, "heads": 2, "layers": 2}
    with torch.random.fork_rng():  # seeded initialisation without touching the global RNG state
        torch.manual_seed(seed)
        denoiser = build_denoiser(kind, system, **sizes).to(dtype)
    with torch.no_grad():  # sharpen the conditionals so that context matters a lot
        denoiser.head.weight.mul_(4.0)
    return MaskedDiffusionSampler(denoiser, system.n_sites, system.n_states, sites_per_step=sites_per_step)


def order_from_permutation(permutation, sizes) -> torch.Tensor:
    """order[d] = step of site d when sites are revealed in `permutation`, cut into `sizes`."""
    steps = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    order = torch.empty(len(permutation), dtype=torch.int64)
    order[torch.as_tensor(permutation)] = steps
    return order


def chi_square_p_value(counts: torch.Tensor, probabilities: torch.Tensor) -> float:
    expected = probabilities * counts.sum()
    statistic = float(((counts - expected) ** 2 / expected).sum())
    return float(stats.chi2.sf(statistic, df=len(counts) - 1))


SYSTEMS = {
    "square2x2_q2": lambda: square_system(2, 2),
    "square2x2_q3": lambda: square_system(2, 3),
    "ring3_q3": lambda: ring_system(3, 3),
}


# ----------------------------------------------------------------------------- normalisation
@pytest.mark.parametrize("kind", ["lattice", "transformer"])
@pytest.mark.parametrize("system_name", sorted(SYSTEMS))
@pytest.mark.parametrize("sites_per_step", [1, 2, 3])
def test_fixed_order_probabilities_sum_to_one(kind, system_name, sites_per_step):
    system = SYSTEMS[system_name]()
    sampler = make_sampler(kind, system, sites_per_step)
    states = all_states(system.n_states, system.n_sites)
    generator = torch.Generator().manual_seed(11)
    orders = sampler.random_order(3, generator)
    totals = []
    for order in orders:  # three fixed orders
        log_q = sampler.log_prob(states, order.expand(len(states), -1))
        totals.append(float(torch.logsumexp(log_q, 0).exp()))
        # the model is far from uniform, so a bookkeeping error could not hide
        assert float(log_q.max() - log_q.min()) > 0.5
    assert totals == pytest.approx([1.0] * 3, abs=1e-10)


@pytest.mark.parametrize("kind", ["lattice", "transformer"])
def test_uneven_groups_and_cosine_schedule_are_normalised(kind):
    system = square_system(2, 3)
    states = all_states(3, 4)
    samplers = [make_sampler(kind, system, sites_per_step=sizes) for sizes in [(1, 3), (3, 1), (1, 1, 2)]]
    cosine = make_sampler(kind, system, sites_per_step=2)
    cosine = MaskedDiffusionSampler(cosine.denoiser, 4, 3, sites_per_step=2, schedule="cosine")
    assert cosine.group_sizes == (1, 3)  # two steps, as for k = 2, but one site first
    for sampler in samplers + [cosine]:
        order = sampler.random_order(1, torch.Generator().manual_seed(3))
        log_q = sampler.log_prob(states, order.expand(len(states), -1))
        assert float(torch.logsumexp(log_q, 0).exp()) == pytest.approx(1.0, abs=1e-10)


# ----------------------------------------------------------------------------- log q bookkeeping
@pytest.mark.parametrize("kind", ["lattice", "transformer"])
@pytest.mark.parametrize("dtype,tolerance", [(torch.float32, 1e-6), (torch.float64, 1e-12)])
@pytest.mark.parametrize("sites_per_step", [1, 3])
def test_log_prob_reproduces_sample_log_q(kind, dtype, tolerance, sites_per_step):
    system = square_system(4, 3)  # D = 16; k = 3 leaves a last group of 1
    sampler = make_sampler(kind, system, sites_per_step, dtype=dtype)
    batch = sampler.sample(50, torch.Generator().manual_seed(5), batch_size=16)
    x, order, log_q = batch
    assert x.dtype == order.dtype == torch.int64 and log_q.dtype == torch.float64
    rescored = sampler.log_prob(x, order, batch_size=16)
    assert torch.allclose(rescored, log_q, rtol=0, atol=tolerance)
    if dtype == torch.float64:  # rows are independent: the chunking does not matter
        assert torch.allclose(sampler.log_prob(x, order, batch_size=7), log_q, rtol=0, atol=1e-12)
    # a different order for the same x gives a different (but finite) likelihood
    other = sampler.random_order(50, torch.Generator().manual_seed(6))
    assert not torch.allclose(sampler.log_prob(x, other, batch_size=16), log_q, atol=1e-3)


def test_orders_are_random_permutations_cut_into_groups():
    system = square_system(4, 2)  # D = 16
    sampler = make_sampler("lattice", system, sites_per_step=5)  # groups 5, 5, 5, 1
    n = 20000
    order = sampler.random_order(n, torch.Generator().manual_seed(1))
    counts = torch.stack([(order == step).sum(1) for step in range(4)], dim=1)
    assert bool((counts == torch.tensor([5, 5, 5, 1])).all())
    # every site is equally likely to be revealed last: P = 1/16
    last = (order == 3).float().mean(0)
    standard_error = math.sqrt((1 / 16) * (15 / 16) / n)
    assert float((last - 1 / 16).abs().max()) < 4 * standard_error  # max over 16 sites


# ----------------------------------------------------------------------------- distribution of samples
def test_fixed_order_sampling_frequencies_match_probabilities():
    system = square_system(2, 2)
    sampler = make_sampler("lattice", system, sites_per_step=1)
    states = all_states(2, 4)
    order = torch.tensor([2, 0, 3, 1])
    probabilities = sampler.log_prob(states, order.expand(16, -1)).exp()
    n = 20000
    batch = sampler.sample_given_order(order.expand(n, -1), torch.Generator().manual_seed(21))
    index = (batch.x * torch.tensor([8, 4, 2, 1])).sum(1)
    counts = torch.bincount(index, minlength=16).to(torch.float64)
    assert chi_square_p_value(counts, probabilities) > 1e-3
    assert torch.allclose(batch.log_q, probabilities.log()[index], atol=1e-12)


@pytest.mark.parametrize("kind,sites_per_step", [("lattice", 1), ("transformer", 2)])
def test_random_order_sampling_matches_order_averaged_distribution(kind, sites_per_step):
    system = square_system(2, 2)
    sampler = make_sampler(kind, system, sites_per_step)
    states = all_states(2, 4)
    sizes = group_sizes(4, sites_per_step)
    # exact marginal: average of q(x|σ) over all 4! equally likely permutations
    marginal = torch.zeros(16, dtype=torch.float64)
    for permutation in itertools.permutations(range(4)):
        order = order_from_permutation(permutation, sizes)
        marginal += sampler.log_prob(states, order.expand(16, -1)).exp() / 24
    assert float(marginal.sum()) == pytest.approx(1.0, abs=1e-10)
    n = 20000
    batch = sampler.sample(n, torch.Generator().manual_seed(8))
    index = (batch.x * torch.tensor([8, 4, 2, 1])).sum(1)
    counts = torch.bincount(index, minlength=16).to(torch.float64)
    assert chi_square_p_value(counts, marginal) > 1e-3


# ----------------------------------------------------------------------------- modes, seeds, devices
def test_sampling_is_reproducible_and_leaves_training_mode():
    system = square_system(2, 3)
    sampler = make_sampler("transformer", system, sites_per_step=2, dtype=torch.float32)
    sampler.train()
    first = sampler.sample(40, torch.Generator().manual_seed(4), batch_size=16)
    again = sampler.sample(40, torch.Generator().manual_seed(4), batch_size=16)
    other = sampler.sample(40, torch.Generator().manual_seed(5), batch_size=16)
    assert sampler.denoiser.training
    assert torch.equal(first.x, again.x) and torch.equal(first.order, again.order)
    assert torch.equal(first.log_q, again.log_q)
    assert not torch.equal(first.x, other.x)
    assert not first.log_q.requires_grad
    # k override for one call: 4 sites in groups of 3 → steps {0, 1}
    overridden = sampler.sample(10, torch.Generator().manual_seed(4), sites_per_step=3)
    assert int(overridden.order.max()) == 1


# ----------------------------------------------------------------------------- denoiser properties
def test_lattice_denoiser_is_translation_equivariant():
    system = square_system(4, 3)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        denoiser = LatticeLocalDenoiser(system.neighbours, 3, hidden=8, layers=3).double()
    tokens = torch.randint(0, 4, (5, 16), generator=torch.Generator().manual_seed(1))  # MASK = 3 included
    shift = torch.arange(16).reshape(4, 4).roll(1, dims=1).reshape(-1)  # translate one column
    out = denoiser(tokens)
    shifted = denoiser(tokens[:, shift])
    assert torch.allclose(shifted, out[:, shift], atol=1e-12)
    assert torch.allclose(out.exp().sum(-1), torch.ones(5, 16, dtype=torch.float64), atol=1e-12)


def test_transformer_position_features_are_periodic_and_distinct():
    system = square_system(4, 2)
    extent = 4.0
    features = torus_fourier_features(system.coordinates, extent, n_frequencies=3)
    wrapped = torus_fourier_features(system.coordinates + torch.tensor([4.0, -4.0]), extent, n_frequencies=3)
    assert torch.allclose(features, wrapped, atol=1e-12)
    distances = torch.cdist(features, features) + torch.eye(16)
    assert float(distances.min()) > 0.1
    # the inferred period of integer coordinates 0..L-1 is L
    inferred = TransformerDenoiser(system.coordinates, 2, d_model=8, heads=2, layers=1, n_frequencies=3)
    assert torch.allclose(inferred.position_features.double(), features, atol=1e-6)


# ----------------------------------------------------------------------------- validation
def test_invalid_inputs_raise_value_error():
    system = square_system(2, 2)
    sampler = make_sampler("lattice", system)
    states = all_states(2, 4)[:3]
    order = torch.tensor([[0, 1, 2, 3]] * 3)
    generator = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="x must hold states"):
        sampler.log_prob(torch.full((3, 4), 2), order)  # MASK is not a state
    with pytest.raises(ValueError, match="x must be"):
        sampler.log_prob(states[:, :3], order)
    with pytest.raises(ValueError, match="order must"):
        sampler.log_prob(states, torch.tensor([[0, 2, 3, 4]] * 3))  # step 1 missing
    with pytest.raises(ValueError, match="order must"):
        sampler.log_prob(states, order[:2])
    with pytest.raises(ValueError, match="sites_per_step"):
        MaskedDiffusionSampler(sampler.denoiser, 4, 2, sites_per_step=5)
    with pytest.raises(ValueError, match="sites_per_step"):
        MaskedDiffusionSampler(sampler.denoiser, 4, 2, sites_per_step=(2, 1))
    with pytest.raises(ValueError, match="schedule"):
        MaskedDiffusionSampler(sampler.denoiser, 4, 2, sites_per_step=2, schedule="linear")
    with pytest.raises(ValueError, match="n_sites"):
        MaskedDiffusionSampler(sampler.denoiser, 9, 2)
    with pytest.raises(ValueError, match="generator"):
        sampler.sample(3, 0)
    with pytest.raises(ValueError, match="batch_size"):
        sampler.sample(3, generator, batch_size=0)
    with pytest.raises(ValueError, match="kind"):
        build_denoiser("mlp", system)
    with pytest.raises(ValueError, match="unknown size"):
        build_denoiser("lattice", system, heads=4)
    with pytest.raises(ValueError, match="neighbours"):
        LatticeLocalDenoiser(torch.tensor([[1], [7]]), 2)


def test_cosine_group_sizes_start_small_and_cover_all_sites():
    sizes = cosine_group_sizes(256, 16)
    assert len(sizes) == 16 and sum(sizes) == 256 and min(sizes) >= 1
    assert sizes[0] == 1 and sizes[-1] > 16  # few sites first, many at the end
    assert cosine_group_sizes(4, 4) == (1, 1, 1, 1)
    assert group_sizes(256, 16, "cosine") == sizes and group_sizes(10, 4) == (4, 4, 2)
