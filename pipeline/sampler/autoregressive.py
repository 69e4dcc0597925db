"""Fixed-order autoregressive sampler with an exact likelihood (VAN-style; Wu, Wang and
Zhang, Phys. Rev. Lett. 122, 080602 (2019)).

Sites are generated in raster order 0, 1, …, D−1, each from its conditional:

    log q(x) = Σ_d log p_θ(x_d | x_<d)          (nats, exact, float64)

The conditionals come from one MADE-style masked dense network (Germain et al. 2015): the
input is the one-hot configuration (D·q units), every hidden layer has D·hidden units,
``hidden`` per site, and binary masks on the weights make output d depend on sites < d only:

* input → hidden 1: unit of site k sees inputs of sites j < k (strict);
* hidden → hidden: unit of site k sees units of sites j ≤ k (residual, h + SiLU(W h));
* hidden → output and the direct input → output skip: output of site d sees hidden units
  of sites j ≤ d and inputs of sites j < d.

``sample`` makes D network calls per chunk (one per site), ``log_prob`` one.  Implements the
sampler protocol (pipeline.sampler.base) with ``order = None``.
"""

from __future__ import annotations

import contextlib
import numbers

import torch
from torch import nn
from torch.nn import functional as F

from pipeline.estimators import normalized_weights
from pipeline.sampler.base import SampleBatch, check_batch_size, check_count, check_generator, check_states
from systems.parameters import ParameterError

__all__ = ["AutoregressiveSampler", "MaskedLinear", "LOSSES", "from_options"]

LOSSES = ("forward_kl", "reinforce")
"""Training losses: importance-weighted forward KL, or reverse KL by REINFORCE with a baseline."""

_CPU_ROWS_PER_CHUNK = 1 << 16   # samples × D per network call on CPU
_ACCELERATOR_ROWS_PER_CHUNK = 1 << 21


class MaskedLinear(nn.Linear):
    """``nn.Linear`` whose weight is multiplied by a fixed 0/1 mask (out, in) in every call."""

    def __init__(self, mask: torch.Tensor):
        super().__init__(mask.shape[1], mask.shape[0])
        self.register_buffer("mask", mask.to(self.weight.dtype), persistent=False)
        with torch.no_grad():  # rescale the default init to the unmasked fan-in
            fan_in = mask.sum(dim=1, keepdim=True).clamp_min(1.0)
            self.weight.mul_((mask.shape[1] / fan_in).sqrt())

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return F.linear(inputs, self.weight * self.mask, self.bias)


