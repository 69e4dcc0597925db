"""One-line training progress for batch jobs, where progress bars are of no use.

With ``metadns run --quiet`` (as in the Slurm job of ``metadns submit``) the process that
drives the runs prints, every ``METADNS_PROGRESS_EVERY`` minutes (default 5; 0: never), one
line for each training run that advanced since the previous print::

    [progress] mdns_beta0.6000: outer iteration 40/200, ESS/n 0.53, max V 3.21 kT, elapsed 0:04:51

"elapsed" is the run's training wall time, added up over resumes (``IterationRecord.wall_time_s``).
Only trained methods report progress; reference chains (sw, metropolis, ...) print nothing.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from pipeline.errors import ConfigError

__all__ = ["ENV_VAR", "DEFAULT_MINUTES", "RunProgress", "ProgressLines", "progress_every_s"]

ENV_VAR = "METADNS_PROGRESS_EVERY"
DEFAULT_MINUTES = 5.0


@dataclass(frozen=True)
class RunProgress:
    """Where one training run stands after its latest outer iteration."""

    iteration: int
    total: int
    ess_fraction: float
    max_bias_kT: float
    elapsed_s: float

    @classmethod
    def of(cls, trainer) -> RunProgress | None:
        """The trainer's latest iteration record (None before its first iteration)."""
        if not trainer.history:
            return None
        record = trainer.history[-1]
        return cls(trainer.iteration, trainer.total_iterations, record.ess_fraction, record.max_bias_kT,
                   record.wall_time_s)


def progress_every_s(environ: Mapping[str, str] = os.environ) -> float:
    """Seconds between progress lines from ``METADNS_PROGRESS_EVERY`` (minutes; unset or
    empty: 5 minutes; 0: no lines).  Raises ConfigError naming the variable for a value that
    is not a number of minutes ≥ 0."""
    raw = environ.get(ENV_VAR, "").strip()
    if not raw:
        return DEFAULT_MINUTES * 60.0
    try:
        minutes = float(raw)
    except ValueError:
        minutes = math.nan
    if not (math.isfinite(minutes) and minutes >= 0):
        raise ConfigError(ENV_VAR, f"must be the minutes between progress lines, a number ≥ 0 (0 turns them off), "
                                   f"got {raw!r}; e.g. export {ENV_VAR}=10")
    return minutes * 60.0


def _clock_text(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


class ProgressLines:
    """Print one line per advanced run at most every ``every_s`` seconds (0: never).

    ``update(runs)`` is called as often as convenient (after every outer iteration, or each
    time a driver polls its runs) with the latest :class:`RunProgress` of each run; the first
    lines come ``every_s`` after construction.  ``clock`` (seconds, monotonic) and ``emit``
    (one line) are injectable for tests.
    """

    def __init__(self, every_s: float, clock: Callable[[], float] = time.monotonic,
                 emit: Callable[[str], None] = lambda line: print(line, flush=True)):
        self.every_s = float(every_s)
        self._clock = clock
        self._emit = emit
        self._due = clock() + self.every_s
        self._printed: dict[str, int] = {}   # run → outer iteration of its last line

    def update(self, runs: Mapping[str, RunProgress]) -> None:
        if self.every_s <= 0:
            return
        now = self._clock()
        if now < self._due:
            return
        self._due = now + self.every_s
        for run, progress in runs.items():
            if self._printed.get(run) != progress.iteration:
                self._printed[run] = progress.iteration
                self._emit(f"[progress] {run}: outer iteration {progress.iteration}/{progress.total}, "
                           f"ESS/n {progress.ess_fraction:.2f}, max V {progress.max_bias_kT:.2f} kT, "
                           f"elapsed {_clock_text(progress.elapsed_s)}")

    def reporter(self, run: str) -> Callable[[object], None]:
        """A training-loop hook (``RunServices.report_progress``) feeding this printer from one
        run's trainer."""

        def report(trainer) -> None:
            progress = RunProgress.of(trainer)
            if progress is not None:
                self.update({run: progress})

        return report
