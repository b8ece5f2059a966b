"""Intervals that carry the privacy noise: a parametric bootstrap of the whole DP GLMM fit.

The noise of every release is public (its σ per coordinate follows from the
calibration), so the coordinator can re-run the *same* estimator many times on
simulated releases, as post-processing (no budget): Ferrando, Wang & Sheldon
(2022, "Parametric bootstrap for differentially private confidence intervals")
do this for estimators of sufficient statistics; here the whole pipeline is
re-run — start values from a re-noised design summary, then every Newton
round with a re-noised gradient and Hessian, the same damping and step caps.

Between releases the log-likelihood is replaced by its quadratic surrogate
``ℓ(θ) ≈ -½ (θ - θ_c)ᵀ H̄ (θ - θ_c)`` centred at the DP estimate ``θ_c``, with
``H̄`` the released information when its noise leaves it well determined and
otherwise the information predicted from the design summary (``w X'X``, the
GLM weight of the noisy mean, its β block divided by the design effect of a
random intercept, :func:`design_effect`; see :func:`predicted_information`). The
simulated estimates' mean squared deviation from ``θ_c`` is the noise-and-
non-convergence covariance; the sampling covariance ``H̄⁻¹`` is added:

    ``Cov = E*[(θ* - θ_c)(θ* - θ_c)ᵀ] + H̄⁻¹``.

Run *before* the Newton rounds (centre: the start values; noise: the plan's
σ), the same simulation predicts the fit's standard errors from public
quantities and the first release, which is how a fit that cannot identify its
effects is refused after spending only its first release.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from core_stats.families import Family
from core_stats.glmm import ParameterLayout
from core_stats.glmm_fit import starting_values
from core_stats.optimize import ridge_solve
from protocols.errors import PrivacyBudgetExceeded
from securefed.dp_statistics import noise_floor, positive_definite
from securefed.vectors import from_upper_triangle

__all__ = ["NotIdentifiable", "NoiseAwareCovariance", "StartPoint", "start_point",
           "newton_update", "simulate_fit", "predicted_information", "noise_aware_covariance",
           "MAX_STEP", "MAX_START", "MIN_LOG_SD", "REPLICATES"]

MIN_LOG_SD = np.log(1e-3)  # log-Cholesky diagonals are kept above this
MAX_STEP = 1.0
MAX_START = 5.0  # |start beta| on the link scale (noisy sums can suggest absurd ones)
REPLICATES = 300


class NotIdentifiable(PrivacyBudgetExceeded):
    """The planned noise would leave the effects unidentified; the run stops (exit 3)."""


@dataclass(frozen=True)
class StartPoint:
    """Start values from the noisy design summary, and what they were made of."""

    theta: np.ndarray
    n_obs: float
    n_groups: float
    mean_y: float
    xtx: np.ndarray
    rss_per_obs: float


@dataclass(frozen=True)
class NoiseAwareCovariance:
    """The bootstrap's result: covariance of the DP estimate, and its two parts."""

    covariance: np.ndarray  # noise and non-convergence + sampling
    noise: np.ndarray  # E*[(θ* - θ_c)(θ* - θ_c)ᵀ]
    sampling: np.ndarray  # H̄⁻¹
    curvature_source: str  # "released Hessian" or "design summary, design effect"
    replicates: int

    @property
    def se(self) -> np.ndarray:
        return np.sqrt(np.diag(self.covariance))

    @property
    def sampling_se(self) -> np.ndarray:
        return np.sqrt(np.diag(self.sampling))


