"""A check for a basin the trained sampler missed, which no ESS can show (docs/method.md §10).

After a biased trained run, chains run the neural-proposal MCMC kernel (a local sweep, a global
proposal from the frozen sampler, an order refresh; pipeline/neural_mcmc.py) on the frozen
biased target π_V, started apart: chain c starts from a configuration in which a fraction
c/(C−1) of the sites takes the state c mod q and the rest are uniform, so the starts span the
CV range, pure states included. These chains are exact for π_V whatever the sampler's coverage,
and the bias flattens the barriers for their local moves. The mean of every CV dimension from
them (log w = βV) is compared with the run's likelihood-weighted estimate:

    z = |mean_run − mean_chains| / sqrt(SE_run² + SE_chains²),

against the two-sided threshold at a family-wise 1 % over the campaign's temperatures and the
CV dimensions (Bonferroni). Split-R̂ of the chains' CV says whether they mixed; above 1.1 the
check is inconclusive (their errors cannot be trusted), and it warns as well. Agreement does not prove coverage: the chains too may miss a basin that
neither their local moves nor the sampler's proposals reach in the budget.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.stats
import torch
from tqdm.auto import tqdm

from pipeline import estimators as est
from pipeline.neural_mcmc import BiasedTarget, chain_round, start_chains

__all__ = ["spread_starts", "coverage_check", "warning_of"]

FAMILY_WISE_LEVEL = 0.01
MIXED_RHAT = 1.1


def spread_starts(n_chains: int, n_sites: int, n_states: int, generator: torch.Generator) -> torch.Tensor:
    """Starting configurations int64 ``(n_chains, n_sites)`` spread over the CV range: in chain
    c a fraction c/(n_chains − 1) of the sites, chosen at random, holds state c mod n_states,
    the others a uniform state."""
    fraction = torch.linspace(0.0, 1.0, n_chains, dtype=torch.float64)[:, None]
    dominant = (torch.arange(n_chains) % n_states)[:, None]
    uniform = torch.randint(n_states, (n_chains, n_sites), generator=generator)
    pinned = torch.rand((n_chains, n_sites), generator=generator, dtype=torch.float64) < fraction
    return torch.where(pinned, dominant, uniform)


def coverage_check(system, beta: float, bias, sampler, energy_fn, run_cv_mean: np.ndarray, run_cv_stderr: np.ndarray,
                   n_chains: int, n_sweeps: int, n_temperatures: int, seed: int, progress: bool = False) -> dict:
    """Run the check (``n_sweeps`` rounds of ``n_chains`` chains, the first fifth dropped) and
    compare with the run's CV means ``run_cv_mean`` / ``run_cv_stderr`` float64 (d,).
    ``sampler`` None (walkers trained elsewhere) leaves out the global moves; ``progress``
    shows a bar. Returns
    a dict for summary.json: chain means and errors, z per dimension, the threshold, split-R̂,
    ``verdict`` (``agree``, ``disagree`` or ``inconclusive``) and the energies it cost."""
    generator = torch.Generator(device=sampler.device if sampler is not None else "cpu").manual_seed(seed)
    target = BiasedTarget(system, beta, bias.value, energy_fn)
    starts = spread_starts(n_chains, system.n_sites, system.n_states, torch.Generator().manual_seed(seed))
    state = start_chains(starts, target, sampler, generator)
    burn_in = n_sweeps // 5
    cvs = []
    for sweep in tqdm(range(n_sweeps), desc="coverage check", unit="round", disable=not progress, leave=False):
        state, *_ = chain_round(state, target, generator, system.n_sites, sampler)
        if sweep >= burn_in:
            cvs.append(state.cv.numpy())
    cv = np.stack(cvs)                                                        # (rounds, chains, d)
    log_w = beta * bias.value(cv.reshape(-1, cv.shape[-1])).reshape(cv.shape[:2])
    dims = cv.shape[-1]
    means, errors, rhats = np.empty(dims), np.empty(dims), np.empty(dims)
    for k in range(dims):   # at most two CV dimensions
        means[k], errors[k] = est.chain_weighted_mean_and_stderr(cv[:, :, k], log_w)
        rhats[k] = est.split_rhat(cv[:, :, k])
    z = np.abs(np.asarray(run_cv_mean) - means) / np.sqrt(np.asarray(run_cv_stderr) ** 2 + errors ** 2)
    threshold = float(scipy.stats.norm.isf(FAMILY_WISE_LEVEL / (2 * n_temperatures * dims)))
    mixed = bool(np.all(np.nan_to_num(rhats, nan=1.0) < MIXED_RHAT))
    verdict = "inconclusive" if not mixed else ("disagree" if np.any(z > threshold) else "agree")
    return {"chain_cv_mean": means.tolist(), "chain_cv_stderr": errors.tolist(),
            "run_cv_mean": np.asarray(run_cv_mean).tolist(), "run_cv_stderr": np.asarray(run_cv_stderr).tolist(),
            "z": z.tolist(), "threshold": threshold, "rhat": rhats.tolist(), "verdict": verdict,
            "chains": n_chains, "sweeps": n_sweeps,
            "energy_evaluations": {"full": n_chains * (1 + (n_sweeps if sampler is not None else 0)),
                                   "local": n_chains * n_sweeps * system.n_sites}}


def warning_of(check: dict, cv_names) -> str | None:
    """The console/summary warning for a check that disagrees or did not mix, else None."""
    if check["verdict"] == "agree":
        return None
    shown = ", ".join(f"{name}: run {a:.4g} ± {sa:.2g} vs chains {b:.4g} ± {sb:.2g} (z = {z:.1f})"
                      for name, a, sa, b, sb, z in zip(cv_names, check["run_cv_mean"], check["run_cv_stderr"],
                                                       check["chain_cv_mean"], check["chain_cv_stderr"], check["z"]))
    if check["verdict"] == "disagree":
        return (f"coverage check failed: exact chains on the frozen bias disagree with the sampler's estimate "
                f"beyond the threshold z = {check['threshold']:.2f} ({shown}); the sampler has probably missed a "
                "basin and this temperature is unreliable")
    rhat = max((r for r in check["rhat"] if not math.isnan(r)), default=math.nan)
    return (f"coverage check inconclusive: its chains did not mix (split R-hat {rhat:.2f} > {MIXED_RHAT}); "
            f"raise sampling.coverage_check_sweeps ({shown})")