class AutoregressiveSampler(nn.Module):
    """Raster-order autoregressive sampler over x ∈ {0..q−1}^D with exact log q(x).

    Args:
        n_sites: D ≥ 1.  n_states: q ≥ 2.
        hidden: features per site of the masked dense layers (width D·hidden), ≥ 1.
        layers: masked hidden layers, ≥ 1 (the first from the input, the others residual).
        loss: ``"forward_kl"`` (self-normalised importance-weighted forward KL; may train on
            replay-buffer samples) or ``"reinforce"`` (reverse KL with a mean baseline; fresh
            samples only, ``training.replay_buffer_size`` must be 0).
    Runs on the device and dtype of its parameters (float64 after ``.double()``); all
    randomness comes from the ``torch.Generator`` passed in.
    """

    def __init__(self, n_sites: int, n_states: int, hidden: int = 4, layers: int = 2, loss: str = "forward_kl"):
        super().__init__()
        for name, value, least, hint in (("n_sites", n_sites, 1, "the number of lattice sites D"),
                                         ("n_states", n_states, 2, "q, e.g. 2 for Ising"),
                                         ("hidden", hidden, 1, "features per site, e.g. 4"),
                                         ("layers", layers, 1, "masked hidden layers, e.g. 2")):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < least:
                raise ParameterError(name, f"must be an integer ≥ {least} ({hint}), got {value!r}")
        if loss not in LOSSES:
            raise ParameterError("loss", f"must be one of {LOSSES} (forward_kl: weighted forward KL, may use the "
                             f"replay buffer; reinforce: reverse KL, fresh samples only), got {loss!r}")
        self.n_sites, self.n_states = int(n_sites), int(n_states)
        self.hidden, self.layers, self.loss = int(hidden), int(layers), loss
        D, q, h = self.n_sites, self.n_states, self.hidden
        in_site = torch.arange(D).repeat_interleave(q)       # site of each one-hot input unit
        hid_site = torch.arange(D).repeat_interleave(h)      # site of each hidden unit
        out_site = in_site                                     # site of each output logit
        self.first = MaskedLinear((hid_site[:, None] > in_site[None, :]).float())
        self.blocks = nn.ModuleList(MaskedLinear((hid_site[:, None] >= hid_site[None, :]).float())
                                    for _ in range(self.layers - 1))
        self.head = MaskedLinear((out_site[:, None] >= hid_site[None, :]).float())
        self.skip = MaskedLinear((out_site[:, None] > in_site[None, :]).float())
        with torch.no_grad():  # start close to uniform conditionals
            self.head.weight.mul_(0.1)
            self.skip.weight.mul_(0.1)

    @property
    def uses_replay(self) -> bool:
        """Whether the loss may train on replay-buffer samples (forward_kl) or not (reinforce)."""
        return self.loss == "forward_kl"

    @property
    def device(self) -> torch.device:
        """Where the parameters live (sampling and scoring run there)."""
        return self.first.weight.device

    @property
    def default_batch_size(self) -> int:
        """Samples per network call when batch_size=None: 2^16 site-rows on CPU, 2^21 elsewhere."""
        rows = _CPU_ROWS_PER_CHUNK if self.device.type == "cpu" else _ACCELERATOR_ROWS_PER_CHUNK
        return max(1, rows // self.n_sites)

    # ------------------------------------------------------------------ network
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Conditionals: x int64 (B, D) → log p_θ(x_d = s | x_<d), (B, D, q) in the module dtype."""
        hidden, inputs = self._hidden(x)
        logits = self.head(hidden) + self.skip(inputs)
        return F.log_softmax(logits.view(x.shape[0], self.n_sites, self.n_states), dim=-1)

    def _hidden(self, x: torch.Tensor):
        inputs = F.one_hot(x, self.n_states).to(self.first.weight.dtype).view(x.shape[0], -1)
        hidden = F.silu(self.first(inputs))
        for block in self.blocks:
            hidden = hidden + F.silu(block(hidden))
        return hidden, inputs

    def _masked_weights(self):
        """(weight·mask, bias) of first, blocks, head and skip, computed once per sampled chunk."""
        return [(layer.weight * layer.mask, layer.bias) for layer in (self.first, *self.blocks, self.head, self.skip)]

    def _site_log_probs(self, inputs: torch.Tensor, site: int, weights) -> torch.Tensor:
        """log p_θ(x_site | x_<site), (B, q), from the one-hot inputs (B, D·q) of sites < site.

        Exact restriction of ``forward``: only the inputs of sites < site and the hidden units
        of sites ≤ site reach the site's outputs, so the rest is not computed."""
        (w_first, b_first), *blocks, (w_head, b_head), (w_skip, b_skip) = weights
        seen, width = site * self.n_states, (site + 1) * self.hidden
        rows = slice(seen, seen + self.n_states)
        context = inputs[:, :seen]
        hidden = F.silu(F.linear(context, w_first[:width, :seen], b_first[:width]))
        for w_block, b_block in blocks:
            hidden = hidden + F.silu(F.linear(hidden, w_block[:width, :width], b_block[:width]))
        logits = (F.linear(hidden, w_head[rows, :width], b_head[rows])
                  + F.linear(context, w_skip[rows, :seen], b_skip[rows]))
        return F.log_softmax(logits, dim=-1)

    def _log_q(self, x: torch.Tensor) -> torch.Tensor:
        """Σ_d log p_θ(x_d | x_<d), float64 (B,), with grad when enabled."""
        chosen = self(x).gather(2, x[:, :, None]).squeeze(2)
        return chosen.to(torch.float64).sum(dim=1)

    # ------------------------------------------------------------------ public API
    def sample(self, n: int, generator: torch.Generator, batch_size: int | None = None) -> SampleBatch:
        """Draw n samples: ``SampleBatch(x int64 (n, D), order=None, log_q float64 (n,))``.

        D network calls per chunk of ``batch_size`` samples (None: ``default_batch_size``);
        each draw inverts the float64 CDF with a uniform from ``generator``.  Reproducible
        for a given generator state, n and batch_size; runs in eval mode under no_grad.
        """
        n = check_count(n)
        check_generator(generator)
        batch_size = check_batch_size(batch_size, self.default_batch_size)
        xs, log_qs = [], []
        with self._inference():
            for start in range(0, int(n), batch_size):  # loop over chunks, not samples
                x, log_q = self._sample_chunk(min(batch_size, int(n) - start), generator)
                xs.append(x)
                log_qs.append(log_q)
        return SampleBatch(x=torch.cat(xs), order=None, log_q=torch.cat(log_qs))

    def random_order(self, n: int, generator: torch.Generator) -> None:
        """None: the order is fixed (raster), so there is no σ to draw (the protocol's method)."""
        check_count(n)
        check_generator(generator)
        return None

    def log_prob(self, x: torch.Tensor, order: torch.Tensor | None = None,
                 batch_size: int | None = None) -> torch.Tensor:
        """Exact log q(x), float64 (n,) in nats; one network call per chunk.  ``order`` is
        ignored (the order is fixed).  Equals ``sample``'s log_q; eval mode, no_grad."""
        x = check_states(x, self.n_sites, self.n_states).to(self.device)
        batch_size = check_batch_size(batch_size, self.default_batch_size)
        with self._inference():
            chunks = [self._log_q(x[start:start + batch_size]) for start in range(0, x.shape[0], batch_size)]
        return torch.cat(chunks) if chunks else torch.zeros(0, dtype=torch.float64, device=self.device)

    def loss_backward(self, x: torch.Tensor, log_weights: torch.Tensor, log_q: torch.Tensor,
                      generator: torch.Generator) -> float:
        """One training step's loss; its gradient is accumulated into ``.grad`` (not zeroed).

        x int64 (B, D); log_weights float64 (B,) = log π̃(x) − log q_gen(x); log_q float64
        (B,) = log q_gen(x) of the sampler that drew x.  ``generator`` is unused (no draws).

        * forward_kl: L = −Σ_i w̄_i log q_θ(x_i), w̄ = softmax(log_weights) in float64.
          Returns L in nats (≥ 0; the weighted cross-entropy of the target).
        * reinforce: r_i = log q_θ(x_i) − log π̃(x_i) (detached), b = mean r, gradient of
          mean((r_i − b)·log q_θ(x_i)).  Returns mean r = the reverse KL(q_θ‖π) − ln Z in nats
          (the variational free energy βF_q ≥ −ln Z).  The trainer draws x from its EMA copy
          and takes several inner steps on one batch, so this estimator is slightly
          off-policy (q_gen ≠ q_θ); it is valid for fresh samples only — never train it on a
          replay buffer (samples from old models).
        """
        x = check_states(x, self.n_sites, self.n_states).to(self.device)
        log_weights = self._check_per_sample(log_weights, "log_weights", x.shape[0])
        if self.loss == "forward_kl":
            weights = torch.from_numpy(normalized_weights(log_weights.numpy()))
            return self._weighted_backward(x, -weights)
        log_target = log_weights + self._check_per_sample(log_q, "log_q", x.shape[0])
        with torch.no_grad():
            current = torch.cat([self._log_q(x[s:s + self._train_chunk])
                                 for s in range(0, x.shape[0], self._train_chunk)]).cpu()
        reward = current - log_target
        self._weighted_backward(x, (reward - reward.mean()) / x.shape[0])
        return float(reward.mean())

    # ------------------------------------------------------------------ internals
    @property
    def _train_chunk(self) -> int:
        return self.default_batch_size

    def _weighted_backward(self, x: torch.Tensor, coefficients: torch.Tensor) -> float:
        """Backpropagate Σ_i c_i log q_θ(x_i) in chunks of samples; return its value."""
        total = 0.0
        coefficients = coefficients.to(self.device)
        for start in range(0, x.shape[0], self._train_chunk):
            part = slice(start, start + self._train_chunk)
            value = (coefficients[part] * self._log_q(x[part])).sum()
            value.backward()
            total += float(value.detach())
        return total

    def _sample_chunk(self, n: int, generator: torch.Generator):
        x = torch.zeros((n, self.n_sites), dtype=torch.int64, device=self.device)
        inputs = torch.zeros((n, self.n_sites * self.n_states), dtype=self.first.weight.dtype, device=self.device)
        log_q = torch.zeros(n, dtype=torch.float64, device=self.device)
        weights = self._masked_weights()
        rows = torch.arange(n, device=self.device)
        for site in range(self.n_sites):  # the only loop: over sites
            log_probs = self._site_log_probs(inputs, site, weights).to(torch.float64)   # (n, q)
            cdf = log_probs.exp().cumsum(dim=1)
            u = torch.rand((n, 1), generator=generator, device=generator.device,
                           dtype=torch.float64).to(self.device) * cdf[:, -1:]
            drawn = (cdf <= u).sum(dim=1).clamp_max(self.n_states - 1)
            x[:, site] = drawn
            inputs[rows, site * self.n_states + drawn] = 1.0
            log_q += log_probs.gather(1, drawn[:, None]).squeeze(1)
        return x, log_q

    @contextlib.contextmanager
    def _inference(self):
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                yield
        finally:
            self.train(was_training)

    @staticmethod
    def _check_per_sample(values, name: str, n: int) -> torch.Tensor:
        if not isinstance(values, torch.Tensor) or tuple(values.shape) != (n,):
            shape = tuple(values.shape) if isinstance(values, torch.Tensor) else type(values).__name__
            raise ValueError(f"{name} must be a float64 tensor of shape ({n},), one per sample, got {shape}")
        values = values.detach().cpu().to(torch.float64)
        if bool(torch.isnan(values).any()) or bool(torch.isposinf(values).any()):
            raise ValueError(f"{name} must not hold NaN or +inf (fix the energy or log q that produced it)")
        return values


def from_options(system, options: dict, training) -> AutoregressiveSampler:
    """The ``autoregressive`` family's factory (pipeline/registry.py): ``hidden``, ``layers``
    and ``loss`` from ``options``; ``loss: reinforce`` refuses a replay buffer."""
    loss = options.get("loss", "forward_kl")
    if loss == "reinforce" and int(getattr(training, "replay_buffer_size", 0)) > 0:
        from pipeline.errors import ConfigError
        raise ConfigError("training.replay_buffer_size",
                          f"is {training.replay_buffer_size}, but sampler.loss: reinforce trains on fresh samples "
                          "only; set training.replay_buffer_size: 0 or use sampler.loss: forward_kl")
    return AutoregressiveSampler(system.n_sites, system.n_states, hidden=options.get("hidden", 4),
                                 layers=options.get("layers", 2), loss=loss)
