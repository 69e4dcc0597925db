"""Composition free energy of a cluster-expansion cell, independently of the neural sampler:
icet's mchammer canonical Monte Carlo at each composition plus thermodynamic integration in β.

At Δμ = 0 the semi-grand-canonical target weighs a configuration x by exp(−β E_f(x)), E_f the
formation energy of the cell (eV, see :mod:`systems.alloys.mchammer_reference`). The probability
of n solute atoms is P(n; β) = Z_n(β) / Σ_m Z_m(β) with the canonical partition function

    ln Z_n(β) = ln C(N, n) − ∫_0^β ⟨E_f⟩_{n, β'} dβ'        (β in 1/eV),

since Z_n(0) counts the C(N, n) configurations. ⟨E_f⟩_{n,β} comes from mchammer's
``CanonicalEnsemble`` (swaps of unlike atoms anywhere in the cell, so n is fixed) on a ladder
of temperatures, each rung continuing from the last configuration of the one before, and the
integral is the trapezoid rule on that ladder. A cooling ladder starts from a random
configuration at β ≈ 0; a heating ladder starts from the cooling ladder's coldest
configuration: where the two disagree the ladder lags through an ordering transition.

Each rung runs ``burn_in_sweeps`` sweeps (N trials each), then blocks of ``block_sweeps``
until the autocorrelation-aware standard error of ⟨E_f⟩ is below ``energy_tolerance`` (eV
per cell) and at least 20 τ_int have been recorded, or ``max_sweeps`` is reached. The SE of
ln Z_n combines the rungs' SEs through the trapezoid weights (independent runs); the
discretisation error of the trapezoid rule is estimated separately (:func:`log_partition_function`).

F(x = n/N; β) = −ln P(n; β) in k_BT, and ⟨x⟩ = Σ_n (n/N) P(n; β) with the error propagated from
the independent ln Z_n (∂⟨x⟩/∂ ln Z_n = P_n (x_n − ⟨x⟩)).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import ase
import numpy as np
from ase.units import kB
from scipy.special import gammaln, logsumexp
from tqdm.auto import tqdm

from pipeline import estimators as est

from systems.alloys.cluster_expansion import ClusterExpansionBackend, icet_calculator
from systems.alloys.mchammer_reference import pure_energies_per_atom

__all__ = ["LadderResult", "ladder_betas", "canonical_ladder", "log_partition_function",
           "composition_distribution", "exact_composition_distribution", "INFINITE_TEMPERATURE_K"]

INFINITE_TEMPERATURE_K = 1.0e8
"""The β = 0 rung is sampled at this temperature (acceptance 1 − O(10⁻⁶) for eV-scale ΔE)."""


@dataclass
class LadderResult:
    """One composition's ladder. ``betas`` (K,) 1/eV in the order run; ``mean_energy`` and
    ``stderr`` (K,) ⟨E_f⟩ and its SE in eV per cell; ``tau_int`` in sweeps; ``sweeps`` recorded
    per rung; ``final_occupation`` (N,) the last configuration (1 = solute)."""
    n_solute: int
    n_sites: int
    direction: str
    seed: int
    betas: list[float]
    mean_energy: list[float]
    stderr: list[float]
    tau_int: list[float]
    sweeps: list[int]
    final_occupation: list[int]
    settings: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def ladder_betas(target_temperatures, beta_spacing: float) -> np.ndarray:
    """Ascending β grid (1/eV) from 0 to the coldest target: uniform steps of at most
    ``beta_spacing`` with every target temperature (K) on the grid."""
    targets = np.sort(1.0 / (kB * np.asarray(target_temperatures, dtype=np.float64)))
    if not beta_spacing > 0:
        raise ValueError(f"beta_spacing must be positive (1/eV), got {beta_spacing!r}")
    knots = np.concatenate([[0.0], targets])
    grid = [0.0]
    for lo, hi in zip(knots[:-1], knots[1:]):
        steps = max(1, math.ceil((hi - lo) / beta_spacing - 1e-9))
        grid.extend(lo + (hi - lo) * np.arange(1, steps + 1) / steps)
    return np.asarray(grid)


def _temperature(beta: float) -> float:
    return INFINITE_TEMPERATURE_K if beta == 0 else 1.0 / (kB * beta)


def canonical_ladder(model_path, supercell: ase.Atoms, n_solute: int, betas, *, direction: str = "cooling",
                     start_occupation=None, species=("Cu", "Au"), seed: int = 0, burn_in_sweeps: int = 100,
                     block_sweeps: int = 100, min_sweeps: int = 200, max_sweeps: int = 4000,
                     energy_tolerance: float = 0.01, progress: bool = False) -> LadderResult:
    """⟨E_f⟩ at fixed composition on each rung of a β ladder with mchammer's CanonicalEnsemble.

    ``betas`` ascending (1/eV); ``direction`` "cooling" runs them ascending from a random
    configuration (seeded), "heating" descending from ``start_occupation`` (N,) (the cooling
    ladder's final configuration). Returns the rungs in ascending β either way.
    """
    from mchammer.ensembles import CanonicalEnsemble

    if direction not in ("cooling", "heating"):
        raise ValueError(f"direction must be 'cooling' or 'heating', got {direction!r}")
    backend = ClusterExpansionBackend(model_path, supercell, species=species)
    n_sites = backend.n_sites
    if not 0 <= n_solute <= n_sites:
        raise ValueError(f"n_solute must be in 0..{n_sites}, got {n_solute}")
    rng = np.random.default_rng(seed)
    if start_occupation is None:
        if direction == "heating":
            raise ValueError("a heating ladder needs start_occupation (the cooling ladder's final configuration)")
        occupation = np.zeros(n_sites, dtype=np.int64)
        occupation[rng.permutation(n_sites)[:n_solute]] = 1
    else:
        occupation = np.asarray(start_occupation, dtype=np.int64)
        if occupation.shape != (n_sites,) or int(occupation.sum()) != n_solute:
            raise ValueError(f"start_occupation must hold {n_sites} sites with {n_solute} solute atoms")
    pure_0, pure_1 = pure_energies_per_atom(backend)
    reference_energy = (n_sites - n_solute) * pure_0 + n_solute * pure_1   # E − E_f, eV per cell
    structure = backend.supercell.copy()
    structure.set_chemical_symbols([backend.species[s] for s in occupation])
    calculator = icet_calculator(backend.cluster_expansion, structure)
    solute_number = ase.data.atomic_numbers[backend.species[1]]
    betas = np.sort(np.asarray(betas, dtype=np.float64))
    order = np.arange(len(betas)) if direction == "cooling" else np.arange(len(betas))[::-1]
    means, errors, taus, sweeps = (np.full(len(betas), np.nan) for _ in range(4))
    pure = n_solute in (0, n_sites)            # one configuration: E_f exact, no MC
    for k in tqdm(order, desc=f"n={n_solute} {direction}", unit="rung", disable=not progress, leave=False):
        if pure:
            means[k], errors[k], taus[k], sweeps[k] = calculator.calculate_total(
                occupations=structure.numbers.tolist()) - reference_energy, 0.0, 0.0, 0
            continue
        mc = CanonicalEnsemble(structure=structure, calculator=calculator, temperature=_temperature(betas[k]),
                               random_seed=int(rng.integers(2 ** 31)), ensemble_data_write_interval=n_sites,
                               trajectory_write_interval=10 ** 12)
        mc.run(burn_in_sweeps * n_sites)
        recorded = 0
        while True:
            mc.run(block_sweeps * n_sites)
            recorded += block_sweeps
            trial, energy = mc.data_container.get("mctrial", "potential")
            energy = energy[trial > burn_in_sweeps * n_sites].astype(np.float64) - reference_energy
            mean, stderr = est.mcmc_mean_and_stderr(energy)
            tau = est.integrated_autocorrelation_time(energy) if energy.std() > 0 else 0.0
            converged = recorded >= min_sweeps and stderr <= energy_tolerance and recorded >= 20 * tau
            if converged or recorded >= max_sweeps:
                break
        means[k], errors[k], taus[k], sweeps[k] = mean, stderr, tau, recorded
        structure = mc.structure
    final = (np.asarray(structure.numbers) == solute_number).astype(int)
    settings = dict(burn_in_sweeps=burn_in_sweeps, block_sweeps=block_sweeps, min_sweeps=min_sweeps,
                    max_sweeps=max_sweeps, energy_tolerance=energy_tolerance)
    return LadderResult(n_solute, n_sites, direction, seed, betas.tolist(), means.tolist(), errors.tolist(),
                        taus.tolist(), sweeps.astype(int).tolist(), final.tolist(), settings)


def log_partition_function(n_sites: int, n_solute: int, betas, mean_energy, stderr):
    """ln Z_n on the ladder (K,) by the trapezoid rule, with its statistical SE (K,) and an
    estimate of the discretisation error (K,): the trapezoid result on every second rung
    differs from the full one by about 3× the full rule's error (error ∝ Δβ²), so a third of
    that difference is returned, interpolated to every rung."""
    betas, energy, se = (np.asarray(a, dtype=np.float64) for a in (betas, mean_energy, stderr))
    log_count = gammaln(n_sites + 1) - gammaln(n_solute + 1) - gammaln(n_sites - n_solute + 1)
    widths = np.diff(betas)
    segments = 0.5 * widths * (energy[1:] + energy[:-1])
    log_z = log_count - np.concatenate([[0.0], np.cumsum(segments)])
    # SE: ∫ ≈ Σ_k c_k E_k with c_k the trapezoid weights up to rung j; independent rungs
    variance = np.empty_like(betas)
    for j in range(len(betas)):      # loop over rungs (tens), not samples
        c = np.zeros(j + 1)
        if j:
            c[:-1] += 0.5 * widths[:j]
            c[1:] += 0.5 * widths[:j]
        variance[j] = float((c ** 2 * se[: j + 1] ** 2).sum())
    coarse_index = np.arange(0, len(betas), 2)
    coarse_segments = 0.5 * np.diff(betas[coarse_index]) * (energy[coarse_index][1:] + energy[coarse_index][:-1])
    coarse = log_count - np.concatenate([[0.0], np.cumsum(coarse_segments)])
    discretisation = np.abs(np.interp(betas, betas[coarse_index], coarse - log_z[coarse_index])) / 3.0
    return log_z, np.sqrt(variance), discretisation


def composition_distribution(n_sites: int, log_z, log_z_err):
    """P(n), F(n) = −ln P(n) (k_BT, gauge min F = 0) and ⟨x⟩ with SE from ln Z_n of every
    composition n = 0..N at one β: ``log_z``, ``log_z_err`` (N+1,). Returns dict with
    ``probability``, ``free_energy``, ``free_energy_err`` (the SE of ln Z_n; the gauge's own
    error is shared and left out), ``mean_fraction``, ``mean_fraction_err``."""
    log_z, log_z_err = np.asarray(log_z, dtype=np.float64), np.asarray(log_z_err, dtype=np.float64)
    if log_z.shape != (n_sites + 1,):
        raise ValueError(f"need ln Z for all {n_sites + 1} compositions, got shape {log_z.shape}")
    log_p = log_z - logsumexp(log_z)
    p = np.exp(log_p)
    x = np.arange(n_sites + 1) / n_sites
    mean = float((p * x).sum())
    mean_err = float(np.sqrt(((p * (x - mean)) ** 2 * log_z_err ** 2).sum()))
    return {"probability": p, "free_energy": -(log_p - log_p.max()), "free_energy_err": log_z_err,
            "mean_fraction": mean, "mean_fraction_err": mean_err}


def exact_composition_distribution(backend: ClusterExpansionBackend, temperatures) -> dict:
    """Brute-force P(n; T) over all 2^N configurations (N ≤ 20) of ``backend``'s cell at Δμ = 0,
    energies from the backend in batches. Returns ``log_z`` (T, N+1) and ``mean_energy``
    (T, N+1) ⟨E_f⟩_n in eV per cell, for checking :func:`canonical_ladder` and the TI."""
    n_sites = backend.n_sites
    if n_sites > 20:
        raise ValueError(f"brute force enumerates 2^N configurations; N = {n_sites} is too many (≤ 20)")
    import torch

    pure_0, pure_1 = pure_energies_per_atom(backend)
    codes = torch.arange(2 ** n_sites, dtype=torch.int64)
    betas = 1.0 / (kB * np.asarray(temperatures, dtype=np.float64))
    log_z = np.full((len(betas), n_sites + 1), -np.inf)
    mean_energy = np.zeros((len(betas), n_sites + 1))
    counts_all, energies_all = [], []
    for chunk in codes.split(2 ** 14):        # batches of configurations, each batch vectorised
        x = (chunk[:, None] >> torch.arange(n_sites)) & 1
        n = x.sum(dim=1)
        energies_all.append((backend.energy(x).numpy() - ((n_sites - n) * pure_0 + n * pure_1).numpy()))
        counts_all.append(n.numpy())
    energy, count = np.concatenate(energies_all), np.concatenate(counts_all)
    for n in range(n_sites + 1):
        e = energy[count == n]
        exponent = -betas[:, None] * e[None, :]
        log_z[:, n] = logsumexp(exponent, axis=1)
        mean_energy[:, n] = (np.exp(exponent - log_z[:, n:n + 1]) * e).sum(axis=1)
    return {"log_z": log_z, "mean_energy": mean_energy}
