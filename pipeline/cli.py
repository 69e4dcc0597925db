"""The ``metadns`` command line. Only this module parses arguments.

    metadns run CONFIG.yaml [--profile NAME] [--out DIR] [--set key=value ...] [--resume] [--quiet]
                [--executor ray|inline] [--address HOST:PORT]
    metadns energy --config CONFIG.yaml FILE... [--set key=value ...] [--out TABLE.parquet]
    metadns fit-ce --out MODEL.ce [--label emt|mace --model FILE] [--species Cu Au] [--cutoffs 6 4.5 4.5] ...
    metadns tune CONFIG.yaml [--out DIR] [--set key=value ...] [--profile NAME] [--address HOST:PORT] [--quiet]
    metadns report DIR [--quiet]

Exit codes: 0 success; 2 invalid configuration, an existing run folder without ``--resume``,
or a structure file that cannot be read or does not fit the lattice (nothing is written in
any of these cases); 1 a failure during a run.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from pathlib import Path

from pipeline.config import ConfigError, load_config
from pipeline.outputs import provenance_metadata, write_parquet
from pipeline.runner import RunFolderExists, build_system, prepare_campaign, print_comparison, run_campaign
from pipeline.structures import FrameError, energy_table, read_frames


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="metadns", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="train/sample every (method, temperature) of a config")
    run.add_argument("config", type=Path, help="YAML run configuration")
    run.add_argument("--profile", default=None,
                     help="apply a named profile from the config's `profiles:` section (e.g. cpu, gpu)")
    run.add_argument("--out", type=Path, default=Path("runs"), help="output root (default: runs/)")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a dotted config key, e.g. --set bias.gamma=5 (repeatable)")
    run.add_argument("--resume", action="store_true",
                     help="continue runs from their last checkpoint (finished runs are kept)")
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    run.add_argument("--executor", choices=("ray", "inline"), default="ray",
                     help="ray (default): runs in Ray actors, on a local instance unless --address/RAY_ADDRESS "
                          "names a cluster; inline: one process, one run after the other (debugging)")
    run.add_argument("--address", default=None,
                     help="Ray cluster to join, e.g. 10.0.0.1:6379 (default: $RAY_ADDRESS, else a local instance)")
    energy = commands.add_parser("energy", help="energies of structure files with a config's alloy backend")
    energy.add_argument("files", type=Path, nargs="+", help="structures in any format ASE reads (extxyz, POSCAR, cif)")
    energy.add_argument("--config", type=Path, required=True, help="YAML config with an alloy system")
    energy.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a dotted config key, e.g. --set 'system.energy={name: ase}'")
    energy.add_argument("--out", type=Path, default=None, help="also write the table to this .parquet file")
    fit = commands.add_parser("fit-ce", help="fit a binary FCC cluster expansion to EMT or MACE energies")
    fit.add_argument("--out", type=Path, required=True, help="icet .ce file to write")
    fit.add_argument("--label", choices=("emt", "mace"), default="emt", help="reference energies (default EMT)")
    fit.add_argument("--model", type=Path, default=None, help="MACE model file (with --label mace)")
    fit.add_argument("--species", nargs=2, default=["Cu", "Au"], metavar=("A", "B"))
    fit.add_argument("--lattice-constant", type=float, default=3.8, help="Å (default 3.8)")
    fit.add_argument("--vegard", nargs=2, type=float, default=None, metavar=("A_A", "A_B"),
                     help="scale each structure to Vegard's law between these lattice constants (Å)")
    fit.add_argument("--cutoffs", nargs="+", type=float, default=[6.0, 4.5, 4.5],
                     help="cluster cutoffs in Å: pairs, triplets, … (default 6.0 4.5 4.5)")
    fit.add_argument("--max-atoms", type=int, default=8, help="enumerate structures up to this size (default 8)")
    fit.add_argument("--fit-method", default="least-squares", help="trainstation method (least-squares, lasso, ardr, …)")
    fit.add_argument("--seed", type=int, default=0)
    fit.add_argument("--quiet", action="store_true", help="no progress bar")
    tune = commands.add_parser("tune", help="Ray Tune sweep (ASHA) of the config keys in its `tune:` section")
    tune.add_argument("config", type=Path, help="YAML run configuration with a `tune:` section (optional)")
    tune.add_argument("--out", type=Path, default=Path("runs"), help="output root (default: runs/); "
                      "writes DIR/<name>/tune/{trials.parquet,history.parquet,best.yaml}")
    tune.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                      help="override a dotted config key, e.g. --set tune.num_samples=16 (repeatable)")
    tune.add_argument("--profile", default=None, help="apply a named profile from the config's `profiles:` section")
    tune.add_argument("--address", default=None,
                      help="Ray cluster to join, e.g. 10.0.0.1:6379 (default: $RAY_ADDRESS, else a local instance)")
    tune.add_argument("--quiet", action="store_true", help="no Tune progress output")
    report = commands.add_parser("report", help="dataset, summary table, plots and alloy phase diagram of finished runs")
    report.add_argument("dir", type=Path, help="folder searched (recursively) for finished run folders")
    report.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "run":
        return _run(args)
    if args.command == "energy":
        return _energy(args)
    if args.command == "fit-ce":
        return _fit_ce(args)
    if args.command == "tune":  # Ray is imported only when tuning
        from pipeline.distributed.tune import tune_command  # noqa: PLC0415
        return tune_command(args.config, args.out, args.overrides, args.profile, args.address, not args.quiet)
    if args.command == "report":  # dataset, summary, plots, phase diagram of finished runs
        from pipeline.campaign_report import report_command  # noqa: PLC0415
        return report_command(args.dir, quiet=args.quiet)
    return 2


def _fit_ce(args) -> int:
    from systems.alloys.fitting import fit_cluster_expansion  # noqa: PLC0415 - icet/trainstation on demand

    try:
        report = fit_cluster_expansion(
            args.out, species=tuple(args.species), lattice_constant=args.lattice_constant, cutoffs=args.cutoffs,
            max_atoms=args.max_atoms, labeller=args.label, model=args.model,
            vegard_lattice_constants=tuple(args.vegard) if args.vegard else None, fit_method=args.fit_method,
            seed=args.seed, progress=not args.quiet)
    except (ValueError, FileNotFoundError) as error:
        print(f"metadns: error: {error}", file=sys.stderr)
        return 2
    print(f"{report.n_structures} structures, {report.n_parameters} parameters "
          f"({report.n_nonzero_parameters} non-zero); RMSE cross-validation {report.rmse_validation_meV:.2f} meV/atom, "
          f"training {report.rmse_train_meV:.2f} meV/atom\nwritten to {report.path}")
    return 0


def _energy(args) -> int:
    try:
        config = load_config(args.config, args.overrides)
        if config.system.name != "alloy":
            raise ConfigError("system.name", f"`metadns energy` needs an alloy system, got {config.system.name!r}")
        if args.out is not None and args.out.suffix != ".parquet":
            raise ConfigError("--out", f"must name a .parquet file, got {args.out}")
        table = energy_table(build_system(config), read_frames(args.files))
    except (ConfigError, FrameError, FileNotFoundError) as error:
        print(f"metadns: error: {error}", file=sys.stderr)
        return 2
    print(table.to_string(index=False, float_format="{:.6f}".format))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        write_parquet(table, args.out, provenance_metadata(config.to_dict(), config.seed))
        print(f"written to {args.out}")
    return 0


def _run(args) -> int:
    try:
        if args.address and args.executor == "inline":
            raise ConfigError("--address", "joins a Ray cluster, which only --executor ray uses; drop one of them")
        config = load_config(args.config, args.overrides, profile=args.profile)
        campaign = prepare_campaign(config, args.out, resume=args.resume)
    except (ConfigError, RunFolderExists, FileNotFoundError) as error:
        print(f"metadns: error: {error}", file=sys.stderr)
        return 2
    try:
        if args.executor == "inline":
            results = run_campaign(campaign, progress=not args.quiet)
        else:
            results = _run_on_ray(campaign, args.address, progress=not args.quiet)
        print_comparison(campaign, results)
    except ConfigError as error:  # the Ray cluster cannot fit the requested actors; nothing was written
        print(f"metadns: error: {error}", file=sys.stderr)
        return 2
    except Exception:  # a failure during a run: report it in full, exit 1
        traceback.print_exc()
        return 1
    return 0


def _run_on_ray(campaign, address: str | None, progress: bool):
    from pipeline.distributed.executor import run_campaign_on_ray  # noqa: PLC0415 - ray only when used
    from pipeline.distributed.session import ray_session  # noqa: PLC0415

    with ray_session(address):
        return run_campaign_on_ray(campaign, progress=progress)


if __name__ == "__main__":
    sys.exit(main())
