"""Throughput of the batched MACE backend against per-structure MACECalculator calls.

Usage (from the repository root):
    python workflows/benchmarks/mace_speed.py --configs 256 --batch-sizes 1 4 8 16 64 256

Both evaluate the same random Cu–Au occupations of a 4×4×4 primitive FCC cell (64 sites,
a = 3.8 Å, Vegard scaling with the model's EMT lattice constants) with the shipped model
(``mace_cuau_emt.model``, float64).  The baseline is what a user would write without the
backend: ``decorate`` each occupation into an ``ase.Atoms`` and ask
``mace.calculators.MACECalculator`` for its potential energy (MACE builds the neighbour list
and, as the calculator always does, also computes forces and stress).  The script checks that
both give the same energies, then prints configurations per second and the ratio.  CPU
timings on a shared machine vary with its load; the load average is printed with them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
from ase.build import bulk
from mace.calculators import MACECalculator

from systems.alloys.backends import decorate, vegard_scale
from systems.alloys.mace_backend import SHIPPED_MACE_MODEL, MACEBackend

SPECIES = ("Cu", "Au")
LATTICE_CONSTANT = 3.8


def random_occupations(n_configs: int, n_sites: int, seed: int) -> torch.Tensor:
    """int64 (n_configs, n_sites), Au fraction uniform in [0, 1] per row."""
    rng = np.random.default_rng(seed)
    fractions = rng.uniform(size=(n_configs, 1))
    return torch.from_numpy((rng.uniform(size=(n_configs, n_sites)) < fractions).astype(np.int64))


def best_of(repeats: int, work) -> float:
    """Fastest wall time (s) of ``repeats`` runs of ``work()``: the least disturbed by other load."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return min(times)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(SHIPPED_MACE_MODEL))
    parser.add_argument("--size", type=int, default=4, help="primitive FCC repetitions (4 → 64 sites)")
    parser.add_argument("--configs", type=int, default=256, help="configurations for the batched backend")
    parser.add_argument("--baseline-configs", type=int, default=64, help="configurations for MACECalculator")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 8, 16, 64, 256])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="device of the model, for both (cpu, cuda)")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    metadata = json.loads(Path(args.model).with_suffix(".json").read_text())
    vegard = tuple(metadata["emt_lattice_constants_angstrom"][s] for s in SPECIES)
    supercell = bulk(SPECIES[0], "fcc", a=LATTICE_CONSTANT).repeat(args.size)
    x = random_occupations(max(args.configs, args.baseline_configs), len(supercell), args.seed)

    calculator = MACECalculator(model_paths=args.model, device=args.device, default_dtype="float64")
    baseline_x = x[:args.baseline_configs]
    scales = vegard_scale(baseline_x, LATTICE_CONSTANT, vegard).tolist()

    def per_structure() -> np.ndarray:
        energies = []
        for occupation, scale in zip(baseline_x.numpy(), scales):
            atoms = decorate(supercell, occupation, SPECIES, scale)
            atoms.calc = calculator
            energies.append(atoms.get_potential_energy())
        return np.array(energies)

    reference = per_structure()  # warm-up and reference energies
    baseline_rate = len(baseline_x) / best_of(args.repeats, per_structure)

    print(f"MACE speed on {args.device}: {len(supercell)}-site cell, model {os.path.basename(args.model)}, float64, "
          f"{args.threads} thread(s), {platform.processor() or platform.machine()}, "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"per-structure MACECalculator ({len(baseline_x)} configurations): {baseline_rate:8.1f} configurations/s")
    default = MACEBackend(args.model, supercell, SPECIES, LATTICE_CONSTANT, vegard).configurations_per_call
    print(f"(the backend's default batch_size for this cell is {default})")
    for batch_size in args.batch_sizes:
        backend = MACEBackend(args.model, supercell, SPECIES, LATTICE_CONSTANT, vegard, batch_size=batch_size,
                              device=args.device)
        maximum_error = float(np.abs(backend.energy(baseline_x).numpy() - reference).max())
        batched_x = x[:args.configs]
        rate = len(batched_x) / best_of(args.repeats, lambda: backend.energy(batched_x))
        print(f"batched backend, batch_size {batch_size:4d} ({args.configs} configurations): {rate:8.1f} "
              f"configurations/s = {rate / baseline_rate:5.1f}× per-structure (max |ΔE| {maximum_error:.1e} eV)")


if __name__ == "__main__":
    main()
