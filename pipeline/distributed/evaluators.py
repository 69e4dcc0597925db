"""Energy-evaluator actors and the pool that serves trainers' energy requests.

Each :class:`EnergyEvaluator` builds the configured system — and so its energy backend — in
its own process from the validated config (icet objects cannot be pickled; MACE models are
large).  One :class:`EvaluatorPool` actor per campaign sits in front of them: it splits large
requests across evaluators, coalesces concurrent requests (several trainers) into one call of
at most ``max_batch`` configurations, keeps at most ``max_in_flight`` calls queued per
evaluator (callers wait beyond that: back-pressure).  A dead evaluator is restarted by Ray
and the calls it held are retried (by Ray, and by the pool on the next evaluator should a
call fail anyway), for up to ``retry_timeout_s`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import time
from dataclasses import dataclass

import numpy as np
import ray
import torch
from ray.exceptions import ActorUnavailableError, RayActorError

from pipeline.config import config_from_dict
from pipeline.build import build_system
from pipeline.devices import keep_freed_host_memory

MIN_CHUNK = 32
"""Smallest piece a request is split into for parallel evaluation (configurations)."""
RETRY_DELAY_S = 0.2
"""First pause before a failed call is retried; pauses grow linearly up to 10× this."""


@ray.remote(max_restarts=-1, max_task_retries=-1)
class EnergyEvaluator:
    """Evaluates energies of the configured system in its own process."""

    def __init__(self, config_dict: dict, threads: int = 1):
        torch.set_num_threads(threads)
        keep_freed_host_memory()
        self._system = build_system(config_from_dict(config_dict))  # a CUDA backend needs the GPU Ray gave

    def energy(self, x: np.ndarray) -> np.ndarray:
        """x integer (B, D) site states → float64 (B,) energies in the system's energy unit."""
        return self._system.energy(torch.tensor(x, dtype=torch.int64)).numpy()

    def pid(self) -> int:
        return os.getpid()


@dataclass
class _Chunk:
    x: np.ndarray
    future: asyncio.Future
    request: int


@ray.remote(num_cpus=0)
class EvaluatorPool:
    """Serves ``energy(x)`` requests with ``size`` EnergyEvaluator actors (see module doc)."""

    def __init__(self, config_dict: dict, size: int, cpus_per_evaluator: float, max_batch: int,
                 max_in_flight: int, retry_timeout_s: float = 300.0, gpus_per_evaluator: float = 0.0):
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        threads = max(1, int(cpus_per_evaluator))
        self._evaluators = [EnergyEvaluator.options(num_cpus=cpus_per_evaluator, num_gpus=gpus_per_evaluator)
                            .remote(config_dict, threads) for _ in range(size)]
        self._max_batch = max_batch
        self._retry_timeout_s = retry_timeout_s
        self._in_flight = [0] * size
        self._capacity = asyncio.Semaphore(size * max_in_flight)
        self._queue: asyncio.Queue[_Chunk] = asyncio.Queue(maxsize=4 * size * max_in_flight)
        self._dispatcher: asyncio.Task | None = None
        self._stats = {"requests": 0, "configurations": 0, "calls": 0, "coalesced_calls": 0, "retries": 0}

    async def energy(self, x: np.ndarray) -> np.ndarray:
        """x integer (B, D) → float64 (B,); waits while the pool is saturated."""
        if self._dispatcher is None:
            self._dispatcher = asyncio.get_running_loop().create_task(self._dispatch())
        self._stats["requests"] += 1
        self._stats["configurations"] += len(x)
        request = self._stats["requests"]
        loop = asyncio.get_running_loop()
        futures = []
        for piece in np.array_split(x, self._n_chunks(len(x))):
            future = loop.create_future()
            await self._queue.put(_Chunk(piece, future, request))
            futures.append(future)
        return np.concatenate(await asyncio.gather(*futures)) if futures else np.zeros(0)

    def _n_chunks(self, n: int) -> int:
        """Enough chunks to respect max_batch, and to use every evaluator on large requests."""
        if n == 0:
            return 0
        return max(math.ceil(n / self._max_batch), min(len(self._evaluators), math.ceil(n / MIN_CHUNK)))

    async def _dispatch(self) -> None:
        carried: _Chunk | None = None
        while True:
            chunks = [carried if carried is not None else await self._queue.get()]
            carried = None
            await self._capacity.acquire()
            # While callers waited for capacity, chunks of other requests may have queued:
            # serve them together (chunks of one request stay apart, on parallel evaluators).
            size = len(chunks[0].x)
            while not self._queue.empty():
                chunk = self._queue.get_nowait()
                if size + len(chunk.x) > self._max_batch or any(c.request == chunk.request for c in chunks):
                    carried = chunk
                    break
                chunks.append(chunk)
                size += len(chunk.x)
            index = int(np.argmin(self._in_flight))
            self._in_flight[index] += 1
            asyncio.get_running_loop().create_task(self._call(index, chunks))

    async def _call(self, index: int, chunks: list[_Chunk]) -> None:
        self._stats["calls"] += 1
        self._stats["coalesced_calls"] += len(chunks) > 1
        x = np.concatenate([c.x for c in chunks])
        try:
            energies = await self._evaluate(index, x)
        except Exception as error:  # noqa: BLE001 - handed to every waiting caller
            for chunk in chunks:
                chunk.future.set_exception(error)
        else:
            start = 0
            for chunk in chunks:
                chunk.future.set_result(energies[start:start + len(chunk.x)])
                start += len(chunk.x)
        finally:
            self._in_flight[index] -= 1
            self._capacity.release()

    async def _evaluate(self, index: int, x: np.ndarray) -> np.ndarray:
        """One call, retried on the next evaluator while actors are dead or restarting (an
        actor restart imports torch and rebuilds the backend: seconds on a busy machine)."""
        deadline = time.monotonic() + self._retry_timeout_s
        attempt = 0
        while True:
            evaluator = self._evaluators[(index + attempt) % len(self._evaluators)]
            try:
                return await evaluator.energy.remote(x)
            except (RayActorError, ActorUnavailableError):
                if time.monotonic() > deadline:
                    raise
                attempt += 1
                self._stats["retries"] += 1
                await asyncio.sleep(RETRY_DELAY_S * min(attempt, 10))

    async def close(self) -> None:
        """Stop the dispatcher (before the pool is killed, so no task is left pending)."""
        if self._dispatcher is not None:
            self._dispatcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._dispatcher
            self._dispatcher = None

    def stats(self) -> dict:
        """Counters: requests, configurations, evaluator calls, coalesced calls, retries."""
        return dict(self._stats)

    def evaluators(self) -> list:
        """Handles of the evaluator actors (for monitoring and fault-injection tests)."""
        return list(self._evaluators)


class PoolEnergy:
    """The trainer's energy function backed by an EvaluatorPool: x int64 (B, D) → float64 (B,)."""

    def __init__(self, pool):
        self.pool = pool

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        states = x.to(torch.int8).cpu().numpy()
        return torch.from_numpy(np.array(ray.get(self.pool.energy.remote(states)), dtype=np.float64))
