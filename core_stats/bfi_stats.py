"""Local MAP fits from sufficient statistics ``n, y'y, X'y, X'X``.

Gaussian (exact): see below. Binomial (approximate): PASS-GLM (Huggins, Adams &
Broderick, NeurIPS 2017) replaces ``log σ(s)``, ``s = (2y − 1) x'β``, by its
degree-2 Chebyshev interpolant on ``[−2, 2]``, ``b0 + b1 s + b2 s²`` with
``b1 = 1/2`` and ``b2 ≈ −0.112`` (the curvature at 0 is −1/8); since
``(2y − 1)² = 1`` the log-likelihood becomes
``n b0 + b1 β'(2X'y − X'1) + b2 β'X'Xβ``, a function of the same sums.
The approximation is close while ``|x'β| ≲ 2`` (effects come out ~10% too
large there) and degrades for larger linear predictors.

For the Gaussian family the log posterior of :func:`core_stats.bfi_local.log_posterior`
depends on the data only through these sums (``RSS(β) = y'y − 2β'X'y + β'X'Xβ``),
so a site can fit from (differentially private, noisy) sums exactly as from
its rows. With exact sums the result equals :func:`~core_stats.bfi_local.fit_map`
(tested). With noisy sums, ``X'X`` may need damping before the call and
``RSS`` is smoothly kept positive (``rss_floor``) so ``log σ`` stays finite.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from core_stats.bfi_local import SCALE_NAME, LocalFit, MAPConvergenceError
from core_stats.families import get_family

__all__ = ["fit_map_gaussian_stats", "gaussian_log_posterior_stats", "fit_map_binomial_stats",
           "LOGISTIC_QUADRATIC"]

_LOG_2PI = float(np.log(2.0 * np.pi))
PASS_RANGE = 2.0


def _logistic_quadratic() -> tuple[float, float, float]:
    from numpy.polynomial import Chebyshev, Polynomial

    approx = Chebyshev.interpolate(lambda s: -np.logaddexp(0.0, -s), 2,
                                   domain=[-PASS_RANGE, PASS_RANGE])
    b0, b1, b2 = approx.convert(kind=Polynomial).coef
    return float(b0), float(b1), float(b2)


LOGISTIC_QUADRATIC = _logistic_quadratic()  # (b0, b1, b2) of log σ(s) on [-2, 2]


def fit_map_binomial_stats(n: float, xy: np.ndarray, xx: np.ndarray, prior: np.ndarray, *,
                           names: Sequence[str], intercept: int) -> LocalFit:
    """PASS-GLM MAP of a logistic regression: ``β = (Λ − 2 b2 X'X)⁻¹ b1 (2X'y − X'1)``.

    ``X'1`` is read from the intercept's row of ``X'X`` (column ``intercept``).
    The curvature ``A = Λ − 2 b2 X'X`` is exact for the approximate posterior.
    """
    xy, xx, prior = (np.asarray(v, dtype=float) for v in (xy, xx, prior))
    b0, b1, b2 = LOGISTIC_QUADRATIC
    signed = 2.0 * xy - xx[:, intercept]
    curvature = prior - 2.0 * b2 * 0.5 * (xx + xx.T)
    try:
        theta = np.linalg.solve(curvature, b1 * signed)
        np.linalg.cholesky(curvature)
    except np.linalg.LinAlgError:
        raise MAPConvergenceError("the curvature is not positive definite") from None
    value = n * b0 + b1 * theta @ signed + b2 * theta @ xx @ theta - 0.5 * theta @ prior @ theta
    return LocalFit(family=get_family("binomial"), names=tuple(names), theta=theta,
                    curvature=curvature, prior=prior, n=int(round(max(n, 1.0))),
                    log_posterior=float(value), gradient_max=0.0, iterations=1)


def gaussian_log_posterior_stats(theta: np.ndarray, n: float, yy: float, xy: np.ndarray,
                                 xx: np.ndarray, prior: np.ndarray, rss_floor: float = 0.0):
    """Value, gradient and Hessian in ``θ = (β, log σ)`` from the sums.

    With ``rss_floor = f > 0`` the residual sum of squares enters through the
    smooth positive ``f · log(1 + exp(RSS / f))`` (equal to RSS when RSS ≫ f),
    so noisy sums whose RSS dips below zero still give a smooth posterior.
    """
    beta, s = theta[:-1], float(theta[-1])
    a = float(np.exp(-2.0 * s))
    resid_xy = xy - xx @ beta
    raw = yy - 2.0 * beta @ xy + beta @ xx @ beta
    if rss_floor > 0:
        rss = rss_floor * float(np.logaddexp(0.0, raw / rss_floor))
        slope = float(np.exp(-np.logaddexp(0.0, -raw / rss_floor)))  # sigmoid(raw / f)
        bend = slope * (1.0 - slope) / rss_floor
    else:
        rss, slope, bend = max(raw, 1e-9 * max(n, 1.0)), 1.0, 0.0
    value = -0.5 * a * rss - n * (s + 0.5 * _LOG_2PI) - 0.5 * theta @ prior @ theta
    grad = np.concatenate([a * slope * resid_xy, [a * rss - n]]) - prior @ theta
    d = beta.size
    hess = np.empty((d + 1, d + 1))
    hess[:d, :d] = -a * (slope * xx + 2.0 * bend * np.outer(resid_xy, resid_xy))
    hess[:d, d] = hess[d, :d] = -2.0 * a * slope * resid_xy
    hess[d, d] = -2.0 * a * rss
    return value, grad, hess - prior


def fit_map_gaussian_stats(n: float, yy: float, xy: np.ndarray, xx: np.ndarray,
                           prior: np.ndarray, *, names: Sequence[str], rss_floor: float = 0.0,
                           gtol: float = 1e-12, max_iter: int = 200) -> LocalFit:
    """Newton with step halving on :func:`gaussian_log_posterior_stats`.

    ``rss_floor`` smooths ``RSS(β)`` away from zero (noisy sums can make it negative).
    """
    xy, xx, prior = (np.asarray(v, dtype=float) for v in (xy, xx, prior))
    d = xy.size
    if xx.shape != (d, d) or prior.shape != (d + 1, d + 1):
        raise ValueError("X'y, X'X and the prior do not match")
    try:
        beta = np.linalg.solve(xx + prior[:d, :d], xy)
    except np.linalg.LinAlgError:
        beta = np.zeros(d)
    rss = max(yy - 2.0 * beta @ xy + beta @ xx @ beta, rss_floor, 1e-9 * max(n, 1.0))
    theta = np.concatenate([beta, [0.5 * np.log(rss / max(n, 1.0))]])
    value, grad, hess = gaussian_log_posterior_stats(theta, n, yy, xy, xx, prior, rss_floor)
    tol = gtol * max(1.0, n)
    iteration = 0
    for iteration in range(max_iter + 1):
        if np.max(np.abs(grad)) <= tol:
            break
        if iteration == max_iter:
            raise MAPConvergenceError(f"no convergence in {max_iter} Newton iterations")
        try:
            step = np.linalg.solve(-hess, grad)
        except np.linalg.LinAlgError:
            raise MAPConvergenceError("singular curvature") from None
        if np.max(np.abs(step)) <= 1e-15 * (1.0 + np.max(np.abs(theta))):
            break
        for _ in range(60):
            trial = gaussian_log_posterior_stats(theta + step, n, yy, xy, xx, prior,
                                                 rss_floor)
            if np.isfinite(trial[0]) and trial[0] >= value - 1e-12 * abs(value):
                break
            step = step / 2.0
        theta = theta + step
        value, grad, hess = trial
    curvature = -0.5 * (hess + hess.T)
    if np.min(np.linalg.eigvalsh(curvature)) <= 0:
        raise MAPConvergenceError("the curvature at the MAP is not positive definite")
    return LocalFit(family=get_family("gaussian"), names=(*names, SCALE_NAME), theta=theta,
                    curvature=curvature, prior=prior, n=int(round(max(n, 1.0))),
                    log_posterior=value, gradient_max=float(np.max(np.abs(grad))),
                    iterations=iteration)
