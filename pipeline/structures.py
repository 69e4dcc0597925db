"""Energies of structure files with a configured alloy system (``metadns energy``).

Frames are read with ASE (extxyz with many frames, POSCAR, cif, … — whatever ``ase.io.read``
understands), mapped onto the system's FCC sites (:meth:`FCCLattice.from_atoms`) and
evaluated in one batch with the system's backend.  Energies are those of the occupation on
the ideal lattice sites (with the backend's own scaling, e.g. Vegard's law), not of the
file's exact positions.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from pipeline.errors import FrameError  # defined there, part of this module's interface

__all__ = ["read_frames", "energy_table", "FrameError"]


def read_frames(paths) -> list[tuple[str, object]]:
    """``[(label, ase.Atoms), …]`` for every frame of every file; label = ``"file:frame"``."""
    from ase.io import read  # noqa: PLC0415 - ASE's readers are only needed here

    frames = []
    for path in map(Path, paths):
        if not path.is_file():
            raise FrameError(f"{path}: no such file")
        try:
            images = read(path, index=":")
        except Exception as error:  # ASE raises many types for unreadable files
            raise FrameError(f"{path}: ASE cannot read it ({type(error).__name__}: {error})") from error
        frames += [(f"{path}:{index}", atoms) for index, atoms in enumerate(images)]
    return frames


def energy_table(system, frames) -> pd.DataFrame:
    """One row per frame: file, frame, n_atoms, x_<species[1]>, total_energy_eV (backend),
    formation_energy_eV_per_atom (pure cells at zero), energy_eV (E_f − Δμ·N₁, the sampled energy).

    ``system``: a :class:`systems.alloys.alloy.BinaryAlloy`; raises FrameError naming the frame
    whose atoms do not sit on its lattice.
    """
    if getattr(system, "name", None) != "alloy":
        raise FrameError("energies of structure files need an alloy system (system.name: alloy)")
    occupations = []
    for label, atoms in frames:
        try:
            occupations.append(system.lattice.from_atoms(atoms, system.species, frame=label))
        except ValueError as error:
            raise FrameError(str(error)) from error
    x = torch.from_numpy(np.stack(occupations))
    total = system.backend.energy(x).numpy()
    formation = system.formation_energy(x).numpy()
    n1 = x.sum(dim=1).numpy()
    files, indices = zip(*(label.rsplit(":", 1) for label, _ in frames))
    return pd.DataFrame({
        "file": list(files), "frame": np.asarray(indices, dtype=np.int64), "n_atoms": system.n_sites,
        system.fraction_name: n1 / system.n_sites, "total_energy_eV": total,
        "formation_energy_eV_per_atom": formation / system.n_sites,
        "energy_eV": system.energy(x).numpy(),
    })
