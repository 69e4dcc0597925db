"""The sampler protocol: what the dual-loop trainer, the runner and the walkers need of a
sampler family, and nothing more (docs/method.md §4).

A sampler family is a ``torch.nn.Module`` over configurations x ∈ {0..q−1}^D with

* ``sample(n, generator, batch_size=None) -> SampleBatch``: n fresh samples, the orders
  that generated them (``None`` when the family has an exact q(x) and no random order) and
  their exact log-likelihoods log q(x | order) in nats;
* ``random_order(n, generator)``: n orders drawn from the family's order distribution u(σ),
  independently of any x (an MCMC move that redraws σ), or ``None`` for exact-q(x) families;
* ``log_prob(x, order, batch_size=None)``: float64 (n,), equal to the ``log_q`` that
  ``sample`` returned for the same (x, order) (``order`` is ignored, and may be None, for
  families with an exact q(x));
* ``loss_backward(x, log_weights, log_q, generator) -> float | Tensor``: one training
  step's loss for the training target, its gradient accumulated into ``.grad``; a 0-dim
  tensor may stay on the device (the trainer converts the iteration's sum once);
* ``state_dict`` / ``load_state_dict`` (torch's), ``n_sites``, ``n_states`` and ``device``.

``loss_backward`` receives ``log_weights`` = log π̃(x) − log q_gen(x) (float64 (B,),
unnormalised self-normalised importance weights of the training target under the sampler
that generated x) and ``log_q`` = log q_gen(x) (float64 (B,)), so a family can use either a
weighted forward KL (weights only) or an on-policy reverse KL (needs log π̃ = log_weights +
log_q). All randomness comes from the ``torch.Generator`` passed in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numbers

import torch

__all__ = ["SampleBatch", "Sampler", "batch_on_cpu", "check_count", "check_batch_size", "check_generator",
           "check_states"]


@dataclass
class SampleBatch:
    """Samples with the orders that generated them and their exact log-likelihoods.

    x: int64 ``(n, D)`` states in {0..q−1}.  order: int64 ``(n, D)`` step index per site, or
    None for samplers with an exact q(x).  log_q: float64 ``(n,)`` log q(x | order) in nats.
    Unpacks as ``x, order, log_q = batch``.
    """

    x: torch.Tensor
    order: torch.Tensor | None
    log_q: torch.Tensor

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def __iter__(self):
        return iter((self.x, self.order, self.log_q))


def batch_on_cpu(batch: SampleBatch) -> SampleBatch:
    """The batch with its tensors on the CPU (energies, CVs and weights are computed there)."""
    order = batch.order.cpu() if batch.order is not None else None
    return SampleBatch(batch.x.cpu(), order, batch.log_q.cpu())


@runtime_checkable
class Sampler(Protocol):
    """Structural type of a sampler family (see the module docstring)."""

    n_sites: int
    n_states: int

    @property
    def device(self) -> torch.device: ...

    def sample(self, n: int, generator: torch.Generator, batch_size: int | None = None) -> SampleBatch: ...

    def random_order(self, n: int, generator: torch.Generator) -> torch.Tensor | None: ...

    def log_prob(self, x: torch.Tensor, order: torch.Tensor | None,
                 batch_size: int | None = None) -> torch.Tensor: ...

    def loss_backward(self, x: torch.Tensor, log_weights: torch.Tensor, log_q: torch.Tensor,
                      generator: torch.Generator) -> float | torch.Tensor: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict): ...


# Argument checks shared by the sampler families (each raises ValueError naming the argument).
def check_count(n) -> int:
    """``n`` as a positive int (a number of samples)."""
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
        raise ValueError(f"n must be a positive integer number of samples, got {n!r}")
    return int(n)


def check_batch_size(batch_size, default: int) -> int:
    """``batch_size`` as a positive int, ``default`` for None."""
    if batch_size is None:
        return default
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer or None, got {batch_size!r}")
    return int(batch_size)


def check_generator(generator) -> None:
    """Refuse anything but a ``torch.Generator`` (all randomness comes from it)."""
    if not isinstance(generator, torch.Generator):
        raise ValueError("generator must be a torch.Generator, e.g. torch.Generator().manual_seed(0), "
                         f"got {type(generator).__name__}")


def check_states(x, n_sites: int, n_states: int) -> torch.Tensor:
    """``x`` as int64 ``(n, n_sites)`` with states in [0, n_states − 1]."""
    if not isinstance(x, torch.Tensor) or x.dim() != 2 or x.shape[1] != n_sites:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x must be an int64 tensor of shape (n, {n_sites}), got {shape}")
    if x.dtype.is_floating_point or x.dtype == torch.bool:
        raise ValueError(f"x must hold integer states in [0, {n_states - 1}], got dtype {x.dtype}")
    if x.numel() and (int(x.min()) < 0 or int(x.max()) >= n_states):
        raise ValueError(f"x must hold states in [0, {n_states - 1}] (a mask token is not a valid state), "
                         f"got values in [{int(x.min())}, {int(x.max())}]")
    return x.to(torch.int64)
