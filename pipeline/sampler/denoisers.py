"""Denoiser networks for the masked-diffusion sampler (docs/method.md §4).

Interface shared by every denoiser (what ``MaskedDiffusionSampler`` and ``wdce_loss`` rely on):

    forward(tokens) -> log_probs
    tokens:    int64 ``(B, D)`` with values in ``{0..q-1}`` (revealed states) or ``q`` (MASK).
    log_probs: float ``(B, D, q)``, per-site log-probabilities over the q *real* states only
               (a log-softmax over q classes; MASK is never an output class).
    attributes ``n_sites`` (D), ``n_states`` (q), ``mask_token`` (= q).

The network returns a conditional for every site, revealed or not; callers read the rows
they need (the sites being revealed, or the masked sites in the loss).
"""

from __future__ import annotations

import math
import numbers

import torch
from torch import nn
from torch.nn import functional as F

from systems.parameters import ParameterError

__all__ = ["LatticeLocalDenoiser", "TransformerDenoiser", "build_denoiser", "DENOISER_KINDS"]


def _check_positive_int(value, name: str, example: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < 1:
        raise ValueError(f"{name} must be a positive integer (e.g. {example}), got {value!r}")
    return int(value)


def _check_tokens(tokens: torch.Tensor, n_sites: int) -> None:
    if not isinstance(tokens, torch.Tensor) or tokens.dim() != 2 or tokens.shape[1] != n_sites:
        shape = tuple(tokens.shape) if isinstance(tokens, torch.Tensor) else type(tokens).__name__
        raise ValueError(f"tokens must be an int64 tensor of shape (B, {n_sites}), got {shape}")
    if tokens.dtype.is_floating_point or tokens.dtype == torch.bool:
        raise ValueError(f"tokens must be an integer tensor (int64 states, MASK = n_states), got {tokens.dtype}")


class _MessagePassingBlock(nn.Module):
    """One residual block: h ← h + W_out·SiLU(W_self h + b + W_nbr·mean_nbr(h) + W_glob·mean_sites(h)).

    Works in site-major layout ``h: (D, B, H)`` so gathering a neighbour copies a contiguous
    ``(B, H)`` slab, and the matrix products run on the ``(D·B, H)`` view with the sums fused
    into ``addmm`` (few passes over memory: this is what limits speed on CPU).
    """

    def __init__(self, hidden: int, n_layers: int):
        super().__init__()
        self.self_linear = nn.Linear(hidden, hidden)
        self.neighbour_linear = nn.Linear(hidden, hidden, bias=False)
        self.global_linear = nn.Linear(hidden, hidden, bias=False)
        self.out_linear = nn.Linear(hidden, hidden, bias=False)
        # Keep the residual stream's scale O(1) at initialisation, whatever the depth.
        with torch.no_grad():
            self.out_linear.weight.mul_(1.0 / math.sqrt(n_layers))

    def forward(self, h: torch.Tensor, neighbours: torch.Tensor) -> torch.Tensor:
        n_sites, batch, hidden = h.shape
        coordination = neighbours.shape[1]
        neighbour_sum = h.index_select(0, neighbours[:, 0])
        for j in range(1, coordination):  # loop over z (4 or 12), never over sites or samples
            neighbour_sum.add_(h.index_select(0, neighbours[:, j]))
        flat = h.reshape(n_sites * batch, hidden)
        pre = torch.addmm(self.self_linear.bias, flat, self.self_linear.weight.t())
        # In-place addmm_ is not autocast: under bf16 autocast ``pre`` is bf16, so match it (no-op in float32).
        pre.addmm_(neighbour_sum.reshape(n_sites * batch, hidden).to(pre.dtype),
                   self.neighbour_linear.weight.t().to(pre.dtype), alpha=1.0 / coordination)
        # Global summary (B, H): lets every site see e.g. the magnetisation of the revealed context.
        pre = pre.view(n_sites, batch, hidden).add_(self.global_linear(h.mean(dim=0)))
        activation = F.silu(pre, inplace=not torch.is_grad_enabled())
        out = torch.addmm(flat, activation.view(n_sites * batch, hidden), self.out_linear.weight.t())
        return out.view(n_sites, batch, hidden)


class LatticeLocalDenoiser(nn.Module):
    """Message-passing denoiser on a lattice given by its neighbour table (the CPU default).

    Token embedding (q real states + MASK) → ``layers`` residual blocks, each combining a
    site's own features, the mean of its nearest neighbours' features and a global summary
    (mean over all sites, fed back to every site, so the network can tell e.g. the sign of
    the magnetisation of the revealed context) → per-site logits → log-softmax over q.
    Translation equivariant (shared weights), receptive field ``layers`` bonds plus the
    global summary.  Works for any lattice: square (z = 4), FCC (z = 12), …

    Args:
        neighbours: int64 ``(D, z)`` nearest-neighbour site indices (periodic).
        n_states: q, number of real states; the MASK token is ``q``.
        hidden: feature width H.  layers: number of residual blocks.
    Cost per forward ≈ 3·layers·H² multiply-adds per site; memory O(B·D·H).
    """

    cpu_rows_per_call = 1 << 14
    """Preferred B·D per call on CPU (the sampler's default chunk; measured on 2 cores)."""

    def __init__(self, neighbours: torch.Tensor, n_states: int, hidden: int = 64, layers: int = 4):
        super().__init__()
        if not isinstance(neighbours, torch.Tensor) or neighbours.dim() != 2 or neighbours.shape[1] < 1:
            raise ValueError("neighbours must be an integer tensor of shape (D, z) (e.g. system.neighbours)")
        if neighbours.dtype.is_floating_point or neighbours.dtype == torch.bool:
            raise ValueError(f"neighbours must hold integer site indices, got dtype {neighbours.dtype}")
        n_sites = int(neighbours.shape[0])
        if neighbours.numel() and (int(neighbours.min()) < 0 or int(neighbours.max()) >= n_sites):
            raise ValueError(f"neighbours must hold site indices in [0, {n_sites - 1}]")
        n_states = _check_positive_int(n_states, "n_states", "2 for Ising")
        if n_states < 2:
            raise ValueError(f"n_states must be at least 2, got {n_states}")
        self.n_sites = n_sites
        self.n_states = n_states
        self.mask_token = n_states
        self.hidden = _check_positive_int(hidden, "hidden", "64")
        self.n_layers = _check_positive_int(layers, "layers", "4")
        self.register_buffer("neighbours", neighbours.detach().to(torch.int64).clone())
        self.embedding = nn.Embedding(n_states + 1, self.hidden)
        self.blocks = nn.ModuleList(_MessagePassingBlock(self.hidden, self.n_layers) for _ in range(self.n_layers))
        self.head = nn.Linear(self.hidden, n_states)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens int64 ``(B, D)`` in {0..q} (q = MASK) → log-probabilities ``(B, D, q)``."""
        _check_tokens(tokens, self.n_sites)
        h = self.embedding(tokens.t())  # (D, B, H), site-major
        for block in self.blocks:
            h = block(h, self.neighbours)
        log_probs = F.log_softmax(self.head(h), dim=-1)  # (D, B, q)
        return log_probs.transpose(0, 1).contiguous()

    def extra_repr(self) -> str:
        return (f"n_sites={self.n_sites}, coordination={self.neighbours.shape[1]}, "
                f"n_states={self.n_states}, hidden={self.hidden}, layers={self.n_layers}")


def _infer_periodic_extent(coordinates: torch.Tensor) -> torch.Tensor:
    """Period of each coordinate axis: (max − min) + smallest gap between distinct values.

    Exact for lattices whose site projections on each axis are equally spaced (square
    lattices with integer coordinates: extent L; FCC supercells in units of a: extent n).
    """
    extents = []
    for axis in range(coordinates.shape[1]):  # loop over spatial dimensions (≤ 3)
        values = torch.unique(coordinates[:, axis])
        if values.numel() < 2:
            extents.append(1.0)
            continue
        gaps = values[1:] - values[:-1]
        extents.append(float(values[-1] - values[0] + gaps.min()))
    return torch.tensor(extents, dtype=torch.float64)


def torus_fourier_features(coordinates: torch.Tensor, periodic_extent, n_frequencies: int) -> torch.Tensor:
    """Fourier features of site positions on the periodic torus.

    coordinates float ``(D, d)``; periodic_extent: d periods (lattice units).
    Returns float64 ``(D, 2·d·n_frequencies)``: sin and cos of 2π·n·r_a / extent_a for
    n = 1..n_frequencies and every axis a (periodic, so wrapped images coincide).
    """
    coordinates = coordinates.to(torch.float64)
    extent = torch.as_tensor(periodic_extent, dtype=torch.float64).reshape(-1)
    if extent.numel() == 1 and coordinates.shape[1] > 1:
        extent = extent.expand(coordinates.shape[1])
    if extent.numel() != coordinates.shape[1] or bool((extent <= 0).any()):
        raise ValueError(f"periodic_extent must be {coordinates.shape[1]} positive periods (one per axis), "
                         f"got {periodic_extent!r}")
    frequencies = torch.arange(1, n_frequencies + 1, dtype=torch.float64)
    phase = 2 * math.pi * (coordinates / extent)[:, :, None] * frequencies  # (D, d, n)
    return torch.cat([torch.sin(phase), torch.cos(phase)], dim=-1).reshape(coordinates.shape[0], -1)


class TransformerDenoiser(nn.Module):
    """Bidirectional transformer denoiser (the MDNS paper's style): one token per site.

    Input = token embedding (q states + MASK) + linear projection of Fourier features of the
    site coordinates on the periodic torus; ``layers`` pre-norm ``nn.TransformerEncoder``
    layers without a causal mask; final LayerNorm; per-site head → log-softmax over q.

    Args:
        coordinates: float ``(D, spatial_dim)`` site positions (lattice units).
        n_states: q.  d_model, heads, layers: transformer sizes (d_model % heads == 0).
        periodic_extent: period of each axis (scalar or per axis); None infers it as
            (max − min) + smallest spacing of the coordinates along each axis.
        n_frequencies: Fourier frequencies per axis.  feedforward: FFN width (default 2·d_model).
    Cost per forward O(D²·d_model + D·d_model²) per sample; much slower than the lattice
    denoiser on CPU.
    """

    cpu_rows_per_call = 1 << 12
    """Preferred B·D per call on CPU: attention scores grow as B·heads·D², small chunks are faster."""

    def __init__(self, coordinates: torch.Tensor, n_states: int, d_model: int = 64, heads: int = 4,
                 layers: int = 4, periodic_extent=None, n_frequencies: int = 8, feedforward: int | None = None):
        super().__init__()
        if not isinstance(coordinates, torch.Tensor) or coordinates.dim() != 2 or coordinates.shape[0] < 1:
            raise ValueError("coordinates must be a float tensor of shape (D, spatial_dim) (e.g. system.coordinates)")
        n_states = _check_positive_int(n_states, "n_states", "2 for Ising")
        if n_states < 2:
            raise ValueError(f"n_states must be at least 2, got {n_states}")
        d_model = _check_positive_int(d_model, "d_model", "64")
        heads = _check_positive_int(heads, "heads", "4")
        if d_model % heads:
            raise ParameterError("heads", f"must divide the feature width (hidden = d_model = {d_model}), got {heads}; "
                                          f"e.g. hidden 64 with heads 4")
        self.n_layers = _check_positive_int(layers, "layers", "4")
        n_frequencies = _check_positive_int(n_frequencies, "n_frequencies", "8")
        feedforward = 2 * d_model if feedforward is None else _check_positive_int(feedforward, "feedforward", "128")
        self.n_sites = int(coordinates.shape[0])
        self.n_states = n_states
        self.mask_token = n_states
        self.d_model = d_model
        self.heads = heads
        coordinates = coordinates.detach().to(torch.float64)
        extent = _infer_periodic_extent(coordinates) if periodic_extent is None else periodic_extent
        features = torus_fourier_features(coordinates, extent, n_frequencies)
        self.register_buffer("position_features", features.to(torch.get_default_dtype()))
        self.position_projection = nn.Linear(features.shape[1], d_model)
        self.embedding = nn.Embedding(n_states + 1, d_model)
        layer = nn.TransformerEncoderLayer(d_model, heads, dim_feedforward=feedforward, dropout=0.0,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, self.n_layers, enable_nested_tensor=False)
        self.final_norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, n_states)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens int64 ``(B, D)`` in {0..q} (q = MASK) → log-probabilities ``(B, D, q)``."""
        _check_tokens(tokens, self.n_sites)
        h = self.embedding(tokens) + self.position_projection(self.position_features)
        h = self.encoder(h)
        return F.log_softmax(self.head(self.final_norm(h)), dim=-1)

    def extra_repr(self) -> str:
        return f"n_sites={self.n_sites}, n_states={self.n_states}, d_model={self.d_model}, heads={self.heads}"


def _build_lattice(system_like, hidden: int = 64, layers: int = 4) -> LatticeLocalDenoiser:
    return LatticeLocalDenoiser(system_like.neighbours, system_like.n_states, hidden=hidden, layers=layers)


def _build_transformer(system_like, hidden: int = 64, layers: int = 4, heads: int = 4, d_model: int | None = None,
                       periodic_extent=None, n_frequencies: int = 8, feedforward: int | None = None
                       ) -> TransformerDenoiser:
    if periodic_extent is None:
        periodic_extent = getattr(system_like, "periodic_extent", None)
    return TransformerDenoiser(system_like.coordinates, system_like.n_states,
                               d_model=hidden if d_model is None else d_model, heads=heads, layers=layers,
                               periodic_extent=periodic_extent, n_frequencies=n_frequencies,
                               feedforward=feedforward)


DENOISER_KINDS = {"lattice": _build_lattice, "transformer": _build_transformer}
"""Denoiser builders by name: ``kind -> builder(system_like, **sizes)``."""

_ACCEPTED_SIZES = {
    "lattice": ("hidden", "layers"),
    "transformer": ("hidden", "d_model", "heads", "layers", "periodic_extent", "n_frequencies", "feedforward"),
}


def build_denoiser(kind: str, system_like, **sizes) -> nn.Module:
    """Build a denoiser for a system (duck typed: ``.neighbours``, ``.coordinates``, ``.n_states``).

    kind: "lattice" (LatticeLocalDenoiser; sizes hidden, layers) or "transformer"
    (TransformerDenoiser; sizes hidden (= d_model), heads, layers, periodic_extent,
    n_frequencies, feedforward).  The transformer reads ``system_like.periodic_extent``
    when present, else infers the periods from the coordinates.
    """
    if kind not in DENOISER_KINDS:
        raise ValueError(f"kind must be one of {sorted(DENOISER_KINDS)}, got {kind!r}")
    unknown = sorted(set(sizes) - set(_ACCEPTED_SIZES[kind]))
    if unknown:
        raise ValueError(f"unknown size argument(s) {unknown} for the {kind!r} denoiser; "
                         f"accepted: {list(_ACCEPTED_SIZES[kind])}")
    return DENOISER_KINDS[kind](system_like, **sizes)
