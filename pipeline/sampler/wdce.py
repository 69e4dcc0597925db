"""Weighted denoising cross-entropy (WDCE) loss for training the denoiser (docs/method.md §5)."""

from __future__ import annotations

import contextlib
import numbers
from typing import NamedTuple

import torch
from torch import nn

__all__ = ["wdce_loss", "wdce_backward", "MAX_INVERSE_MASK_LEVEL"]

MAX_INVERSE_MASK_LEVEL = 1e5
"""Clip of the 1/λ factor (linear schedule), as in the MDNS paper."""


def wdce_loss(denoiser: nn.Module, x: torch.Tensor, weights: torch.Tensor, n_maskings: int,
              generator: torch.Generator, n_states: int) -> torch.Tensor:
    """WDCE loss with the linear masking schedule, one batched forward over (B·R, D).

    Training uses :func:`wdce_backward` (same loss, chunked); this form is for tests and small problems.

    For every sample i and each of R maskings r: λ_ir ~ U(0, 1); every site is masked
    independently with probability λ_ir → x̃_ir.  Then

        L = Σ_i w_i · (1/R) Σ_r min(1/λ_ir, 1e5) · Σ_{d masked} −log p_θ(x_i,d | x̃_ir) / D.

    Normalisation: per site (÷ D) and with weights summing to 1, so the scale — and good
    learning rates — carry over across lattice sizes and batch sizes.  This is docs/method.md's
    −1/(B·R) Σ_i Σ_r w_i … with w_i normalised to mean 1 instead of sum 1, divided by D.
    In expectation over the maskings the bracket equals −log q(x_i) averaged over uniformly
    random orders (an upper bound on −log of the model's marginal), so L ≥ 0 and
    L·D → Σ_i w_i·E_σ[−log q(x_i|σ)].

    Args:
        denoiser: tokens (B, D) int64 in {0..q} (q = MASK) → log-probs (B, D, q) over real states.
        x: int64 ``(B, D)`` training configurations, states in {0..q−1}.
        weights: float ``(B,)`` non-negative, summing to 1 (e.g. softmax of log-weights);
            detached here in any case.
        n_maskings: R ≥ 1 maskings per sample.
        generator: torch.Generator supplying λ and the masks (draws on its own device).
        n_states: q; the MASK token is q.
    Returns: scalar tensor (denoiser dtype) with grad w.r.t. the denoiser's parameters.
    """
    _validate(denoiser, x, weights, n_maskings, generator, n_states)
    weights64 = weights.detach().to(torch.float64)
    return _weighted_nll_sum(denoiser, _draw_maskings(denoiser, x, n_maskings, generator, n_states),
                             weights64, slice(0, x.shape[0]))


