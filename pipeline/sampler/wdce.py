"""Weighted denoising cross-entropy (WDCE) loss for training the denoiser (ALGORITHM.md §5)."""

from __future__ import annotations

import numbers

import torch
from torch import nn

__all__ = ["wdce_loss", "MAX_INVERSE_MASK_LEVEL"]

MAX_INVERSE_MASK_LEVEL = 1e5
"""Clip of the 1/λ factor (linear schedule), as in the MDNS paper."""


def wdce_loss(denoiser: nn.Module, x: torch.Tensor, weights: torch.Tensor, n_maskings: int,
              generator: torch.Generator, n_states: int) -> torch.Tensor:
    """WDCE loss with the linear masking schedule, one batched forward over (B·R, D).

    For every sample i and each of R maskings r: λ_ir ~ U(0, 1); every site is masked
    independently with probability λ_ir → x̃_ir.  Then

        L = Σ_i w_i · (1/R) Σ_r min(1/λ_ir, 1e5) · Σ_{d masked} −log p_θ(x_i,d | x̃_ir) / D.

    Normalisation: per site (÷ D) and with weights summing to 1, so the scale — and good
    learning rates — carry over across lattice sizes and batch sizes.  This is ALGORITHM.md's
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

    parameter = next(iter(denoiser.parameters()), None)
    device = parameter.device if parameter is not None else x.device
    n_rows = n_samples * n_maskings

    def uniform(shape):
        return torch.rand(shape, generator=generator, device=generator.device, dtype=torch.float64).to(device)

    mask_level = uniform((n_rows,))                                       # λ_ir, sample-major rows
    masked = uniform((n_rows, n_sites)) < mask_level[:, None]             # (B·R, D)
    targets = x.to(device=device, dtype=torch.int64).repeat_interleave(n_maskings, dim=0)
    noisy = torch.where(masked, torch.full_like(targets, n_states), targets)

    log_probs = denoiser(noisy)                                           # (B·R, D, q)
    if tuple(log_probs.shape) != (n_rows, n_sites, n_states):
        raise ValueError(f"the denoiser returned shape {tuple(log_probs.shape)}, "
                         f"expected {(n_rows, n_sites, n_states)}")
    target_log_probs = log_probs.gather(2, targets[:, :, None]).squeeze(2)  # (B·R, D)
    masked_nll = -(target_log_probs * masked.to(log_probs.dtype)).sum(dim=1)  # (B·R,)
    inverse_level = (1.0 / mask_level).clamp_max(MAX_INVERSE_MASK_LEVEL).to(log_probs.dtype)
    per_sample = (inverse_level * masked_nll).reshape(n_samples, n_maskings).mean(dim=1) / n_sites
    return (weights64.to(device=device, dtype=per_sample.dtype) * per_sample).sum()
