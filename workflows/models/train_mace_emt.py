"""Train the small Cu–Au MACE model shipped with the alloy system, on ASE EMT energies.

Usage (from the repository root; about 5–10 minutes on one CPU thread):
    python workflows/models/train_mace_emt.py                       # writes the shipped model
    python workflows/models/train_mace_emt.py --output /tmp/my.model --seed 1

Reference data: Cu–Au cells on FCC supercells of 4 to 64 sites (``FCCLattice``), labelled
with ASE's EMT calculator (total potential energy, eV, ideal lattice positions):
- random occupations at Au fraction c drawn uniformly in [0, 1] (exact count round(c·D)),
- ordered L1_2 (Cu3Au, CuAu3) and L1_0 (CuAu) cells, some with one or two antisite flips,
  on the cells that hold the four FCC sublattices,
- lattice constant a = a_Vegard(c)·(1 + ε), ε ~ U(−4 %, +4 %), with a_Vegard from EMT's own
  equilibrium lattice constants of Cu and Au; a quarter of the cells instead at
  3.8 Å·(1 ± 1 %), the project's default lattice without Vegard scaling.
Energies only (the backend evaluates ideal sites, where forces do not enter).

Model: mace-torch ``ScaleShiftMACE`` built through the library API (r_max 5 Å, 2
interactions, 16 channels, L ≤ 1, correlation 2), E0 = EMT energy per atom of the pure
metals, trained with Adam on the per-atom energy MSE, fixed seed, float64, one thread.
A random 10 % of the cells is held out; the metadata JSON written beside the model records
the validation RMSE (meV/atom), set sizes, seed, settings, package versions and a hash of the
weights: reruns with the same seed and versions reproduce the weights exactly (CPU, one thread).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

import mace  # noqa: F401  (before e3nn: mace sets the environment e3nn's own torch.load needs)
import ase
import e3nn
from ase.calculators.emt import EMT
from ase.build import bulk
from ase.data import atomic_numbers, chemical_symbols
from e3nn import o3
from mace import data as mace_data
from mace import modules
from mace.tools import AtomicNumberTable, torch_geometric
from scipy.optimize import minimize_scalar

from systems.alloys.backends import decorate
from systems.alloys.fcc import FCCLattice
from systems.alloys.mace_backend import SHIPPED_MACE_MODEL

SPECIES = ("Cu", "Au")
REFERENCE_LATTICE_CONSTANT = 3.8  # Å, the project's default FCC lattice (the paper's CE)

# (cell type, repetitions, share of the random configurations)
CELLS = (
    ("conventional", (1, 1, 1), 0.10),   # 4 sites
    ("primitive", (2, 2, 2), 0.30),      # 8
    ("conventional", (2, 1, 1), 0.15),   # 8
    ("primitive", (3, 3, 3), 0.20),      # 27
    ("conventional", (2, 2, 2), 0.15),   # 32
    ("primitive", (4, 4, 4), 0.10),      # 64, the benchmark cell
)
ORDERED_SHARE = 0.15          # share of cells that are L1_2 / L1_0 (± antisites)
REFERENCE_SHARE = 0.25        # share of cells at 3.8 Å (± 1 %) instead of Vegard (± 4 %)
VEGARD_STRAIN = 0.04
REFERENCE_STRAIN = 0.01
VALIDATION_SHARE = 0.10

MODEL_SETTINGS = {
    "model": "ScaleShiftMACE",
    "r_max": 5.0,
    "num_bessel": 8,
    "num_polynomial_cutoff": 5,
    "max_ell": 1,
    "num_interactions": 2,
    "hidden_irreps": "16x0e+16x1o",
    "MLP_irreps": "16x0e",
    "correlation": 2,
    "radial_MLP": [32, 32],
    "interaction": "RealAgnosticResidualInteractionBlock",
}


def emt_lattice_constant(symbol: str) -> float:
    """EMT's equilibrium FCC lattice constant of a pure metal (Å)."""
    def energy(a: float) -> float:
        atoms = bulk(symbol, "fcc", a=a)
        atoms.calc = EMT()
        return atoms.get_potential_energy()
    return float(minimize_scalar(energy, bounds=(3.0, 4.6), method="bounded", options={"xatol": 1e-6}).x)


def emt_energy_per_atom(symbol: str, lattice_constant: float) -> float:
    atoms = bulk(symbol, "fcc", a=lattice_constant)
    atoms.calc = EMT()
    return float(atoms.get_potential_energy())


