"""Ray execution layer: evaluator-pool throughput, per-request overhead, campaign wall time.

Usage (from the repository root):
    python workflows/benchmarks/ray_layer.py                                  # all three, small defaults
    python workflows/benchmarks/ray_layer.py --bench mace --actors 1 2 3 4
    python workflows/benchmarks/ray_layer.py --bench overhead --batch-sizes 1 128 2000 8192
    python workflows/benchmarks/ray_layer.py --bench campaign --campaign-sites 8 --outer-iterations 40 --sweeps 400
    python workflows/benchmarks/ray_layer.py --bench two-node --node-cpus 1     # as root: a network namespace

Sub-benchmarks (each against a baseline measured in the same run):
  mace      configurations/s of an EvaluatorPool with 1, 2, … EnergyEvaluator actors on the MACE
            backend (shipped ``cuau_emt`` model, 64-site cell of workflows/cuau_64_mace.yaml), one
            request of ``--mace-configs`` configurations at a time (the pool splits it across its
            actors), against the same configurations evaluated in-process by the batched backend.
  overhead  time per energy request for the cluster-expansion backend (workflows/cuau_64.yaml,
            64 sites) at the trainer's batch (128 per outer iteration), sampling's batch (2000) and
            others: in-process ``system.energy`` vs one EnergyEvaluator actor called directly (one
            hop) vs an EvaluatorPool with one evaluator (two hops, as trainers use it; requests over
            its max_batch are split into several calls) vs the same pool with max_batch above every
            request ("one chunk"), and the ratios.  Least-squares lines t = a + c·B (in-process) and
            Δ = L + e·B (each path's extra time) give the request size B above which Δ ≤ 10 % of t.
  two-node  the same campaign's wall time as `metadns run` on a two-node Ray cluster on this machine
            (pipeline.distributed.loopback_cluster: head 127.0.0.1 and worker 127.0.0.2, each its own
            `ray start`, ``--node-cpus`` CPUs each, in a private network namespace; needs root), against
            `metadns run --executor inline` and the sum of its runs' inline times; per-run times on the
            cluster, the nodes the runs finished on, cluster start-up, and a check that the outputs
            equal the inline ones.  On one machine this measures the multi-node path's overhead, not
            its scaling.
  campaign  wall time of a small Cu–Au CE campaign (several methods × 2 temperatures) under the Ray
            executor (trainer actors, evaluator pool, bias servers), once per ``--cpus-per-run``
            value (0.875: two runs at once beside the 0.25-CPU evaluator; 1.75: one at a time; the
            config default 1.0 also runs one at a time on 2 CPUs), against the sum of its runs'
            single-process (inline) times measured first in this run; per-run times inline and
            under Ray, and a check that the Ray outputs equal the inline ones.

Everything runs on a local Ray instance (``--num-cpus`` CPUs, dashboard off, loopback only,
token authentication off: one machine) with one torch thread per process; Ray itself is used
only through pipeline.distributed.  Timings on a shared machine vary with its load; the load
average is printed with them.  In-process and remote timings alternate so that load changes
hit both alike.
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # local single-machine instance (see module doc)
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from pipeline.config import config_from_dict, load_config  # noqa: E402
from pipeline.distributed.evaluators import EnergyEvaluator, EvaluatorPool, PoolEnergy  # noqa: E402
from pipeline.distributed.executor import run_campaign_on_ray  # noqa: E402
from pipeline.distributed.loopback_cluster import LoopbackCluster  # noqa: E402
from pipeline.distributed.session import ray_session  # noqa: E402
from pipeline.build import build_system  # noqa: E402
from pipeline.campaign import UNBIASED_REFERENCES, prepare_campaign  # noqa: E402
from pipeline.runner import execute_run  # noqa: E402

WORKFLOWS = Path(__file__).resolve().parents[1]
CE_CONFIG = WORKFLOWS / "cuau_64.yaml"
MACE_CONFIG = WORKFLOWS / "cuau_64_mace.yaml"
TARGET_OVERHEAD = 0.10
COMPARED_FILES = ("observables", "samples")


# ----------------------------------------------------------------------------- helpers
def random_occupations(n_configs: int, n_sites: int, seed: int) -> torch.Tensor:
    """int64 (n_configs, n_sites) of 0 (Cu) / 1 (Au), Au fraction uniform in [0, 1] per row."""
    rng = np.random.default_rng(seed)
    fractions = rng.uniform(size=(n_configs, 1))
    return torch.from_numpy((rng.uniform(size=(n_configs, n_sites)) < fractions).astype(np.int64))


def timed(work) -> float:
    """Wall time (s) of one call of ``work()``."""
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def hardware_line(num_cpus: int) -> str:
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__} "
            f"({torch.get_num_threads()} thread), ray {version('ray')}, local Ray num_cpus={num_cpus}, "
            f"load average {os.getloadavg()[0]:.2f}")


def settle() -> None:
    """Called once a measurement's actor handles are gone: Ray ends an actor when no handle to it
    is left (a pool's evaluators with it); give their processes time to exit."""
    gc.collect()
    time.sleep(2.0)


def start_pool(config, evaluators: int, cpus_per_evaluator: float, max_batch: int | None = None):
    """EvaluatorPool for ``config`` with its max_in_flight and max_batch (unless given)."""
    d = config.distributed
    return EvaluatorPool.remote(config.to_dict(), evaluators, cpus_per_evaluator, max_batch or d.max_batch,
                                d.max_in_flight)


# ----------------------------------------------------------------------------- mace
def bench_mace(args) -> None:
    """Pool throughput (configurations/s) with 1, 2, … MACE evaluators vs in-process batched MACE.

    For each evaluator count the in-process and pool requests alternate (``--repeats`` each) and
    the ratio uses the in-process best of the same rounds, so slow drifts of the machine's load
    affect both alike."""
    config = load_config(MACE_CONFIG)
    system = build_system(config)
    x = random_occupations(args.mace_configs, system.n_sites, args.seed)
    reference = system.energy(x).numpy()  # warm-up and reference energies
    print(f"\n[mace] {system.n_sites}-site Cu–Au cell, shipped model cuau_emt (float64, "
          f"{system.backend.configurations_per_call} configurations per model call), one request of {len(x)} "
          f"configurations, best of {args.repeats} alternating with in-process; {hardware_line(args.num_cpus)}")
    print(f"  {'evaluators':<28} {'in-process configs/s':>21} {'pool configs/s':>15} {'pool / in-process':>18} "
          f"{'max |ΔE| eV':>12}")
    for actors in args.actors:
        cpus = min(1.0, args.num_cpus / actors)
        inline_rate, rate, error = pool_rate(config, system, actors, cpus, x, reference, args.repeats)
        settle()
        label = f"{actors} × {cpus:.2g} CPU"
        print(f"  {label:<28} {inline_rate:21.1f} {rate:15.1f} {rate / inline_rate:17.2f}× {error:12.1e}")
    print(f"  (load average after: {os.getloadavg()[0]:.2f})")


def pool_rate(config, system, actors: int, cpus: float, x: torch.Tensor, reference: np.ndarray,
              repeats: int) -> tuple[float, float, float]:
    """(in-process configurations/s, pool configurations/s, max |ΔE| eV of the pool vs ``reference``),
    best of ``repeats`` alternating requests of x; the pool ends when this returns (handle dropped)."""
    client = PoolEnergy(start_pool(config, actors, cpus))
    error = float(np.abs(client(x).numpy() - reference).max())  # warm-up: actors start, models load
    inline_times, pool_times = [], []
    for _ in range(repeats):
        inline_times.append(timed(lambda: system.energy(x)))
        pool_times.append(timed(lambda: client(x)))
    return len(x) / min(inline_times), len(x) / min(pool_times), error


# ----------------------------------------------------------------------------- overhead
def bench_overhead(args) -> None:
    """Per-request time of CE energies: in-process vs one evaluator actor vs the pool (1 evaluator)."""
    config = load_config(CE_CONFIG)
    system = build_system(config)
    d = config.distributed
    print(f"\n[overhead] cluster expansion (cuau_paper), {system.n_sites} sites, pool of 1 evaluator × "
          f"{d.cpus_per_evaluator:g} CPU (max_batch {d.max_batch}, max_in_flight {d.max_in_flight}); "
          f"{args.rounds} interleaved rounds of ≥ {args.seconds / args.rounds:.2g} s per path; "
          f"{hardware_line(args.num_cpus)}")
    table = pd.DataFrame(request_times(config, system, args))
    settle()
    remote = ("direct actor", "pool", "pool, one chunk")
    print(f"  median ms per request (best-of in brackets); ratio = path / in-process; 'pool, one chunk': "
          f"max_batch {max(args.batch_sizes)} (requests never split)")
    print(f"  {'batch':>6} | {'in-process':>17} | " + " | ".join(f"{name:>27}" for name in remote))
    for r in table.to_dict("records"):
        inline = r["in-process median"]
        cells = [f"{1e3 * r[f'{n} median']:8.3f} ({1e3 * r[f'{n} best']:7.3f}) {r[f'{n} median'] / inline:6.2f}×"
                 for n in remote]
        print(f"  {r['batch']:6d} | {1e3 * inline:8.3f} ({1e3 * r['in-process best']:7.3f}) | " + " | ".join(cells))
    # Least-squares lines over the batch sizes: in-process t(B) = a + c·B, a path's overhead
    # Δ(B) = L + e·B (L: per-request latency; e: per-configuration transfer, conversion, and
    # the latency of extra calls when the pool splits a request into max_batch chunks).
    print(f"  (load average after: {os.getloadavg()[0]:.2f})")
    batches = table["batch"].to_numpy(dtype=np.float64)
    inline_t = table["in-process median"].to_numpy()
    if len(table) < 2:
        return
    c, a = np.polyfit(batches, inline_t, 1)
    print(f"  fit, in-process: {1e3 * a:.3f} ms + {1e6 * c:.3f} µs/configuration")
    for name in remote:
        e, latency = np.polyfit(batches, table[f"{name} median"].to_numpy() - inline_t, 1)
        if TARGET_OVERHEAD * c > e:
            needed = max(1.0, (latency - TARGET_OVERHEAD * a) / (TARGET_OVERHEAD * c - e))
            verdict = f"≤ {TARGET_OVERHEAD:.0%} overhead from ≈ {math.ceil(needed):,} configurations per request"
        else:
            verdict = f"per-configuration overhead alone > {TARGET_OVERHEAD:.0%}: no request size meets it"
        print(f"  fit, {name} overhead: {1e3 * latency:.2f} ms per request + {1e6 * e:.3f} µs/configuration; "
              f"{verdict}")


def request_times(config, system, args) -> list[dict]:
    """Per batch size: median and best seconds per request of each path (in-process, direct, pool).
    The actors end when this returns (their handles are dropped)."""
    d = config.distributed
    evaluator = EnergyEvaluator.options(num_cpus=d.cpus_per_evaluator).remote(config.to_dict(), 1)
    unsplit = max(args.batch_sizes)
    paths = {"in-process": system.energy, "direct actor": PoolEnergy(evaluator),
             "pool": PoolEnergy(start_pool(config, 1, d.cpus_per_evaluator)),
             "pool, one chunk": PoolEnergy(start_pool(config, 1, d.cpus_per_evaluator, max_batch=unsplit))}
    rows = []
    for batch in tqdm(args.batch_sizes, desc="overhead: batch sizes", leave=False):
        x = random_occupations(batch, system.n_sites, args.seed + batch)
        reference = system.energy(x).numpy()
        for name, energy in paths.items():  # warm-up (actor start, first call) and equality check
            got = energy(x).numpy()
            if not np.allclose(got, reference, rtol=0, atol=1e-9):
                raise AssertionError(f"{name} energies differ from in-process ones by "
                                     f"{np.abs(got - reference).max():.2e} eV")
        times = {name: [] for name in paths}
        for _ in range(args.rounds):
            for name, energy in paths.items():
                start = time.perf_counter()
                while time.perf_counter() - start < args.seconds / args.rounds or not times[name]:
                    times[name].append(timed(lambda: energy(x)))
        rows.append({"batch": batch, **{f"{name} median": statistics.median(t) for name, t in times.items()},
                     **{f"{name} best": min(t) for name, t in times.items()}})
    return rows


# ----------------------------------------------------------------------------- campaign
def campaign_config(args, cpus_per_run: float):
    """A small Cu–Au CE campaign: methods × 2 temperatures, 8 or 32 sites."""
    size, cell = {8: ([2, 2, 2], "primitive"), 32: ([2, 2, 2], "conventional")}[args.campaign_sites]
    raw = {
        "seed": args.seed, "methods": list(args.methods),
        "system": {"name": "alloy", "size": size, "cell": cell, "lattice_constant": 3.8,
                   "energy": {"name": "cluster_expansion", "model": "cuau_paper"},
                   "cv": "composition", "temperature": list(args.temperatures)},
        "sampler": {"denoiser": "lattice", "sites_per_step": 2, "schedule": "cosine", "hidden": 16, "layers": 2},
        "bias": {"gamma": 10, "sigma": 0.05, "height_per_cycle": 0.5},
        "training": {"outer_iterations": args.outer_iterations, "batch_size": 128, "inner_steps": 3,
                     "maskings": 4, "threads": 1},
        "sampling": {"n_samples": 2000, "delta_mu_grid": [0.0]},
        "reference": {"chains": 16, "sweeps": args.sweeps, "burn_in": args.sweeps // 10},
        "distributed": {"evaluators": args.campaign_evaluators, "cpus_per_evaluator": args.cpus_per_evaluator,
                        "cpus_per_run": cpus_per_run},
    }
    return config_from_dict(raw, f"ray_layer_cuau{args.campaign_sites}")


def same_outputs(inline_root: Path, ray_root: Path, runs) -> bool:
    """Whether every run's observables (wall times aside) and samples are identical."""
    for run in runs:
        for name in COMPARED_FILES:
            a = pd.read_parquet(inline_root / run / f"{name}.parquet")
            b = pd.read_parquet(ray_root / run / f"{name}.parquet")
            if name == "observables":
                a = a[~a.observable.str.endswith("wall_time")].reset_index(drop=True)
                b = b[~b.observable.str.endswith("wall_time")].reset_index(drop=True)
            if not a.equals(b):
                return False
    return True


def work_seconds(summary: dict) -> float:
    """A run's own timed work (s): training + generation for neural methods, chains for MCMC."""
    if "wall_time_s" in summary:
        return float(summary["wall_time_s"])
    return float(summary.get("training_wall_time_s", 0.0)) + float(summary.get("generation_wall_time_s", 0.0))


def run_seconds(run_dir: Path) -> float:
    """Seconds from a run's config.yaml (written once its system is built) to its summary.json."""
    return (run_dir / "summary.json").stat().st_mtime - (run_dir / "config.yaml").stat().st_mtime


def ideal_wall(campaign, run_times: dict, concurrent: int) -> float:
    """Lower bound on the wall time with ``concurrent`` runs at once, from single-process run
    times: total / concurrent, and per temperature the reference run then its longest dependant."""
    chains = []
    for tag in {s.temperature_tag for s in campaign.runs}:
        at = [s for s in campaign.runs if s.temperature_tag == tag]
        refs = [run_times[s.run_name] for s in at if s.method in UNBIASED_REFERENCES]
        rest = [run_times[s.run_name] for s in at if s.method not in UNBIASED_REFERENCES]
        chains.append(max(refs, default=0.0) + max(rest, default=0.0))
    return max(sum(run_times.values()) / concurrent, max(chains))


def bench_campaign(args, ray_start_s: float) -> None:
    """Campaign wall time under Ray (once per --cpus-per-run) vs the sum of its runs' inline times."""
    with tempfile.TemporaryDirectory(prefix="ray_layer_") as folder:
        inline = prepare_campaign(campaign_config(args, args.cpus_per_run[0]), Path(folder) / "inline", resume=False)
        inline.root.mkdir(parents=True)
        names = [s.run_name for s in inline.runs]
        run_times, inline_work = {}, {}
        for spec in tqdm(inline.runs, desc="campaign: inline runs", leave=False):
            start = time.perf_counter()
            inline_work[spec.run_name] = work_seconds(execute_run(inline, spec, progress=False).summary)
            run_times[spec.run_name] = time.perf_counter() - start
        inline_run = {n: run_seconds(inline.root / n) for n in names}
        variants = []
        for index, cpus in enumerate(args.cpus_per_run):
            distributed = prepare_campaign(campaign_config(args, cpus), Path(folder) / f"ray{index}", resume=False)
            start = time.perf_counter()
            results = run_campaign_on_ray(distributed, progress=False)
            wall = time.perf_counter() - start
            concurrent = max(1, int((args.num_cpus - args.campaign_evaluators * args.cpus_per_evaluator + 1e-9)
                                    // cpus))
            variants.append({"cpus": cpus, "concurrent": concurrent, "wall": wall,
                             "work": {r.spec.run_name: work_seconds(r.summary) for r in results},
                             "run": {n: run_seconds(distributed.root / n) for n in names},
                             "identical": same_outputs(inline.root, distributed.root, names)})
            settle()
    total = sum(run_times.values())
    print(f"\n[campaign] Cu–Au {args.campaign_sites} sites, CE, methods {', '.join(args.methods)} × T = "
          f"{', '.join(f'{t:g}' for t in args.temperatures)} K ({len(names)} runs), "
          f"{args.outer_iterations} outer iterations (B = 128), {args.sweeps} sweeps × 16 chains; "
          f"{args.campaign_evaluators} evaluator(s) × {args.cpus_per_evaluator:g} CPU; "
          f"{hardware_line(args.num_cpus)}")
    print("  per run, seconds: 'whole' = execute_run inline (setup, work, outputs); 'run' = config.yaml → "
          "summary.json; 'work' = training + generation, or MCMC chains")
    label = lambda v: f"Ray {v['cpus']:g} CPU/run:"  # noqa: E731
    head = "".join(f" | {label(v)} {'run':>5} {'work':>5}" for v in variants)
    print(f"  {'run':<24} | inline: {'whole':>6} {'run':>5} {'work':>5}{head}")
    for name in names:
        cells = "".join(f" | {'':>{len(label(v))}} {v['run'][name]:5.1f} {v['work'][name]:5.1f}" for v in variants)
        print(f"  {name:<24} | {run_times[name]:14.1f} {inline_run[name]:5.1f} {inline_work[name]:5.1f}{cells}")
    print(f"  sum of inline run times: {total:.1f} s (Ray start-up, not included below: {ray_start_s:.1f} s)")
    for v in variants:
        ideal = ideal_wall(inline, run_times, v["concurrent"])
        print(f"  Ray, {v['cpus']:g} CPU per run ({v['concurrent']} run(s) at once): wall {v['wall']:.1f} s = "
              f"{v['wall'] / total:.2f}× the sum (speed-up {total / v['wall']:.2f}×); ideal from the inline "
              f"times {ideal:.1f} s = {ideal / total:.2f}×; results identical to inline: {v['identical']}")
    print(f"  (load average after: {os.getloadavg()[0]:.2f})")
    if not all(v["identical"] for v in variants):
        raise SystemExit("ray_layer: the Ray executor's outputs differ from the inline ones (see above)")


def bench_two_node(args) -> None:
    """`metadns run` of the campaign inline and on a two-node loopback cluster, side by side."""
    config = campaign_config(args, 1.0)
    raw = {**config.to_dict(), "distributed": {**config.to_dict()["distributed"], "evaluators": 0}}
    with tempfile.TemporaryDirectory(prefix="rl", dir="/tmp") as folder:  # short: Ray's socket paths
        folder = Path(folder)
        config_path = folder / "campaign.yaml"
        config_path.write_text(yaml.safe_dump(raw, sort_keys=False))
        command = [sys.executable, "-m", "pipeline.cli", "run", str(config_path), "--quiet"]
        start = time.perf_counter()
        inline = subprocess.run([*command, "--out", str(folder / "inline"), "--executor", "inline"],
                                capture_output=True, text=True, env={**os.environ, "METADNS_PROGRESS_EVERY": "0"})
        inline_wall = time.perf_counter() - start
        if inline.returncode != 0:
            raise SystemExit(f"ray_layer: the inline campaign failed:\n{inline.stdout[-4000:]}\n{inline.stderr[-4000:]}")
        start = time.perf_counter()
        with LoopbackCluster(folder / "c", nodes=2, cpus_per_node=args.node_cpus) as cluster:
            cluster_start = time.perf_counter() - start
            start = time.perf_counter()
            driver = subprocess.run(cluster.command([*command, "--out", str(folder / "ray"), "--executor", "ray",
                                                     "--address", cluster.address]),
                                    env={**cluster.env, "METADNS_PROGRESS_EVERY": "0"}, capture_output=True, text=True)
            ray_wall = time.perf_counter() - start
        if driver.returncode != 0:
            raise SystemExit(f"ray_layer: the two-node campaign failed:\n{driver.stdout[-4000:]}\n{driver.stderr[-4000:]}")
        inline_root, ray_root = folder / "inline" / config.name, folder / "ray" / config.name
        campaign = prepare_campaign(config, folder / "plan", resume=False)
        names = [s.run_name for s in campaign.runs]
        inline_run = {n: run_seconds(inline_root / n) for n in names}
        ray_run = {n: run_seconds(ray_root / n) for n in names}
        nodes = dict(re.findall(r"== \S+: (\S+) finished in [\d.]+ s on node (\w+)", driver.stdout))
        identical = same_outputs(inline_root, ray_root, names)
    total = sum(inline_run.values())
    ideal = ideal_wall(campaign, inline_run, 2 * int(args.node_cpus))
    print(f"\n[two-node] Cu–Au {args.campaign_sites} sites, CE, methods {', '.join(args.methods)} × T = "
          f"{', '.join(f'{t:g}' for t in args.temperatures)} K ({len(names)} runs), {args.outer_iterations} outer "
          f"iterations, {args.sweeps} sweeps × 16 chains; no evaluators; 2 nodes × {args.node_cpus} CPU, "
          f"1 CPU per run; {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}")
    print(f"  {'run':<24} {'inline s':>9} {'2 nodes s':>10} {'extra s':>8}  node")
    for name in names:
        print(f"  {name:<24} {inline_run[name]:9.1f} {ray_run[name]:10.1f} {ray_run[name] - inline_run[name]:8.1f}  "
              f"{nodes.get(name, '?')[:8]}")
    extra = [ray_run[n] - inline_run[n] for n in names]
    print(f"  per-run extra time on the cluster: mean {statistics.mean(extra):.1f} s, max {max(extra):.1f} s "
          f"(config.yaml → summary.json)")
    print(f"  cluster start (2 × ray start): {cluster_start:.1f} s, not included below")
    print(f"  sum of the inline runs: {total:.1f} s; `metadns run --executor inline`: {inline_wall:.1f} s "
          f"(runs + comparison + report)")
    print(f"  `metadns run` on 2 nodes: {ray_wall:.1f} s = {ray_wall / total:.2f}× the sum of the inline runs, "
          f"{ray_wall / inline_wall:.2f}× the inline command; ideal with {2 * int(args.node_cpus)} runs at once "
          f"{ideal:.1f} s; runs finished on {len(set(nodes.values()))} node(s); outputs identical to inline: "
          f"{identical}")
    if not identical:
        raise SystemExit("ray_layer: the two-node campaign's outputs differ from the inline ones (see above)")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bench", nargs="+", choices=("mace", "overhead", "campaign", "two-node"),
                        default=["mace", "overhead", "campaign"])
    parser.add_argument("--num-cpus", type=int, default=2, help="CPUs of the local Ray instance")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=5, help="mace: timed requests per evaluator count (best)")
    group = parser.add_argument_group("mace")
    group.add_argument("--actors", type=int, nargs="+", default=[1, 2, 3, 4], help="evaluator counts")
    group.add_argument("--mace-configs", type=int, default=128, help="configurations per request")
    group = parser.add_argument_group("overhead")
    group.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 128, 2000, 8192, 32768],
                       help="configurations per request, ascending")
    group.add_argument("--seconds", type=float, default=4.0, help="timed seconds per path and batch size")
    group.add_argument("--rounds", type=int, default=4, help="interleaved rounds per batch size")
    group = parser.add_argument_group("campaign")
    group.add_argument("--campaign-sites", type=int, choices=(8, 32), default=32)
    group.add_argument("--methods", nargs="+", default=["metropolis", "mcmc-metad", "mdns", "metadns"])
    group.add_argument("--temperatures", type=float, nargs="+", default=[500.0, 1200.0])
    group.add_argument("--outer-iterations", type=int, default=100)
    group.add_argument("--sweeps", type=int, default=1000, help="MCMC sweeps per chain (16 chains)")
    group.add_argument("--campaign-evaluators", type=int, default=1)
    group.add_argument("--cpus-per-evaluator", type=float, default=0.25)
    group.add_argument("--cpus-per-run", type=float, nargs="+", default=[0.875],
                       help="Ray CPUs per trainer actor, one Ray campaign per value (0.875 fits two runs beside a "
                            "0.25-CPU evaluator in 2 CPUs; 1.75 runs one at a time)")
    group = parser.add_argument_group("two-node (the campaign settings above, no evaluators)")
    group.add_argument("--node-cpus", type=int, default=1, help="Ray CPUs of each of the two nodes (1 CPU per run)")
    args = parser.parse_args(argv)
    if sorted(args.batch_sizes) != args.batch_sizes:
        parser.error("--batch-sizes must be ascending")
    if args.num_cpus < 1 or min(args.actors) < 1:
        parser.error("--num-cpus and --actors must be ≥ 1")

    torch.set_num_threads(1)
    print(f"Ray layer benchmark: {hardware_line(args.num_cpus)}")
    if "two-node" in args.bench:
        bench_two_node(args)
    if not {"mace", "overhead", "campaign"} & set(args.bench):
        return
    start = time.perf_counter()
    with ray_session(None, num_cpus=args.num_cpus):
        ray_start_s = time.perf_counter() - start
        print(f"local Ray started in {ray_start_s:.1f} s")
        if "mace" in args.bench:
            bench_mace(args)
        if "overhead" in args.bench:
            bench_overhead(args)
        if "campaign" in args.bench:
            bench_campaign(args, ray_start_s)


if __name__ == "__main__":
    main()
