"""MDNS generation loop and exact path likelihood (docs/method.md §4).

An any-order autoregressive sampler over x ∈ {0..q−1}^D.  Generation starts all-MASK,
draws a random order σ independently of x — a uniformly random permutation of the sites
cut into consecutive groups ("steps") — and at each step reveals the step's sites, each
drawn from its own conditional p_θ(x_d | revealed context).  The order is stored as

    order[b, d] = index of the step at which site d of sample b is revealed

(steps 0..T−1; a valid order uses every step index from 0 to its maximum, so it encodes
both the permutation up to within-step order and the grouping).  The path log-likelihood

    log q(x | σ) = Σ_t Σ_{d: order[d] = t} log p_θ(x_d | x_{order < t})

is exact for the actual generation process, so π(x)/q(x|σ) is a valid importance weight
on (x, σ).  ``log_prob`` replays the same steps and reproduces ``log_q`` for the order that
generated x; re-scoring with a fresh order is fine for training targets but not for weights.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import numbers
from collections.abc import Sequence

import torch
from torch import nn

from pipeline.config import WDCE_PRECISIONS
from pipeline.estimators import normalized_weights
from pipeline.sampler.base import SampleBatch, check_batch_size, check_count, check_generator, check_states
from pipeline.sampler.denoisers import build_denoiser
from pipeline.sampler.wdce import wdce_backward
from systems.parameters import ParameterError

__all__ = ["MaskedDiffusionSampler", "group_sizes", "cosine_group_sizes", "SCHEDULES"]

_CPU_ROWS_PER_CHUNK = 1 << 14   # B·D per network call on CPU: keeps activations cache-sized
_ACCELERATOR_ROWS_PER_CHUNK = 1 << 21


SCHEDULES = ("uniform", "cosine")
"""Reveal schedules for an integer k: equal groups of k, or cosine groups over ⌈D/k⌉ steps."""


def group_sizes(n_sites: int, sites_per_step, schedule: str = "uniform") -> tuple[int, ...]:
    """Number of sites revealed at each step.

    sites_per_step: an int k, or a sequence of positive group sizes summing to D (used as
    given).  For an int k, schedule "uniform" gives groups of k (the last one smaller when
    D % k ≠ 0); "cosine" keeps the same number of steps ⌈D/k⌉ but reveals few sites first
    and many last (``cosine_group_sizes``), which helps a lot in ordered phases, where the
    first sites drawn independently from an empty context would disagree on the mode.
    """
    if schedule not in SCHEDULES:
        raise ParameterError("schedule", f"must be one of {SCHEDULES}, got {schedule!r}")
    if isinstance(sites_per_step, numbers.Integral) and not isinstance(sites_per_step, bool):
        k = int(sites_per_step)
        if not 1 <= k <= n_sites:
            raise ParameterError("sites_per_step", f"must be an integer in [1, n_sites={n_sites}], got {k}")
        if schedule == "cosine":
            return cosine_group_sizes(n_sites, -(-n_sites // k))
        return (k,) * (n_sites // k) + ((n_sites % k,) if n_sites % k else ())
    if isinstance(sites_per_step, (Sequence, torch.Tensor)) and not isinstance(sites_per_step, str):
        sizes = tuple(int(s) for s in sites_per_step)
        if len(sizes) == 0 or min(sizes) < 1 or sum(sizes) != n_sites:
            raise ParameterError("sites_per_step", f"as a sequence must hold positive group sizes summing to "
                                                   f"n_sites={n_sites}, got {sizes}")
        return sizes
    raise ParameterError("sites_per_step", f"must be an int k or a sequence of group sizes summing to n_sites, "
                                           f"got {sites_per_step!r}")


def cosine_group_sizes(n_sites: int, n_steps: int) -> tuple[int, ...]:
    """Group sizes for ``n_steps`` steps with a cosine reveal schedule (few sites first).

    After step t (1-based) about D·(1 − cos(π t / 2T)) sites are revealed; every step reveals
    at least one site.  Early steps (little context, strongest correlations) stay small.
    """
    if isinstance(n_steps, bool) or not isinstance(n_steps, numbers.Integral) or not 1 <= n_steps <= n_sites:
        raise ValueError(f"n_steps must be an integer in [1, n_sites={n_sites}], got {n_steps!r}")
    revealed = [0]
    for t in range(1, n_steps + 1):  # loop over steps only
        target = round(n_sites * (1.0 - math.cos(0.5 * math.pi * t / n_steps)))
        target = max(target, revealed[-1] + 1)            # each step reveals ≥ 1 site
        target = min(target, n_sites - (n_steps - t))     # leave ≥ 1 site per later step
        revealed.append(target)
    return tuple(b - a for a, b in zip(revealed[:-1], revealed[1:]))


class MaskedDiffusionSampler(nn.Module):
    """Masked-diffusion neural sampler: a denoiser plus the generic unmasking loop.

    Args:
        denoiser: nn.Module, ``tokens (B, D) int64 in {0..q} (q = MASK) -> log-probs (B, D, q)``.
        n_sites: D.  n_states: q (the MASK token is q).
        sites_per_step: k sites revealed per step (⌈D/k⌉ network calls per batch), or a
            sequence of group sizes summing to D.  Any grouping keeps log q exact.
        schedule: "uniform" (groups of k) or "cosine" (⌈D/k⌉ steps, few sites first; much
            better for k > 1 in ordered phases, see ``group_sizes``).
        n_maskings: R random maskings per sample in the WDCE loss (``loss_backward``).
        wdce_precision: "float32", or "bf16" for the WDCE step under bfloat16 autocast.
    Runs on the device and dtype of the denoiser's parameters; all randomness comes from
    the ``torch.Generator`` passed in (draws happen on the generator's device).
    Implements the sampler protocol (pipeline.sampler.base).
    """

    def __init__(self, denoiser: nn.Module, n_sites: int, n_states: int, sites_per_step=1,
                 schedule: str = "uniform", n_maskings: int = 16, wdce_precision: str = "float32"):
        super().__init__()
        if not isinstance(denoiser, nn.Module):
            raise ValueError(f"denoiser must be an nn.Module (e.g. from build_denoiser), got {type(denoiser).__name__}")
        for name, value in (("n_sites", n_sites), ("n_states", n_states)):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if n_states < 2:
            raise ValueError(f"n_states must be at least 2, got {n_states}")
        for name, value in (("n_sites", n_sites), ("n_states", n_states)):
            declared = getattr(denoiser, name, None)
            if declared is not None and int(declared) != int(value):
                raise ValueError(f"{name}={value} does not match the denoiser's {name}={declared}")
        self.denoiser = denoiser
        self.n_sites = int(n_sites)
        self.n_states = int(n_states)
        self.mask_token = self.n_states
        self.schedule = schedule
        self.group_sizes = group_sizes(self.n_sites, sites_per_step, schedule)
        self.sites_per_step = sites_per_step if isinstance(sites_per_step, numbers.Integral) else self.group_sizes
        if isinstance(n_maskings, bool) or not isinstance(n_maskings, numbers.Integral) or n_maskings < 1:
            raise ValueError(f"n_maskings must be a positive integer, got {n_maskings!r}")
        self.n_maskings = int(n_maskings)
        if wdce_precision not in WDCE_PRECISIONS:
            raise ValueError(f"wdce_precision must be one of {WDCE_PRECISIONS}, got {wdce_precision!r}")
        self.wdce_precision = wdce_precision

    @property
    def device(self) -> torch.device:
        """Where the denoiser's parameters live (sampling and scoring run there)."""
        return self._device()

    @property
    def n_steps(self) -> int:
        """Network calls per generated batch (number of reveal steps)."""
        return len(self.group_sizes)

    @property
    def default_batch_size(self) -> int:
        """Samples per network call when batch_size=None.

        On CPU: the denoiser's ``cpu_rows_per_call`` (B·D site-rows; small chunks keep
        activations cache-sized) or 2^14; on accelerators 2^21 site-rows.
        """
        if self._device().type == "cpu":
            rows = int(getattr(self.denoiser, "cpu_rows_per_call", _CPU_ROWS_PER_CHUNK))
        else:
            rows = _ACCELERATOR_ROWS_PER_CHUNK
        return max(1, rows // self.n_sites)

    # ------------------------------------------------------------------ public API
    def sample(self, n: int, generator: torch.Generator, batch_size: int | None = None,
               sites_per_step=None) -> SampleBatch:
        """Draw n samples with fresh random orders.

        Returns ``SampleBatch(x int64 (n, D), order int64 (n, D), log_q float64 (n,))`` on the
        denoiser's device.  ``batch_size``: samples per network call (None: a cache-friendly
        default).  ``sites_per_step`` overrides the constructor's k (or group sizes) for this
        call, with the constructor's schedule.
        Reproducible for a given generator state, n, batch_size and k.
        """
        n = check_count(n)
        order = self.random_order(n, generator, sites_per_step=sites_per_step)
        return self._generate(order, generator, batch_size)

    def random_order(self, n: int, generator: torch.Generator, sites_per_step=None) -> torch.Tensor:
        """n independent orders: a uniform random permutation per sample cut into groups.

        Returns int64 ``(n, D)``, ``order[b, d]`` = step at which site d is revealed.
        """
        n = check_count(n)
        check_generator(generator)
        sizes = self.group_sizes if sites_per_step is None else group_sizes(self.n_sites, sites_per_step,
                                                                             self.schedule)
        device = self._device()
        permutation = self._uniform((n, self.n_sites), generator, torch.float64).argsort(dim=1)
        step_of_position = torch.repeat_interleave(
            torch.arange(len(sizes), device=device), torch.tensor(sizes, device=device))
        order = torch.empty((n, self.n_sites), dtype=torch.int64, device=device)
        order.scatter_(1, permutation, step_of_position.expand(n, -1))
        return order

    def sample_given_order(self, order: torch.Tensor, generator: torch.Generator,
                           batch_size: int | None = None) -> SampleBatch:
        """Generate x following given orders (n, D) instead of random ones.

        log_q is then exact for q(x | that order); with a fixed, non-random order the weights
        target the fixed-order model (useful for tests and deterministic schedules).
        """
        order = self._check_order(order)
        return self._generate(order, generator, batch_size)

    def log_prob(self, x: torch.Tensor, order: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
        """Exact path log-likelihood log q(x | order), float64 ``(n,)`` in nats.

        Replays the generation steps (context = sites with order < t, scored = sites with
        order == t).  Equals ``sample``'s log_q for the order that generated x.  Runs under
        no_grad in eval mode, like ``sample``.
        """
        x = check_states(x, self.n_sites, self.n_states)
        order = self._check_order(order, n=x.shape[0])
        device = self._device()
        x, order = x.to(device), order.to(device)
        batch_size = check_batch_size(batch_size, self.default_batch_size)
        chunks = []
        with self._inference():
            for start in range(0, x.shape[0], batch_size):  # loop over chunks, not samples
                chunks.append(self._score_chunk(x[start:start + batch_size], order[start:start + batch_size]))
        return torch.cat(chunks) if chunks else torch.zeros(0, dtype=torch.float64, device=device)

    def loss_backward(self, x: torch.Tensor, log_weights: torch.Tensor, log_q: torch.Tensor,
                      generator: torch.Generator) -> torch.Tensor:
        """One WDCE step (weighted denoising cross-entropy, docs/method.md §5): accumulate the
        gradient of L(θ) = Σ_i w̄_i · E_masks[−log p_θ(x_i | masked x_i)] into ``.grad`` and
        return L (a float64 0-dim tensor on the sampler's device).  w̄ = softmax(log_weights)
        (float64, cast to float32); ``log_q`` is not needed: WDCE is a self-normalised
        importance-weighted forward KL.  With ``wdce_precision="bf16"`` the step runs under
        bfloat16 autocast."""
        weights = torch.from_numpy(normalized_weights(log_weights.numpy())).to(torch.float32)
        autocast = torch.bfloat16 if self.wdce_precision == "bf16" else None
        return wdce_backward(self.denoiser, x, weights, self.n_maskings, generator, self.n_states,
                             autocast_dtype=autocast)

    # ------------------------------------------------------------------ internals
    def _generate(self, order: torch.Tensor, generator: torch.Generator, batch_size) -> SampleBatch:
        check_generator(generator)
        batch_size = check_batch_size(batch_size, self.default_batch_size)
        order = order.to(self._device())
        xs, log_qs = [], []
        with self._inference():
            for start in range(0, order.shape[0], batch_size):  # loop over chunks, not samples
                x, log_q = self._generate_chunk(order[start:start + batch_size], generator)
                xs.append(x)
                log_qs.append(log_q)
        return SampleBatch(x=torch.cat(xs), order=order, log_q=torch.cat(log_qs))

    def _generate_chunk(self, order: torch.Tensor, generator: torch.Generator):
        tokens = torch.full_like(order, self.mask_token)
        log_q = torch.zeros(order.shape[0], dtype=torch.float64, device=order.device)
        for rows, positions, bounds in _reveal_slices(order):  # one group unless rows differ in group sizes
            group_tokens = tokens[rows]
            group_log_q = torch.zeros(positions.shape[0], dtype=torch.float64, device=order.device)
            for start, stop in zip(bounds[:-1], bounds[1:]):  # the only loop: over reveal steps
                sites = positions[:, start:stop]                                 # (n_rows, k_t)
                log_probs = self._site_log_probs(group_tokens, sites)            # (n_rows, k_t, q)
                drawn = self._categorical(log_probs.reshape(-1, self.n_states), generator).view(sites.shape)
                group_tokens.scatter_(1, sites, drawn)
                group_log_q += log_probs.gather(2, drawn[:, :, None]).squeeze(2).to(torch.float64).sum(dim=1)
            tokens[rows], log_q[rows] = group_tokens, group_log_q
        return tokens, log_q

    def _score_chunk(self, x: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
        log_q = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
        for rows, positions, bounds in _reveal_slices(order):
            states = x[rows]
            context = torch.full_like(states, self.mask_token)
            group_log_q = torch.zeros(states.shape[0], dtype=torch.float64, device=x.device)
            for start, stop in zip(bounds[:-1], bounds[1:]):  # the only loop: over reveal steps
                sites = positions[:, start:stop]
                revealed = states.gather(1, sites)
                log_probs = self._site_log_probs(context, sites)
                group_log_q += log_probs.gather(2, revealed[:, :, None]).squeeze(2).to(torch.float64).sum(dim=1)
                context.scatter_(1, sites, revealed)
            log_q[rows] = group_log_q
        return log_q

    def _site_log_probs(self, tokens: torch.Tensor, sites: torch.Tensor) -> torch.Tensor:
        """The denoiser's log-probabilities at ``sites`` (n, k) of each row: (n, k, q)."""
        log_probs = self._log_probs(tokens)
        return log_probs.gather(1, sites[:, :, None].expand(-1, -1, self.n_states))

    def _log_probs(self, tokens: torch.Tensor) -> torch.Tensor:
        log_probs = self.denoiser(tokens)
        expected = (tokens.shape[0], self.n_sites, self.n_states)
        if tuple(log_probs.shape) != expected:
            raise ValueError(f"the denoiser returned shape {tuple(log_probs.shape)}, expected {expected} "
                             "(log-probabilities over the q real states, never over MASK)")
        return log_probs

    def _categorical(self, log_probs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """One draw per row of log_probs (N, q) by inverting the float64 CDF."""
        cdf = log_probs.to(torch.float64).exp().cumsum(dim=1)
        u = self._uniform((log_probs.shape[0], 1), generator, torch.float64) * cdf[:, -1:]
        return (cdf <= u).sum(dim=1).clamp_max(self.n_states - 1)

    def _uniform(self, shape, generator: torch.Generator, dtype) -> torch.Tensor:
        draws = torch.rand(shape, generator=generator, device=generator.device, dtype=dtype)
        return draws.to(self._device())

    def _device(self) -> torch.device:
        for tensor in self.denoiser.parameters():
            return tensor.device
        for tensor in self.denoiser.buffers():
            return tensor.device
        return torch.device("cpu")

    @contextlib.contextmanager
    def _inference(self):
        was_training = self.denoiser.training
        self.denoiser.eval()
        try:
            with torch.no_grad():
                yield
        finally:
            self.denoiser.train(was_training)

    def _check_order(self, order, n: int | None = None) -> torch.Tensor:
        if not isinstance(order, torch.Tensor) or order.dim() != 2 or order.shape[1] != self.n_sites \
                or (n is not None and order.shape[0] != n):
            shape = tuple(order.shape) if isinstance(order, torch.Tensor) else type(order).__name__
            rows = "n" if n is None else str(n)
            raise ValueError(f"order must be an int64 tensor of shape ({rows}, {self.n_sites}), got {shape}")
        if order.dtype.is_floating_point or order.dtype == torch.bool:
            raise ValueError(f"order must hold integer step indices, got dtype {order.dtype}")
        if order.shape[0] == 0:
            raise ValueError("order must hold at least one row")
        steps = order.sort(dim=1).values
        gaps = steps[:, 1:] - steps[:, :-1]
        if bool((steps[:, 0] != 0).any()) or bool(((gaps < 0) | (gaps > 1)).any()):
            raise ValueError("order must assign each site a step index such that the steps used by each "
                             "sample are exactly 0, 1, ..., T−1 (every step reveals ≥ 1 site); "
                             "use sampler.random_order(...) or the order returned by sample()")
        return order.to(torch.int64)


def _reveal_slices(order: torch.Tensor):
    """The reveal steps of ``order`` (n, D) as fixed slices, without a per-step ``nonzero``.

    Yields ``(rows, positions, bounds)``: ``positions`` (n_rows, D) lists each row's sites by
    step, in ascending site index within a step (a stable argsort of the order), so step t
    reveals ``positions[:, bounds[t]:bounds[t+1]]`` — the same number of sites in every row and
    the same sites, in the same order, as ``(order == t).nonzero()``.  Orders drawn by
    ``random_order`` share their group sizes, so there is one group (``rows`` = all rows, a
    slice); rows with different group sizes (orders given by a caller) come in one group per
    distinct set of sizes (``rows`` an index tensor).
    """
    positions = order.argsort(dim=1, stable=True)
    steps_by_position = order.gather(1, positions)
    if bool((steps_by_position == steps_by_position[:1]).all()):
        groups = [(slice(None), positions, steps_by_position[0])]
    else:
        profiles, inverse = torch.unique(steps_by_position, dim=0, return_inverse=True)
        groups = []
        for index, profile in enumerate(profiles):  # loop over distinct group sizes, not samples
            rows = (inverse == index).nonzero().squeeze(1)
            groups.append((rows, positions[rows], profile))
    for rows, group_positions, steps in groups:
        yield rows, group_positions, [0, *itertools.accumulate(torch.bincount(steps).tolist())]


def from_options(system, options: dict, training) -> MaskedDiffusionSampler:
    """The ``masked_diffusion`` family's factory (pipeline/registry.py): the denoiser of
    ``options["denoiser"]`` sized by ``hidden``/``layers`` (``heads`` for the transformer),
    ``sites_per_step`` with ``schedule``, and ``training.maskings`` maskings per WDCE sample."""
    sizes = {"hidden": options["hidden"], "layers": options["layers"]}
    if options["denoiser"] == "transformer":
        sizes["heads"] = options["heads"]
    denoiser = build_denoiser(options["denoiser"], system, **sizes)
    return MaskedDiffusionSampler(denoiser, system.n_sites, system.n_states, sites_per_step=options["sites_per_step"],
                                  schedule=options["schedule"], n_maskings=training.maskings,
                                  wdce_precision=training.wdce_precision)
