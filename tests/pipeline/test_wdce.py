"""WDCE loss against exact identities and a small training run on an enumerated Ising model.

Identity used (linear schedule): for any denoiser,
    E_{λ~U(0,1), mask~Bernoulli(λ)} [ (1/λ) Σ_{masked d} −log p(x_d | x̃) ] = E_σ[ −log q(x | σ) ]
with σ a uniformly random order revealing one site per step, because
∫_0^1 λ^{-1} C(D,m) λ^m (1−λ)^{D−m} dλ = 1/m and the next site revealed when m sites are still
masked is uniform among them.  The 1e5 clip changes the expectation by a relative 5e-6.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from pipeline.sampler import LatticeLocalDenoiser, MaskedDiffusionSampler, wdce_backward, wdce_loss


def square_neighbours(L: int) -> torch.Tensor:
    """Periodic L×L square lattice, site = row·L + col, neighbours right/left/down/up."""
    site = torch.arange(L * L)
    row, col = site // L, site % L
    return torch.stack([row * L + (col + 1) % L, row * L + (col - 1) % L,
                        ((row + 1) % L) * L + col, ((row - 1) % L) * L + col], dim=1)


def all_states(n_states: int, n_sites: int) -> torch.Tensor:
    index = torch.arange(n_states ** n_sites)
    return (index[:, None] // n_states ** torch.arange(n_sites - 1, -1, -1)) % n_states


def seeded_denoiser(neighbours, n_states, hidden, layers, seed, dtype=torch.float32):
    with torch.random.fork_rng():  # seeded initialisation without touching the global RNG state
        torch.manual_seed(seed)
        return LatticeLocalDenoiser(neighbours, n_states, hidden=hidden, layers=layers).to(dtype)


def test_wdce_expectation_equals_order_averaged_negative_log_likelihood():
    neighbours, n_states = square_neighbours(2), 3
    denoiser = seeded_denoiser(neighbours, n_states, hidden=16, layers=2, seed=0, dtype=torch.float64)
    with torch.no_grad():
        denoiser.head.weight.mul_(4.0)  # strongly context-dependent conditionals
    sampler = MaskedDiffusionSampler(denoiser, 4, n_states)
    x = all_states(n_states, 4)                                    # 81 states
    weights = torch.softmax(torch.randn(81, generator=torch.Generator().manual_seed(2), dtype=torch.float64), 0)

    # exact: average of −log q(x|σ) over all 4! orders (one site per step), per site
    nll = torch.zeros(81, dtype=torch.float64)
    for permutation in itertools.permutations(range(4)):
        order = torch.empty(4, dtype=torch.int64)
        order[list(permutation)] = torch.arange(4)
        nll -= sampler.log_prob(x, order.expand(81, -1)) / 24
    exact = float((weights * nll).sum() / 4)

    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        estimates = torch.stack([wdce_loss(denoiser, x, weights, 32, generator, n_states) for _ in range(300)])
    mean = float(estimates.mean())
    standard_error = float(estimates.std() / len(estimates) ** 0.5)
    assert standard_error < 0.01 * exact  # the test has the power to see a 1 % error
    assert abs(mean - exact) < 3 * standard_error, (mean, exact, standard_error)


def test_wdce_training_drives_kl_to_exact_ising_distribution_down():
    L, beta = 3, 0.4
    neighbours = square_neighbours(L)
    x = all_states(2, L * L)                                       # all 512 configurations
    spins = (2 * x - 1).to(torch.float64)
    energy = -(spins * (spins[:, neighbours[:, 0]] + spins[:, neighbours[:, 2]])).sum(1)  # J = 1, h = 0
    log_target = torch.log_softmax(-beta * energy, dim=0)
    target = log_target.exp()

    denoiser = seeded_denoiser(neighbours, 2, hidden=16, layers=2, seed=0)
    sampler = MaskedDiffusionSampler(denoiser, L * L, 2)
    orders = sampler.random_order(4, torch.Generator().manual_seed(1))

    def kl_target_to_model(orders=orders) -> float:
        """Exact KL(π || q(·|σ)) averaged over fixed random orders, in nats."""
        kls = [float((target * (log_target - sampler.log_prob(x, order.expand(512, -1)))).sum())
               for order in orders]
        return sum(kls) / len(kls)

    initial = kl_target_to_model()
    steps = 400
    optimizer = torch.optim.Adam(denoiser.parameters(), lr=1e-2)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps, eta_min=5e-4)
    generator = torch.Generator().manual_seed(0)
    weights = target.to(torch.float32)
    for _ in range(steps):
        loss = wdce_loss(denoiser, x, weights, 4, generator, 2)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    final = kl_target_to_model()
    assert initial > 1.0
    assert final < 0.05 and final < initial / 20, (initial, final)
    # Revealing 3 sites per step costs accuracy (they are drawn independently); with the
    # same 3 steps, a cosine schedule (1, 3, 5 sites) loses much less than groups of 3.
    uniform_orders = MaskedDiffusionSampler(denoiser, L * L, 2, sites_per_step=3).random_order(
        16, torch.Generator().manual_seed(4))
    cosine_orders = MaskedDiffusionSampler(denoiser, L * L, 2, sites_per_step=3, schedule="cosine").random_order(
        16, torch.Generator().manual_seed(4))
    assert int(uniform_orders.max()) == int(cosine_orders.max()) == 2  # three steps each
    uniform, cosine = kl_target_to_model(uniform_orders), kl_target_to_model(cosine_orders)
    assert final < cosine < 0.5 * uniform, (final, cosine, uniform)


def test_wdce_loss_has_gradient_and_validates_inputs():
    neighbours = square_neighbours(2)
    denoiser = seeded_denoiser(neighbours, 2, hidden=8, layers=1, seed=0)
    x = all_states(2, 4)
    weights = torch.full((16,), 1 / 16)
    generator = torch.Generator().manual_seed(0)
    loss = wdce_loss(denoiser, x, weights, 2, generator, 2)
    assert loss.dim() == 0 and float(loss.detach()) > 0
    loss.backward()
    assert float(denoiser.head.weight.grad.abs().sum()) > 0
    with pytest.raises(ValueError, match="sum to 1"):
        wdce_loss(denoiser, x, weights * 2, 2, generator, 2)
    with pytest.raises(ValueError, match="non-negative"):
        wdce_loss(denoiser, x, weights - 1 / 8 * (torch.arange(16) == 0), 2, generator, 2)
    with pytest.raises(ValueError, match="states in"):
        wdce_loss(denoiser, torch.full((16, 4), 2), weights, 2, generator, 2)  # MASK is not a state
    with pytest.raises(ValueError, match="n_maskings"):
        wdce_loss(denoiser, x, weights, 0, generator, 2)
    with pytest.raises(ValueError, match="weights must be"):
        wdce_loss(denoiser, x, weights[:3], 2, generator, 2)
    with pytest.raises(ValueError, match="n_states"):
        wdce_loss(denoiser, x, weights, 2, generator, 3)


@pytest.mark.parametrize("rows_per_call", [1, 40, 10_000])
def test_chunked_backward_equals_one_pass_gradient(rows_per_call):
    """wdce_backward draws the same maskings and accumulates the same gradient in chunks."""
    neighbours = square_neighbours(3)
    x = all_states(2, 9)[::7]                                   # 74 configurations
    weights = torch.softmax(torch.linspace(-2.0, 1.0, x.shape[0], dtype=torch.float64), 0)
    one_pass = seeded_denoiser(neighbours, 2, hidden=8, layers=2, seed=3, dtype=torch.float64)
    chunked = seeded_denoiser(neighbours, 2, hidden=8, layers=2, seed=3, dtype=torch.float64)
    loss = wdce_loss(one_pass, x, weights, 4, torch.Generator().manual_seed(5), 2)
    loss.backward()
    value = wdce_backward(chunked, x, weights, 4, torch.Generator().manual_seed(5), 2, rows_per_call=rows_per_call)
    assert value == pytest.approx(float(loss), rel=1e-12)
    for (name, a), b in zip(one_pass.named_parameters(), chunked.parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-10, atol=1e-13, msg=name)


@pytest.mark.parametrize("kind", ["lattice", "transformer"])
def test_bf16_autocast_step_matches_the_float32_step_to_bf16_accuracy(kind):
    """``training.wdce_precision: bf16`` (the WDCE step under bfloat16 autocast) runs for both
    denoisers and gives the float32 loss and gradient to bf16 accuracy (3 significant digits)."""
    from pipeline.sampler import build_denoiser

    class Square:   # the geometry a denoiser needs
        n_sites, n_states, neighbours = 9, 2, square_neighbours(3)
        coordinates = torch.stack([torch.arange(9) // 3, torch.arange(9) % 3], dim=1).to(torch.float64)

    sizes = {"hidden": 16, "layers": 2, **({"heads": 2} if kind == "transformer" else {})}
    torch.manual_seed(0)
    reference = build_denoiser(kind, Square, **sizes)
    autocast = build_denoiser(kind, Square, **sizes)
    autocast.load_state_dict(reference.state_dict())
    x = all_states(2, 9)[::5]
    weights = torch.full((x.shape[0],), 1.0 / x.shape[0])
    exact = wdce_backward(reference, x, weights, 4, torch.Generator().manual_seed(1), 2)
    low = wdce_backward(autocast, x, weights, 4, torch.Generator().manual_seed(1), 2, autocast_dtype=torch.bfloat16)
    assert float(low) == pytest.approx(float(exact), rel=2e-2)
    for (name, a), b in zip(reference.named_parameters(), autocast.parameters()):
        assert b.grad.dtype == torch.float32 and bool(torch.isfinite(b.grad).all()), name
        scale = float(a.grad.abs().max()) + 1e-12
        assert float((b.grad - a.grad).abs().max()) <= 0.05 * scale, name
