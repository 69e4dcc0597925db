"""Training progress of runs in trainer actors, shown as bars by the driver.

Trainer actors report (fire and forget) to one :class:`ProgressBoard` actor; the driver polls
it while it waits for runs and draws one tqdm bar per training run.
"""

from __future__ import annotations

import ray
from tqdm.auto import tqdm


@ray.remote(num_cpus=0)
class ProgressBoard:
    """Latest progress of each run: run name → (start iteration, iteration, total, postfix)."""

    def __init__(self):
        self._runs: dict[str, tuple[int, int, int, str]] = {}

    def report(self, run: str, iteration: int, total: int, postfix: str) -> None:
        start = self._runs[run][0] if run in self._runs else iteration
        self._runs[run] = (start, iteration, total, postfix)

    def snapshot(self) -> dict[str, tuple[int, int, int, str]]:
        return dict(self._runs)


def reporter(board, run: str):
    """The runner's ``report_progress`` hook for one run: sends the trainer's state to ``board``."""

    def report(trainer) -> None:
        postfix = ""
        if trainer.history:
            r = trainer.history[-1]
            postfix = (f"loss={r.loss:.3g}, ess={r.ess_fraction:.2f}, maxV_kT={r.max_bias_kT:.2f}, "
                       f"coverage={r.cv_coverage:.2f}")
        board.report.remote(run, trainer.iteration, trainer.total_iterations, postfix)

    return report


class ProgressBars:
    """Driver-side bars mirroring a ProgressBoard snapshot (one bar per training run)."""

    def __init__(self, enabled: bool):
        self._enabled = enabled
        self._bars: dict[str, tqdm] = {}

    def update(self, snapshot: dict[str, tuple[int, int, int, str]]) -> None:
        if not self._enabled:
            return
        for run, (start, iteration, total, postfix) in snapshot.items():
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
