"""Fitting a GLMM from summed site terms, with singular fits and the L2 penalty.

The driver never sees data: it calls ``evaluate(layout, theta, derivatives)``,
which returns the sum over sites of each site's :func:`core_stats.glmm.site_terms`
(however that sum was protected). On top of Newton's method it adds:

* start values from the design summary (:func:`starting_values`) and a trust
  region: at most ``MAX_LOG_SD_STEP`` on a log-Cholesky diagonal per step, and
  on an off-diagonal Cholesky entry that many times its effect's current SD;
* the paper's penalty ``- lambda |beta|^2`` on every fixed effect except the
  intercept (penalising the intercept would tie the fit to the outcome's coding);
* boundary handling for one random effect: when its SD (relative to the
  residual SD for the Gaussian family) falls below ``BOUNDARY_WATCH`` the
  model with ``Lambda = 0`` (the GLM) is fitted; at its optimum the sites also
  release the score of ``Sigma`` at 0 (a sum over groups). If that score is
  not positive the boundary is a local maximum and the fit is reported
  singular, as lme4 does, with ``sigma = 0`` and the GLM's estimates;
  otherwise the full fit resumes. A fit converging with an SD below ``1e-4``
  (lme4's ``isSingular`` tolerance) is singular too;
* boundary handling for vector random effects (q > 1): when a column of
  ``Lambda`` collapses (its diagonal, relative as above or as a share of its
  effect's SD, below ``BOUNDARY_WATCH``), the fit moves to the boundary face
  where that column is 0 (:mod:`core_stats.glmm_boundary`), fits the
  rank-deficient covariance there, and keeps it, converged and singular, when
  the score test at its optimum finds no direction of ascent; otherwise the
  face is rejected, the generic face of the same rank is tried, and the
  previous fit resumes. lme4 converges on the same boundary; where lme4
  stops on a face that is not a maximum (an intercept SD of exactly 0), the
  score test moves on to the higher optimum.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from core_stats.families import Family
from core_stats.glmm import ParameterLayout
from core_stats.glmm_boundary import (
    Rejected,
    collapse_measures,
    face_after,
    factor_with_zero_columns,
    glm_curvature,
    lifted,
    negative_semidefinite,
    point_on,
    probe_objective,
    zero_columns,
)
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
    terms: SummedTerms  # objective (penalised if lambda > 0) at theta (see optimize)
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
    split evenly between the residual and the random-effect variance. Other families:
    one IRLS step from the null model (intercept ``g(ybar)``, slope
    ``m = d mu / d eta`` at ``ybar`` constant): ``beta = beta_0 + (X'X)^{-1} X'(y - ybar) / m``,
    and random-effect SD 0.5 (the family's :meth:`~core_stats.families.Family.random_sd_start`),
    with a log-link intercept lowered by ``sigma^2 / 2`` so the marginal mean is kept; a
    dispersion that is not a residual SD starts at the family's moment estimate. With
    random slopes each effect's SD is that divided by the root mean square of its column (from
    ``X'X``) and the correlations start at 0. (Chosen by measuring the rounds to
    convergence on the reference problems: at most 8 for random intercepts,
    12 for regular random-slope fits.)
    """
    theta = np.zeros(layout.size)
    mean = sum_y / n
    has_intercept = "(Intercept)" in layout.fixed_names
    try:
        xtx_inv_xty = np.linalg.solve(xtx, xty)
    except np.linalg.LinAlgError:
        xtx_inv_xty = np.zeros(layout.p)
    residual = family.dispersion is not None and family.dispersion.residual_sd
    if residual:
        beta = xtx_inv_xty
        rss = max(sum_y2 - float(beta @ xty), 1e-12 * max(sum_y2, 1.0))
        log_sd = 0.5 * np.log(rss / n)
        half = log_sd - 0.5 * np.log(2.0)  # split RSS/n evenly between the two variances
        theta[layout.scale_index] = half
        theta[layout.cov] = _log_cholesky_start(layout, n, xtx, half)
    elif has_intercept:
        slope = family.mean_slope(mean)
        beta = np.zeros(layout.p)
        intercept = layout.fixed_names.index("(Intercept)")
        beta[intercept] = family.link_value(mean)
        step = np.linalg.solve(xtx, xty - mean * xtx[intercept]) / slope if slope else 0.0
        beta = beta + step
        log_sd = float(np.log(family.random_sd_start(beta[intercept], np.exp(LOG_SD_START))))
        if family.link == "log" and layout.random_effects:  # keep the marginal mean
            beta[intercept] -= 0.5 * np.exp(2 * log_sd)
        theta[layout.cov] = _log_cholesky_start(layout, n, xtx, log_sd)
    else:
        beta = np.zeros(layout.p)
        theta[layout.cov] = _log_cholesky_start(layout, n, xtx, LOG_SD_START)
    if family.has_dispersion and not residual:
        theta[layout.scale_index] = family.start_dispersion(n, sum_y, sum_y2)
    theta[layout.beta] = beta
    return theta


