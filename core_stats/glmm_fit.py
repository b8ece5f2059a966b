"""Fitting a GLMM from summed site terms, with singular fits and the L2 penalty.

The driver never sees data: it calls ``evaluate(layout, theta, derivatives)``,
which returns the sum over sites of each site's :func:`core_stats.glmm.site_terms`
(however that sum was protected). On top of Newton's method it adds:

* the paper's penalty ``- lambda |beta|^2`` on every fixed effect except the
  intercept (penalising the intercept would tie the fit to the outcome's coding);
* boundary handling: when a random-effect SD (relative to the residual SD
  for the Gaussian family) falls below ``0.05`` the model with ``Lambda = 0``
  (the GLM) is fitted; at its optimum the sites also release the score of
  ``Sigma`` at 0 (a sum over groups). If that score is not positive the
  boundary is a local maximum and the fit is reported singular, as lme4 does,
  with ``sigma = 0`` and the GLM's estimates; otherwise the full fit resumes.
  A fit converging with an SD below ``1e-4`` (lme4's ``isSingular``
  tolerance) is singular too. With vector random effects (q > 1) a diagonal
  of the relative Cholesky factor below ``1e-4`` stops the fit and reports it
  singular and not converged, with advice to simplify the random-effect term.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from core_stats.families import Family
from core_stats.glmm import ParameterLayout
from core_stats.optimize import NewtonResult, NewtonStep, SummedTerms, newton_maximize

__all__ = ["GLMMEstimate", "fit_glmm", "starting_values", "l2_penalty"]

Evaluate = Callable[[ParameterLayout, np.ndarray, bool], SummedTerms]

BOUNDARY_WATCH = 0.05
SINGULAR_TOL = 1e-4
LOG_SD_START = float(np.log(0.5))  # random-effect SD start for binomial/Poisson
MAX_LOG_SD_STEP = 1.0  # trust region on log-Cholesky parameters per Newton step


@dataclass(frozen=True)
class GLMMEstimate:
    """The optimum: parameters, their layout, and the summed terms there."""

    layout: ParameterLayout
    theta: np.ndarray
    loglik: float  # unpenalised marginal log-likelihood
    terms: SummedTerms  # objective (penalised if lambda > 0) at theta
    converged: bool
    singular: bool
    rounds: int
    iterations: int
    trace: tuple[NewtonStep, ...]
    message: str
    penalty: float


def starting_values(layout: ParameterLayout, family: Family, n: float, sum_y: float,
                    sum_y2: float, xty: np.ndarray, xtx: np.ndarray) -> np.ndarray:
    """Start values from the design summary sums ``n, sum y, sum y^2, X'y, X'X``.

    Gaussian: ordinary least squares ``beta = (X'X)^{-1} X'y``, and ``RSS / n``
    split evenly between the residual and the random-effect variance. Binomial and Poisson:
    one IRLS step from the null model (intercept ``g(ybar)``, weight
    ``w = V(ybar)`` constant): ``beta = beta_0 + (X'X)^{-1} X'(y - ybar) / w``,
    and random-effect SD 0.5, with the Poisson intercept lowered by
    ``sigma^2 / 2`` so the marginal mean is kept. (Chosen by measuring the
    rounds to convergence on the reference problems: at most 8.)
    """
    theta = np.zeros(layout.size)
    mean = sum_y / n
    has_intercept = "(Intercept)" in layout.fixed_names
    try:
        xtx_inv_xty = np.linalg.solve(xtx, xty)
    except np.linalg.LinAlgError:
        xtx_inv_xty = np.zeros(layout.p)
    if family.has_dispersion:
        beta = xtx_inv_xty
        rss = max(sum_y2 - float(beta @ xty), 1e-12 * max(sum_y2, 1.0))
        log_sd = 0.5 * np.log(rss / n)
        half = log_sd - 0.5 * np.log(2.0)  # split RSS/n evenly between the two variances
        theta[layout.scale_index] = half
        theta[layout.cov] = _log_cholesky_start(layout) + half
    elif has_intercept:
        mu = float(np.clip(mean, 1e-6, 1 - 1e-6)) if family.name == "binomial" else max(mean, 1e-6)
        weight = mu * (1.0 - mu) if family.name == "binomial" else mu
        beta = np.zeros(layout.p)
        intercept = layout.fixed_names.index("(Intercept)")
        beta[intercept] = family.link_value(mean)
        step = np.linalg.solve(xtx, xty - mean * xtx[intercept]) / weight if weight > 0 else 0.0
        beta = beta + step
        if family.name == "poisson" and layout.random_effects:
            beta[intercept] -= 0.5 * np.exp(2 * LOG_SD_START)
        theta[layout.cov] = _log_cholesky_start(layout) + LOG_SD_START
    else:
        beta = np.zeros(layout.p)
        theta[layout.cov] = _log_cholesky_start(layout) + LOG_SD_START
    theta[layout.beta] = beta
    return theta


def _log_cholesky_start(layout: ParameterLayout) -> np.ndarray:
    """log-Cholesky of the identity: zeros (log 1 on the diagonal, 0 off it)."""
    return np.zeros(layout.n_cov)


def l2_penalty(layout: ParameterLayout, lam: float) -> Callable[[np.ndarray, bool], SummedTerms]:
    """``-lambda sum_j beta_j^2`` over non-intercept fixed effects, as summed terms."""
    mask = np.zeros(layout.size)
    mask[layout.beta] = [0.0 if n == "(Intercept)" else 1.0 for n in layout.fixed_names]

    def penalty(theta: np.ndarray, derivatives: bool) -> SummedTerms:
        value = -lam * float(np.sum(mask * theta**2))
        if not derivatives:
            return SummedTerms(value)
        return SummedTerms(value, -2.0 * lam * mask * theta, np.diag(-2.0 * lam * mask))

    return penalty


def relative_sds(layout: ParameterLayout, theta: np.ndarray) -> np.ndarray:
    """Random-effect SDs, divided by the residual SD for the Gaussian family."""
    if not layout.random_effects:
        return np.zeros(layout.q)
    lam = layout.lambda_matrix(theta)
    sds = np.sqrt(np.sum(lam**2, axis=1))
    if layout.has_dispersion:
        sds = sds / np.exp(theta[layout.scale_index])
    return sds


def relative_cholesky_diagonal(layout: ParameterLayout, theta: np.ndarray) -> np.ndarray:
    """Diagonal of Lambda (relative to the residual SD for Gaussian): lme4's theta test."""
    diag = np.abs(np.diag(layout.lambda_matrix(theta)))
    if layout.has_dispersion:
        diag = diag / np.exp(theta[layout.scale_index])
    return diag


def _reduce(layout: ParameterLayout, theta: np.ndarray) -> np.ndarray:
    reduced = layout.without_random_effects()
    out = np.zeros(reduced.size)
    out[reduced.beta] = theta[layout.beta]
    if layout.has_dispersion:
        out[reduced.scale_index] = theta[layout.scale_index]
    return out


def _boundary_is_maximum(terms: SummedTerms) -> bool:
    """The summed score of ``Sigma`` at 0 is negative semi-definite."""
    score = terms.extra
    if score is None:
        raise ValueError("the sites did not release the boundary score")
    return bool(np.max(np.linalg.eigvalsh(score)) <= 1e-10 * (1.0 + np.abs(score).max()))


def fit_glmm(evaluate: Evaluate, layout: ParameterLayout, start: np.ndarray, *,
             lam: float = 0.0, tol: float = 1e-8, max_iter: int = 100,
             on_step: Callable[[NewtonStep], None] | None = None) -> GLMMEstimate:
    """Maximise the (penalised) marginal log-likelihood from summed site terms."""
    rounds = 0

    def run(lay: ParameterLayout, theta0: np.ndarray, watch: bool) -> NewtonResult:
        nonlocal rounds
        penalty = l2_penalty(lay, lam)

        def objective(theta: np.ndarray, derivatives: bool) -> SummedTerms:
            return evaluate(lay, theta, derivatives) + penalty(theta, derivatives)

        def heading_to_boundary(theta: np.ndarray) -> str | None:
            if not watch:
                return None
            if lay.q == 1:
                return "variance near zero" if relative_sds(lay, theta)[0] < BOUNDARY_WATCH \
                    else None
            if np.min(relative_cholesky_diagonal(lay, theta)) < SINGULAR_TOL:
                return ("the random-effect covariance is singular (a variance or a correlation "
                        "at the boundary): simplify the random-effect term")
            return None

        cap = np.full(lay.size, np.inf)
        cap[lay.cov] = MAX_LOG_SD_STEP
        result = newton_maximize(objective, theta0, tol=tol, max_iter=max_iter,
                                 stop_when=heading_to_boundary, on_step=on_step, max_step=cap)
        rounds += result.evaluations
        return result

    def finish(lay: ParameterLayout, res: NewtonResult, singular: bool) -> GLMMEstimate:
        pen = -l2_penalty(lay, lam)(res.theta, False).value
        return GLMMEstimate(lay, res.theta, res.terms.value + pen, res.terms, res.converged,
                            singular, rounds, res.iterations, res.trace, res.message, lam)

    full = run(layout, start, watch=layout.random_effects)
    if not layout.random_effects:
        return finish(layout, full, singular=False)
    if layout.q > 1:
        boundary = full.message.startswith("the random-effect covariance is singular")
        return finish(layout, full, singular=boundary)
    near_zero = full.message == "variance near zero"
    tiny = full.converged and layout.q == 1 and relative_sds(layout, full.theta)[0] < SINGULAR_TOL
    if not (near_zero or tiny):
        return finish(layout, full, singular=False)
    reduced_layout = layout.without_random_effects()
    reduced = run(reduced_layout, _reduce(layout, full.theta), watch=False)
    if tiny or _boundary_is_maximum(reduced.terms):
        return finish(reduced_layout, reduced, singular=True)
    resumed = run(layout, full.theta, watch=False)
    if resumed.converged and relative_sds(layout, resumed.theta)[0] < SINGULAR_TOL:
        return finish(reduced_layout, reduced, singular=True)
    return finish(layout, resumed, singular=False)
