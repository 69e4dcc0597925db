"""Campaigns: all runs of one config (one grid point of it), validated before anything is
written, and the resume policy for run folders that exist already."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from pipeline.build import check_buildable, derive_seed, restrict_to_run
from pipeline.config import Config, ConfigError, RunSpec, campaign_folder, config_from_dict, expand_runs
from pipeline.errors import SetupError
from pipeline.registry import METHODS

__all__ = ["Campaign", "RunFolderExists", "prepare_campaign", "resume_change", "EXTENDABLE_SETTINGS",
           "UNBIASED_REFERENCES"]

UNBIASED_REFERENCES = METHODS.with_trait("unbiased_reference")   # preferred reference for comparisons, in order


class RunFolderExists(SetupError):
    """A run folder exists and --resume was not given, or it cannot be resumed with these settings."""


@dataclass
class Campaign:
    """All runs of one config (one grid point of it), in execution order (unbiased
    references first).  ``point`` is the grid-point tag ("" without a grid)."""

    config: Config
    root: Path
    runs: list[RunSpec]
    resume: bool
    point: str = ""
    extended: frozenset[str] = frozenset()   # finished runs to continue with a larger budget

    def seed_of(self, spec: RunSpec) -> int:
        """The run's seed: derived from the config seed, the grid point and the run name."""
        return derive_seed(self.config.seed, f"{self.point}/{spec.run_name}" if self.point else spec.run_name)

    def previous_temperature(self, spec: RunSpec) -> RunSpec | None:
        """The run of the same method at the preceding temperature of the config's list."""
        ladder = [r for r in expand_runs(self.config) if r.method == spec.method]
        index = next(i for i, r in enumerate(ladder) if r.run_name == spec.run_name)
        return ladder[index - 1] if index > 0 else None


def prepare_campaign(config: Config, out_root: Path, resume: bool, point: str = "",
                     check_device: bool = True) -> Campaign:
    """Validate everything that can be checked before any file is written.

    Runs go to ``out_root/<config name>/[<point>/]<run name>``.  With ``resume``, an existing
    run folder must have been made with the same settings (its config.yaml equals this run's
    resolved config); otherwise RunFolderExists.  ``check_device``: see check_buildable.
    """
    check_buildable(config, check_device=check_device)
    runs = expand_runs(config)
    root = campaign_folder(out_root, config.name, point)
    existing = [spec for spec in runs if (root / spec.run_name).exists()]
    if existing and not resume:
        raise RunFolderExists(f"run folder(s) {', '.join(s.run_name for s in existing)} already exist under "
                              f"{root}; pass --resume to continue them or choose another --out")
    extended = set()
    for spec in existing:
        saved = root / spec.run_name / "config.yaml"
        if not saved.exists():
            continue
        change = resume_change(yaml.safe_load(saved.read_text()), restrict_to_run(config, spec), spec.method)
        if change == "different":
            raise RunFolderExists(f"cannot resume {root / spec.run_name}: it was made with other settings "
                                  f"(compare its config.yaml); use another --out or the original settings")
        if change == "shorter":
            raise RunFolderExists(f"cannot resume {root / spec.run_name} with fewer training.outer_iterations "
                                  "than it was made with (compare its config.yaml); a budget can only grow")
        if change == "extend":
            extended.add(spec.run_name)
    priority = {m: i for i, m in enumerate(UNBIASED_REFERENCES)}
    runs.sort(key=lambda r: priority.get(r.method, len(priority)))
    return Campaign(config, root, runs, resume, point, frozenset(extended))


# Settings a finished trained run can be continued with: more training iterations (from its
# last checkpoint, as if it had been given the larger budget from the start) or another number
# of final samples (drawn again from the same trained sampler).  Reference runs ignore both.
EXTENDABLE_SETTINGS = (("training", "outer_iterations"), ("sampling", "n_samples"))


def resume_change(saved: dict, wanted: dict, method: str) -> str:
    """How the settings ``wanted`` for a run relate to those its folder was made with:
    "same", "extend" (only EXTENDABLE_SETTINGS differ and the budget does not shrink),
    "shorter" (fewer outer iterations, nothing else changed) or "different".  The saved
    config is read through the current schema, so keys added since (at their defaults) do not
    block a resume; how a run is laid onto Ray actors (``distributed``) does not change results."""
    try:
        saved = config_from_dict(saved).to_dict()
    except ConfigError:
        return "different"
    saved.pop("distributed", None)
    wanted = {k: dict(v) if isinstance(v, dict) else v for k, v in wanted.items() if k != "distributed"}
    trained = METHODS[method].traits["trained"]
    shorter = trained and wanted["training"]["outer_iterations"] < saved["training"]["outer_iterations"]
    differs = False
    for section, key in EXTENDABLE_SETTINGS:
        differs |= wanted[section][key] != saved[section][key]
        wanted[section][key] = saved[section][key]
    if wanted != saved:
        return "different"
    if shorter:
        return "shorter"
    return "extend" if differs and trained else "same"
