"""The ``metadns`` command line. Only this module parses arguments.

    metadns run CONFIG.yaml [--profile NAME] [--out DIR] [--set key=value ...] [--resume] [--quiet]
                [--executor ray|inline] [--address HOST:PORT] [--dry-run]
    metadns energy --config CONFIG.yaml FILE... [--set key=value ...] [--out TABLE.parquet]
    metadns fit-ce --out MODEL.ce [--label emt|mace --model FILE] [--species Cu Au] [--cutoffs 6 4.5 4.5] ...
    metadns submit [run|tune] CONFIG.yaml [--out DIR] [--nodes N] [--gpus-per-node [TYPE:]G] [--time T] ...
                   [--setup LINE ...] [--dry-run] [--wait]
    metadns tune CONFIG.yaml [--out DIR] [--set key=value ...] [--profile NAME] [--address HOST:PORT] [--resume]
                 [--quiet]
    metadns report DIR [--quiet]
    metadns export RUN_DIR [--format extxyz|db] [--n N] [--select weighted|lowest-energy|first] [--out FILE] [--seed S]
    metadns --version

Exit codes: 0 success; 2 invalid input found before anything is written (a
:class:`pipeline.errors.SetupError`: an invalid configuration, an existing run folder without
``--resume``, a structure file that cannot be read or does not fit the lattice, ...); 1 a
failure during a run (its traceback is printed).  :func:`main` alone maps errors to these
codes; the commands raise.  Heavy packages (torch, ray, icet) are imported by the commands
that need them, so ``--help``, ``--version`` and ``run --dry-run`` start fast.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from pathlib import Path

from pipeline.errors import ConfigError, SetupError, setup_errors


class _VersionAction(argparse.Action):
    """``--version``: print ``metadns <version>`` of the installed distribution and exit
    (importlib.metadata is imported only then: it costs more than the rest of ``--help``)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, help="print the version and exit"):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        import importlib.metadata  # noqa: PLC0415

        try:
            version = importlib.metadata.version("metadns")
        except importlib.metadata.PackageNotFoundError:  # run from a source tree that is not installed
            version = "unknown (not installed)"
        print(f"{parser.prog} {version}")
        parser.exit()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="metadns", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action=_VersionAction)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="train/sample every (method, temperature) of a config")
    run.set_defaults(handler=_run)
    run.add_argument("config", type=Path, help="YAML run configuration")
    run.add_argument("--profile", default=None,
                     help="apply a named profile from the config's `profiles:` section (e.g. cpu, gpu)")
    run.add_argument("--out", type=Path, default=Path("runs"), help="output root (default: runs/)")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a dotted config key, e.g. --set bias.gamma=5 (repeatable)")
    run.add_argument("--resume", action="store_true",
                     help="continue runs from their last checkpoint (finished runs are kept)")
    run.add_argument("--quiet", action="store_true", help="no progress bars; instead one line per training run "
                     "every $METADNS_PROGRESS_EVERY minutes (default 5; 0: none)")
    run.add_argument("--executor", choices=("ray", "inline"), default="ray",
                     help="ray (default): runs in Ray actors, on a local instance unless --address/RAY_ADDRESS "
                          "names a cluster; inline: one process, one run after the other (debugging)")
    run.add_argument("--address", default=None,
                     help="Ray cluster to join, e.g. 10.0.0.1:6379 (default: $RAY_ADDRESS, else a local instance)")
    run.add_argument("--dry-run", action="store_true",
                     help="validate the config's schema and print the run folders it would make; run and write nothing")
    energy = commands.add_parser("energy", help="energies of structure files with a config's alloy backend")
    energy.set_defaults(handler=_energy)
    energy.add_argument("files", type=Path, nargs="+", help="structures in any format ASE reads (extxyz, POSCAR, cif)")
    energy.add_argument("--config", type=Path, required=True, help="YAML config with an alloy system")
    energy.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a dotted config key, e.g. --set 'system.energy={name: ase}'")
    energy.add_argument("--out", type=Path, default=None, help="also write the table to this .parquet file")
    fit = commands.add_parser("fit-ce", help="fit a binary FCC cluster expansion to EMT or MACE energies")
    fit.set_defaults(handler=_fit_ce)
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
    submit = commands.add_parser("submit", help="submit a campaign (or a Tune sweep) as a Slurm job (Ray head + "
                                                "workers, token auth on)")
    submit.set_defaults(handler=_submit)
    submit.add_argument("command", nargs="?", choices=("run", "tune"), default="run",
                        help="what the job runs: `metadns run` (default) or `metadns tune` on the config")
    submit.add_argument("config", type=Path, help="YAML run configuration (validated before submitting)")
    submit.add_argument("--out", type=Path, default=Path("runs"),
                        help="output root on shared storage (default: runs/); script and logs: OUT/<name>/slurm/")
    submit.add_argument("--profile", default=None, help="apply a named profile from the config's `profiles:` section")
    submit.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a dotted config key (repeatable; passed on to `metadns run`/`tune`)")
    submit.add_argument("--nodes", type=int, default=1, help="Slurm nodes, one Ray node each (default 1)")
    submit.add_argument("--gpus-per-node", default="0", metavar="[TYPE:]COUNT",
                        help="GPUs per node, e.g. 4 or a100:4 (#SBATCH --gpus-per-node; Ray detects them; every node "
                             "checks CUDA before Ray starts); default 0")
    submit.add_argument("--cpus-per-node", type=int, default=None,
                        help="CPUs per node (default: whole nodes, --exclusive)")
    submit.add_argument("--mem", default=None, help="memory per node, e.g. 64G (default: the cluster's)")
    submit.add_argument("--time", default=None, help="time limit, e.g. 04:00:00 or 1-12:00:00 (default: partition's)")
    submit.add_argument("--partition", default=None, help="Slurm partition")
    submit.add_argument("--account", default=None, help="Slurm account")
    submit.add_argument("--job-name", default=None, help="job name (default metadns-<config name>)")
    submit.add_argument("--sbatch-arg", dest="sbatch_args", action="append", default=[], metavar="OPTION",
                        help="extra #SBATCH option, e.g. --sbatch-arg=--qos=long (repeatable)")
    submit_env = submit.add_mutually_exclusive_group()
    submit_env.add_argument("--venv", type=Path, default=None, help="virtual environment the job activates "
                            "(default: the one running this command)")
    submit_env.add_argument("--conda-env", default=None, help="conda environment (name or prefix) the job activates")
    submit_env.add_argument("--no-env", action="store_true", help="activate nothing: use the PATH sbatch passes on")
    submit.add_argument("--setup", action="append", default=[], metavar="LINE",
                        help="shell line the job runs before anything else, e.g. --setup 'module load cuda/12.4' "
                             "(repeatable, in order)")
    submit.add_argument("--ray-port", type=int, default=0,
                        help="first port of the job's block of Ray ports, the head's (GCS) port (default: derived "
                             "from the job id so that jobs sharing a node do not collide; cluster/README.md)")
    submit.add_argument("--head-ip", default=None, help="IPv4 address of the head node that the other nodes reach "
                        "(default: what the head's host name resolves to)")
    submit.add_argument("--ray-interface", default=None, metavar="IFACE",
                        help="take the head's address from this network interface of the head node, e.g. ib0")
    submit.add_argument("--loopback", action="store_true",
                        help="single-node jobs: Ray on 127.0.0.1 only (tests, development)")
    submit.add_argument("--signal-seconds", type=int, default=120,
                        help="requeue this many seconds before the time limit (default 120)")
    submit.add_argument("--startup-timeout", type=int, default=300, help="seconds to wait for Ray nodes (default 300)")
    submit.add_argument("--template", type=Path, default=None, help="batch script template "
                        "(default cluster/metadns_ray.sbatch.template)")
    submit.add_argument("--dry-run", action="store_true", help="print the batch script; write and submit nothing")
    submit.add_argument("--wait", action="store_true", help="wait for the job (sbatch --wait); exit 1 if it failed")
    tune = commands.add_parser("tune", help="Ray Tune sweep (ASHA) of the config keys in its `tune:` section")
    tune.set_defaults(handler=_tune)
    tune.add_argument("config", type=Path, help="YAML run configuration with a `tune:` section (optional)")
    tune.add_argument("--out", type=Path, default=Path("runs"), help="output root (default: runs/); "
                      "writes DIR/<name>/tune/{trials.parquet,history.parquet,best.yaml}")
    tune.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                      help="override a dotted config key, e.g. --set tune.num_samples=16 (repeatable)")
    tune.add_argument("--profile", default=None, help="apply a named profile from the config's `profiles:` section")
    tune.add_argument("--address", default=None,
                      help="Ray cluster to join, e.g. 10.0.0.1:6379 (default: $RAY_ADDRESS, else a local instance)")
    tune.add_argument("--resume", action="store_true", help="continue the sweep saved in DIR/<name>/tune/ (same "
                      "config) from its trials' last checkpoints")
    tune.add_argument("--quiet", action="store_true", help="no Tune progress output")
    report = commands.add_parser("report", help="dataset, summary table, plots and alloy phase diagram of finished runs")
    report.set_defaults(handler=_report)
    report.add_argument("dir", type=Path, help="folder searched (recursively) for finished run folders")
    report.add_argument("--quiet", action="store_true", help="no progress bar")
    export = commands.add_parser("export", help="an alloy run's sampled configurations as ASE structures "
                                                "(extxyz or ASE database)")
    export.set_defaults(handler=_export)
    export.add_argument("run_dir", type=Path, metavar="RUN_DIR",
                        help="a run folder of `metadns run` (OUT/<name>/<method>_<temperature tag>)")
    export.add_argument("--format", dest="fmt", metavar="FORMAT", default="extxyz",
                        help="extxyz (default) or db (ASE database)")
    export.add_argument("--n", type=int, default=100, help="number of structures (default 100)")
    export.add_argument("--select", default="weighted",
                        help="weighted (default: drawn with the run's normalised headline weights), lowest-energy "
                             "(distinct configurations) or first")
    export.add_argument("--out", type=Path, default=None,
                        help="file to write (default RUN_DIR/export/<select>.extxyz or .db)")
    export.add_argument("--seed", type=int, default=0, help="seed of the weighted draws (default 0)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command and return its exit code: the one place errors become exit codes."""
    args = _parser().parse_args(argv)
    try:
        return args.handler(args)
    except SetupError as error:  # bad input, found before anything was written
        print(f"metadns: error: {error}", file=sys.stderr)
        return 2
    except Exception:  # a failure during a run: report it in full
        traceback.print_exc()
        return 1


def _submit(args) -> int:
    from pipeline.distributed.submit import submit_command  # noqa: PLC0415 - renders and calls sbatch; never imports ray

    return submit_command(args)


def _tune(args) -> int:
    from pipeline.distributed.tune import tune_command  # noqa: PLC0415 - Ray is imported only when tuning

    return tune_command(args.config, args.out, args.overrides, args.profile, args.address, not args.quiet,
                        args.resume)


def _report(args) -> int:
    from pipeline.campaign_report import report_command  # noqa: PLC0415

    return report_command(args.dir, quiet=args.quiet)


def _export(args) -> int:
    from pipeline.export import export_command  # noqa: PLC0415 - torch and ASE on demand

    return export_command(args.run_dir, args.fmt, args.n, args.select, args.out, args.seed)


def _fit_ce(args) -> int:
    from systems.alloys.fitting import fit_cluster_expansion  # noqa: PLC0415 - icet/trainstation on demand

    with setup_errors(ValueError, FileNotFoundError):  # bad arguments: a species, a model file, a fit method
        report = fit_cluster_expansion(
            args.out, species=tuple(args.species), lattice_constant=args.lattice_constant, cutoffs=args.cutoffs,
            max_atoms=args.max_atoms, labeller=args.label, model=args.model,
            vegard_lattice_constants=tuple(args.vegard) if args.vegard else None, fit_method=args.fit_method,
            seed=args.seed, progress=not args.quiet)
    print(f"{report.n_structures} structures, {report.n_parameters} parameters "
          f"({report.n_nonzero_parameters} non-zero); RMSE cross-validation {report.rmse_validation_meV:.2f} meV/atom, "
          f"training {report.rmse_train_meV:.2f} meV/atom\nwritten to {report.path}")
    return 0


def _energy(args) -> int:
    from pipeline.config import load_config  # noqa: PLC0415
    from pipeline.outputs import provenance_metadata, system_units, write_parquet  # noqa: PLC0415
    from pipeline.build import build_system  # noqa: PLC0415 - torch
    from pipeline.structures import energy_table, read_frames  # noqa: PLC0415

    with setup_errors(FileNotFoundError):
        config = load_config(args.config, args.overrides)
        if not config.system.has_trait("structures"):
            raise ConfigError("system.name", f"`metadns energy` needs a system of atomic structures (an alloy), "
                                             f"got {config.system.name!r}")
        if args.out is not None and args.out.suffix != ".parquet":
            raise ConfigError("--out", f"must name a .parquet file, got {args.out}")
        system = build_system(config)
        table = energy_table(system, read_frames(args.files))
    print(table.to_string(index=False, float_format="{:.6f}".format))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        write_parquet(table, args.out, provenance_metadata(config.to_dict(), config.seed), system_units(system))
        print(f"written to {args.out}")
    return 0


def _run(args) -> int:
    from pipeline.config import grid_points, load_config  # noqa: PLC0415

    if args.address and args.executor == "inline":
        raise ConfigError("--address", "joins a Ray cluster, which only --executor ray uses; drop one of them")
    with setup_errors(FileNotFoundError):
        config = load_config(args.config, args.overrides, profile=args.profile)
    points = grid_points(config)
    if args.dry_run:
        _print_run_folders(points, Path(args.out))
        return 0
    from pipeline.progress_lines import ProgressLines, progress_every_s  # noqa: PLC0415

    # Batch jobs (--quiet) get a progress line every few minutes; a bad METADNS_PROGRESS_EVERY
    # is bad input (exit 2) found here, before any run starts.  The Ray executor's driver reads it too.
    lines = ProgressLines(progress_every_s()) if args.quiet else None

    from pipeline.campaign_report import make_report  # noqa: PLC0415 - torch from here on
    from pipeline.campaign import prepare_campaign  # noqa: PLC0415
    from pipeline.comparison import write_and_print_comparison  # noqa: PLC0415
    from pipeline.runner import run_campaign  # noqa: PLC0415

    # Inline runs train here, so this process must serve training.device; on Ray each actor
    # takes the device Ray gave it, and the executor refuses requests the cluster cannot meet.
    with setup_errors(FileNotFoundError):  # RunFolderExists is a SetupError already
        campaigns = [prepare_campaign(point_config, args.out, resume=args.resume, point=tag,
                                      check_device=args.executor == "inline")
                     for tag, point_config in points]
    progress = not args.quiet
    if args.executor == "inline":
        results = [run_campaign(campaign, progress=progress, lines=lines) for campaign in campaigns]
    else:  # a ConfigError here: the Ray cluster cannot fit the requested actors; nothing was written
        results = _run_on_ray(campaigns, args.address, progress=progress)
    for campaign, campaign_results in zip(campaigns, results):
        if campaign.point:
            print(f"\n== {campaign.point}")
        write_and_print_comparison(campaign, campaign_results)
    campaign_root = Path(args.out) / config.name
    report = make_report(campaign_root, progress=False)
    phase = "" if report.phase_diagram is None else f", phase diagram {campaign_root / 'phase_diagram.png'}"
    print(f"\ncampaign dataset {report.dataset}, summary {campaign_root / 'summary.parquet'}{phase} "
          f"(`metadns report {campaign_root}` prints them)")
    return 0


def _print_run_folders(points, out: Path) -> None:
    """One line per run folder a campaign would make: OUT/<name>/[<point>/]<method>_<temperature tag>
    (the layout of :func:`pipeline.campaign.prepare_campaign`)."""
    from pipeline.config import campaign_folder, expand_runs  # noqa: PLC0415

    for tag, config in points:
        root = campaign_folder(out, config.name, tag)
        for spec in expand_runs(config):
            print(root / spec.run_name)


def _run_on_ray(campaigns, address: str | None, progress: bool):
    from pipeline.distributed.executor import run_campaigns_on_ray  # noqa: PLC0415 - ray only when used
    from pipeline.distributed.session import ray_session  # noqa: PLC0415

    with ray_session(address):
        return run_campaigns_on_ray(campaigns, progress=progress)


if __name__ == "__main__":
    sys.exit(main())