def _log_cholesky_start(layout: ParameterLayout, n: float, xtx: np.ndarray,
                        log_sd: float) -> np.ndarray:
    """log-Cholesky of a diagonal ``Sigma``: each effect's SD is ``exp(log_sd)`` divided by
    the root mean square of its ``z`` column (from ``X'X`` when ``z`` is a fixed-effect
    column, else 1), so every random effect moves ``eta`` by about as much; no correlation.
    """
    out = np.zeros(layout.n_cov)
    for k, (r, c) in enumerate(layout.cholesky_entries()):
        if r == c:
            out[k] = log_sd - 0.5 * np.log(_mean_square(layout, layout.random_names[r], n, xtx))
    return out


def _mean_square(layout: ParameterLayout, name: str, n: float, xtx: np.ndarray) -> float:
    if name not in layout.fixed_names or n <= 0:
        return 1.0
    j = layout.fixed_names.index(name)
    value = float(xtx[j, j]) / n
    return value if np.isfinite(value) and value > 0 else 1.0


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
    return np.sqrt(np.sum(lam**2, axis=1)) / layout.unit(theta)


def relative_cholesky_diagonal(layout: ParameterLayout, theta: np.ndarray) -> np.ndarray:
    """Diagonal of Lambda (relative to the residual SD for Gaussian): lme4's theta test."""
    return np.abs(np.diag(layout.lambda_matrix(theta))) / layout.unit(theta)


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
    fitter = _Fitter(evaluate, lam, tol, max_iter, on_step)
    if not layout.random_effects:
        return fitter.finish(layout, fitter.run(layout, start), singular=False)
    if layout.q == 1:
        return fitter.scalar(layout, start)
    found = fitter.vector(layout, start)
    assert isinstance(found, GLMMEstimate)  # the full layout is never rejected
    return found


