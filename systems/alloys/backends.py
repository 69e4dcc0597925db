"""Energy backends for binary alloys on a fixed supercell (docs/method.md §1).

Every backend answers one question for a batch of occupations of one supercell:

    energy(x) -> float64 (B,), total energy of each cell in eV

with ``x`` int ``(B, D)``, ``x[b, i] = 0`` for ``species[0]`` (Cu in the shipped case) and
``1`` for ``species[1]`` (Au); site ``i`` is atom ``i`` of the backend's reference supercell
(an ``ase.Atoms``).  Energies are *total* energies as the model defines them (a cluster
expansion's E per atom × D, a force field's potential energy at ideal lattice positions);
the alloy system turns them into formation energies by subtracting the pure cells.

Backends that are expensive or cannot be pickled (icet objects, MACE models) are built
from a file path inside the process that uses them (``alloy.build_backend`` takes the plain
data of the config's ``system.energy``).
"""

from __future__ import annotations

import abc

import ase
import numpy as np
import torch

__all__ = ["EnergyBackend", "EnergyEvaluationError", "check_occupations", "decorate", "vegard_scale"]


class EnergyEvaluationError(RuntimeError):
    """A backend returned NaN/inf or failed on a configuration (the message names it)."""


def check_occupations(x, n_sites: int) -> torch.Tensor:
    """Validate a batch of binary occupations; returns int64 ``(B, D)`` on its own device."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor) or x.dim() != 2 or x.shape[1] != n_sites:
        shape = tuple(x.shape) if hasattr(x, "shape") else type(x).__name__
        raise ValueError(f"occupations must be an integer array of shape (B, {n_sites}), got {shape}")
    if x.dtype.is_floating_point or x.dtype == torch.bool:
        raise ValueError(f"occupations must hold integers 0 or 1, got dtype {x.dtype}")
    if x.numel() and (int(x.min()) < 0 or int(x.max()) > 1):
        raise ValueError("occupations must be 0 (species[0]) or 1 (species[1])")
    return x.to(torch.int64)


def vegard_scale(x: torch.Tensor, lattice_constant: float,
                 vegard_lattice_constants: tuple[float, float] | None) -> torch.Tensor:
    """Isotropic scale factor per configuration, float64 ``(B,)``.

    With ``vegard_lattice_constants = (a_0, a_1)`` (Å, pure species[0] and species[1]) the
    lattice constant follows Vegard's law a(c) = (1 − c)·a_0 + c·a_1 with c the fraction of
    species[1]; the factor is a(c) / ``lattice_constant`` (the reference supercell's).
    Without it every factor is 1 (all cells at the reference lattice constant).
    """
    if vegard_lattice_constants is None:
        return torch.ones(x.shape[0], dtype=torch.float64, device=x.device)
    a0, a1 = (float(a) for a in vegard_lattice_constants)
    fraction = x.to(torch.float64).mean(dim=1)
    return ((1.0 - fraction) * a0 + fraction * a1) / float(lattice_constant)


def decorate(supercell: ase.Atoms, occupation, species: tuple[str, str], scale: float = 1.0) -> ase.Atoms:
    """A copy of ``supercell`` with atom i set to ``species[occupation[i]]``.

    ``scale`` multiplies the cell and the positions (ideal lattice sites, isotropic strain).
    """
    occupation = np.asarray(occupation, dtype=np.int64).reshape(-1)
    if occupation.shape[0] != len(supercell):
        raise ValueError(f"occupation has {occupation.shape[0]} sites but the supercell has {len(supercell)} atoms")
    atoms = supercell.copy()
    atoms.calc = None
    atoms.set_chemical_symbols([species[int(s)] for s in occupation])
    if scale != 1.0:
        atoms.set_cell(atoms.cell[:] * float(scale), scale_atoms=True)
    return atoms


class EnergyBackend(abc.ABC):
    """Batched total energies (eV per cell) of binary occupations of one supercell.

    Attributes: ``supercell`` (ase.Atoms, the site order), ``species`` (2 chemical symbols,
    occupation 0 and 1), ``n_sites`` (D), ``name`` (config key of the backend).
    """

    name: str
    supercell: ase.Atoms
    species: tuple[str, str]

    @property
    def n_sites(self) -> int:
        return len(self.supercell)

    def energy(self, x) -> torch.Tensor:
        """Total energy in eV. x int ``(B, D)`` in {0, 1} -> float64 ``(B,)`` on x's device.

        Raises EnergyEvaluationError naming the batch row when a value is not finite.
        """
        x = check_occupations(x, self.n_sites)
        energies = self._energy(x)
        bad = ~torch.isfinite(energies)
        if bool(bad.any()):
            row = int(torch.nonzero(bad)[0, 0])
            raise EnergyEvaluationError(
                f"{self.name} backend returned {float(energies[row])} eV for configuration {row} of the batch "
                f"(Au count {int(x[row].sum())}); non-finite energies never enter the weights")
        return energies

    def energy_change(self, x, sites, new_states) -> torch.Tensor:
        """``E(x') − E(x)`` in eV, x' = x with ``x[b, sites[b]] = new_states[b]``; float64 ``(B,)``.

        Default: two full evaluations; backends with local energies override ``_energy_change``.
        """
        x = check_occupations(x, self.n_sites)
        sites = torch.as_tensor(sites, dtype=torch.int64, device=x.device)
        new_states = torch.as_tensor(new_states, dtype=torch.int64, device=x.device)
        if sites.shape != (x.shape[0],) or new_states.shape != (x.shape[0],):
            raise ValueError(f"sites and new_states must have shape ({x.shape[0]},), one entry per row of x")
        return self._energy_change(x, sites, new_states)

    @abc.abstractmethod
    def _energy(self, x: torch.Tensor) -> torch.Tensor: ...

    def _energy_change(self, x: torch.Tensor, sites: torch.Tensor, new_states: torch.Tensor) -> torch.Tensor:
        flipped = x.clone()
        flipped[torch.arange(x.shape[0], device=x.device), sites] = new_states
        return self.energy(flipped) - self.energy(x)
