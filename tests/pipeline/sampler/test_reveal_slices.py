"""Generation and scoring by fixed per-step site slices give the samples and log q of the
per-step ``nonzero`` loop they replaced (written out here as the oracle)."""

from __future__ import annotations

import pytest
import torch

from pipeline.sampler.denoisers import LatticeLocalDenoiser
from pipeline.sampler.masked_diffusion import MaskedDiffusionSampler


def square_neighbours(L: int) -> torch.Tensor:
    site = torch.arange(L * L)
    row, col = site // L, site % L
    return torch.stack([row * L + (col + 1) % L, row * L + (col - 1) % L,
                        ((row + 1) % L) * L + col, ((row - 1) % L) * L + col], dim=1)


def nonzero_generation(sampler, order, generator):
    """The former loop: at step t reveal the sites (row-major) of ``(order == t).nonzero()``."""
    tokens = torch.full_like(order, sampler.mask_token)
    log_q = torch.zeros(order.shape[0], dtype=torch.float64)
    with torch.no_grad():
        for step in range(int(order.max()) + 1):
            rows, cols = (order == step).nonzero(as_tuple=True)
            log_probs = sampler.denoiser(tokens)[rows, cols]
            drawn = sampler._categorical(log_probs, generator)
            tokens[rows, cols] = drawn
            log_q.index_add_(0, rows, log_probs.gather(1, drawn[:, None]).squeeze(1).to(torch.float64))
    return tokens, log_q


@pytest.mark.parametrize("k, schedule", [(1, "uniform"), (3, "uniform"), (4, "cosine")])
def test_slices_draw_the_samples_and_log_q_of_the_nonzero_loop(k, schedule):
    torch.manual_seed(0)
    sampler = MaskedDiffusionSampler(LatticeLocalDenoiser(square_neighbours(4), 3, hidden=8, layers=2), 16, 3,
                                     sites_per_step=k, schedule=schedule).eval()
    batch = sampler.sample(200, torch.Generator().manual_seed(5), batch_size=200)
    order = sampler.random_order(200, torch.Generator().manual_seed(5))
    assert torch.equal(order, batch.order)
    x, log_q = nonzero_generation(sampler, order, _after_order(sampler, 200, 5))
    assert torch.equal(batch.x, x)
    torch.testing.assert_close(batch.log_q, log_q, rtol=0, atol=1e-12)
    torch.testing.assert_close(sampler.log_prob(batch.x, batch.order), batch.log_q, rtol=0, atol=1e-12)


def _after_order(sampler, n, seed):
    """A generator in the state ``sample`` leaves it after drawing the orders."""
    generator = torch.Generator().manual_seed(seed)
    sampler.random_order(n, generator)
    return generator


def test_orders_with_different_group_sizes_are_scored_exactly():
    torch.manual_seed(1)
    sampler = MaskedDiffusionSampler(LatticeLocalDenoiser(square_neighbours(4), 2, hidden=8, layers=2), 16, 2,
                                     sites_per_step=4)
    mixed = torch.cat([sampler.random_order(3, torch.Generator().manual_seed(1)),
                       sampler.random_order(3, torch.Generator().manual_seed(2), sites_per_step=1),
                       sampler.random_order(2, torch.Generator().manual_seed(3), sites_per_step=5)])
    batch = sampler.sample_given_order(mixed, torch.Generator().manual_seed(4))
    torch.testing.assert_close(sampler.log_prob(batch.x, mixed), batch.log_q, rtol=0, atol=1e-12)
    # Rows are scored in groups of equal group sizes: the same log q as the nonzero loop over
    # all rows at once, up to float32 noise from the different batch composition.
    torch.testing.assert_close(batch.log_q, nonzero_scoring(sampler, batch.x, mixed), rtol=0, atol=1e-5)


def nonzero_scoring(sampler, x, order):
    """The former scoring loop: context = sites revealed before step t, scored = step t's sites."""
    log_q = torch.zeros(x.shape[0], dtype=torch.float64)
    with torch.no_grad():
        for step in range(int(order.max()) + 1):
            context = torch.where(order < step, x, torch.full_like(x, sampler.mask_token))
            rows, cols = (order == step).nonzero(as_tuple=True)
            log_probs = sampler.denoiser(context)[rows, cols]
            log_q.index_add_(0, rows, log_probs.gather(1, x[rows, cols][:, None]).squeeze(1).to(torch.float64))
    return log_q
