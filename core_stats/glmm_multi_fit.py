"""Fitting a GLMM with several random-effects terms from summed site terms.

The driver never sees data: ``evaluate(layout, theta, derivatives)`` returns
the sum over sites of :func:`core_stats.glmm_multi_laplace.multi_site_terms`.
It is the single-term driver (:mod:`core_stats.glmm_fit`) term by term: the same
damped Newton (:func:`core_stats.optimize.newton_maximize`), start values, L2
penalty and trust region (per term, :func:`core_stats.glmm_fit.step_caps`), and
per-term boundary handling:

* when a column of some term's ``Lambda_t`` collapses (its collapse measure,
  :func:`core_stats.glmm_boundary.collapse_measures`, below ``BOUNDARY_WATCH``),
  the fit moves to the face where that column is 0 (a scalar term: the term's
  variance is 0) and fits there, still watching the other terms;
* at the face's optimum the probe (:mod:`core_stats.glmm_multi_boundary`) gives
  the curvature in the zero entries; negative semi-definite: the face is kept
  and the fit is singular, as lme4 reports it; otherwise the face is rejected
  and the fit resumes where it turned (or just off the face's optimum, if that
  is higher), no longer turning to that face unless the column falls below
  ``SINGULAR_TOL``;
* a fit converging with a relative Cholesky diagonal below ``SINGULAR_TOL``
  (lme4's ``isSingular`` tolerance) is singular too.

Not done here (unlike the single-term driver): the search of the other face of
the same rank after a rejected face of a vector term.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from core_stats.families import Family
from core_stats.glmm import ParameterLayout
from core_stats.glmm_boundary import collapse_measures, negative_semidefinite
from core_stats.glmm_fit import (
    BOUNDARY_WATCH,
    LOG_SD_START,
    SINGULAR_TOL,
    GLMMEstimate,
    _Fitter,
    _log_cholesky_start,
    l2_penalty,
    relative_cholesky_diagonal,
    starting_values,
    step_caps,
)
from core_stats.glmm_multi import MultiLayout
from core_stats.glmm_multi_boundary import (
    move_term,
    multi_probe_objective,
    on_face,
    term_face,
)
from core_stats.optimize import NewtonResult, NewtonStep, SummedTerms, newton_maximize

__all__ = ["fit_glmm_multi", "multi_starting_values", "multi_step_caps"]

Evaluate = Callable[[MultiLayout, np.ndarray, bool], SummedTerms]
COLLAPSING = "a random-effect direction is collapsing"


def multi_starting_values(layout: MultiLayout, family: Family, n: float, sum_y: float,
                          sum_y2: float, xty: np.ndarray, xtx: np.ndarray) -> np.ndarray:
    """Start values from the design summary, as :func:`core_stats.glmm_fit.starting_values`
    for one term, with every term's SD started like that one's (the Poisson intercept
    lowered by ``sigma_t^2 / 2`` for each term)."""
    first = layout.terms[0]
    single = ParameterLayout(layout.fixed_names, first.random_names, first.group,
                             layout.has_dispersion)
    base = starting_values(single, family, n, sum_y, sum_y2, xty, xtx)
    theta = np.zeros(layout.size)
    theta[layout.beta] = base[single.beta]
    log_sd = LOG_SD_START
    if layout.has_dispersion:
        theta[layout.scale_index] = log_sd = base[single.scale_index]
    if family.link == "log" and "(Intercept)" in layout.fixed_names:  # keep the mean
        theta[layout.fixed_names.index("(Intercept)")] -= \
            0.5 * np.exp(2 * LOG_SD_START) * (len(layout.terms) - 1)
    for t, term in enumerate(layout.terms):
        if term.random_effects:
            with_fixed = replace(term, fixed_names=layout.fixed_names)
            theta[layout.term_slice(t)] = _log_cholesky_start(with_fixed, n, xtx, log_sd)
    return theta


def multi_step_caps(layout: MultiLayout, theta: np.ndarray) -> np.ndarray:
    """Per-term trust region (:func:`core_stats.glmm_fit.step_caps`) on ``theta``."""
    cap = np.full(layout.size, np.inf)
    for t, term in enumerate(layout.terms):
        if term.random_effects:
            caps = step_caps(layout.term_view(t), layout.term_theta(theta, t))
            cap[layout.term_slice(t)] = caps[:term.n_cov]
    return cap


@dataclass(frozen=True)
class _Rejected:
    layout: MultiLayout
    theta: np.ndarray
    value: float


def fit_glmm_multi(evaluate: Evaluate, layout: MultiLayout, start: np.ndarray, *,
                   lam: float = 0.0, tol: float = 1e-8, max_iter: int = 100,
                   on_step: Callable[[NewtonStep], None] | None = None) -> GLMMEstimate:
    """Maximise the (penalised) Laplace log-likelihood from summed site terms.

    Returns a :class:`core_stats.glmm_fit.GLMMEstimate` whose ``layout`` is the
    :class:`MultiLayout` of the optimum (a face when singular).
    """
    fitter = _MultiFitter(evaluate, lam, tol, max_iter, on_step)
    found = fitter.fit(layout, np.asarray(start, dtype=float))
    assert isinstance(found, GLMMEstimate)  # the full layout is never rejected
    return found


class _MultiFitter(_Fitter):
    """Newton runs on faces of the model, counting the distinct rounds they ask for."""

    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.rejected_faces: set[MultiLayout] = set()

    def run(self, lay: MultiLayout, theta0: np.ndarray) -> NewtonResult:
        penalty = l2_penalty(lay, self.lam)  # duck-typed: fixed_names, beta, size
        summed = multi_probe_objective(self.terms, lay) if on_face(lay) else \
            (lambda theta, derivatives: self.terms(lay, theta, derivatives))

        def objective(theta: np.ndarray, derivatives: bool) -> SummedTerms:
            return summed(theta, derivatives) + penalty(theta, derivatives)

        return newton_maximize(
            objective, theta0, tol=self.tol, max_iter=self.max_iter, on_step=self.on_step,
            stop_when=lambda theta, _: None if self.heading(lay, theta) is None else COLLAPSING,
            max_step=lambda theta, _: multi_step_caps(lay, theta))

    def heading(self, lay: MultiLayout, theta: np.ndarray) -> tuple[int, int] | None:
        """(term, column) nearest its boundary, if within ``BOUNDARY_WATCH`` of it and its
        face is not rejected (unless the column is below ``SINGULAR_TOL``)."""
        best: tuple[float, int, int] | None = None
        for t, term in enumerate(lay.terms):
            if not term.random_effects:
                continue
            measures = collapse_measures(lay.term_view(t), lay.term_theta(theta, t))
            for column in np.argsort(measures):
                m = float(measures[column])
                if m >= BOUNDARY_WATCH:
                    break
                face = term_face(lay, theta, t, int(column))[0]
                if face in self.rejected_faces and m >= SINGULAR_TOL:
                    continue
                if best is None or m < best[0]:
                    best = (m, t, int(column))
                break
        return None if best is None else best[1:]

    def fit(self, lay: MultiLayout, theta0: np.ndarray) -> GLMMEstimate | _Rejected:
        """Fit on ``lay``; when a column collapses, fit the face it leads to and keep that
        fit if its score test passes; on a face, return :class:`_Rejected` if not."""
        while True:
            res = self.run(lay, theta0)
            heading = self.heading(lay, res.theta) if res.message == COLLAPSING else None
            if heading is None:
                break
            face, point = term_face(lay, res.theta, *heading)
            found = self.fit(face, point)
            if isinstance(found, GLMMEstimate):
                return found
            self.rejected_faces.add(face)
            theta0 = self.resume_point(lay, res, found)
        if on_face(lay):
            if res.converged and not negative_semidefinite(res.terms.extra):
                return _Rejected(lay, res.theta, res.terms.value)
            return self.finish(lay, res, singular=True)
        tiny = res.converged and any(
            np.min(relative_cholesky_diagonal(lay.term_view(t), lay.term_theta(res.theta, t)))
            < SINGULAR_TOL for t in range(len(lay.terms)))
        return self.finish(lay, res, singular=bool(tiny))

    def resume_point(self, lay: MultiLayout, res: NewtonResult,
                     rejected: _Rejected) -> np.ndarray:
        """Where the fit resumes after a rejected face: where it turned, or, if the face's
        optimum is higher, that optimum lifted off the face (every zero column's diagonal
        at ``BOUNDARY_WATCH``, relative to the residual SD for the Gaussian family)."""
        if rejected.value <= res.terms.value:
            return res.theta
        face, theta = rejected.layout, rejected.theta
        unit = float(np.exp(theta[face.scale_index])) if face.has_dispersion else 1.0
        for t, (target, term) in enumerate(zip(lay.terms, face.terms, strict=True)):
            if term == target:
                continue
            lam = face.term_view(t).lambda_matrix(face.term_theta(theta, t)) \
                if term.random_effects else np.zeros((term.q, term.q))
            diag = np.diag_indices(term.q)
            lam[diag] = np.maximum(np.abs(lam[diag]), BOUNDARY_WATCH * unit)
            values = [np.log(lam[r, c]) if target.log_scale(r, c) else lam[r, c]
                      for r, c in target.cholesky_entries()]
            face, theta = move_term(face, theta, t, target, np.array(values))
        return theta
