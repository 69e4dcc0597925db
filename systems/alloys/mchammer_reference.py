"""Reference Monte Carlo of a cluster expansion with icet's mchammer (canonical and semi-grand-canonical).

For comparing MetaDNS estimates with an established sampler on the same CE and supercell.
Semi-grand-canonical (SGC) runs sample exp(−β[E(x) − Σ_s μ_s N_s(x)]).  With μ_0 = e_0 and
μ_1 = e_1 + Δμ, e_s the CE energy per atom of the pure species-s cell, the exponent is
−β[E_f(x) − Δμ·N_1(x)] with E_f(x) = E(x) − N_0 e_0 − N_1 e_1 the formation energy of the cell:
the paper's Δμ = 0 (docs/method.md §1).  ``pure_energies_per_atom`` computes e_0, e_1 from the CE.
"""

from __future__ import annotations

import numbers
from pathlib import Path

import ase
import numpy as np
import torch
from ase.data import atomic_numbers

from .cluster_expansion import ClusterExpansionBackend, icet_calculator

__all__ = ["pure_energies_per_atom", "run_mchammer"]

_ENSEMBLES = ("semi_grand_canonical", "canonical")


def pure_energies_per_atom(backend: ClusterExpansionBackend) -> tuple[float, float]:
    """CE energy per atom (eV) of the cell filled with species[0] and with species[1]."""
    pure = torch.stack([torch.zeros(backend.n_sites, dtype=torch.int64), torch.ones(backend.n_sites, dtype=torch.int64)])
    energies = backend.energy(pure) / backend.n_sites
    return float(energies[0]), float(energies[1])


def run_mchammer(model_path, supercell: ase.Atoms, temperature: float, *, ensemble: str = "semi_grand_canonical",
                 delta_mu: float = 0.0, species=("Cu", "Au"), initial_occupation=None, n_sweeps: int = 200,
                 burn_in_sweeps: int = 50, thin_sweeps: int = 1, seed: int = 0) -> dict:
    """Run mchammer on a CE and return per-sample arrays after burn-in, one sample every ``thin_sweeps``.

    Args:
        model_path: CE file (icet ``.ce`` or project JSON).  supercell: the cell (site i = atom i).
        temperature: K.  ensemble: ``"semi_grand_canonical"`` or ``"canonical"``.
        delta_mu: Δμ in eV favouring species[1] (SGC only; 0 = the paper's setting).
        initial_occupation: int (D,) in {0, 1}; default all species[0] (SGC); required for canonical.
        n_sweeps: sweeps in total (one sweep = D trial moves); burn_in_sweeps: discarded first.
        seed: mchammer's random seed.

    Returns dict of numpy arrays over samples: ``occupations`` int (S, D) (1 = species[1]),
    ``n_species1`` (int), ``fraction`` (N_1/D),
    ``energy`` (CE total energy, eV per cell), ``formation_energy`` (eV per cell), and
    ``chemical_potentials`` (eV per atom, the μ passed to mchammer, SGC only).
    """
    if ensemble not in _ENSEMBLES:
        raise ValueError(f"ensemble must be one of {_ENSEMBLES}, got {ensemble!r}")
    if not isinstance(temperature, numbers.Real) or not temperature > 0:
        raise ValueError(f"temperature must be positive in K, got {temperature!r}")
    for name, value in (("n_sweeps", n_sweeps), ("burn_in_sweeps", burn_in_sweeps), ("thin_sweeps", thin_sweeps)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < (0 if name == "burn_in_sweeps" else 1):
            raise ValueError(f"{name} must be a {'non-negative' if name == 'burn_in_sweeps' else 'positive'} integer, got {value!r}")
    if burn_in_sweeps >= n_sweeps:
        raise ValueError(f"burn_in_sweeps ({burn_in_sweeps}) must be smaller than n_sweeps ({n_sweeps})")
    from mchammer.ensembles import CanonicalEnsemble, SemiGrandCanonicalEnsemble

    backend = ClusterExpansionBackend(Path(model_path), supercell, species=species)
    n_sites = backend.n_sites
    if initial_occupation is None:
        if ensemble == "canonical":
            raise ValueError("initial_occupation is required for the canonical ensemble (it fixes the composition)")
        initial_occupation = np.zeros(n_sites, dtype=np.int64)
    initial_occupation = np.asarray(initial_occupation, dtype=np.int64)
    if initial_occupation.shape != (n_sites,) or not np.isin(initial_occupation, (0, 1)).all():
        raise ValueError(f"initial_occupation must be {n_sites} values in {{0, 1}}, got shape {initial_occupation.shape}")
    structure = backend.supercell.copy()
    structure.set_chemical_symbols([backend.species[s] for s in initial_occupation])
    calculator = icet_calculator(backend.cluster_expansion, structure)
    common = dict(structure=structure, calculator=calculator, temperature=float(temperature), random_seed=seed,
                  ensemble_data_write_interval=n_sites * thin_sweeps, trajectory_write_interval=n_sites * thin_sweeps)
    pure_0, pure_1 = pure_energies_per_atom(backend)
    if ensemble == "canonical":
        mc = CanonicalEnsemble(**common)
        chemical_potentials = None
    else:
        chemical_potentials = {backend.species[0]: pure_0, backend.species[1]: pure_1 + float(delta_mu)}
        mc = SemiGrandCanonicalEnsemble(chemical_potentials=chemical_potentials, **common)
    mc.run(n_sweeps * n_sites)
    trial, energy, trajectory = mc.data_container.get("mctrial", "potential", "trajectory")
    kept = trial > burn_in_sweeps * n_sites  # samples at the ends of sweeps burn_in + thin, …, n_sweeps
    energy = energy[kept].astype(np.float64)
    species_1 = atomic_numbers[backend.species[1]]
    occupations = np.stack([atoms.numbers == species_1 for atoms, keep in zip(trajectory, kept) if keep]).astype(np.int64)
    count = occupations.sum(axis=1)
    result = {
        "occupations": occupations,
        "n_species1": count,
        "fraction": count / n_sites,
        "energy": energy,
        "formation_energy": energy - (n_sites - count) * pure_0 - count * pure_1,
    }
    if chemical_potentials is not None:
        result["chemical_potentials"] = {s: chemical_potentials[s] for s in backend.species}
    return result
