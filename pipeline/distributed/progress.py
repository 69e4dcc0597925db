"""Training progress of runs in trainer actors, shown by the driver.

Trainer actors report (fire and forget) to one :class:`ProgressBoard` actor; the driver polls
it while it waits for runs and draws one tqdm bar per training run, or without bars
(``--quiet``) prints a line per run every few minutes (pipeline.progress_lines).
"""

from __future__ import annotations

import ray
from tqdm.auto import tqdm

from pipeline.progress_lines import ProgressLines, RunProgress, progress_every_s


@ray.remote(num_cpus=0)
class ProgressBoard:
    """Latest progress of each run: run name → (start iteration, iteration, total, postfix,
    RunProgress or None before its first iteration)."""

    def __init__(self):
        self._runs: dict[str, tuple[int, int, int, str, RunProgress | None]] = {}

    def report(self, run: str, iteration: int, total: int, postfix: str, progress: RunProgress | None = None) -> None:
        start = self._runs[run][0] if run in self._runs else iteration
        self._runs[run] = (start, iteration, total, postfix, progress)

    def snapshot(self) -> dict[str, tuple[int, int, int, str, RunProgress | None]]:
        return dict(self._runs)


def reporter(board, run: str):
    """The runner's ``report_progress`` hook for one run: sends the trainer's state to ``board``."""

    def report(trainer) -> None:
        postfix = ""
        if trainer.history:
            r = trainer.history[-1]
            postfix = (f"loss={r.loss:.3g}, ess={r.ess_fraction:.2f}, maxV_kT={r.max_bias_kT:.2f}, "
                       f"coverage={r.cv_coverage:.2f}")
        board.report.remote(run, trainer.iteration, trainer.total_iterations, postfix, RunProgress.of(trainer))

    return report


class ProgressBars:
    """Driver-side view of a ProgressBoard snapshot: one bar per training run when ``enabled``,
    otherwise one line per advanced run every ``METADNS_PROGRESS_EVERY`` minutes (``lines``
    overrides that printer)."""

    def __init__(self, enabled: bool, lines: ProgressLines | None = None):
        self._enabled = enabled
        self._bars: dict[str, tqdm] = {}
        self._lines = None if enabled else lines or ProgressLines(progress_every_s())

    def update(self, snapshot: dict[str, tuple[int, int, int, str, RunProgress | None]]) -> None:
        if self._lines is not None:
            self._lines.update({run: state[4] for run, state in snapshot.items() if state[4] is not None})
            return
        for run, (start, iteration, total, postfix, _) in snapshot.items():
            bar = self._bars.get(run)
            if bar is None:
                bar = self._bars[run] = tqdm(total=total, initial=start, desc=f"{run}: outer iteration",
                                             position=len(self._bars) + 1, dynamic_ncols=True)
            if iteration != bar.n:
                bar.update(iteration - bar.n)
                bar.set_postfix_str(postfix, refresh=False)

    def close(self) -> None:
        for bar in self._bars.values():
            bar.close()
