"""Any ASE calculator as an alloy energy backend (EMT by default): ground truth and data labelling.

One calculator call per configuration (ASE calculators work on one structure at a time), so
this backend is for references, validation and labelling training data, not for training
loops on large batches.  A calculator that raises or returns a non-finite energy stops the
evaluation with an :class:`EnergyEvaluationError` naming the configuration.
"""

from __future__ import annotations

import importlib
import math

import ase
import numpy as np
import torch

from .backends import EnergyBackend, EnergyEvaluationError, decorate, vegard_scale

__all__ = ["ASECalculatorBackend", "make_calculator", "from_options"]

DEFAULT_CALCULATOR = "ase.calculators.emt:EMT"


def make_calculator(calculator: str = DEFAULT_CALCULATOR, parameters: dict | None = None):
    """Instantiate ``"package.module:ClassName"`` with keyword ``parameters``.

    Raises ValueError naming the calculator when it cannot be imported or built.
    """
    if not isinstance(calculator, str) or calculator.count(":") != 1:
        raise ValueError(f"calculator must be 'package.module:ClassName' (e.g. {DEFAULT_CALCULATOR!r}), "
                         f"got {calculator!r}")
    module_name, class_name = calculator.split(":")
    try:
        factory = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"cannot import ASE calculator {calculator!r}: {error}") from error
    try:
        return factory(**(parameters or {}))
    except TypeError as error:
        raise ValueError(f"cannot build ASE calculator {calculator!r} with parameters {parameters!r}: {error}") from error


class ASECalculatorBackend(EnergyBackend):
    """Potential energy (eV per cell) at ideal lattice positions from an ASE calculator.

    Args:
        supercell: reference ``ase.Atoms`` (site order and ideal positions at ``lattice_constant``).
        species: chemical symbols of occupation 0 and 1.
        lattice_constant: the supercell's lattice constant a in Å.
        vegard_lattice_constants: (a_0, a_1) in Å to scale each cell by Vegard's law, or None.
        calculator: ``"package.module:ClassName"``; ``parameters``: its keyword arguments.
    """

    name = "ase"

    def __init__(self, supercell: ase.Atoms, species=("Cu", "Au"), lattice_constant: float = 3.8,
                 vegard_lattice_constants=None, calculator: str = DEFAULT_CALCULATOR,
                 parameters: dict | None = None):
        self.supercell = supercell.copy()
        self.species = tuple(species)
        self.lattice_constant = float(lattice_constant)
        self.vegard_lattice_constants = None if vegard_lattice_constants is None else \
            tuple(float(a) for a in vegard_lattice_constants)
        self.calculator_name = calculator
        self.parameters = dict(parameters or {})
        self.calculator = make_calculator(calculator, self.parameters)

    def structures(self, x: torch.Tensor) -> list[ase.Atoms]:
        """The ``ase.Atoms`` evaluated for occupations x ``(B, D)`` (Vegard-scaled if enabled)."""
        scales = vegard_scale(x, self.lattice_constant, self.vegard_lattice_constants).cpu().numpy()
        occupations = x.cpu().numpy()
        return [decorate(self.supercell, occ, self.species, float(s)) for occ, s in zip(occupations, scales)]

    def _energy(self, x: torch.Tensor) -> torch.Tensor:
        energies = np.empty(x.shape[0], dtype=np.float64)
        for row, atoms in enumerate(self.structures(x)):  # ASE calculators take one structure at a time
            atoms.calc = self.calculator
            try:
                energies[row] = atoms.get_potential_energy()
            except Exception as error:  # any calculator failure is reported with the configuration
                raise EnergyEvaluationError(
                    f"ASE calculator {self.calculator_name} failed on configuration {row} of the batch "
                    f"({atoms.get_chemical_formula()}): {error}") from error
            if not math.isfinite(energies[row]):
                raise EnergyEvaluationError(
                    f"ASE calculator {self.calculator_name} returned {energies[row]} eV for configuration {row} "
                    f"of the batch ({atoms.get_chemical_formula()}); non-finite energies never enter the weights")
        return torch.from_numpy(energies).to(x.device)


def from_options(options: dict, lattice, species: tuple[str, str]) -> ASECalculatorBackend:
    """The backend of ``system.energy: {name: ase, calculator: …, parameters: …}`` on the
    cells of ``lattice`` (an FCCLattice); the default calculator is ASE's EMT."""
    return ASECalculatorBackend(lattice.reference_atoms(species[0]), species,
                                lattice_constant=lattice.lattice_constant, **options)
