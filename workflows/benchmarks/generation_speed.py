"""Generation speed of the MDNS sampler: time to draw n samples (x, order, log q).

Usage (from the repository root):
    python workflows/benchmarks/generation_speed.py --L 16 --n 10000 --denoiser both --k 1 16

For every (denoiser, k) it reports seconds for n samples and samples/s on an L×L square
lattice with q = 2 (an Ising-sized problem; weights are random, which does not change
the cost).  A configuration whose pilot run projects beyond --max-seconds is not run in
full: its time is extrapolated linearly from the pilot (cost is linear in n at fixed
batch size) and marked "extrapolated".  CPU timings on a shared machine vary with its
load; the script prints the load average next to the numbers.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from pipeline.sampler import SCHEDULES, MaskedDiffusionSampler, build_denoiser

DEFAULT_SIZES = {
    # Recommended CPU defaults (2 cores).
    "lattice": {"hidden": 32, "layers": 4},
    "transformer": {"hidden": 64, "heads": 4, "layers": 4},
}
DEFAULT_K = 16


class SquareLatticeGeometry:
    """Periodic L×L square lattice: site = row·L + col; neighbours right/left/down/up."""

    def __init__(self, L: int, n_states: int = 2):
        site = torch.arange(L * L)
        row, col = site // L, site % L
        self.n_sites = L * L
        self.n_states = n_states
        self.neighbours = torch.stack([row * L + (col + 1) % L, row * L + (col - 1) % L,
                                       ((row + 1) % L) * L + col, ((row - 1) % L) * L + col], dim=1)
        self.coordinates = torch.stack([row, col], dim=1).to(torch.float64)


def make_geometry(L: int):
    try:  # the project's lattice when available, else the same table built here
        from systems.lattice import SquareLattice
        lattice = SquareLattice(L)
        geometry = SquareLatticeGeometry(L)
        geometry.neighbours, geometry.coordinates = lattice.neighbours, lattice.coordinates
        return geometry
    except ImportError:
        return SquareLatticeGeometry(L)


def time_generation(sampler, n, batch_size, sites_per_step, seed):
    """Seconds to draw n samples with a generator on the sampler's device, as training does
    (on CUDA the clock stops once the samples are complete)."""
    generator = torch.Generator(device=sampler.device).manual_seed(seed)
    start = time.perf_counter()
    batch = sampler.sample(n, generator, batch_size=batch_size, sites_per_step=sites_per_step)
    if sampler.device.type == "cuda":
        torch.cuda.synchronize(sampler.device)
    elapsed = time.perf_counter() - start
    if not bool(torch.isfinite(batch.log_q).all()):
        raise RuntimeError("non-finite log q in generated batch")
    return elapsed


def run(args) -> list[dict]:
    geometry = make_geometry(args.L)
    kinds = ["lattice", "transformer"] if args.denoiser == "both" else [args.denoiser]
    rows = []
    for kind in kinds:
        sizes = dict(DEFAULT_SIZES[kind])
        for key in ("hidden", "layers", "heads"):
            value = getattr(args, key)
            if value is not None and key in sizes:
                sizes[key] = value
        with torch.random.fork_rng():
            torch.manual_seed(args.seed)
            denoiser = build_denoiser(kind, geometry, **sizes).to(args.device)
        for k in args.k:
            sampler = MaskedDiffusionSampler(denoiser, geometry.n_sites, geometry.n_states, k,
                                             schedule=args.schedule)
            batch_size = args.batch_size or sampler.default_batch_size
            time_generation(sampler, min(args.n, 8), batch_size, None, args.seed)  # warm-up
            n_pilot = min(args.n, max(batch_size, args.pilot))
            pilot = time_generation(sampler, n_pilot, batch_size, None, args.seed)
            projected = pilot * args.n / n_pilot
            if n_pilot == args.n:
                seconds, how = pilot, "measured"
            elif projected <= args.max_seconds:
                seconds, how = time_generation(sampler, args.n, batch_size, None, args.seed), "measured"
            else:
                seconds, how = projected, f"extrapolated from n={n_pilot}"
            row = {"denoiser": kind, **sizes, "k": k, "steps": sampler.n_steps, "batch_size": batch_size,
                   "n": args.n, "seconds": seconds, "samples_per_s": args.n / seconds, "how": how}
            rows.append(row)
            print(f"{kind:11s} {sizes}  k={k:<3d} steps={sampler.n_steps:<4d} batch={batch_size:<5d} "
                  f"n={args.n}: {seconds:9.1f} s  {args.n / seconds:9.1f} samples/s  ({how})", flush=True)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--L", type=int, default=16, help="linear lattice size (D = L²)")
    parser.add_argument("--n", type=int, default=10000, help="samples to generate")
    parser.add_argument("--denoiser", choices=["lattice", "transformer", "both"], default="both")
    parser.add_argument("--k", type=int, nargs="+", default=[1, DEFAULT_K], help="sites revealed per step")
    parser.add_argument("--schedule", choices=SCHEDULES, default="uniform",
                        help="groups of k sites, or a cosine schedule with the same number of steps (same cost)")
    parser.add_argument("--hidden", type=int, default=None)
    parser.add_argument("--layers", type=int, default=None)
    parser.add_argument("--heads", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None, help="samples per network call")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--pilot", type=int, default=256, help="samples in the pilot run")
    parser.add_argument("--max-seconds", type=float, default=120.0,
                        help="extrapolate instead of running configurations projected to take longer")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    print(f"torch {torch.__version__}, device {args.device}, threads {torch.get_num_threads()}, "
          f"cpus {os.cpu_count()}, load average {load[0]:.2f}; L={args.L}, q=2, n={args.n}", flush=True)
    return run(args)


if __name__ == "__main__":
    main()
