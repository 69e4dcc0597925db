"""Fitting a binary FCC cluster expansion (icet + trainstation) to energies from a backend.

Workflow of ``metadns fit-ce``: enumerate all symmetry-distinct FCC structures up to
``max_atoms`` atoms (icet's ``enumerate_structures``), label each with a reference energy at
ideal lattice sites (ASE's EMT or a MACE model; Vegard's law optional), fit the ECIs with
trainstation's cross-validation estimator, and write an icet ``.ce`` file that the
``cluster_expansion`` backend loads.  Energies are fitted per atom (eV/atom), icet's convention.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import ase
import numpy as np
from ase.build import bulk
from tqdm.auto import tqdm

__all__ = ["CEFitReport", "LABELLERS", "fit_cluster_expansion", "make_labeller"]

LABELLERS = ("emt", "mace")
FIT_METHODS = ("least-squares", "lasso", "ardr", "rfe", "omp")


@dataclass(frozen=True)
class CEFitReport:
    """Outcome of a fit: structure count, parameters, RMSEs in meV/atom, output path."""

    n_structures: int
    n_parameters: int
    n_nonzero_parameters: int
    rmse_validation_meV: float
    rmse_train_meV: float
    path: Path


def make_labeller(kind: str, species: tuple[str, str], model: str | Path | None = None,
                  vegard_lattice_constants: tuple[float, float] | None = None, lattice_constant: float = 3.8):
    """``labeller(atoms) -> energy eV per atom`` at the structure's ideal sites.

    ``kind``: ``emt`` (ASE) or ``mace`` (``model``: file).  With Vegard constants (a_0, a_1) Å
    the cell is first scaled from ``lattice_constant`` to a(c) = (1 − c)·a_0 + c·a_1.
    """
    if kind == "emt":
        from ase.calculators.emt import EMT
        calculator = EMT()
    elif kind == "mace":
        from .mace_backend import load_mace_model  # checks the file, clear errors
        if model is None:
            raise ValueError("labeller mace needs a model file (--model)")
        load_mace_model(Path(model))
        from mace.calculators import MACECalculator
        calculator = MACECalculator(model_paths=str(model), device="cpu", default_dtype="float64")
    else:
        raise ValueError(f"labeller must be one of {LABELLERS}, got {kind!r}")

    def label(atoms: ase.Atoms) -> float:
        structure = atoms.copy()
        if vegard_lattice_constants is not None:
            fraction = float(np.mean(np.array(structure.get_chemical_symbols()) == species[1]))
            a = (1 - fraction) * vegard_lattice_constants[0] + fraction * vegard_lattice_constants[1]
            structure.set_cell(structure.cell[:] * (a / lattice_constant), scale_atoms=True)
        structure.calc = calculator
        energy = structure.get_potential_energy() / len(structure)
        if not math.isfinite(energy):
            raise ValueError(f"{kind} returned {energy} eV/atom for {structure.get_chemical_formula()}")
        return float(energy)

    return label


def fit_cluster_expansion(out: str | Path, species=("Cu", "Au"), lattice_constant: float = 3.8,
                          cutoffs=(6.0, 4.5, 4.5), max_atoms: int = 8, labeller: str = "emt",
                          model: str | Path | None = None, vegard_lattice_constants=None,
                          fit_method: str = "least-squares", n_splits: int = 10, seed: int = 0,
                          progress: bool = True) -> CEFitReport:
    """Enumerate, label, fit and write ``out`` (``.ce``, written atomically); see module docstring.

    Raises ValueError naming the argument for bad settings (nothing is written then).
    """
    from icet import ClusterExpansion, ClusterSpace, StructureContainer
    from icet.tools import enumerate_structures
    from trainstation import CrossValidationEstimator

    out = Path(out)
    if out.suffix != ".ce":
        raise ValueError(f"out must end in .ce (an icet cluster-expansion file), got {out}")
    species = tuple(species)
    if len(species) != 2 or species[0] == species[1]:
        raise ValueError(f"species must be two different chemical symbols, got {list(species)}")
    if not (isinstance(max_atoms, int) and 1 <= max_atoms <= 16):
        raise ValueError(f"max_atoms must be an integer in 1..16 (enumeration grows fast), got {max_atoms!r}")
    cutoffs = [float(c) for c in cutoffs]
    if not cutoffs or any(c <= 0 for c in cutoffs):
        raise ValueError(f"cutoffs must be positive distances in Å (pairs, triplets, …), got {cutoffs}")
    if fit_method not in FIT_METHODS:
        raise ValueError(f"fit_method must be one of {FIT_METHODS}, got {fit_method!r}")
    label = make_labeller(labeller, species, model, vegard_lattice_constants, lattice_constant)

    primitive = bulk(species[0], "fcc", a=float(lattice_constant))
    space = ClusterSpace(primitive, cutoffs, [list(species)])
    container = StructureContainer(space)
    structures = list(enumerate_structures(primitive, range(1, max_atoms + 1), list(species)))
    for atoms in tqdm(structures, desc=f"labelling ({labeller})", disable=not progress):
        container.add_structure(atoms, properties={"energy": label(atoms)})
    matrix, energies = container.get_fit_data(key="energy")
    if matrix.shape[0] <= matrix.shape[1]:
        raise ValueError(f"{matrix.shape[0]} structures for {matrix.shape[1]} parameters: raise max_atoms "
                         "or shorten the cutoffs")
    estimator = CrossValidationEstimator((matrix, energies), fit_method=fit_method, n_splits=n_splits, seed=seed)
    estimator.validate()
    estimator.train()
    expansion = ClusterExpansion(space, estimator.parameters, metadata={
        "labeller": labeller, "model": str(model) if model else "", "fit_method": fit_method,
        "max_atoms": max_atoms, "rmse_validation_eV_per_atom": float(estimator.rmse_validation)})
    out.parent.mkdir(parents=True, exist_ok=True)
    temporary = out.with_name(f".{out.name}.tmp")
    expansion.write(str(temporary))
    os.replace(temporary, out)
    return CEFitReport(n_structures=matrix.shape[0], n_parameters=matrix.shape[1],
                       n_nonzero_parameters=int(np.count_nonzero(estimator.parameters)),
                       rmse_validation_meV=1e3 * float(estimator.rmse_validation),
                       rmse_train_meV=1e3 * float(estimator.rmse_train), path=out)
