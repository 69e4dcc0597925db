"""Reference MCMC samplers, vectorised over independent chains.

- :func:`swendsen_wang`: cluster algorithm for the zero-field Ising and ferromagnetic
  Potts models (R. H. Swendsen and J.-S. Wang, PRL 58, 86 (1987)).
- :func:`metropolis_step` / :func:`metropolis`: single-site Metropolis with an optional
  CV bias V(s), i.e. sampling pi_V(x) ∝ exp(-beta [E(x) + V(cv(x))]).

Random numbers come from an explicit ``generator``: a ``torch.Generator`` or a
``numpy.random.Generator``; nothing touches global random state.
Cost accounting: every single-site Metropolis trial costs one local energy change (one
``energy_change`` call per chain); the chains' energies are kept up to date from those, so
only the starting states cost a full energy each. A Swendsen–Wang sweep computes no energy
and is reported in sweeps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import scipy.sparse
from scipy.sparse.csgraph import connected_components
import torch
from tqdm.auto import tqdm

from .base import LatticeSystem, as_configurations
from .ising import IsingModel
from .potts import PottsModel

__all__ = ["SwendsenWangResult", "MetropolisResult", "swendsen_wang", "metropolis_step", "metropolis_trial",
           "metropolis"]

Generator = torch.Generator | np.random.Generator
BiasEnergy = Callable[[np.ndarray], np.ndarray]


# ----------------------------------------------------------------------- random numbers
def _check_generator(generator) -> None:
    if not isinstance(generator, (torch.Generator, np.random.Generator)):
        raise ValueError("generator must be a torch.Generator or numpy.random.Generator "
                         "(e.g. torch.Generator().manual_seed(0) or numpy.random.default_rng(0))")


def _uniform(generator: Generator, shape: tuple[int, ...]) -> torch.Tensor:
    """U[0, 1) float64 CPU tensor."""
    if isinstance(generator, np.random.Generator):
        return torch.from_numpy(generator.random(shape))
    return torch.rand(shape, generator=generator, dtype=torch.float64, device=generator.device).cpu()


def _integers(generator: Generator, high: int, shape: tuple[int, ...]) -> torch.Tensor:
    """Uniform integers in 0..high-1, int64 CPU tensor."""
    if isinstance(generator, np.random.Generator):
        return torch.from_numpy(generator.integers(0, high, size=shape, dtype=np.int64))
    return torch.randint(0, high, shape, generator=generator, device=generator.device).cpu()


def _check_positive_int(value, label: str) -> int:
    if isinstance(value, bool) or int(value) != value or value < 1:
        raise ValueError(f"{label} must be a positive integer, got {value!r}")
    return int(value)


def _check_beta(beta) -> float:
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not math.isfinite(beta) or beta < 0:
        raise ValueError(f"beta must be a finite number >= 0, got {beta!r}")
    return float(beta)


def _initial_states(system: LatticeSystem, n_chains: int, generator: Generator, initial) -> torch.Tensor:
    if initial is None:
        return _integers(generator, system.n_states, (n_chains, system.n_sites)).to(torch.int8)
    x = as_configurations(initial, system.n_sites, system.n_states, name="initial")
    if x.shape[0] != n_chains:
        raise ValueError(f"initial must have shape ({n_chains}, {system.n_sites}) (one row per chain), "
                         f"got {tuple(x.shape)}")
    return x.to(torch.int8).clone()


# ----------------------------------------------------------------------- Swendsen–Wang
@dataclass(frozen=True, eq=False)
class SwendsenWangResult:
    """states: int8 ``(n_recorded, n_chains, D)`` after every ``thin``-th sweep;
    final_state: int8 ``(n_chains, D)`` to continue from (``initial=``); n_sweeps done."""

    states: torch.Tensor
    final_state: torch.Tensor
    n_sweeps: int


def _swendsen_wang_bond_probability(system: LatticeSystem, beta: float) -> float:
    if isinstance(system, IsingModel):
        if system.field != 0.0:
            raise ValueError(f"swendsen_wang needs zero field; this IsingModel has field={system.field}. "
                             "Use metropolis for h != 0")
        coupling = 2.0 * system.J
    elif isinstance(system, PottsModel):
        coupling = system.J
    else:
        raise ValueError(f"swendsen_wang supports IsingModel and PottsModel, got {type(system).__name__}")
    if system.J <= 0:
        raise ValueError(f"swendsen_wang needs a ferromagnetic coupling J > 0, got J={system.J}")
    return -math.expm1(-beta * coupling)


def swendsen_wang(
    system: LatticeSystem,
    beta: float,
    n_chains: int,
    n_sweeps: int,
    generator: Generator,
    initial=None,
    thin: int = 1,
    progress: bool | None = False,
) -> SwendsenWangResult:
    """Swendsen–Wang cluster sweeps for ``n_chains`` independent chains at once.

    Each sweep: every bond joining equal states is activated with probability
    1 - exp(-2 beta J) (Ising) or 1 - exp(-beta J) (Potts); clusters (connected components
    of the active bonds, labelled for all chains together on one block-diagonal graph) each
    receive an independent uniformly random state. Leaves exp(-beta E) invariant (Ising
    needs h = 0; both need J > 0).

    beta: inverse temperature in 1/J. initial: int ``(n_chains, D)`` or None (uniform random).
    thin: record every ``thin``-th sweep. progress: tqdm bar (None: only on a terminal).
    """
    beta = _check_beta(beta)
    n_chains = _check_positive_int(n_chains, "n_chains")
    n_sweeps = _check_positive_int(n_sweeps, "n_sweeps")
    thin = _check_positive_int(thin, "thin")
    _check_generator(generator)
    p_bond = _swendsen_wang_bond_probability(system, beta)
    x = _initial_states(system, n_chains, generator, initial).cpu().numpy()

    D, q = system.n_sites, system.n_states
    bonds = system.bonds.cpu().numpy()
    first, second = bonds[:, 0], bonds[:, 1]
    n_nodes = n_chains * D
    recorded = np.empty((n_sweeps // thin, n_chains, D), dtype=np.int8)

    disable = None if progress is None else not progress
    for sweep in tqdm(range(n_sweeps), desc="Swendsen-Wang", unit="sweep", disable=disable, leave=False):
        u = _uniform(generator, (n_chains, bonds.shape[0])).numpy()
        active = (x[:, first] == x[:, second]) & (u < p_bond)
        chain, bond = np.nonzero(active)
        rows = chain * D + first[bond]
        cols = chain * D + second[bond]
        graph = scipy.sparse.coo_matrix(
            (np.ones(rows.size, dtype=np.int32), (rows, cols)), shape=(n_nodes, n_nodes)
        ).tocsr()
        n_clusters, labels = connected_components(graph, directed=False)
        new_cluster_states = _integers(generator, q, (n_clusters,)).numpy().astype(np.int8)
        x = new_cluster_states[labels].reshape(n_chains, D)
        if (sweep + 1) % thin == 0:
            recorded[(sweep + 1) // thin - 1] = x
    return SwendsenWangResult(torch.from_numpy(recorded), torch.from_numpy(x.copy()), n_sweeps)


# ----------------------------------------------------------------------- Metropolis
@dataclass(frozen=True, eq=False)
class MetropolisResult:
    """states: int8 ``(n_recorded, n_chains, D)`` after every ``thin``-th sweep, with their
    energies float64 ``(n_recorded, n_chains)`` (kept up to date from the accepted ΔE);
    final_state: int8 ``(n_chains, D)`` and final_energy float64 ``(n_chains,)`` to continue
    from; acceptance_rate: accepted / trials; n_energy_changes: trial steps summed over chains
    (one local energy change each); n_full_energies: full energies computed (the starting
    states, unless their energies were given); n_sweeps: sweeps done (D trials per chain)."""

    states: torch.Tensor
    energies: torch.Tensor
    final_state: torch.Tensor
    final_energy: torch.Tensor
    acceptance_rate: float
    n_energy_changes: int
    n_full_energies: int
    n_sweeps: int


def _bias_of(bias_energy: BiasEnergy, cv: torch.Tensor) -> torch.Tensor:
    values = bias_energy(cv.detach().cpu().numpy())
    values = torch.as_tensor(np.asarray(values, dtype=np.float64))
    if values.shape != (cv.shape[0],):
        raise ValueError(f"bias_energy must map CV values ({cv.shape[0]}, d) to shape ({cv.shape[0]},), "
                         f"got {tuple(values.shape)}")
    if not torch.all(torch.isfinite(values)):
        raise ValueError("bias_energy returned non-finite values")
    return values.to(cv.device)


def metropolis_trial(system, x, beta, generator, bias_energy=None):
    """The unchecked Metropolis trial behind :func:`metropolis_step` (inputs valid by
    construction, e.g. inside a chain loop): returns (new x, accepted bool ``(B,)``, ΔE float64
    ``(B,)`` of the proposed flip without the bias, so callers can keep cached energies)."""
    B, D, q = x.shape[0], system.n_sites, system.n_states
    sites = _integers(generator, D, (B,)).to(x.device)
    rows = torch.arange(B, device=x.device)
    old_states = x[rows, sites].long()
    # Uniformly random *different* state: symmetric proposal.
    new_states = (old_states + 1 + _integers(generator, q - 1, (B,)).to(x.device)) % q
    delta_energy = system._energy_change(x, sites, new_states)  # inputs valid by construction
    delta = delta_energy
    proposed = None
    if bias_energy is not None:
        proposed = x.clone()
        proposed[rows, sites] = new_states.to(x.dtype)
        delta = delta + _bias_of(bias_energy, system._cv(proposed)) - _bias_of(bias_energy, system._cv(x))
    log_u = torch.log(_uniform(generator, (B,))).to(x.device)
    accepted = log_u < -beta * delta
    if proposed is None:
        x_new = x.clone()
        x_new[rows[accepted], sites[accepted]] = new_states[accepted].to(x.dtype)
    else:
        x_new = torch.where(accepted[:, None], proposed, x)
    return x_new, accepted, delta_energy


def metropolis_step(system: LatticeSystem, x, beta: float, generator: Generator,
                    bias_energy: BiasEnergy | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One single-site Metropolis trial per chain.

    Each row picks a uniformly random site and a uniformly random *different* state and
    accepts with probability min(1, exp(-beta (dE + dV))), dE from ``system.energy_change``
    and dV = V(cv(x')) - V(cv(x)) when ``bias_energy`` is given (a callable mapping CV
    values, numpy float64 ``(B, d)``, to bias energies float64 ``(B,)`` in the system's
    energy unit). Costs one energy evaluation per chain.

    x: int ``(B, D)`` (not modified). Returns (new x with the dtype of x, accepted bool ``(B,)``).
    """
    beta = _check_beta(beta)
    _check_generator(generator)
    if bias_energy is not None and not callable(bias_energy):
        raise ValueError("bias_energy must be None or a callable mapping CV values (B, d) to energies (B,)")
    x = as_configurations(x, system.n_sites, system.n_states)
    x_new, accepted, _ = metropolis_trial(system, x, beta, generator, bias_energy)
    return x_new, accepted