def start_point(layout: ParameterLayout, family: Family, summary: np.ndarray,
                summary_sd: float) -> StartPoint:
    """Start values (least squares or one IRLS step) from the noisy design summary."""
    p = layout.p
    n_obs = max(float(summary[0]), p + 2.0)
    xty = summary[3:3 + p]
    xtx = positive_definite(from_upper_triangle(summary[3 + p:3 + p + p * (p + 1) // 2], p),
                            noise_floor(summary_sd, p))
    n_groups = max(float(summary[-1]), 1.0)
    theta = starting_values(layout, family, n_obs, float(summary[1]), float(summary[2]),
                            xty, xtx)
    theta[layout.beta] = np.clip(theta[layout.beta], -MAX_START, MAX_START)
    try:
        beta = np.linalg.solve(xtx, xty)
        rss = float(summary[2]) - float(beta @ xty)
    except np.linalg.LinAlgError:
        rss = float(summary[2])
    return StartPoint(theta, n_obs, n_groups, float(summary[1]) / n_obs, xtx,
                      max(rss / n_obs, 1e-6))


def newton_update(layout: ParameterLayout, theta: np.ndarray, gradient: np.ndarray,
                  released: np.ndarray, hessian_sd: float
                  ) -> tuple[np.ndarray, np.ndarray, float]:
    """One damped, capped Newton step from a noisy gradient and noisy Hessian.

    Returns the new point, the information used for standard errors (the
    released one if positive definite, else the damped one) and the ridge.
    """
    damped = positive_definite(-released, noise_floor(hessian_sd, layout.size))
    step, ridge = ridge_solve(damped, gradient)
    step = step / max(1.0, float(np.max(np.abs(step))) / MAX_STEP)
    return keep_inside(layout, theta + step), _information(-released, damped), ridge


def keep_inside(layout: ParameterLayout, theta: np.ndarray) -> np.ndarray:
    """Log-Cholesky diagonals stay above ``MIN_LOG_SD`` (AGQ needs a positive SD)."""
    out = theta.copy()
    start = layout.cov.start
    for k, (r, c) in enumerate(layout.cholesky_entries()):
        if r == c:
            out[start + k] = max(out[start + k], MIN_LOG_SD)
    return out


def _information(released: np.ndarray, damped: np.ndarray) -> np.ndarray:
    sym = 0.5 * (released + released.T)
    try:
        np.linalg.cholesky(sym)
        return sym
    except np.linalg.LinAlgError:
        return damped


def predicted_information(layout: ParameterLayout, family: Family,
                          start: StartPoint) -> np.ndarray:
    """The information predicted from the design summary alone.

    Fixed effects: ``w X'X`` with the GLM weight at the noisy mean (binomial
    ``ȳ(1 - ȳ)``, poisson ``ȳ``, gaussian ``1 / (RSS/n)``). Each log-SD (and
    the gaussian log-scale) gets the information of ``n_groups / 2`` (``2 n``)
    — the order of a variance parameter's information — without cross terms.
    """
    info = np.zeros((layout.size, layout.size))
    if family.has_residual_sd:
        weight = 1.0 / start.rss_per_obs
    else:  # d mu / d eta at the clipped mean: the canonical GLM weight
        mean = float(np.clip(start.mean_y, 0.02, 0.98)) if family.binary \
            else max(start.mean_y, 1e-3)
        weight = family.mean_slope(mean)
    info[layout.beta, layout.beta] = weight * start.xtx
    for k in range(layout.size - layout.p):
        index = layout.p + k
        info[index, index] = 2.0 * start.n_obs if (
            layout.has_dispersion and index == layout.scale_index) else 0.5 * start.n_groups
    return info


def simulate_fit(layout: ParameterLayout, family: Family, summary: np.ndarray,
                 summary_sd: float, round_sds: Sequence[np.ndarray], centre: np.ndarray,
                 curvature: np.ndarray, replicates: int,
                 rng: np.random.Generator) -> np.ndarray:
    """``replicates`` runs of the DP fit on simulated releases; their final estimates.

    Each run re-noises the design summary (sd ``summary_sd``), takes the start
    values from it, then for each round draws the gradient ``-H̄ (θ - θ_c) + ξ``
    and Hessian ``-H̄ + Ξ`` (``Ξ`` symmetric, upper entries of the round's sd)
    and takes the same damped, capped step as the real fit.
    """
    size = layout.size
    out = np.empty((replicates, size))
    for b in range(replicates):
        noisy = summary + rng.normal(0.0, summary_sd, summary.shape)
        theta = start_point(layout, family, noisy, summary_sd).theta
        for sd in round_sds:
            gradient = curvature @ (centre - theta) + rng.normal(0.0, sd[:size])
            noise = from_upper_triangle(rng.normal(0.0, sd[size:]), size)
            theta, _, _ = newton_update(layout, theta, gradient, -curvature + noise,
                                        float(np.max(sd[size:])))
        out[b] = theta
    return out


def noise_aware_covariance(layout: ParameterLayout, family: Family, summary: np.ndarray,
                           summary_sd: float, round_sds: Sequence[np.ndarray],
                           centre: np.ndarray, start: StartPoint,
                           released_information: Sequence[np.ndarray] = (),
                           replicates: int = REPLICATES,
                           rng: np.random.Generator | None = None) -> NoiseAwareCovariance:
    """The bootstrap covariance of the DP estimate (module docstring).

    ``released_information`` are the rounds' noisy ``-Hessian`` matrices; their
    mean is the surrogate's curvature when its smallest eigenvalue clears the
    noise floor of the mean, otherwise :func:`predicted_information` is.
    """
    rng = rng if rng is not None else np.random.default_rng()
    curvature, source = _curvature(layout, family, start, released_information, round_sds)
    if source == "design summary":
        curvature = cluster_adjusted(layout, family, start, centre, curvature)
        source = "design summary, design effect"
    draws = simulate_fit(layout, family, summary, summary_sd, round_sds, centre, curvature,
                         replicates, rng)
    deviation = draws - centre
    noise = deviation.T @ deviation / replicates
    sampling = np.linalg.inv(curvature)
    return NoiseAwareCovariance(noise + sampling, noise, sampling, source, replicates)


def _curvature(layout: ParameterLayout, family: Family, start: StartPoint,
               released: Sequence[np.ndarray], round_sds: Sequence[np.ndarray]
               ) -> tuple[np.ndarray, str]:
    predicted = positive_definite(predicted_information(layout, family, start), 1e-9)
    if not released:
        return predicted, "design summary"
    size = layout.size
    mean = sum(0.5 * (m + m.T) for m in released) / len(released)
    sd = float(np.max(np.concatenate([s[size:] for s in round_sds]))) / np.sqrt(len(released))
    if float(np.linalg.eigvalsh(mean)[0]) > noise_floor(sd, size):
        return mean, "released Hessian"
    return predicted, "design summary"


def design_effect(layout: ParameterLayout, family: Family, start: StartPoint,
                  theta: np.ndarray) -> float:
    """Kish's design effect ``1 + (m - 1) ICC`` of a random intercept, from released values only.

    ``m = n / G`` from the noisy counts, the ICC from the current estimate of the
    first random-effect SD (relative to the residual SD for the gaussian, on the
    latent scale with the GLM weight otherwise). Exact for covariates constant
    within balanced groups, an overstatement for covariates that vary within
    groups, an understatement when group sizes are very unequal.
    """
    if not layout.random_effects or layout.n_cov == 0 or 0 in layout.zero_columns:
        return 1.0
    raw = float(theta[layout.p])
    sd = abs(raw) if 0 in layout.linear_columns else float(np.exp(min(raw, 20.0)))
    if family.has_residual_sd:
        tau2 = sd**2
    else:
        mean = float(np.clip(start.mean_y, 0.02, 0.98)) if family.binary \
            else max(start.mean_y, 1e-3)
        tau2 = sd**2 * family.mean_slope(mean)
    icc = tau2 / (1.0 + tau2)
    size = max(start.n_obs / max(start.n_groups, 1.0), 1.0)
    return 1.0 + (size - 1.0) * icc


def cluster_adjusted(layout: ParameterLayout, family: Family, start: StartPoint,
                     theta: np.ndarray, curvature: np.ndarray) -> np.ndarray:
    """``curvature`` with its fixed-effect block divided by :func:`design_effect`."""
    out = curvature.copy()
    deff = design_effect(layout, family, start, theta)
    beta = layout.beta
    out[beta, :] /= np.sqrt(deff)
    out[:, beta] /= np.sqrt(deff)
    return out