class _Fitter:
    """Newton runs on one objective, counting the distinct rounds they ask for."""

    def __init__(self, evaluate: Evaluate, lam: float, tol: float, max_iter: int,
                 on_step: Callable[[NewtonStep], None] | None) -> None:
        self.evaluate, self.lam, self.tol, self.max_iter = evaluate, lam, tol, max_iter
        self.on_step = on_step
        self.queries: set[tuple] = set()
        self.rejected: dict[tuple[int, ...], Rejected] = {}  # faces that are not maxima

    def terms(self, lay: ParameterLayout, theta: np.ndarray, derivatives: bool) -> SummedTerms:
        self.queries.add((lay, derivatives, np.asarray(theta, dtype=float).tobytes()))
        return self.evaluate(lay, theta, derivatives)

    def run(self, lay: ParameterLayout, theta0: np.ndarray,
            stop_when: Callable[[np.ndarray, SummedTerms], str | None] | None = None
            ) -> NewtonResult:
        penalty = l2_penalty(lay, self.lam)
        summed = probe_objective(self.terms, lay) if lay.zero_columns else \
            (lambda theta, derivatives: self.terms(lay, theta, derivatives))

        def objective(theta: np.ndarray, derivatives: bool) -> SummedTerms:
            return summed(theta, derivatives) + penalty(theta, derivatives)

        return newton_maximize(objective, theta0, tol=self.tol, max_iter=self.max_iter,
                               stop_when=stop_when, on_step=self.on_step,
                               max_step=lambda theta, _: step_caps(lay, theta))

    def finish(self, lay: ParameterLayout, res: NewtonResult, singular: bool) -> GLMMEstimate:
        pen = -l2_penalty(lay, self.lam)(res.theta, False).value
        return GLMMEstimate(lay, res.theta, res.terms.value + pen, res.terms, res.converged,
                            singular, len(self.queries), res.iterations, res.trace, res.message,
                            self.lam)

    # ------------------------------------------------------------ q = 1
    def scalar(self, layout: ParameterLayout, start: np.ndarray) -> GLMMEstimate:
        """One random effect: the GLM and its score at ``Sigma = 0`` when the SD nears 0."""

        def near_zero(theta: np.ndarray, terms: SummedTerms) -> str | None:
            return "variance near zero" if relative_sds(layout, theta)[0] < BOUNDARY_WATCH \
                else None

        full = self.run(layout, start, near_zero)
        tiny = full.converged and relative_sds(layout, full.theta)[0] < SINGULAR_TOL
        if not (full.message == "variance near zero" or tiny):
            return self.finish(layout, full, singular=False)
        reduced_layout = layout.without_random_effects()
        reduced = self.run(reduced_layout, _reduce(layout, full.theta))
        if tiny or _boundary_is_maximum(reduced.terms):
            return self.finish(reduced_layout, reduced, singular=True)
        resumed = self.run(layout, full.theta)
        if resumed.converged and relative_sds(layout, resumed.theta)[0] < SINGULAR_TOL:
            return self.finish(reduced_layout, reduced, singular=True)
        return self.finish(layout, resumed, singular=False)

    # ------------------------------------------------------------ q > 1
    def vector(self, lay: ParameterLayout, theta0: np.ndarray) -> GLMMEstimate | Rejected:
        """Fit on the face ``lay`` (its zero columns); when a column collapses, fit the face
        it leads to, and keep that fit if its score test passes.

        A face whose optimum fails the score test is returned as
        :class:`Rejected` (its caller then resumes), and so is one heading to a
        rejected face that it cannot leave uphill. The full layout never is.
        """
        while True:
            res = self.run(lay, theta0, lambda theta, _: None if self.heading(lay, theta) is None
                           else COLLAPSING)
            heading = self.heading(lay, res.theta) if res.message == COLLAPSING else None
            if heading is None:
                break
            column, face = heading
            if face in self.rejected and self._above(res, self.rejected[face]):
                # the face was fitted from elsewhere and stopped at a lower stationary
                # point; fit it again from here, where the objective is already higher
                found = self.boundary(lay, res.theta, column, face)
                if isinstance(found, GLMMEstimate):
                    return found
                self.rejected[face] = found
            if face in self.rejected and lay.zero_columns:
                return self.rejected[face]
            if face in self.rejected:
                return self.finish(lay, replace(res, converged=False, message=STUCK),
                                   singular=True)
            found = self.boundary(lay, res.theta, column, face)
            if isinstance(found, GLMMEstimate):
                return found
            self.rejected[face] = found
            other = self.other_face(lay, column, found)
            if isinstance(other, GLMMEstimate):
                return other
            theta0 = self.resume_point(lay, res, [found, other])
        if not lay.zero_columns:
            tiny = res.converged and np.min(relative_cholesky_diagonal(lay, res.theta)) \
                < SINGULAR_TOL
            return self.finish(lay, res, singular=bool(tiny))
        if res.converged and not negative_semidefinite(res.terms.extra):
            return Rejected(lay, res.theta, res.terms.extra, res.terms.value)
        return self.finish(lay, res, singular=True)

    @staticmethod
    def _above(res: NewtonResult, rejected: Rejected) -> bool:
        """Whether ``res`` is higher than a rejected face's optimum (beyond rounding)."""
        return bool(res.terms.value > rejected.value + 1e-7 * (1.0 + abs(rejected.value)))

    def resume_point(self, lay: ParameterLayout, res: NewtonResult,
                     rejected: list[Rejected | None]) -> np.ndarray:
        """Where ``lay``'s fit resumes after the faces it headed to were rejected: where it
        stopped, or (full layout) just off the best rejected optimum, if that is higher.

        Near a face the full layout's coordinates are ill-conditioned (a tiny
        Cholesky diagonal leaves the entries below it nearly free), and the
        rejected optimum is usually much nearer the answer than where the fit
        turned to the face; its ascent direction says which way to leave it."""
        best = max((r for r in rejected if r is not None), key=lambda r: r.value, default=None)
        if lay.zero_columns or best is None or best.value <= res.terms.value:
            return res.theta
        return lifted(best, lay, BOUNDARY_WATCH * best.layout.unit(best.theta))

    def heading(self, lay: ParameterLayout, theta: np.ndarray
                ) -> tuple[int, tuple[int, ...]] | None:
        """The column nearest the boundary, if within ``BOUNDARY_WATCH`` of it, and the
        face it leads to; a rejected face that ``lay`` can leave uphill is passed over."""
        measures = collapse_measures(lay, theta)
        for column in np.argsort(measures):
            if measures[column] >= BOUNDARY_WATCH:
                return None
            face = face_after(lay, theta, int(column))[0]
            known = self.rejected.get(face)
            if known is None or measures[column] < SINGULAR_TOL or \
                    not known.escapable_from(lay):
                return int(column), face
        return None

    def boundary(self, lay: ParameterLayout, theta: np.ndarray, column: int,
                 face: tuple[int, ...]) -> GLMMEstimate | Rejected:
        """The fit on ``face``, from ``theta`` with ``Lambda``'s ``column`` collapsed."""
        if len(face) == lay.q:
            glm = lay.without_random_effects()
            res = self.run(glm, _reduce(lay, theta))
            if res.converged and _boundary_is_maximum(res.terms):
                return self.finish(glm, res, singular=True)
            return Rejected(glm, res.theta, glm_curvature(glm, res.terms.extra), res.terms.value)
        reduced = replace(lay, zero_columns=face)
        factor = face_after(lay, theta, column)[1]
        return self.vector(reduced, point_on(reduced, theta, lay, factor))

    def other_face(self, lay: ParameterLayout, column: int,
                   rejected: Rejected) -> GLMMEstimate | Rejected | None:
        """After the face that ``column`` led to was rejected, the face with ``lay``'s last
        free column at 0 instead.

        A covariance of rank below ``q`` generically lies on the face whose last
        columns are zero; an earlier column collapses only when an effect has
        (nearly) no variance of its own. When that face is not a maximum, its
        ascent direction points into the generic face: the fit there starts
        from the rejected optimum moved along it (``BOUNDARY_WATCH`` in
        ``Lambda``), reduced to the face's rank, its diagonals at least
        ``BOUNDARY_WATCH``.
        """
        last = max(c for c in range(lay.q) if c not in lay.zero_columns)
        face = rejected.layout
        zero = tuple(sorted((set(zero_columns(face)) - {column}) | {last}))
        if last == column or zero in self.rejected:
            return None
        unit = face.unit(rejected.theta)
        lam = face.lambda_matrix(rejected.theta) + BOUNDARY_WATCH * unit * rejected.ascent()
        values, vectors = np.linalg.eigh(lam @ lam.T)
        rank = lay.q - len(zero)
        kept = vectors[:, -rank:] * np.sqrt(np.clip(values[-rank:], 0.0, None))
        factor = factor_with_zero_columns(kept @ kept.T, zero)
        free = [c for c in range(lay.q) if c not in zero]
        factor[free, free] = np.maximum(factor[free, free], BOUNDARY_WATCH * unit)
        other = replace(lay, zero_columns=zero)
        found = self.vector(other, point_on(other, rejected.theta, face, factor))
        if isinstance(found, Rejected):
            self.rejected[zero] = found
        return found


COLLAPSING = "a random-effect direction is collapsing"
STUCK = ("the covariance went to a boundary face where the score test finds a direction of "
         "ascent that Newton's method does not take")


def step_caps(lay: ParameterLayout, theta: np.ndarray) -> np.ndarray:
    """Largest change per Newton step: ``MAX_LOG_SD_STEP`` on log-Cholesky diagonals, and
    on an off-diagonal ``Lambda_rc`` that many times the current SD of effect ``r`` (at
    least ``BOUNDARY_WATCH``, relative to the residual SD for the Gaussian family)."""
    cap = np.full(lay.size, np.inf)
    if not lay.random_effects:
        return cap
    unit = lay.unit(theta)
    sds = np.maximum(np.sqrt(np.sum(lay.lambda_matrix(theta) ** 2, axis=1)),
                     BOUNDARY_WATCH * unit)
    for index, (r, c) in enumerate(lay.cholesky_entries(), start=lay.p):
        cap[index] = MAX_LOG_SD_STEP if lay.log_scale(r, c) else MAX_LOG_SD_STEP * sds[r]
    return cap
