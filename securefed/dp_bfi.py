"""BFI under DP: one noisy secure sum of sufficient statistics, intervals that carry the noise.

For the homogeneous BFI model (all parameters shared) the combination the
sites' local fits approximate is the posterior of the pooled data, and for the
gaussian family (and binomial under the PASS-GLM quadratic approximation,
:mod:`core_stats.bfi_stats`) that posterior is a function of the *summed*
sufficient statistics. So under DP each site releases its clipped statistics
once, into the secure sum: under ``secagg``/``ckks`` the noise is the
distributed discrete Gaussian sized for the sum over m contributors, instead
of each site's whole noise on its own small sample (the earlier design, whose
local fits from heavily-noised statistics shrank every effect towards the
prior). The coordinator fits the MAP from the noisy sums (post-processing).

Intervals: the noise of the sum is public in distribution (the σ of its
calibration), so the coordinator redraws it ``B`` times around the noisy sums,
refits, and adds the replicates' mean squared deviation from the estimate to
the posterior covariance (parametric bootstrap, Ferrando, Wang & Sheldon 2022):

    ``Cov = A⁻¹ + E*[(θ* - θ)(θ* - θ)ᵀ]``.

A replicate whose fit fails is counted (``failed_replicates``) and left out.
"""

from __future__ import annotations

import numpy as np

from core_stats import bfi
from core_stats.families import Family
from securefed.dp_statistics import local_fit_from_stats

__all__ = ["REPLICATES", "ESTIMATOR", "fit_from_noisy_sums", "precision_weighted"]

REPLICATES = 300
ESTIMATOR = "MAP of the pooled model from securely summed noisy sufficient statistics"


def precision_weighted(first: float, first_sd: float, second: float, second_sd: float) -> float:
    """``(a/σa² + b/σb²) / (1/σa² + 1/σb²)``: two noisy releases of one count, combined
    (the count round's ``n``, Δ = 1, is much sharper than the sums' own)."""
    wa, wb = 1.0 / first_sd**2, 1.0 / second_sd**2
    return float((wa * first + wb * second) / (wa + wb))


def fit_from_noisy_sums(total: np.ndarray, names: tuple[str, ...], family: Family,
                        prior: np.ndarray, noise_sd: float, n_sites: int, level: float,
                        replicates: int = REPLICATES,
                        rng: np.random.Generator | None = None) -> tuple[bfi.BFIFit, dict]:
    """The homogeneous fit from the noisy summed statistics, with noise-aware covariance.

    Raises ``MAPConvergenceError`` / ``LinAlgError`` when the sums admit no fit.
    """
    rng = rng if rng is not None else np.random.default_rng()
    local = local_fit_from_stats(total, names, family, prior, noise_sd)
    draws, failed = [], 0
    for _ in range(replicates):
        try:
            with np.errstate(over="ignore", invalid="ignore"):  # a wild draw fails, counted
                draws.append(local_fit_from_stats(
                    total + rng.normal(0.0, noise_sd, total.shape), names, family, prior,
                    noise_sd).theta)
        except (bfi.MAPConvergenceError, np.linalg.LinAlgError):
            failed += 1
    deviation = np.array(draws) - local.theta
    noise = deviation.T @ deviation / max(len(draws), 1)
    sampling = np.asarray(local.covariance)
    covariance = sampling + noise
    fit = bfi.BFIFit(bfi.FitKind.HOMOGENEOUS, family, local.names, local.theta, covariance,
                     prior, n_sites, int(round(max(float(total[0]), 0.0))), level)
    full = list(local.names)
    info = {
        "estimator": ESTIMATOR,
        "interval_method": "parametric bootstrap of the noisy sums (Ferrando, Wang & Sheldon "
                           "2022) + posterior covariance",
        "replicates": replicates, "failed_replicates": failed, "parameters": full,
        "noise_aware_covariance": covariance.tolist(), "noise_covariance": noise.tolist(),
        "noise_sd_of_sums": noise_sd,
        "realised_se": dict(zip(full, np.sqrt(np.diag(covariance)).tolist(), strict=True)),
        "sampling_se": dict(zip(full, np.sqrt(np.diag(sampling)).tolist(), strict=True)),
        "noise_share_of_variance": float(np.max(np.diag(noise) / np.diag(covariance))),
        "n_obs_noisy": float(total[0]),
    }
    return fit, info
