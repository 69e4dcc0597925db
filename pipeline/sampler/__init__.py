"""Sampler families behind one protocol (pipeline.sampler.base): masked diffusion (denoiser
networks, the unmasking loop with exact path likelihoods, WDCE loss)."""

from pipeline.sampler.denoisers import (
    DENOISER_KINDS,
    LatticeLocalDenoiser,
    TransformerDenoiser,
    build_denoiser,
)
from pipeline.sampler.base import SampleBatch, Sampler, batch_on_cpu
from pipeline.sampler.masked_diffusion import (
    SCHEDULES,
    MaskedDiffusionSampler,
    cosine_group_sizes,
    group_sizes,
)
from pipeline.sampler.wdce import MAX_INVERSE_MASK_LEVEL, wdce_backward, wdce_loss

__all__ = [
    "DENOISER_KINDS",
    "LatticeLocalDenoiser",
    "TransformerDenoiser",
    "build_denoiser",
    "MaskedDiffusionSampler",
    "SCHEDULES",
    "SampleBatch",
    "Sampler",
    "batch_on_cpu",
    "cosine_group_sizes",
    "group_sizes",
    "MAX_INVERSE_MASK_LEVEL",
    "wdce_backward",
    "wdce_loss",
]