def ordered_occupation(lattice: FCCLattice, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """A random L1_2 (Cu3Au or CuAu3) or L1_0 occupation with 0–2 antisite flips, and its label."""
    kind = rng.choice(["Cu3Au_L12", "CuAu3_L12", "CuAu_L10"])
    sublattices = rng.permutation(4)
    if kind == "Cu3Au_L12":
        occupied = sublattices[:1]
    elif kind == "CuAu3_L12":
        occupied = sublattices[:3]
    else:
        occupied = sublattices[:2]
    occupation = np.isin(lattice.sublattice.numpy(), occupied).astype(np.int64)
    n_flips = int(rng.integers(0, 3))
    flipped = rng.choice(lattice.n_sites, size=min(n_flips, lattice.n_sites), replace=False)
    occupation[flipped] = 1 - occupation[flipped]
    return occupation, f"{kind}+{n_flips}flips"


def random_occupation(n_sites: int, rng: np.random.Generator) -> np.ndarray:
    """Random occupation with round(c·D) sites of species[1], c ~ U(0, 1)."""
    occupation = np.zeros(n_sites, dtype=np.int64)
    occupation[rng.permutation(n_sites)[:round(rng.uniform() * n_sites)]] = 1
    return occupation


def generate_reference_data(n_configs: int, rng: np.random.Generator,
                            vegard: tuple[float, float]) -> list[ase.Atoms]:
    """EMT-labelled Cu–Au cells (``atoms.info``: REF_energy eV, kind, cell)."""
    lattices = [FCCLattice(size, cell, REFERENCE_LATTICE_CONSTANT) for cell, size, _ in CELLS]
    shares = np.array([share for _, _, share in CELLS])
    ordered_capable = [k for k, lattice in enumerate(lattices) if lattice.sublattice is not None]
    calculator = EMT()
    structures = []
    for _ in range(n_configs):
        if rng.uniform() < ORDERED_SHARE:
            lattice = lattices[ordered_capable[int(rng.integers(len(ordered_capable)))]]
            occupation, kind = ordered_occupation(lattice, rng)
        else:
            lattice = lattices[int(rng.choice(len(lattices), p=shares / shares.sum()))]
            occupation, kind = random_occupation(lattice.n_sites, rng), "random"
        fraction = occupation.mean()
        if rng.uniform() < REFERENCE_SHARE:
            lattice_constant = REFERENCE_LATTICE_CONSTANT * (1 + rng.uniform(-REFERENCE_STRAIN, REFERENCE_STRAIN))
        else:
            vegard_constant = (1 - fraction) * vegard[0] + fraction * vegard[1]
            lattice_constant = vegard_constant * (1 + rng.uniform(-VEGARD_STRAIN, VEGARD_STRAIN))
        atoms = decorate(lattice.reference_atoms(), occupation, SPECIES, lattice_constant / REFERENCE_LATTICE_CONSTANT)
        atoms.calc = calculator
        atoms.info["REF_energy"] = float(atoms.get_potential_energy())
        atoms.calc = None
        atoms.info.update(kind=kind, cell=lattice.describe(), lattice_constant=float(lattice_constant))
        structures.append(atoms)
    return structures


def to_graphs(structures: list[ase.Atoms], z_table: AtomicNumberTable, r_max: float) -> list:
    keys = mace_data.KeySpecification(info_keys={"energy": "REF_energy"}, arrays_keys={})
    return [mace_data.AtomicData.from_config(mace_data.config_from_atoms(atoms, key_specification=keys),
                                             z_table=z_table, cutoff=r_max, heads=["Default"])
            for atoms in structures]


def build_model(atomic_energies: np.ndarray, avg_num_neighbors: float, shift: float, scale: float,
                z_table: AtomicNumberTable) -> torch.nn.Module:
    interaction = modules.interaction_classes[MODEL_SETTINGS["interaction"]]
    return modules.ScaleShiftMACE(
        r_max=MODEL_SETTINGS["r_max"], num_bessel=MODEL_SETTINGS["num_bessel"],
        num_polynomial_cutoff=MODEL_SETTINGS["num_polynomial_cutoff"], max_ell=MODEL_SETTINGS["max_ell"],
        interaction_cls=interaction, interaction_cls_first=interaction,
        num_interactions=MODEL_SETTINGS["num_interactions"], num_elements=len(z_table),
        hidden_irreps=o3.Irreps(MODEL_SETTINGS["hidden_irreps"]), MLP_irreps=o3.Irreps(MODEL_SETTINGS["MLP_irreps"]),
        atomic_energies=atomic_energies, avg_num_neighbors=avg_num_neighbors, atomic_numbers=z_table.zs,
        correlation=MODEL_SETTINGS["correlation"], gate=torch.nn.functional.silu,
        atomic_inter_scale=scale, atomic_inter_shift=shift, radial_MLP=MODEL_SETTINGS["radial_MLP"])


def per_atom_errors(model: torch.nn.Module, graphs: list, batch_size: int = 64) -> np.ndarray:
    """(predicted − reference) energy per atom, eV, for each graph."""
    loader = torch_geometric.dataloader.DataLoader(graphs, batch_size=batch_size, shuffle=False)
    errors = []
    with torch.no_grad():
        for batch in loader:
            output = model(batch.to_dict(), training=False, compute_force=False)
            n_atoms = (batch.ptr[1:] - batch.ptr[:-1]).to(torch.float64)
            errors.append(((output["energy"] - batch.energy) / n_atoms).numpy())
    return np.concatenate(errors)


def train(model: torch.nn.Module, graphs: list, epochs: int, batch_size: int, learning_rate: float,
          seed: int, log=print) -> None:
    """Adam on the mean squared per-atom energy error; cosine learning-rate decay to 1 %."""
    generator = torch.Generator().manual_seed(seed)
    loader = torch_geometric.dataloader.DataLoader(graphs, batch_size=batch_size, shuffle=True,
                                                   drop_last=False, generator=generator)
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate, amsgrad=True)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * len(loader),
                                                          eta_min=0.01 * learning_rate)
    model.train()
    for epoch in range(epochs):
        total, count = 0.0, 0
        for batch in loader:
            output = model(batch.to_dict(), training=True, compute_force=False)
            n_atoms = (batch.ptr[1:] - batch.ptr[:-1]).to(torch.float64)
            loss = (((output["energy"] - batch.energy) / n_atoms) ** 2).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            total += float(loss.detach()) * n_atoms.numel()
            count += n_atoms.numel()
        if epoch % 5 == 4 or epoch == epochs - 1:
            log(f"epoch {epoch + 1:3d}/{epochs}: train RMSE {1e3 * (total / count) ** 0.5:.2f} meV/atom "
                f"(running, during the epoch)")
    model.eval()