def wdce_backward(denoiser: nn.Module, x: torch.Tensor, weights: torch.Tensor, n_maskings: int,
                  generator: torch.Generator, n_states: int, rows_per_call: int | None = None,
                  autocast_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Accumulate ∇L of :func:`wdce_loss` into ``.grad`` in chunks of samples; return L.

    Same loss, same random draws (all maskings are drawn up front, in the same order), so the
    accumulated gradient equals ``wdce_loss(...).backward()`` up to float summation order.
    Chunking keeps each forward/backward at about ``rows_per_call`` site-rows (samples × R × D):
    one (B·R, D) pass at L = 16 allocates ~100 MB activations per layer, which on CPU is
    dominated by page faults (measured 4× slower than 2^14-row chunks on the 2-core machine).

    Args: as :func:`wdce_loss`; ``rows_per_call`` None → the denoiser's ``cpu_rows_per_call``
    (2^14 if absent) on CPU, 2^21 on accelerators; ``autocast_dtype`` (e.g. torch.bfloat16):
    run the forward and backward under autocast in that dtype (training only: the loss is a
    stochastic objective, while generation and log q must stay float32).  Does not zero
    existing gradients.
    Returns: the loss value, a detached float64 0-dim tensor on the denoiser's device (summed
    there, so a GPU is not synchronised once per chunk; callers convert it when they report).
    """
    _validate(denoiser, x, weights, n_maskings, generator, n_states)
    n_samples, n_sites = x.shape
    draws = _draw_maskings(denoiser, x, n_maskings, generator, n_states)
    if rows_per_call is None:
        on_cpu = draws.targets.device.type == "cpu"
        rows_per_call = int(getattr(denoiser, "cpu_rows_per_call", 1 << 14)) if on_cpu else 1 << 21
    samples_per_call = max(1, int(rows_per_call) // (n_maskings * n_sites))
    device = draws.targets.device
    weights64 = weights.detach().to(device=device, dtype=torch.float64)
    autocast = (torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype is not None
                else contextlib.nullcontext())
    total = torch.zeros((), dtype=torch.float64, device=device)
    for first in range(0, n_samples, samples_per_call):
        with autocast:
            part = _weighted_nll_sum(denoiser, draws, weights64, slice(first, first + samples_per_call))
        part.backward()
        total += part.detach().to(torch.float64)
    return total


class _Maskings(NamedTuple):
    """All random draws of one WDCE evaluation, sample-major rows (sample i, masking r → i·R + r)."""
    targets: torch.Tensor        # int64 (B·R, D) clean states
    noisy: torch.Tensor          # int64 (B·R, D) with MASK = q where masked
    masked: torch.Tensor         # bool (B·R, D)
    inverse_level: torch.Tensor  # float64 (B·R,) min(1/λ, 1e5)
    n_maskings: int              # R
    n_states: int                # q


def _draw_maskings(denoiser: nn.Module, x: torch.Tensor, n_maskings: int, generator: torch.Generator,
                   n_states: int) -> _Maskings:
    parameter = next(iter(denoiser.parameters()), None)
    device = parameter.device if parameter is not None else x.device
    n_samples, n_sites = x.shape
    n_rows = n_samples * n_maskings

    def uniform(shape):
        return torch.rand(shape, generator=generator, device=generator.device, dtype=torch.float64).to(device)

    mask_level = uniform((n_rows,))                                       # λ_ir
    masked = uniform((n_rows, n_sites)) < mask_level[:, None]             # (B·R, D)
    targets = x.to(device=device, dtype=torch.int64).repeat_interleave(n_maskings, dim=0)
    noisy = torch.where(masked, torch.full_like(targets, n_states), targets)
    inverse_level = (1.0 / mask_level).clamp_max(MAX_INVERSE_MASK_LEVEL)
    return _Maskings(targets, noisy, masked, inverse_level, n_maskings, n_states)


def _weighted_nll_sum(denoiser: nn.Module, draws: _Maskings, weights64: torch.Tensor,
                      samples: slice) -> torch.Tensor:
    """Σ_{i ∈ samples} w_i · (1/R) Σ_r min(1/λ_ir, 1e5) · Σ_{d masked} −log p(x_id | x̃_ir) / D."""
    R = draws.n_maskings
    rows = slice(samples.start * R, samples.stop * R)
    noisy, targets, masked = draws.noisy[rows], draws.targets[rows], draws.masked[rows]
    n_rows, n_sites = noisy.shape
    log_probs = denoiser(noisy)                                           # (rows, D, q)
    if tuple(log_probs.shape) != (n_rows, n_sites, draws.n_states):
        raise ValueError(f"the denoiser returned shape {tuple(log_probs.shape)}, "
                         f"expected {(n_rows, n_sites, draws.n_states)}")
    target_log_probs = log_probs.gather(2, targets[:, :, None]).squeeze(2)  # (rows, D)
    masked_nll = -(target_log_probs * masked.to(log_probs.dtype)).sum(dim=1)
    inverse_level = draws.inverse_level[rows].to(log_probs.dtype)
    per_sample = (inverse_level * masked_nll).reshape(-1, R).mean(dim=1) / n_sites
    weights = weights64[samples].to(device=per_sample.device, dtype=per_sample.dtype)
    return (weights * per_sample).sum()


def _validate(denoiser, x, weights, n_maskings, generator, n_states) -> None:
    if not isinstance(denoiser, nn.Module):
        raise ValueError(f"denoiser must be an nn.Module, got {type(denoiser).__name__}")
    if isinstance(n_states, bool) or not isinstance(n_states, numbers.Integral) or n_states < 2:
        raise ValueError(f"n_states must be an integer ≥ 2, got {n_states!r}")
    if isinstance(n_maskings, bool) or not isinstance(n_maskings, numbers.Integral) or n_maskings < 1:
        raise ValueError(f"n_maskings must be a positive integer (the paper uses 8–16), got {n_maskings!r}")
    if not isinstance(generator, torch.Generator):
        raise ValueError("generator must be a torch.Generator, e.g. torch.Generator().manual_seed(0)")
    if not isinstance(x, torch.Tensor) or x.dim() != 2 or x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(f"x must be an int64 tensor of shape (B, D), got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    if x.dtype.is_floating_point or x.dtype == torch.bool:
        raise ValueError(f"x must hold integer states, got dtype {x.dtype}")
    if int(x.min()) < 0 or int(x.max()) >= n_states:
        raise ValueError(f"x must hold states in [0, {n_states - 1}] (MASK = {n_states} is not a state), "
                         f"got values in [{int(x.min())}, {int(x.max())}]")
    declared = getattr(denoiser, "n_states", None)
    if declared is not None and int(declared) != n_states:
        raise ValueError(f"n_states={n_states} does not match the denoiser's n_states={declared}")
    n_samples, n_sites = x.shape
    if not isinstance(weights, torch.Tensor) or weights.shape != (n_samples,):
        raise ValueError(f"weights must be a float tensor of shape ({n_samples},), got "
                         f"{tuple(weights.shape) if isinstance(weights, torch.Tensor) else type(weights).__name__}")
    weights64 = weights.detach().to(torch.float64)
    if not bool(torch.isfinite(weights64).all()) or bool((weights64 < 0).any()):
        raise ValueError("weights must be finite and non-negative (normalise log-weights with a softmax)")
    if abs(float(weights64.sum()) - 1.0) > 1e-5:
        raise ValueError(f"weights must sum to 1 (self-normalised), got sum {float(weights64.sum())!r}; "
                         "use torch.softmax(log_w, 0)")

