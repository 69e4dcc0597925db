"""Cluster-expansion energy throughput: batched torch evaluator vs icet vs a CLEASE-style loop.

Usage (from the repository root):
    OMP_NUM_THREADS=1 python workflows/benchmarks/ce_speed.py [--seconds 1.0] [--batch-sizes 1 16 128 1024]

For the paper's Cu–Au CE on a 64-site (4×4×4 primitive) and a 256-site (4×4×4 conventional)
FCC cell it prints configurations per second of
  - ClusterExpansionBackend.energy on batches of random configurations (several batch sizes),
  - ClusterExpansionBackend.energy_change for single-site flips (batch 1024, Metropolis moves),
  - icet: mchammer's ClusterExpansionCalculator.calculate_total, one structure per call
    (the calculator built once per cell, as in a Monte Carlo run),
  - two CLEASE-style evaluations, per structure: correlation functions (mean over each
    orbit's clusters of the product of ±1 point functions) dotted with the ECIs, computed
    (a) by a Python loop over orbits, numpy over each orbit's clusters (a strong baseline) and
    (b) by a plain Python loop over every cluster (the literal per-cluster loop),
and the speed-ups of the batched evaluator over the per-structure baselines, all
measured in the same run.  Runs on one thread; the machine's load average is printed
beside the figures since shared CPUs vary.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch
from ase.build import bulk
from ase.data import atomic_numbers

from systems.alloys.cluster_expansion import (PAPER_CUAU_CE, ClusterExpansionBackend, icet_calculator,
                                              load_cluster_expansion)

SPECIES = ("Cu", "Au")
CELLS = {
    "64 sites (4x4x4 primitive)": bulk("Cu", "fcc", a=3.8).repeat(4),
    "256 sites (4x4x4 conventional)": bulk("Cu", "fcc", a=3.8, cubic=True).repeat(4),
}


def rate(evaluate, n_configs: int, seconds: float, rounds: int = 5) -> float:
    """Configurations per second of ``evaluate()`` (which handles ``n_configs``).

    Best of ``rounds`` rounds of ≥ ``seconds``/``rounds`` each: on a shared machine the best round
    is the one least disturbed by other processes.
    """
    evaluate()  # warm-up
    best = 0.0
    for _ in range(rounds):
        repeats, start = 0, time.perf_counter()
        while True:
            evaluate()
            repeats += 1
            elapsed = time.perf_counter() - start
            if elapsed >= seconds / rounds:
                break
        best = max(best, repeats * n_configs / elapsed)
    return best


class CleaseStyleEvaluator:
    """Per-structure energies: loop over orbits, correlation function = mean cluster product, dot ECIs."""

    def __init__(self, cluster_expansion, supercell):
        space = cluster_expansion.get_cluster_space_copy()
        orbits = space.orbit_list.get_supercell_orbit_list(
            supercell, fractional_position_tolerance=space.fractional_position_tolerance)
        self.orbit_sites = [np.array([[s.index for s in c.lattice_sites] for c in orbits.get_orbit(k).clusters])
                            for k in range(len(orbits))]
        self.ecis = np.asarray(cluster_expansion.parameters, dtype=np.float64)
        species_map = space.species_maps[0]
        self.point_values = np.array([space.evaluate_cluster_function(2, 0, species_map[atomic_numbers[s]])
                                      for s in SPECIES])
        self.n_sites = len(supercell)

    def energy(self, occupation: np.ndarray) -> float:
        """Per orbit, numpy over the orbit's clusters."""
        spins = self.point_values[occupation]
        correlations = [1.0] + [spins[sites].prod(axis=1).mean() for sites in self.orbit_sites]
        return float(np.dot(correlations, self.ecis)) * self.n_sites

    def energy_cluster_loop(self, occupation: np.ndarray) -> float:
        """Per cluster, a plain Python loop (the literal CLEASE-style evaluation)."""
        spins = self.point_values[occupation].tolist()
        correlations = [1.0]
        for sites in self.orbit_sites:
            total = 0.0
            for cluster in sites.tolist():
                product = 1.0
                for site in cluster:
                    product *= spins[site]
                total += product
            correlations.append(total / len(sites))
        return float(np.dot(correlations, self.ecis)) * self.n_sites


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=1.0, help="minimum timed seconds per measurement")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16, 128, 1024, 4096])
    parser.add_argument("--n-baseline", type=int, default=64, help="structures per baseline timing call")
    parser.add_argument("--device", default="cpu", help="device of the batched evaluator (cpu, cuda)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"threads: torch {torch.get_num_threads()}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}; "
          f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    ce = load_cluster_expansion(PAPER_CUAU_CE)
    rng = np.random.default_rng(0)
    for cell_name, supercell in CELLS.items():
        n_sites = len(supercell)
        backend = ClusterExpansionBackend(PAPER_CUAU_CE, supercell, species=SPECIES, device=args.device)
        calculator = icet_calculator(ce, supercell)
        clease = CleaseStyleEvaluator(ce, supercell)
        configs = (rng.random((max(args.batch_sizes + [args.n_baseline]), n_sites)) < rng.random((1, 1))).astype(np.int64)
        numbers = np.array([atomic_numbers[s] for s in SPECIES])[configs]
        x = torch.from_numpy(configs)
        reference = [calculator.calculate_total(occupations=row) for row in numbers[:8]]
        assert np.allclose(backend.energy(x[:8]).numpy(), reference, atol=1e-9)
        assert np.allclose([clease.energy(row) for row in configs[:8]], reference, atol=1e-9)
        assert np.allclose([clease.energy_cluster_loop(row) for row in configs[:8]], reference, atol=1e-9)

        baseline = configs[:args.n_baseline]
        icet_rate = rate(lambda: [calculator.calculate_total(occupations=row) for row in numbers[:args.n_baseline]],
                         args.n_baseline, args.seconds)
        clease_rate = rate(lambda: [clease.energy(row) for row in baseline], args.n_baseline, args.seconds)
        loop_rate = rate(lambda: [clease.energy_cluster_loop(row) for row in baseline[:4]], 4, args.seconds)
        print(f"\n{cell_name}")
        print(f"  icet ClusterExpansionCalculator.calculate_total, per structure: {icet_rate:10.0f} configs/s")
        print(f"  CLEASE-style, loop over orbits (numpy), per structure:         {clease_rate:10.0f} configs/s")
        print(f"  CLEASE-style, loop over clusters (Python), per structure:      {loop_rate:10.0f} configs/s")
        on_device = x.to(args.device)
        for batch in args.batch_sizes:   # .cpu() waits for the device, so GPU timings are complete
            batch_rate = rate(lambda: backend.energy(on_device[:batch]).cpu(), batch, args.seconds)
            print(f"  batched torch energy on {args.device}, batch {batch:5d}: {batch_rate:10.0f} configs/s = {batch_rate / icet_rate:6.1f}x icet, "
                  f"{batch_rate / clease_rate:6.1f}x orbit loop, {batch_rate / loop_rate:7.0f}x cluster loop")
        flips = torch.from_numpy(rng.integers(n_sites, size=1024)).to(args.device)
        new_states = 1 - on_device[torch.arange(1024, device=args.device), flips]
        flip_rate = rate(lambda: backend.energy_change(on_device[:1024], flips, new_states).cpu(), 1024,
                         args.seconds)
        print(f"  batched energy_change (single flips), batch 1024: {flip_rate:12.0f} moves/s")


if __name__ == "__main__":
    main()
