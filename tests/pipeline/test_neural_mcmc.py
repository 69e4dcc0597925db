"""The neural-proposal MCMC kernel (pipeline/neural_mcmc.py) is exact: on tiny systems the
transition matrix of one step of each move type leaves the extended biased target
π_V(x)·u(σ) invariant to 1e-12, built from the kernel's own acceptance and target functions.
A chain run of the moves then reproduces exact ⟨E⟩ within 3 standard errors."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from pipeline.bias import WellTemperedGridBias
from pipeline.neural_mcmc import (BiasedTarget, ChainState, global_move, local_moves, log_acceptance, refresh_orders,
                                  start_chains)
from pipeline.sampler.autoregressive import AutoregressiveSampler
from pipeline.sampler.denoisers import LatticeLocalDenoiser
from pipeline.sampler.masked_diffusion import MaskedDiffusionSampler
from systems.exact import enumerate_states, exact_ensemble
from systems.registry import make_system

BETA = 0.7


def bumpy_bias(system) -> WellTemperedGridBias:
    """A non-trivial V on the magnetisation: a few hills at fixed centres."""
    spec = system.cv_spec
    bias = WellTemperedGridBias(spec.lower, spec.upper, spec.grid_points, 0.3, 8.0, 1.0 / BETA, 0.4,
                                cv_spacing=spec.spacing)
    bias.deposit(np.array([[-1.0], [0.5], [0.5], [0.0]]))
    return bias


def mdns_float64(system, seed=0):
    torch.manual_seed(seed)
    denoiser = LatticeLocalDenoiser(system.neighbours, system.n_states, hidden=8, layers=2).to(torch.float64)
    return MaskedDiffusionSampler(denoiser, system.n_sites, system.n_states, sites_per_step=1)


def all_orders(n_sites: int) -> torch.Tensor:
    """Every order of a one-site-per-step sampler: order[d] = step of site d (n_sites! rows)."""
    return torch.tensor(list(itertools.permutations(range(n_sites))), dtype=torch.int64)


def stationarity_error(probability: torch.Tensor, transition: torch.Tensor) -> float:
    return float((probability @ transition - probability).abs().max())


def test_global_move_leaves_the_extended_target_invariant_mdns_2x2():
    system = make_system("ising", L=2)
    target = BiasedTarget(system, BETA, bumpy_bias(system).value)
    sampler = mdns_float64(system)
    states, orders = enumerate_states(system.n_sites, system.n_states).to(torch.int64), all_orders(system.n_sites)
    x = states.repeat_interleave(len(orders), dim=0)           # every (x, σ) pair
    order = orders.repeat(len(states), 1)
    log_q = sampler.log_prob(x, order)
    log_u = -math.log(len(orders))
    log_pi = target.log_density(system.energy(x), system.cv(x))
    probability = torch.softmax(log_pi + log_u, dim=0)                          # π_V(x) u(σ)
    proposal = torch.exp(log_q + log_u)                                         # u(σ′) q(x′|σ′)
    assert float(proposal.sum()) == pytest.approx(1.0, abs=1e-12)
    alpha = torch.exp(log_acceptance(log_pi[:, None], log_q[:, None], log_pi[None, :], log_q[None, :]).clamp_max(0))
    transition = proposal[None, :] * alpha
    transition.diagonal().add_(1.0 - transition.sum(dim=1))
    assert stationarity_error(probability, transition) < 1e-12
    # The rejected mass is real: the kernel is not the identity, nor always accepting.
    assert 0.05 < float((probability * (1 - transition.diagonal())).sum()) < 0.95


def test_global_move_leaves_the_target_invariant_autoregressive_3x3():
    system = make_system("ising", L=3)
    target = BiasedTarget(system, BETA, bumpy_bias(system).value)
    torch.manual_seed(2)
    sampler = AutoregressiveSampler(system.n_sites, system.n_states, hidden=3).to(torch.float64)
    states = enumerate_states(system.n_sites, system.n_states).to(torch.int64)
    log_q = sampler.log_prob(states, None)
    log_pi = target.log_density(system.energy(states), system.cv(states))
    probability = torch.softmax(log_pi, dim=0)
    alpha = torch.exp(log_acceptance(log_pi[:, None], log_q[:, None], log_pi[None, :], log_q[None, :]).clamp_max(0))
    transition = torch.exp(log_q)[None, :] * alpha
    transition.diagonal().add_(1.0 - transition.sum(dim=1))
    assert stationarity_error(probability, transition) < 1e-12


@pytest.mark.parametrize("name, params", [("ising", {"L": 2}), ("potts", {"L": 2, "q": 3})])
def test_local_moves_leave_the_biased_target_invariant(name, params):
    """One trial: a uniform site, a uniform different state, Metropolis on E + V(ξ)."""
    system = make_system(name, **params)
    target = BiasedTarget(system, BETA, bumpy_bias(system).value if system.cv_spec.dim == 1 else None)
    states = enumerate_states(system.n_sites, system.n_states).to(torch.int64)
    n, (D, q) = len(states), (system.n_sites, system.n_states)
    index = {tuple(s.tolist()): i for i, s in enumerate(states)}
    log_pi = target.log_density(system.energy(states), system.cv(states))
    transition = torch.zeros(n, n, dtype=torch.float64)
    for site, shift in itertools.product(range(D), range(1, q)):  # loop over the (site, new state) proposals
        new = states.clone()
        new[:, site] = (new[:, site] + shift) % q
        delta = system.energy_change(states, torch.full((n,), site), new[:, site])
        log_ratio = target.log_density(system.energy(states) + delta, system.cv(new)) - log_pi
        columns = torch.tensor([index[tuple(s.tolist())] for s in new])
        transition[torch.arange(n), columns] += torch.exp(log_ratio.clamp_max(0)) / (D * (q - 1))
    transition.diagonal().add_(1.0 - transition.sum(dim=1))
    assert stationarity_error(torch.softmax(log_pi, 0), transition) < 1e-12


def test_chains_of_all_three_moves_reproduce_exact_energy():
    """Ising L = 4 at β = 0.4, V ≡ 0: 64 chains alternating local sweeps, global moves from an
    untrained (poor but overlapping) sampler and order refreshes; ⟨E⟩ within 3 SE of exact."""
    system = make_system("ising", L=4)
    beta = 0.4
    target = BiasedTarget(system, beta)
    sampler = mdns_float64(system, seed=1)
    generator = torch.Generator().manual_seed(3)
    state = start_chains(torch.randint(2, (64, system.n_sites), generator=generator), target, sampler, generator)
    energies, accepted = [], []
    for step in range(300):
        state, _ = local_moves(state, target, generator, 4)
        state, accept, _ = global_move(state, target, sampler, generator)
        state = refresh_orders(state, sampler, generator)
        accepted.append(float(accept.double().mean()))
        if step >= 50:
            energies.append(state.energy.clone())
    trace = torch.stack(energies).numpy()                  # (steps, chains)
    chain_means = trace.mean(axis=0)
    mean, stderr = chain_means.mean(), chain_means.std(ddof=1) / math.sqrt(len(chain_means))
    exact = exact_ensemble(system, beta).expectations()["energy"]
    assert abs(mean - exact) < 3 * stderr, (mean, stderr, exact)
    assert np.mean(accepted) > 0.05   # the global move was really exercised


def test_local_proposals_are_uniform_over_sites_and_other_states():
    """At β = 0 every trial is accepted: the changed (site, new state) pairs of 24,000 chains
    are uniform over the D·(q − 1) = 8 proposals (the symmetry the acceptance relies on)."""
    system = make_system("potts", L=2, q=3)
    target = BiasedTarget(system, 0.0)
    n = 24_000
    start = torch.tensor([[0, 1, 2, 0]]).repeat(n, 1)
    state = start_chains(start, target, mdns_float64(system), torch.Generator().manual_seed(0))
    moved, accepted = local_moves(state, target, torch.Generator().manual_seed(1), 1)
    assert accepted == n
    changed = (moved.x != start)
    assert bool((changed.sum(dim=1) == 1).all())
    site = changed.to(torch.int64).argmax(dim=1)
    shift = (moved.x[torch.arange(n), site] - start[torch.arange(n), site]) % 3      # 1 or 2
    counts = torch.bincount(site * 2 + (shift - 1), minlength=8).double()
    expected = n / 8
    assert float(((counts - expected) ** 2 / expected).sum()) < 26.1   # χ² with 7 dof, p = 0.0005
    torch.testing.assert_close(moved.energy, system.energy(moved.x))   # cached energies follow the moves


def test_global_move_accepts_at_the_analytic_rate():
    """From one fixed (x, σ) on Ising 2×2, the fraction of accepted proposals over 40,000 chains
    equals Σ_{x′,σ′} u(σ′) q(x′|σ′) min(1, ratio) within 3 SE; accepted chains carry the
    proposal's energy, CV and log q, and the proposal's log-weight log π_V − log q."""
    system = make_system("ising", L=2)
    target = BiasedTarget(system, BETA, bumpy_bias(system).value)
    sampler = mdns_float64(system)
    states, orders = enumerate_states(4, 2).to(torch.int64), all_orders(4)
    x = states.repeat_interleave(len(orders), dim=0)
    order = orders.repeat(len(states), 1)
    log_q, log_pi = sampler.log_prob(x, order), target.log_density(system.energy(x), system.cv(x))
    current = 5 * len(orders) + 7                                    # one (x, σ) pair
    rate = float((torch.exp(log_q - math.log(len(orders)))
                  * torch.exp(log_acceptance(log_pi[current], log_q[current], log_pi, log_q).clamp_max(0))).sum())
    n = 40_000
    generator = torch.Generator().manual_seed(4)
    chains = start_chains(x[current].repeat(n, 1), target, sampler, generator)
    chains = ChainState(chains.x, order[current].repeat(n, 1), chains.energy, chains.cv)
    moved, accept, log_w = global_move(chains, target, sampler, generator)
    observed = float(accept.double().mean())
    assert abs(observed - rate) < 3 * math.sqrt(rate * (1 - rate) / n), (observed, rate)
    torch.testing.assert_close(moved.energy, system.energy(moved.x))
    torch.testing.assert_close(moved.log_q, sampler.log_prob(moved.x, moved.order), rtol=0, atol=1e-12)
    torch.testing.assert_close(log_w[accept], (target.log_density(moved.energy, moved.cv) - moved.log_q)[accept])


def test_metadns_mcmc_run_reproduces_exact_ising_observables(tmp_path):
    """The ``metadns-mcmc`` method end to end (adaptive rounds, then frozen production) on Ising
    L = 4, β = 0.4: ⟨E⟩/N and ⟨|m|⟩ within 3 SE of exact enumeration, global proposals really
    accepted, chains crossing the CV range, every energy evaluation counted."""
    import pandas as pd

    from pipeline.campaign import prepare_campaign
    from pipeline.config import config_from_dict
    from pipeline.runner import run_campaign

    raw = {"methods": ["metadns-mcmc"], "seed": 2, "system": {"name": "ising", "L": 4, "beta": 0.4},
           "sampler": {"hidden": 8, "layers": 2, "sites_per_step": 1},
           "bias": {"gamma": 5, "sigma": 0.1, "height_per_cycle": 0.5},
           "training": {"outer_iterations": 40, "inner_steps": 2, "maskings": 4, "learning_rate": 3e-3,
                        "threads": 1},
           "reference": {"chains": 32, "sweeps": 300, "burn_in": 30}}
    [result] = run_campaign(prepare_campaign(config_from_dict(raw, "mc"), tmp_path, resume=False), progress=False)
    observables = pd.read_parquet(result.run_dir / "observables.parquet").set_index(["estimator", "observable"])
    exact = exact_ensemble(make_system("ising", L=4), 0.4).expectations()
    for name in ("energy_per_site", "abs_magnetisation"):
        value, stderr = observables.loc[("mcmc", name), ["value", "stderr"]]
        assert abs(value - exact[name]) < 3 * stderr, (name, value, stderr, exact[name])
    summary = result.summary
    assert summary["global_acceptance"] > 0.05 and summary["mean_round_trips"] > 1
    assert summary["hills"] == 40 * 32
    assert summary["energy_evaluations"] == 32 + (40 + 300) * 32 * (16 + 1)   # start, local trials, proposals


def test_round_trips_count_completed_end_to_end_returns():
    from pipeline.methods.neural_chains import round_trips

    trace = np.array([[-1.0, 0.0], [0.0, 0.95], [1.0, 0.0], [0.2, -0.95], [-0.9, 0.95], [1.0, -1.0]])
    # chain 0: low → high → low → high: one completed round trip (the second is half done);
    # chain 1: high → low → high → low: one round trip, then half of the next.
    assert round_trips(trace, -0.8, 0.8).tolist() == [1, 1]
    assert round_trips(np.zeros((5, 3)), -0.8, 0.8).tolist() == [0, 0, 0]
