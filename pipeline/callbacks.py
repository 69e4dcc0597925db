"""Callbacks of the training loop (pipeline.training.train): each is called as
``callback(trainer)`` after every outer iteration and may return False to stop training.

They hold a run's bookkeeping so that one loop serves ``metadns run``, walkers and Tune
trials alike.
"""

from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from pipeline.estimators import fes_rmse
from pipeline.outputs import atomic_write_bytes

__all__ = ["Checkpoint", "FesRmseHistory", "EveryIteration"]


class Checkpoint:
    """Write the trainer's state to ``path`` (atomically) every ``every`` outer iterations
    and after the last one."""

    def __init__(self, path: Path, every: int):
        self.path = Path(path)
        self.every = int(every)

    def __call__(self, trainer) -> None:
        if trainer.iteration % self.every == 0 or trainer.finished:
            buffer = io.BytesIO()
            torch.save(trainer.state_dict(), buffer)
            self.path.parent.mkdir(exist_ok=True)
            atomic_write_bytes(self.path, buffer.getvalue())


class FesRmseHistory:
    """Cost to accuracy: the RMSE (k_BT) of the bias's F against a reference F (on the bias
    grid, NaN where unknown) after every deposition, stored in the iteration's record."""

    def __init__(self, bias, reference_fes_kT: np.ndarray):
        self.bias = bias
        self.reference_fes_kT = reference_fes_kT

    def __call__(self, trainer) -> None:
        rmse = fes_rmse(self.bias.free_energy(), self.reference_fes_kT)[0]
        trainer.history[-1] = replace(trainer.history[-1], fes_rmse_kT=rmse)


class EveryIteration:
    """Call ``report(trainer)`` after every outer iteration (e.g. a driver's progress bars)."""

    def __init__(self, report):
        self.report = report

    def __call__(self, trainer) -> None:
        self.report(trainer)
