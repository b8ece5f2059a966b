"""Wald inference, information criteria and AUC from summed quantities.

Standard errors come from the inverse of the summed negative Hessian in
``theta = (beta, log-Cholesky, [log sigma])``: ``Cov = (-H)^{-1}``. Random-effect
SDs and correlations are smooth functions of the log-Cholesky parameters;
their CIs are Wald intervals on the log scale (SDs) and Fisher's z scale
(correlations), with the delta-method gradients computed exactly by jets.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core_stats.glmm import ParameterLayout
from core_stats.jets import Jet
from core_stats.special import ndtr, ndtri

__all__ = [
    "FixedEffect", "RandomEffectSD", "RandomEffectCorrelation", "wald_fixed_effects",
    "random_effect_table", "dispersion_estimate", "information_criteria",
    "auc_from_histograms",
]


@dataclass(frozen=True)
class FixedEffect:
    term: str
    estimate: float
    std_error: float
    z_value: float
    p_value: float
    ci_low: float
    ci_high: float


@dataclass(frozen=True)
class RandomEffectSD:
    group: str
    term: str
    sd: float
    ci_low: float | None
    ci_high: float | None


@dataclass(frozen=True)
class RandomEffectCorrelation:
    group: str
    term1: str
    term2: str
    correlation: float
    ci_low: float | None
    ci_high: float | None


def covariance(neg_hessian: np.ndarray) -> np.ndarray:
    """``(-H)^{-1}``; NaN-filled when the curvature is not positive definite."""
    try:
        np.linalg.cholesky(neg_hessian)
    except np.linalg.LinAlgError:
        return np.full_like(neg_hessian, np.nan)
    return np.linalg.inv(neg_hessian)


def wald_fixed_effects(names: tuple[str, ...], beta: np.ndarray, cov_beta: np.ndarray,
                       level: float = 0.95) -> list[FixedEffect]:
    """``z = beta / se``, two-sided normal p-values, ``beta -/+ z_{1-a/2} se``."""
    crit = ndtri(0.5 + level / 2.0)
    se = np.sqrt(np.diag(cov_beta))
    z = beta / se
    p = 2.0 * ndtr(-np.abs(z))
    return [FixedEffect(n, float(b), float(s), float(zz), float(pp), float(b - crit * s),
                        float(b + crit * s)) for n, b, s, zz, pp in zip(names, beta, se, z, p,
                                                                        strict=True)]


def _sd_and_corr_jets(layout: ParameterLayout, phi: np.ndarray) -> tuple[list[Jet], dict]:
    """Jets (w.r.t. phi) of log SDs and Fisher-z correlations of Sigma = Lambda Lambda'."""
    q, n = layout.q, layout.n_cov
    lam = [[Jet.constant(0.0, 1, n) for _ in range(q)] for _ in range(q)]
    for k, (r, c) in enumerate(layout.cholesky_entries()):
        jet = Jet.variable(phi[k], k, 1, n)
        lam[r][c] = jet.exp() if r == c else jet
    cov = [[sum((lam[r][k] * lam[c][k] for k in range(q)), Jet.constant(0.0, 1, n))
            for c in range(q)] for r in range(q)]
    log_sd = [cov[r][r].log() * 0.5 for r in range(q)]
    fisher = {}
    for r in range(q):
        for c in range(r):
            corr = cov[r][c] / (cov[r][r] * cov[c][c]).sqrt()
            fisher[(r, c)] = ((1.0 + corr) / (1.0 - corr)).log() * 0.5
    return log_sd, fisher


def random_effect_table(layout: ParameterLayout, theta: np.ndarray, cov_theta: np.ndarray,
                        level: float = 0.95) -> tuple[list[RandomEffectSD],
                                                      list[RandomEffectCorrelation]]:
    """SDs and correlations of the random effects (and the residual SD) with CIs.

    A dispersion that is not a residual SD (Gamma, NB2) is not a row here:
    see :func:`dispersion_estimate`.
    """
    crit = ndtri(0.5 + level / 2.0)
    sds: list[RandomEffectSD] = []
    corrs: list[RandomEffectCorrelation] = []
    if layout.random_effects:
        phi = theta[layout.cov]
        cov_phi = cov_theta[layout.cov, layout.cov]
        with np.errstate(divide="ignore", invalid="ignore"):  # SD 0 or correlation ±1
            log_sd, fisher = _sd_and_corr_jets(layout, phi)
        for r, jet in enumerate(log_sd):
            g = jet.grad[0]
            se = float(np.sqrt(g @ cov_phi @ g))
            est = float(jet.val[0])
            sds.append(RandomEffectSD(layout.group, layout.random_names[r], float(np.exp(est)),
                                      _maybe(np.exp(est - crit * se)),
                                      _maybe(np.exp(est + crit * se))))
        for (r, c), jet in fisher.items():
            g = jet.grad[0]
            se = float(np.sqrt(g @ cov_phi @ g))
            est = float(jet.val[0])
            corrs.append(RandomEffectCorrelation(
                layout.group, layout.random_names[c], layout.random_names[r],
                float(np.tanh(est)), _maybe(np.tanh(est - crit * se)),
                _maybe(np.tanh(est + crit * se))))
    else:
        sds = [RandomEffectSD(layout.group, name, 0.0, None, None) for name in layout.random_names]
    if layout.has_dispersion and layout.residual_scale:
        k = layout.scale_index
        est, se = float(theta[k]), float(np.sqrt(cov_theta[k, k]))
        sds.append(RandomEffectSD("Residual", "", float(np.exp(est)),
                                  _maybe(np.exp(est - crit * se)), _maybe(np.exp(est + crit * se))))
    return sds, corrs


def dispersion_estimate(layout: ParameterLayout, theta: np.ndarray, cov_theta: np.ndarray,
                        report, level: float = 0.95) -> dict:
    """The family's dispersion as R reports it, with a Wald CI from the log scale.

    ``report`` maps ``s`` to the reported value (monotone: Gamma ``e^{2s}``,
    NB2 ``e^s``), so the interval ``report(s -/+ z se(s))`` keeps its coverage.
    """
    crit = ndtri(0.5 + level / 2.0)
    k = layout.scale_index
    est, se = float(theta[k]), float(np.sqrt(cov_theta[k, k]))
    return {"parameter": layout.dispersion_name, "estimate": report(est),
            "ci_low": _maybe(report(est - crit * se)), "ci_high": _maybe(report(est + crit * se))}


def _maybe(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def information_criteria(loglik: float, n_params: int, n_obs: int) -> tuple[float, float]:
    """``AIC = -2 l + 2 k`` and ``BIC = -2 l + k log n``."""
    return -2.0 * loglik + 2.0 * n_params, -2.0 * loglik + n_params * np.log(n_obs)


def auc_from_histograms(positives: np.ndarray, negatives: np.ndarray) -> float:
    """Area under the ROC curve from summed score histograms on a common grid.

    ``AUC = P(S+ > S-) + P(S+ = S-) / 2`` with scores in the same bin counted
    as ties, so the error is bounded by the tie mass of the finest bin.
    """
    pos, neg = np.asarray(positives, float), np.asarray(negatives, float)
    if pos.sum() == 0 or neg.sum() == 0:
        return float("nan")
    below = np.cumsum(neg) - neg
    wins = float(np.sum(pos * below) + 0.5 * np.sum(pos * neg))
    return wins / float(pos.sum() * neg.sum())