def metropolis(
    system: LatticeSystem,
    beta: float,
    n_chains: int,
    n_sweeps: int,
    generator: Generator,
    initial=None,
    bias_energy: BiasEnergy | None = None,
    thin: int = 1,
    progress: bool | None = False,
    initial_energy=None,
) -> MetropolisResult:
    """Single-site Metropolis for ``n_chains`` independent chains (optionally CV-biased).

    A sweep is D trial steps per chain (see :func:`metropolis_step`). Samples
    exp(-beta E) or, with ``bias_energy``, exp(-beta [E + V(cv)]).
    beta: inverse temperature in 1/energy_unit. initial: int ``(n_chains, D)`` or None
    (uniform random); initial_energy: float64 ``(n_chains,)``, the energies of ``initial``
    when known (e.g. a previous result's ``final_energy``), else computed. thin: record every
    ``thin``-th sweep. progress: tqdm bar.
    """
    beta = _check_beta(beta)
    n_chains = _check_positive_int(n_chains, "n_chains")
    n_sweeps = _check_positive_int(n_sweeps, "n_sweeps")
    thin = _check_positive_int(thin, "thin")
    _check_generator(generator)
    if bias_energy is not None and not callable(bias_energy):
        raise ValueError("bias_energy must be None or a callable mapping CV values (B, d) to energies (B,)")
    x = _initial_states(system, n_chains, generator, initial)
    if initial_energy is None:
        energy, n_full = system.energy(x).to(torch.float64), n_chains
    else:
        energy, n_full = torch.as_tensor(initial_energy, dtype=torch.float64).clone(), 0
        if energy.shape != (n_chains,):
            raise ValueError(f"initial_energy must have shape ({n_chains},), got {tuple(energy.shape)}")
    D = system.n_sites
    recorded = torch.empty((n_sweeps // thin, n_chains, D), dtype=torch.int8)
    recorded_energy = torch.empty((n_sweeps // thin, n_chains), dtype=torch.float64)
    n_accepted = torch.zeros((), dtype=torch.int64)
    disable = None if progress is None else not progress
    for sweep in tqdm(range(n_sweeps), desc="Metropolis", unit="sweep", disable=disable, leave=False):
        for _ in range(D):
            x, accepted, delta_energy = metropolis_trial(system, x, beta, generator, bias_energy)
            energy = torch.where(accepted.cpu(), energy + delta_energy.cpu().to(torch.float64), energy)
            n_accepted += accepted.sum().cpu()
        if (sweep + 1) % thin == 0:
            recorded[(sweep + 1) // thin - 1] = x
            recorded_energy[(sweep + 1) // thin - 1] = energy
    n_trials = n_sweeps * D * n_chains
    return MetropolisResult(recorded, recorded_energy, x.clone(), energy.clone(), int(n_accepted) / n_trials,
                            n_trials, n_full, n_sweeps)
