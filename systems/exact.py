"""Exact results for small systems: full enumeration and Kaufman's Ising partition function.

Enumeration is the ground truth for every sampler and estimator test: with all q^D
states listed, the Boltzmann distribution pi(x) = exp(-beta E(x)) / Z, any observable
average and the CV marginal are exact (up to float64 rounding).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch

from .base import LatticeSystem

__all__ = [
    "MAX_ENUMERATED_STATES",
    "enumerate_states",
    "iterate_states",
    "ExactEnsemble",
    "CVMarginal",
    "exact_ensemble",
    "ising_log_partition_function",
]

MAX_ENUMERATED_STATES = 2**22

BiasEnergy = Callable[[np.ndarray], np.ndarray]


def _check_state_space(n_sites, n_states) -> tuple[int, int]:
    for label, value, least in (("n_sites", n_sites, 1), ("n_states", n_states, 2)):
        if isinstance(value, bool) or int(value) != value or value < least:
            raise ValueError(f"{label} must be an integer >= {least}, got {value!r}")
    if n_states > 127:
        raise ValueError(f"n_states must be <= 127 to fit int8, got {n_states}")
    return int(n_sites), int(n_states)


def _states_in_range(start: int, stop: int, n_sites: int, n_states: int) -> torch.Tensor:
    """Configurations ``start .. stop-1`` in lexicographic order, int8 ``(stop-start, D)``:
    row k holds the base-q digits of k, site 0 the most significant digit."""
    place_values = n_states ** torch.arange(n_sites - 1, -1, -1, dtype=torch.int64)
    index = torch.arange(start, stop, dtype=torch.int64)
    return torch.div(index[:, None], place_values, rounding_mode="floor").remainder_(n_states).to(torch.int8)


def enumerate_states(n_sites: int, n_states: int) -> torch.Tensor:
    """All ``n_states ** n_sites`` configurations, int8 ``(q^D, D)``.

    Row k holds the base-q digits of k with site 0 the most significant digit
    (lexicographic order). Refuses more than ``MAX_ENUMERATED_STATES`` (2^22) rows;
    :func:`iterate_states` streams larger spaces in chunks.
    """
    n_sites, n_states = _check_state_space(n_sites, n_states)
    if n_sites * math.log2(n_states) > math.log2(MAX_ENUMERATED_STATES) + 1e-9:
        raise ValueError(
            f"{n_states}^{n_sites} states exceed the enumeration limit of 2^22 = "
            f"{MAX_ENUMERATED_STATES}; use iterate_states, a smaller lattice or a sampler"
        )
    return _states_in_range(0, n_states**n_sites, n_sites, n_states)


def iterate_states(n_sites: int, n_states: int, chunk_size: int = 2**18) -> Iterator[torch.Tensor]:
    """All ``n_states ** n_sites`` configurations in :func:`enumerate_states` order, as int8
    chunks of at most ``chunk_size`` rows ``(≤ chunk_size, D)``; memory stays O(chunk_size·D)."""
    n_sites, n_states = _check_state_space(n_sites, n_states)
    if int(chunk_size) != chunk_size or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    n_total = n_states**n_sites
    for start in range(0, n_total, int(chunk_size)):
        yield _states_in_range(start, min(start + int(chunk_size), n_total), n_sites, n_states)


@dataclass(frozen=True, eq=False)
class CVMarginal:
    """Exact marginal distribution of the CV (numpy float64).

    values:            ``(K, d)`` distinct attainable CV values, sorted by grid index.
    probabilities:     ``(K,)`` summing to 1.
    log_probabilities: ``(K,)`` natural log, computed with logsumexp (exact for tiny p).
    """

    values: np.ndarray
    probabilities: np.ndarray
    log_probabilities: np.ndarray

    def free_energy(self) -> np.ndarray:
        """F(s) = -ln P(s) in k_BT per value, gauge min F = 0, shape ``(K,)``."""
        f = -self.log_probabilities
        return f - f.min()


@dataclass(frozen=True, eq=False)
class ExactEnsemble:
    """Boltzmann (or biased-Boltzmann) ensemble of a small system, all states listed.

    system:    the :class:`LatticeSystem`.
    beta:      inverse temperature, 1/energy_unit (times k_B).
    states:    int8 ``(S, D)`` all configurations (:func:`enumerate_states` order).
    energies:  float64 ``(S,)`` physical energies E(x) in ``system.energy_unit``.
    cv:        float64 ``(S, d)`` CV of each state.
    log_prob:  float64 ``(S,)`` normalised log-probabilities: -beta E - log_Z for the
               physical ensemble; -beta (E + V) - log_Z for one made by :meth:`biased`.
    log_Z:     float64 log partition function of this ensemble.
    """

    system: LatticeSystem
    beta: float
    states: torch.Tensor
    energies: torch.Tensor
    cv: torch.Tensor
    log_prob: torch.Tensor
    log_Z: float
    chunk_size: int = 2**16

    @property
    def probabilities(self) -> torch.Tensor:
        return self.log_prob.exp()

    def observable_values(self, name: str) -> torch.Tensor:
        """Per-state values of ``system.observables()[name]``, float64 ``(S,)``."""
        if name not in self.system.observable_units:
            raise ValueError(f"unknown observable {name!r}; valid: {sorted(self.system.observable_units)}")
        return torch.cat([
            self.system.observables(chunk)[name] for chunk in self.states.split(self.chunk_size)
        ])

    def expectation(self, observable) -> float:
        """Exact average of an observable: a name from ``system.observables`` or per-state values ``(S,)``."""
        values = self.observable_values(observable) if isinstance(observable, str) else torch.as_tensor(
            observable, dtype=torch.float64)
        if values.shape != self.energies.shape:
            raise ValueError(f"per-state values must have shape {tuple(self.energies.shape)}")
        return float((self.probabilities * values).sum())

    def expectations(self) -> dict[str, float]:
        """Exact averages of every observable of the system, plus ``"energy"`` (whole lattice)."""
        sums = {name: 0.0 for name in self.system.observable_units}
        p = self.probabilities
        for chunk, p_chunk in zip(self.states.split(self.chunk_size), p.split(self.chunk_size)):
            for name, values in self.system.observables(chunk).items():
                sums[name] += float((p_chunk * values).sum())
        sums["energy"] = float((p * self.energies).sum())
        return sums

    def biased(self, bias_energy: BiasEnergy) -> "ExactEnsemble":
        """The ensemble pi_V(x) ∝ exp(-beta [E(x) + V(cv(x))]).

        bias_energy: callable mapping CV values, numpy float64 ``(B, d)``, to V in the
        system's energy unit, float64 ``(B,)``. ``energies`` stay the physical E.
        """
        bias = _bias_values(bias_energy, self.cv)
        log_unnormalised = -self.beta * (self.energies + bias)
        log_Z = float(torch.logsumexp(log_unnormalised, dim=0))
        return ExactEnsemble(self.system, self.beta, self.states, self.energies, self.cv,
                             log_unnormalised - log_Z, log_Z, self.chunk_size)

    def cv_marginal(self, bias_energy: BiasEnergy | None = None) -> CVMarginal:
        """Exact marginal of the CV; with ``bias_energy`` that of the biased ensemble."""
        log_prob = self.log_prob if bias_energy is None else self.biased(bias_energy).log_prob
        index = self.system.cv_spec.grid_index(self.cv)
        key = np.ravel_multi_index(tuple(index.T), self.system.cv_spec.grid_points)
        order = np.argsort(key, kind="stable")
        sorted_key = key[order]
        starts = np.flatnonzero(np.r_[True, sorted_key[1:] != sorted_key[:-1]])
        lp = log_prob.numpy()[order]
        group_max = np.maximum.reduceat(lp, starts)
        group_id = np.repeat(np.arange(starts.size), np.diff(np.r_[starts, lp.size]))
        log_p = group_max + np.log(np.add.reduceat(np.exp(lp - group_max[group_id]), starts))
        values = self.cv.numpy()[order][starts]
        return CVMarginal(values=values, probabilities=np.exp(log_p), log_probabilities=log_p)


def _bias_values(bias_energy: BiasEnergy, cv: torch.Tensor) -> torch.Tensor:
    if not callable(bias_energy):
        raise ValueError("bias_energy must be a callable mapping CV values (B, d) to energies (B,)")
    bias = np.asarray(bias_energy(cv.detach().cpu().numpy()), dtype=np.float64)
    if bias.shape != (cv.shape[0],):
        raise ValueError(f"bias_energy must return shape ({cv.shape[0]},), got {bias.shape}")
    if not np.all(np.isfinite(bias)):
        raise ValueError("bias_energy returned non-finite values")
    return torch.from_numpy(bias).to(cv.device)


def exact_ensemble(system: LatticeSystem, beta: float, chunk_size: int = 2**16) -> ExactEnsemble:
    """Enumerate every state of ``system`` and build its Boltzmann ensemble at ``beta``.

    beta: inverse temperature in 1/system.energy_unit (k_B already folded in), >= 0.
    Energies and CVs are evaluated in chunks of ``chunk_size`` states.
    """
    if not isinstance(system, LatticeSystem):
        raise ValueError(f"system must be a LatticeSystem, got {type(system).__name__}")
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not math.isfinite(beta) or beta < 0:
        raise ValueError(f"beta must be a finite number >= 0, got {beta!r}")
    if int(chunk_size) != chunk_size or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    states = enumerate_states(system.n_sites, system.n_states)
    chunks = states.split(int(chunk_size))
    energies = torch.cat([system.energy(c) for c in chunks])
    cv = torch.cat([system.cv(c) for c in chunks])
    log_unnormalised = -float(beta) * energies
    log_Z = float(torch.logsumexp(log_unnormalised, dim=0))
    return ExactEnsemble(system, float(beta), states, energies, cv, log_unnormalised - log_Z, log_Z,
                         int(chunk_size))


# --------------------------------------------------------------------------- Kaufman
def _log_2cosh(x: np.ndarray) -> np.ndarray:
    ax = np.abs(x)
    return ax + np.log1p(np.exp(-2.0 * ax))


def _signed_log_2sinh(x: np.ndarray) -> tuple[float, float]:
    """log|prod 2 sinh(x_k)| and the sign of the product."""
    if np.any(x == 0.0):
        return -math.inf, 0.0
    ax = np.abs(x)
    log_abs = float(np.sum(ax + np.log1p(-np.exp(-2.0 * ax))))
    sign = float(np.prod(np.sign(x)))
    return log_abs, sign


def ising_log_partition_function(L: int, beta: float, J: float = 1.0) -> float:
    """Exact ln Z of the periodic L x L Ising model at zero field (energies in J, k_B = 1).

    Kaufman's formula (B. Kaufman, Phys. Rev. 76, 1232 (1949)) for an m x n torus, here
    m = n = L, K = beta J > 0:

        Z = 1/2 (2 sinh 2K)^(mn/2) [Z1 + Z2 + Z3 + Z4],
        Z1 = prod_{r=0}^{n-1} 2 cosh(m g_{2r+1}/2),   Z2 = prod 2 sinh(m g_{2r+1}/2),
        Z3 = prod_{r=0}^{n-1} 2 cosh(m g_{2r}/2),     Z4 = prod 2 sinh(m g_{2r}/2),
        cosh g_l = cosh 2K coth 2K - cos(pi l / n)   (g_l > 0 for l >= 1),
        g_0 = 2K + ln tanh K,

    where g_0 carries a sign: negative for K < K_c = ln(1 + sqrt 2)/2 (then Z4 < 0) and
    positive above. The convention is the one of :class:`IsingModel`: 2L^2 bonds, each once
    (for L = 2 each pair of neighbours is joined twice). Evaluated in log space, stable for
    large K. For J < 0 and even L the lattice is bipartite and Z(K) = Z(-K); odd L with
    J < 0 (frustrated) is refused.
    """
    if isinstance(L, bool) or int(L) != L or L < 2:
        raise ValueError(f"L must be an integer >= 2, got {L!r}")
    for label, value in (("beta", beta), ("J", J)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{label} must be a finite number, got {value!r}")
    if beta < 0:
        raise ValueError(f"beta must be >= 0, got {beta}")
    L = int(L)
    n_sites = L * L
    K = float(beta) * float(J)
    if K < 0:
        if L % 2:
            raise ValueError("J < 0 with odd L is frustrated and not covered by Kaufman's formula; "
                             "use an even L or J > 0")
        K = -K
    if K == 0.0:
        return n_sites * math.log(2.0)
    m = n = L
    # log(cosh 2K coth 2K) = log(cosh^2 2K / sinh 2K), written with e^{-4K} to avoid overflow.
    e4 = math.exp(-4.0 * K)
    log_a0 = 2.0 * K - math.log(2.0) + 2.0 * math.log1p(e4) - math.log1p(-e4)
    l = np.arange(1, 2 * n)
    log_a = log_a0 + np.log1p(-np.cos(np.pi * l / n) * math.exp(-log_a0))  # log cosh g_l
    gammas = np.empty(2 * n)
    gammas[1:] = log_a + np.log1p(np.sqrt(-np.expm1(-2.0 * log_a)))  # arccosh via logs
    gammas[0] = 2.0 * K + math.log(math.tanh(K))
    odd, even = gammas[1::2], gammas[0::2]
    terms = [
        (float(np.sum(_log_2cosh(m * odd / 2))), 1.0),
        _signed_log_2sinh(m * odd / 2),
        (float(np.sum(_log_2cosh(m * even / 2))), 1.0),
        _signed_log_2sinh(m * even / 2),
    ]
    log_max = max(t[0] for t in terms)
    total = sum(sign * math.exp(log_t - log_max) for log_t, sign in terms if sign != 0.0)
    if not total > 0:
        raise ValueError(f"Kaufman sum lost precision at beta J = {K}; this should not happen")
    log_2sinh2K = 2.0 * K + math.log1p(-e4)  # log(2 sinh 2K) = log(e^{2K} (1 - e^{-4K}))
    return -math.log(2.0) + 0.5 * m * n * log_2sinh2K + log_max + math.log(total)
