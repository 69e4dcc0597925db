"""Independent Cu–Au reference: F(x_Au; T) and ⟨x_Au⟩(T) at Δμ = 0 from icet's mchammer.

Usage (from the repository root; resumable, computed in parts):
    python workflows/benchmarks/cuau_reference.py --out workflows/benchmarks/data/cuau_reference_64 \\
        --max-minutes 60          # run for an hour, then stop; run again to continue
    python workflows/benchmarks/cuau_reference.py --out ... --assemble   # tables and plot from the parts

Every composition n = 0..N of the cell runs a cooling ladder of mchammer canonical MC from
β = 0 to the coldest target temperature; the ladders of every ``--heating-every``-th
composition (and of the stoichiometric ones, x = ¼, ½, ¾) are run back up from the cooling
ladder's last configuration to check for hysteresis through the ordering transitions. Each
ladder is one part, ``parts/n{n}_{direction}.json``, written atomically when it finishes;
a run skips the parts already there. ``settings.json`` fixes the cell, model, temperatures and
sampling settings of the folder: a later run with other settings is refused.

Assembling integrates each ladder to ln Z_n (pipeline/free_energy_reference.py). Where a
composition has both ladders the two ln Z are averaged and half their difference is added to
the error in quadrature. It writes ``reference.csv`` (per T and n: x_Au, P, F in k_BT and its
error), ``summary.csv`` (per T: ⟨x_Au⟩ ± SE, the largest cooling–heating gap in ln Z and in
units of its error) and ``reference.png``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from ase.units import kB
from tqdm.auto import tqdm

from pipeline import free_energy_reference as fr
from pipeline.outputs import atomic_write_text
from systems.alloys.cluster_expansion import PAPER_CUAU_CE
from systems.alloys.fcc import FCCLattice

DEFAULT_TEMPERATURES = [400, 500, 600, 700, 800, 900, 1000, 1100, 1200, 1300]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder of the parts and tables")
    parser.add_argument("--size", type=int, nargs=3, default=[4, 4, 4])
    parser.add_argument("--cell", choices=["primitive", "conventional"], default="primitive")
    parser.add_argument("--lattice-constant", type=float, default=3.8, help="Å")
    parser.add_argument("--model", type=Path, default=PAPER_CUAU_CE, help="CE file (icet .ce or project JSON)")
    parser.add_argument("--temperatures", type=float, nargs="+", default=DEFAULT_TEMPERATURES, help="K")
    parser.add_argument("--beta-spacing", type=float, default=1.0, help="largest ladder step, 1/eV")
    parser.add_argument("--heating-every", type=int, default=4, help="heating ladders at every k-th composition")
    parser.add_argument("--energy-tolerance", type=float, default=0.01, help="SE of ⟨E_f⟩ per rung, eV per cell")
    parser.add_argument("--max-sweeps", type=int, default=4000, help="most recorded sweeps per rung")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-minutes", type=float, default=None, help="stop starting new parts after this")
    parser.add_argument("--assemble", action="store_true", help="only write the tables and plot")
    args = parser.parse_args(argv)
    if args.heating_every < 1:
        parser.error("--heating-every must be a positive integer (1 = every composition)")
    if any(t <= 0 for t in args.temperatures):
        parser.error("--temperatures must be positive, in K")
    return args


def folder_settings(args) -> dict:
    return {"size": list(args.size), "cell": args.cell, "lattice_constant": args.lattice_constant,
            "model": args.model.name, "temperatures": sorted(float(t) for t in args.temperatures),
            "beta_spacing": args.beta_spacing, "energy_tolerance": args.energy_tolerance,
            "max_sweeps": args.max_sweeps, "seed": args.seed, "heating_every": args.heating_every}


def check_settings(out: Path, settings: dict) -> None:
    """Write settings.json on first use; refuse a folder made with other settings."""
    path = out / "settings.json"
    if path.exists():
        stored = json.loads(path.read_text())
        if stored != settings:
            changed = sorted(k for k in settings if stored.get(k) != settings[k])
            sys.exit(f"error: {out} was started with other settings ({', '.join(changed)}); "
                     "use a new --out folder or the stored settings")
    else:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(settings, indent=1))


def heating_compositions(n_sites: int, every: int) -> list[int]:
    chosen = set(range(0, n_sites + 1, every))
    chosen.update(n_sites * k // 4 for k in (1, 2, 3) if n_sites % 4 == 0)
    return sorted(chosen)


def part_path(out: Path, n: int, direction: str) -> Path:
    return out / "parts" / f"n{n:03d}_{direction}.json"


def run_parts(args, supercell, n_sites: int, betas: np.ndarray) -> bool:
    """Run the missing ladders (cooling first); returns True when every part exists."""
    todo = [(n, "cooling") for n in range(n_sites + 1)] + \
           [(n, "heating") for n in heating_compositions(n_sites, args.heating_every)]
    todo = [(n, d) for n, d in todo if not part_path(args.out, n, d).exists()]
    (args.out / "parts").mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    for n, direction in tqdm(todo, desc="ladders", unit="ladder"):
        if args.max_minutes is not None and time.perf_counter() - start > 60 * args.max_minutes:
            print(f"stopping after {args.max_minutes:g} min; run again to continue")
            return False
        start_occupation = None
        if direction == "heating":
            cooling = part_path(args.out, n, "cooling")
            if not cooling.exists():
                continue
            start_occupation = json.loads(cooling.read_text())["final_occupation"]
        result = fr.canonical_ladder(args.model, supercell, n, betas, direction=direction,
                                     start_occupation=start_occupation, seed=args.seed * 100003 + n,
                                     max_sweeps=args.max_sweeps, energy_tolerance=args.energy_tolerance,
                                     progress=True)
        atomic_write_text(part_path(args.out, n, direction), json.dumps(result.to_dict()))
    return all(part_path(args.out, n, "cooling").exists() for n in range(n_sites + 1))


def assemble(args, n_sites: int, betas: np.ndarray) -> None:
    """reference.csv, summary.csv and reference.png from the parts."""
    temperatures = sorted(float(t) for t in args.temperatures)
    rung = [int(np.argmin(np.abs(betas - 1.0 / (kB * t)))) for t in temperatures]
    log_z = np.empty((n_sites + 1, len(betas)))
    log_z_err = np.empty_like(log_z)
    gap_sigma = np.zeros_like(log_z)           # |ln Z_cooling − ln Z_heating| / its statistical SE
    for n in range(n_sites + 1):
        ladders = []
        for direction in ("cooling", "heating"):
            path = part_path(args.out, n, direction)
            if path.exists():
                part = json.loads(path.read_text())
                ladders.append(fr.log_partition_function(n_sites, n, part["betas"], part["mean_energy"],
                                                         part["stderr"]))
        if not ladders:
            sys.exit(f"error: composition n={n} has no cooling ladder yet; run without --assemble first")
        values = np.stack([z for z, _, _ in ladders])
        log_z[n] = values.mean(axis=0)
        statistical = np.sqrt(np.mean([se ** 2 for _, se, _ in ladders], axis=0) / len(ladders))
        discretisation = np.max([d for _, _, d in ladders], axis=0)
        gap = values.max(axis=0) - values.min(axis=0)
        log_z_err[n] = np.sqrt(statistical ** 2 + discretisation ** 2 + (gap / 2) ** 2)
        if len(ladders) == 2:
            gap_sigma[n] = gap / np.hypot(ladders[0][1], ladders[1][1]).clip(1e-6)
    rows, summary = [], []
    x = np.arange(n_sites + 1) / n_sites
    for t, k in zip(temperatures, rung):
        dist = fr.composition_distribution(n_sites, log_z[:, k], log_z_err[:, k])
        for n in range(n_sites + 1):
            rows.append({"temperature_K": t, "n_au": n, "x_au": x[n], "probability": dist["probability"][n],
                         "free_energy_kT": dist["free_energy"][n], "free_energy_err_kT": dist["free_energy_err"][n]})
        summary.append({"temperature_K": t, "mean_x_au": dist["mean_fraction"],
                        "mean_x_au_err": dist["mean_fraction_err"],
                        "largest_heating_gap_sigma": float(gap_sigma[:, k].max())})
    table, summary = pd.DataFrame(rows), pd.DataFrame(summary)
    atomic_write_text(args.out / "reference.csv", table.to_csv(index=False, float_format="%.6g"))
    atomic_write_text(args.out / "summary.csv", summary.to_csv(index=False, float_format="%.6g"))
    plot_reference(args.out / "reference.png", table, summary)
    print(summary.to_string(index=False))


def plot_reference(path: Path, table: pd.DataFrame, summary: pd.DataFrame) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(11, 4.2))
    FigureCanvasAgg(figure)
    left, right = figure.subplots(1, 2)
    for t, rows in table.groupby("temperature_K"):
        shown = rows[rows.free_energy_kT <= 12]
        left.errorbar(shown.x_au, shown.free_energy_kT, yerr=shown.free_energy_err_kT, marker=".", ms=3,
                      lw=0.8, label=f"{t:g} K")
    left.set(xlabel="x_Au", ylabel="F(x_Au) / k_BT (min 0)", title="mchammer canonical MC + TI in β")
    left.legend(fontsize=7, ncol=2, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    right.errorbar(summary.temperature_K, summary.mean_x_au, yerr=summary.mean_x_au_err, marker="o")
    right.set(xlabel="T (K)", ylabel="⟨x_Au⟩ at Δμ = 0")
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main(argv=None) -> None:
    args = parse_args(argv)
    lattice = FCCLattice(args.size, args.cell, args.lattice_constant)
    supercell = lattice.reference_atoms("Cu")
    betas = fr.ladder_betas(args.temperatures, args.beta_spacing)
    settings = folder_settings(args)
    check_settings(args.out, settings)
    complete = args.assemble or run_parts(args, supercell, lattice.n_sites, betas)
    if complete:
        assemble(args, lattice.n_sites, betas)


if __name__ == "__main__":
    main()
