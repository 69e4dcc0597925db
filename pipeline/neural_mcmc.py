"""Exact MCMC on the metadynamics-biased target with neural independence proposals (docs/method.md §10).

Parallel chains live on the extended target

    π_V(x, σ) ∝ exp(−β[E(x) + V(ξ(x))]) · u(σ),

where u is the sampler's order distribution (``sampler.random_order``; no σ for samplers with an
exact q(x)). The chain state is (x, σ) with the cached E(x), ξ(x) and log q(x | σ). Three moves
each leave π_V invariant:

* :func:`local_moves`: single-site Metropolis on x under E + V(ξ(x)) with σ kept. The site is
  uniform and the new state uniform among the q − 1 others, so the proposal is symmetric.
* :func:`global_move`: an independence proposal (x′, σ′) ~ u(σ′) q(x′ | σ′) from the sampler,
  accepted with min(1, π_V(x′) q(x | σ) / (π_V(x) q(x′ | σ′))); u cancels. q(x | σ) of the
  current state is recomputed (batched over chains) when local moves changed x.
* :func:`refresh_orders`: σ redrawn from u, an exact Gibbs step for σ given x.

The q in the ratio must be the probability with which x′ was drawn: the sampler's ``log_prob``
reproduces ``sample``'s log q (float32 without TF32, or float64). Every function draws its
randomness from the ``torch.Generator`` passed in; energies are float64 in the system's unit,
log-densities in nats.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from systems.reference_samplers import metropolis_trial

__all__ = ["ChainState", "BiasedTarget", "log_acceptance", "start_chains", "local_moves", "global_move",
           "refresh_orders", "chain_round"]


@dataclass(frozen=True)
class BiasedTarget:
    """log π_V(x) = −β[E(x) + V(ξ(x))] + const for a system, β and an optional bias.

    ``bias`` is any callable mapping CV values float64 ``(C, d)`` (numpy) to V float64 ``(C,)``
    in the system's energy unit (e.g. ``WellTemperedGridBias.value``), or None for V ≡ 0.
    ``energy_fn`` (x int64 (C, D) → float64 (C,)) replaces ``system.energy`` (e.g. a pool).
    """

    system: object
    beta: float
    bias: object = None
    energy_fn: object = None

    def energy(self, x: torch.Tensor) -> torch.Tensor:
        return (self.energy_fn or self.system.energy)(x).to(torch.float64)

    def bias_energy(self, cv: torch.Tensor) -> torch.Tensor:
        if self.bias is None:
            return torch.zeros(cv.shape[0], dtype=torch.float64)
        return torch.from_numpy(np.asarray(self.bias(cv.numpy()), dtype=np.float64))

    def log_density(self, energy: torch.Tensor, cv: torch.Tensor) -> torch.Tensor:
        """−β(E + V(ξ)) float64 ``(C,)`` from energies ``(C,)`` and CV values ``(C, d)``."""
        return -self.beta * (energy + self.bias_energy(cv))


@dataclass(frozen=True)
class ChainState:
    """C chains: x int64 ``(C, D)``, order int64 ``(C, D)`` or None (exact-q samplers), energy
    float64 ``(C,)``, cv float64 ``(C, d)`` and log_q float64 ``(C,)`` = log q(x | order) under the
    current sampler, or None when it must be recomputed (after local moves or a new sampler)."""

    x: torch.Tensor
    order: torch.Tensor | None
    energy: torch.Tensor
    cv: torch.Tensor
    log_q: torch.Tensor | None = None


def log_acceptance(log_pi_current: torch.Tensor, log_q_current: torch.Tensor, log_pi_proposed: torch.Tensor,
                   log_q_proposed: torch.Tensor) -> torch.Tensor:
    """log of the independence Metropolis–Hastings ratio π(x′) q(x) / (π(x) q(x′)), float64 (C,);
    accept where log U < this (U uniform on (0, 1))."""
    return (log_pi_proposed - log_q_proposed) - (log_pi_current - log_q_current)


def start_chains(x: torch.Tensor, target: BiasedTarget, sampler, generator: torch.Generator) -> ChainState:
    """Chains at configurations x int ``(C, D)`` with orders drawn from u (on the CPU); a
    ``sampler`` None gives chains for local moves only (no order)."""
    x = x.to(torch.int64).cpu()
    order = sampler.random_order(x.shape[0], generator) if sampler is not None else None
    order = order.cpu() if order is not None else None
    return ChainState(x, order, target.energy(x), target.system.cv(x).to(torch.float64))


def local_moves(state: ChainState, target: BiasedTarget, generator: torch.Generator,
                n_moves: int) -> tuple[ChainState, int]:
    """``n_moves`` single-site Metropolis trials per chain under E + V(ξ(x)), σ kept
    (:func:`systems.reference_samplers.metropolis_trial`: a uniform site, a uniform different
    state, one ΔE per chain per trial; with a bias also the CVs of the proposed configurations).
    Returns the new state (log q marked stale when any x changed) and the number of accepted
    trials over all chains.
    """
    system = target.system
    x, energy = state.x, state.energy
    accepted_total = 0
    for _ in range(n_moves):  # loop over trials; every trial is vectorised over chains
        x, accept, delta_energy = metropolis_trial(system, x, target.beta, generator, target.bias)
        energy = torch.where(accept, energy + delta_energy.to(torch.float64), energy)
        accepted_total += int(accept.sum())
    if accepted_total == 0:
        return state, 0
    return ChainState(x, state.order, energy, system.cv(x).to(torch.float64)), accepted_total


def global_move(state: ChainState, target: BiasedTarget, sampler, generator: torch.Generator,
                batch_size: int | None = None) -> tuple[ChainState, torch.Tensor, torch.Tensor]:
    """One independence proposal per chain from the sampler; returns the new state, the
    accepted mask bool ``(C,)`` and the proposals' importance log-weights for π_V, log π_V(x′) −
    log q(x′ | σ′) float64 ``(C,)`` (unnormalised, nats). Costs C energy evaluations (the
    proposals) and, when the cached log q is stale, one batched ``log_prob`` of the current states."""
    log_q = state.log_q
    if log_q is None:
        log_q = sampler.log_prob(state.x, state.order, batch_size=batch_size).cpu().to(torch.float64)
    proposal = sampler.sample(state.x.shape[0], generator, batch_size=batch_size)
    x_new = proposal.x.cpu().to(torch.int64)
    order_new = proposal.order.cpu() if proposal.order is not None else None
    log_q_new = proposal.log_q.cpu().to(torch.float64)
    energy_new = target.energy(x_new)
    cv_new = target.system.cv(x_new).to(torch.float64)
    log_pi_new = target.log_density(energy_new, cv_new)
    log_alpha = log_acceptance(target.log_density(state.energy, state.cv), log_q, log_pi_new, log_q_new)
    u = torch.rand(state.x.shape[0], generator=generator, device=generator.device, dtype=torch.float64).cpu()
    accept = torch.log(u) < log_alpha
    order = None if state.order is None else torch.where(accept[:, None], order_new, state.order)
    new_state = ChainState(torch.where(accept[:, None], x_new, state.x), order,
                           torch.where(accept, energy_new, state.energy),
                           torch.where(accept[:, None], cv_new, state.cv),
                           torch.where(accept, log_q_new, log_q))
    return new_state, accept, log_pi_new - log_q_new


def refresh_orders(state: ChainState, sampler, generator: torch.Generator) -> ChainState:
    """σ redrawn from u for every chain (exact Gibbs for σ given x); no-op for exact-q samplers."""
    if state.order is None:
        return state
    order = sampler.random_order(state.x.shape[0], generator).cpu()
    return replace(state, order=order, log_q=None)


def chain_round(state: ChainState, target: BiasedTarget, generator: torch.Generator, local_trials: int,
                sampler=None) -> tuple[ChainState, int, torch.Tensor, torch.Tensor | None]:
    """One round of the kernel: ``local_trials`` local trials per chain, then (with a
    ``sampler``) a global move and an order refresh. Returns the new state, the accepted local
    trials over all chains, the accepted-global mask bool ``(C,)`` (all False without one) and
    the proposals' log-weights float64 ``(C,)`` (:func:`global_move`; None without one)."""
    state, local_accepted = local_moves(state, target, generator, local_trials)
    global_accepted, proposal_log_w = torch.zeros(state.x.shape[0], dtype=torch.bool), None
    if sampler is not None:
        state, global_accepted, proposal_log_w = global_move(state, target, sampler, generator)
        state = refresh_orders(state, sampler, generator)
    return state, local_accepted, global_accepted, proposal_log_w
