"""Registries of the method layer: sampler families, methods and the importance weightings
of trained samplers (systems and energy backends are registered in systems/registry.py).

Adding a sampler family or a method is one new file plus one entry here; adding a
weighting is one function in pipeline/estimators.py plus one entry here.  Entries name
their factory as ``"module:attribute"`` (imported on first use) and declare their options,
so configurations are validated without importing torch (docs/architecture.md).

Sampler-family factories are called as ``factory(system, options, training)`` with the
validated ``sampler.*`` options (a dict) and the TrainingConfig, and return an object of
the sampler protocol (pipeline.sampler.base).  Method factories are called as
``factory(ctx)`` with the run's RunContext (pipeline.runner) and return the summary dict.
"""

from __future__ import annotations

from systems.parameters import Entry, Parameter, Registry

__all__ = ["SAMPLER_FAMILIES", "METHODS", "WEIGHTINGS", "DEFAULT_SAMPLER_FAMILY"]

DEFAULT_SAMPLER_FAMILY = "masked_diffusion"

SAMPLER_FAMILIES = Registry("sampler family", (
    Entry("masked_diffusion", "pipeline.sampler.masked_diffusion:from_options",
          "masked-diffusion neural sampler (MDNS): any-order unmasking, k sites per network call, "
          "exact path likelihood q(x|σ), WDCE loss",
          parameters=(
              Parameter("denoiser", "choice", "lattice", choices=("lattice", "transformer"),
                        doc="`lattice` (message passing on the neighbour graph + global summary; CPU default) "
                            "or `transformer` (one token per site, Fourier positional encoding on the torus)"),
              Parameter("sites_per_step", "int", 4, ge=1, example="`sites_per_step: 4`",
                        doc="k sites revealed per network call; the path likelihood stays exact"),
              Parameter("schedule", "choice", "cosine", choices=("uniform", "cosine"),
                        doc="reveal groups: equal groups of k, or ⌈D/k⌉ cosine groups (few sites first)"),
              Parameter("hidden", "int", 64, ge=1, example="`hidden: 64`", doc="features per site"),
              Parameter("layers", "int", 4, ge=1, example="`layers: 4`", doc="network layers"),
              Parameter("heads", "int", 4, ge=1, example="`heads: 4`", doc="attention heads (transformer only)"),
          )),
    Entry("autoregressive", "pipeline.sampler.autoregressive:from_options",
          "fixed-order autoregressive sampler (VAN-like masked dense network) with exact log q(x)",
          parameters=(
              Parameter("hidden", "int", 4, ge=1, example="`hidden: 4`",
                        doc="features per site of the masked dense layers (width D·hidden)"),
              Parameter("layers", "int", 2, ge=1, example="`layers: 2`", doc="masked hidden layers"),
              Parameter("loss", "choice", "forward_kl", choices=("forward_kl", "reinforce"),
                        doc="`forward_kl` (self-normalised importance-weighted, like WDCE; may use the replay "
                            "buffer) or `reinforce` (reverse KL with a baseline; fresh samples only)"),
          )),
))

_TRAINED = "pipeline.methods.trained:run"
METHODS = Registry("method", (
    Entry("metadns", _TRAINED, "trained sampler with the well-tempered bias on (MetaDNS)",
          traits={"trained": True, "bias": True, "warmstart": False}),
    Entry("mdns", _TRAINED, "trained sampler without bias",
          traits={"trained": True, "bias": False, "warmstart": False}),
    Entry("mdns-warmstart", _TRAINED, "trained sampler without bias, first at training.warmstart_beta",
          traits={"trained": True, "bias": False, "warmstart": True}),
    Entry("metadns-mcmc", "pipeline.methods.neural_chains:run",
          "exact MCMC on the biased target: local moves plus independence proposals from the sampler, "
          "trained on the chains' states (neural-proposal MCMC)",
          traits={"trained": True, "bias": True, "warmstart": False, "estimator": "mcmc", "tunable": False}),
    Entry("mcmc-metad", "pipeline.methods.chains:mcmc_metadynamics",
          "parallel Metropolis chains sharing one well-tempered bias (MCMC WT-MetaD)",
          traits={"trained": False, "bias": True}),
    Entry("sw", "pipeline.methods.chains:swendsen_wang", "Swendsen–Wang cluster moves (unbiased reference)",
          traits={"trained": False, "bias": False, "unbiased_reference": True, "requires": "cluster_moves"}),
    Entry("metropolis", "pipeline.methods.chains:metropolis", "single-site Metropolis (unbiased reference)",
          traits={"trained": False, "bias": False, "unbiased_reference": True}),
))

WEIGHTINGS = Registry("weighting", (
    Entry("likelihood", "pipeline.estimators:log_weights_likelihood",
          "exact importance weights of the Boltzmann target: log w = −βE − log q (the main estimator)",
          traits={"inputs": ("energy", "log_q", "beta")}),
    Entry("bias", "pipeline.estimators:log_weights_bias",
          "bias-only weights log w = βV(ξ(x)): right only once the sampler has converged to π_V",
          traits={"inputs": ("bias_energy", "beta")}),
))
"""Weightings of a trained sampler's final samples: each gives observables, ESS, histograms and
an FES row set under its name (the ``estimator`` column).  A factory is called with the
inputs its ``inputs`` trait names, in that order, from: ``energy`` (n,) float64 in the
system's energy unit, ``bias_energy`` (n,) V(ξ(x)) in the same unit (0 without bias),
``log_q`` (n,) nats and ``beta``; it returns (n,) float64 log-weights (docs/method.md §6)."""
