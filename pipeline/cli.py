"""The ``metadns`` command line. Only this module parses arguments.

    metadns run CONFIG.yaml [--profile NAME] [--out DIR] [--set key=value ...] [--resume] [--quiet]

Exit codes: 0 success; 2 invalid configuration or an existing run folder without
``--resume`` (nothing is written in either case); 1 a failure during a run.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from pathlib import Path

from pipeline.config import ConfigError, load_config
from pipeline.runner import RunFolderExists, prepare_campaign, print_comparison, run_campaign


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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "run":
        return _run(args)
    return 2


def _run(args) -> int:
    try:
        config = load_config(args.config, args.overrides, profile=args.profile)
        campaign = prepare_campaign(config, args.out, resume=args.resume)
    except (ConfigError, RunFolderExists, FileNotFoundError) as error:
        print(f"metadns: error: {error}", file=sys.stderr)
        return 2
    try:
        results = run_campaign(campaign, progress=not args.quiet)
        print_comparison(campaign, results)
    except Exception:  # a failure during a run: report it in full, exit 1
        traceback.print_exc()
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
