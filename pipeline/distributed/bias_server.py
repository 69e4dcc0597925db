"""The bias-server actor that owns a run's V(s), and the client trainers deposit through."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import ray
import torch

from pipeline.bias import WellTemperedGridBias
from pipeline.distributed.session import on_this_node
from pipeline.outputs import atomic_write_bytes


@ray.remote(num_cpus=0)
class BiasServer:
    """Owns one WellTemperedGridBias.  Deposits are applied one call at a time in arrival
    order (each call's hills read the same snapshot of V, as in ``deposit``); every change
    bumps ``version``.  Several walkers may deposit concurrently (multiple-walker MetaDNS)."""

    def __init__(self, state: dict):
        self._bias = WellTemperedGridBias.from_state_dict(state)
        self._version = 0
        self._hills_by_walker: dict[int, int] = {}

    def deposit(self, walker: int, s: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
        """One hill per row of s (B, dim) → (version, heights (B,), V after deposition)."""
        heights = self._bias.deposit(s)
        self._version += 1
        self._hills_by_walker[walker] = self._hills_by_walker.get(walker, 0) + len(heights)
        return self._version, heights, self._bias.values

    def load(self, state: dict) -> int:
        """Replace the bias state (resuming a run); returns the new version."""
        self._bias.load_state_dict(state)
        self._version += 1
        return self._version

    def hills_by_walker(self) -> dict[int, int]:
        return dict(self._hills_by_walker)

    def checkpoint(self, path: str) -> int:
        """Write {version, state} to ``path`` atomically (torch.save); returns the version."""
        buffer = io.BytesIO()
        torch.save({"version": self._version, "bias": self._bias.state_dict()}, buffer)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(Path(path), buffer.getvalue())
        return self._version


class BiasClient:
    """What a trainer holds instead of a WellTemperedGridBias when a BiasServer owns V.

    Deposits go to the server; reads use a local mirror that takes the server's V after each
    of this walker's deposits and logs this walker's hills.  With one walker the mirror equals
    the server's bias exactly, so a run gives the same numbers as with a local bias.
    """

    def __init__(self, server, mirror: WellTemperedGridBias, walker: int = 0):
        self.server = server
        self.walker = walker
        self._mirror = mirror

    @classmethod
    def start(cls, bias: WellTemperedGridBias, walker: int = 0) -> "BiasClient":
        """Start a BiasServer holding ``bias``'s state, on the caller's node (it shares the
        trainer's fate: a run lost with its node is retried with a new server), and return a
        client of it."""
        server = BiasServer.options(scheduling_strategy=on_this_node()).remote(bias.state_dict())
        return cls(server, bias.copy(), walker)

    def deposit(self, s) -> np.ndarray:
        _, heights, values = ray.get(self.server.deposit.remote(self.walker, np.asarray(s, dtype=np.float64)))
        self._mirror.record_deposit(s, heights, values)
        return heights

    def value(self, s) -> np.ndarray:
        return self._mirror.value(s)

    def free_energy(self) -> np.ndarray:
        return self._mirror.free_energy()

    def write_hills(self, path, cv_names=None) -> None:
        self._mirror.write_hills(path, cv_names)

    def state_dict(self) -> dict:
        return self._mirror.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self._mirror.load_state_dict(state)
        ray.get(self.server.load.remote(state))

    def checkpoint(self, path) -> int:
        return ray.get(self.server.checkpoint.remote(str(path)))

    @property
    def values(self) -> np.ndarray:
        return self._mirror.values

    @property
    def n_hills(self) -> int:
        return self._mirror.n_hills

    @property
    def axes(self) -> list[np.ndarray]:
        return self._mirror.axes

    @property
    def dim(self) -> int:
        return self._mirror.dim