def rmse_mev(errors: np.ndarray) -> float:
    return float(1e3 * np.sqrt(np.mean(errors ** 2)))


def weights_sha256(model: torch.nn.Module) -> str:
    """SHA-256 of the state dict's names and tensor bytes: equal for equal weights.

    (The file's own hash differs between identical reruns: torch.save writes a random
    serialization id into every archive.)
    """
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=SHIPPED_MACE_MODEL,
                        help="model file; metadata goes to the same name with .json")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--configs", type=int, default=700, help="EMT-labelled cells (train + validation)")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=16, help="cells per gradient step")
    parser.add_argument("--learning-rate", type=float, default=0.01)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    if args.configs < 20 or args.epochs < 1 or args.batch_size < 1 or args.threads < 1:
        parser.error("--configs must be ≥ 20 and --epochs, --batch-size, --threads ≥ 1")

    torch.set_num_threads(args.threads)
    torch.set_default_dtype(torch.float64)
    started = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    torch.manual_seed(args.seed)

    vegard = (emt_lattice_constant(SPECIES[0]), emt_lattice_constant(SPECIES[1]))
    print(f"EMT equilibrium lattice constants: {SPECIES[0]} {vegard[0]:.4f} Å, {SPECIES[1]} {vegard[1]:.4f} Å")
    structures = generate_reference_data(args.configs, rng, vegard)
    labelled = time.perf_counter()
    print(f"labelled {len(structures)} cells with EMT in {labelled - started:.1f} s")

    z_table = AtomicNumberTable(sorted(atomic_numbers[s] for s in SPECIES))
    graphs = to_graphs(structures, z_table, MODEL_SETTINGS["r_max"])
    order = rng.permutation(len(graphs))
    n_validation = max(1, round(VALIDATION_SHARE * len(graphs)))
    validation_index, training_index = order[:n_validation], order[n_validation:]
    training_graphs = [graphs[i] for i in training_index]
    validation_graphs = [graphs[i] for i in validation_index]

    atomic_energies = np.array([emt_energy_per_atom(chemical_symbols[z], vegard[SPECIES.index(
        chemical_symbols[z])]) for z in z_table.zs])
    residual = np.array([(float(g.energy) - atomic_energies[g.node_attrs.argmax(1).numpy()].sum()) / g.num_nodes
                         for g in training_graphs])
    avg_num_neighbors = float(np.mean([g.edge_index.shape[1] / g.num_nodes for g in training_graphs]))
    model = build_model(atomic_energies, avg_num_neighbors, float(residual.mean()), float(residual.std()), z_table)
    n_parameters = sum(p.numel() for p in model.parameters())
    print(f"model: {n_parameters} parameters; {len(training_graphs)} training / {len(validation_graphs)} "
          f"validation cells; residual energy {1e3 * residual.mean():.1f} ± {1e3 * residual.std():.1f} meV/atom")

    train(model, training_graphs, args.epochs, args.batch_size, args.learning_rate, args.seed)
    trained = time.perf_counter()
    training_errors = per_atom_errors(model, training_graphs)
    validation_errors = per_atom_errors(model, validation_graphs)
    validation_kinds = np.array([structures[i].info["kind"] != "random" for i in validation_index])
    print(f"trained in {trained - labelled:.1f} s; RMSE train {rmse_mev(training_errors):.2f}, "
          f"validation {rmse_mev(validation_errors):.2f} meV/atom")

    for parameter in model.parameters():
        parameter.requires_grad_(False)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    temporary = args.output.with_name(args.output.name + ".tmp")
    torch.save(model, temporary)
    os.replace(temporary, args.output)

    metadata = {
        "model_file": args.output.name,
        "weights_sha256": weights_sha256(model),
        "description": "Small MACE potential for Cu–Au on FCC lattices, trained on ASE EMT total energies at "
                       "ideal (isotropically strained) lattice positions; for demonstrations and tests of the "
                       "mace backend, not a physical Cu–Au model beyond what EMT describes.",
        "made_by": "python workflows/models/train_mace_emt.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "seed": args.seed,
        "species": list(SPECIES),
        "energy_unit": "eV (total potential energy per cell); errors in meV/atom",
        "reference": "ase.calculators.emt.EMT",
        "emt_lattice_constants_angstrom": {SPECIES[0]: vegard[0], SPECIES[1]: vegard[1]},
        "data": {
            "cells": [{"cell": cell, "size": list(size), "random_share": share} for cell, size, share in CELLS],
            "ordered_share": ORDERED_SHARE, "ordered_kinds": ["Cu3Au_L12", "CuAu3_L12", "CuAu_L10"],
            "ordered_antisite_flips": [0, 1, 2],
            "lattice_constant": f"{1 - REFERENCE_SHARE:.0%} at the EMT Vegard lattice constant × (1 ± "
                                f"{VEGARD_STRAIN:.0%}, uniform); {REFERENCE_SHARE:.0%} at "
                                f"{REFERENCE_LATTICE_CONSTANT} Å × (1 ± {REFERENCE_STRAIN:.0%})",
            "lattice_constant_range_angstrom": [min(s.info["lattice_constant"] for s in structures),
                                                max(s.info["lattice_constant"] for s in structures)],
            "labels": "energies only",
            "n_cells": len(structures), "n_training": len(training_graphs), "n_validation": len(validation_graphs),
            "n_training_atoms": int(sum(g.num_nodes for g in training_graphs)),
        },
        "model": {**MODEL_SETTINGS, "n_parameters": n_parameters, "avg_num_neighbors": avg_num_neighbors,
                  "atomic_energies_eV": dict(zip([chemical_symbols[z] for z in z_table.zs],
                                                 atomic_energies.tolist())),
                  "dtype": "float64"},
        "training": {"loss": "MSE of energy per atom", "optimizer": "Adam (amsgrad)",
                     "learning_rate": args.learning_rate, "schedule": "cosine to 1 % over all steps",
                     "epochs": args.epochs, "batch_size": args.batch_size, "threads": args.threads,
                     "seconds": round(trained - labelled, 1)},
        "rmse_mev_per_atom": {
            "training": rmse_mev(training_errors),
            "validation": rmse_mev(validation_errors),
            "validation_random": rmse_mev(validation_errors[~validation_kinds]),
            "validation_ordered": rmse_mev(validation_errors[validation_kinds]) if validation_kinds.any() else None,
        },
        "validation_max_abs_error_mev_per_atom": float(1e3 * np.abs(validation_errors).max()),
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "mace-torch": mace.__version__,
                     "e3nn": e3nn.__version__, "ase": ase.__version__, "numpy": np.__version__},
    }
    metadata_path = args.output.with_suffix(".json")
    temporary = metadata_path.with_name(metadata_path.name + ".tmp")
    temporary.write_text(json.dumps(metadata, indent=2, ensure_ascii=False) + "\n")
    os.replace(temporary, metadata_path)
    print(f"wrote {args.output} ({args.output.stat().st_size / 1e3:.0f} kB) and {metadata_path}")


if __name__ == "__main__":
    main()
