"""Faces of the covariance boundary for vector random effects (q > 1).

``Sigma = Lambda Lambda'`` with ``Lambda`` lower triangular. lme4 bounds the
diagonal of ``Lambda`` below by 0; a fit is singular when one of them is 0.
Every positive semi-definite ``Sigma`` has a Cholesky factor whose columns with
a zero diagonal are zero entirely (a pivot of 0 leaves a Schur complement
with a zero row), so the boundary is a union of *faces*, each fixed by the
set of zero columns (``ParameterLayout.zero_columns``; all columns zero is
``Sigma = 0``, the GLM). A generic covariance of rank ``r < q`` lies on the
face whose last ``q - r`` columns are zero.

Score test on a face. The log-likelihood is even in each column of
``Lambda`` (``b = Lambda u`` with ``u ~ N(0, I)``; the Laplace and tensor
Gauss-Hermite rules are symmetric too), so at a point of the face its
gradient in the zero columns' entries is 0 and its Hessian has no cross
terms between those entries and the other parameters, nor between two zero
columns. Moving column ``k`` to ``t v`` changes ``Sigma`` by ``t^2 v v'``, so
that Hessian block is ``2 dl/dSigma`` restricted to the rows ``>= k``. The
face's optimum is a local maximum of the full model (in lme4's coordinates,
``Lambda_kk >= 0``) when every block is negative semi-definite; a positive
eigenvalue is a direction out of the face along which ``l`` rises. The sites
compute the block with the ordinary terms, evaluated with the zero columns
present on the linear scale and set to 0 (``linear_columns``): no extra round.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from core_stats.glmm import ParameterLayout
from core_stats.optimize import SummedTerms

__all__ = ["Rejected", "collapse_measures", "face_after", "factor_with_zero_columns",
           "glm_curvature", "lifted", "negative_semidefinite", "point_on", "probe_objective",
           "restricted_objective", "zero_columns", "zero_entries"]

Terms = Callable[[ParameterLayout, np.ndarray, bool], SummedTerms]


def zero_columns(lay: ParameterLayout) -> tuple[int, ...]:
    """The face's zero columns (all of them for ``Sigma = 0``)."""
    return lay.zero_columns if lay.random_effects else tuple(range(lay.q))


def zero_entries(lay: ParameterLayout) -> list[tuple[int, int]]:
    """(row, col) of the zero columns' entries, column by column."""
    zero = zero_columns(lay)
    return [(r, c) for c in zero for r in range(c, lay.q)]


def negative_semidefinite(curvature: np.ndarray) -> bool:
    """All eigenvalues at most ``1e-10 (1 + max |entry|)``: no direction of ascent."""
    if curvature.size == 0:
        return True
    return bool(np.max(np.linalg.eigvalsh(curvature)) <= 1e-10 * (1.0 + np.abs(curvature).max()))


@dataclass(frozen=True)
class Rejected:
    """A face's optimum that is not a maximum of the full model, and its curvature there."""

    layout: ParameterLayout  # the face
    theta: np.ndarray
    curvature: np.ndarray  # Hessian in zero_entries(layout), on the linear scale, at 0
    value: float  # the objective there

    def escapable_from(self, lay: ParameterLayout) -> bool:
        """Whether ``lay`` can leave this face uphill: its curvature in the columns that
        ``lay`` has free and the face has zero has a positive eigenvalue."""
        free = set(zero_columns(self.layout)) - set(zero_columns(lay))
        index = [i for i, (_, c) in enumerate(zero_entries(self.layout)) if c in free]
        return not negative_semidefinite(self.curvature[np.ix_(index, index)])

    def ascent(self) -> np.ndarray:
        """The curvature's leading eigenvector as a ``q x q`` change of ``Lambda`` in the
        zero columns (signed so its diagonal is not negative)."""
        vector = np.linalg.eigh(self.curvature)[1][:, -1]
        change = np.zeros((self.layout.q, self.layout.q))
        for value, (r, c) in zip(vector, zero_entries(self.layout), strict=True):
            change[r, c] = value
        for c in zero_columns(self.layout):
            if change[c, c] < 0:
                change[:, c] = -change[:, c]
        return change


def lifted(rejected: Rejected, lay: ParameterLayout, floor: float) -> np.ndarray:
    """A point of ``lay`` (a layout without zero columns) just off the rejected face: its
    optimum with ``Lambda`` moved by ``floor`` along the ascent direction, every
    Cholesky diagonal at least ``floor``."""
    face = rejected.layout
    lam = face.lambda_matrix(rejected.theta) + floor * rejected.ascent()
    factor = factor_with_zero_columns(lam @ lam.T, ())
    diagonal = np.diag_indices(lay.q)
    factor[diagonal] = np.maximum(factor[diagonal], floor)
    return point_on(lay, rejected.theta, face, factor)


def glm_curvature(lay: ParameterLayout, score: np.ndarray) -> np.ndarray:
    """The zero-column Hessian blocks at ``Sigma = 0`` from the score ``dl/dSigma`` there."""
    entries = zero_entries(lay.without_random_effects())
    out = np.zeros((len(entries), len(entries)))
    for i, (r1, c1) in enumerate(entries):
        for j, (r2, c2) in enumerate(entries):
            if c1 == c2:
                out[i, j] = 2.0 * score[r1, r2]
    return out


def collapse_measures(lay: ParameterLayout, theta: np.ndarray) -> np.ndarray:
    """Per column of ``Lambda``: the smaller of its diagonal (relative to the residual SD
    for the Gaussian family: lme4's theta) and that diagonal's share of the effect's SD
    (``sqrt(1 - R^2)`` of the effect on the earlier ones, small when a correlation
    nears +-1); ``inf`` for zero columns."""
    lam = lay.lambda_matrix(theta)
    diag = np.abs(np.diag(lam))
    sds = np.sqrt(np.sum(lam**2, axis=1))
    relative = diag / lay.unit(theta)
    out = np.minimum(relative, diag / np.where(sds > 0, sds, 1.0))
    out[list(lay.zero_columns)] = np.inf
    return out


def face_after(lay: ParameterLayout, theta: np.ndarray,
               column: int) -> tuple[tuple[int, ...], np.ndarray]:
    """The face reached when ``Lambda_kk`` (``k = column``) drops to 0, and the factor there.

    ``Sigma_0 = Lambda_0 Lambda_0'`` with that diagonal 0 keeps the rest of the
    covariance. Its Cholesky factor has zero pivots at ``k`` and wherever the
    entries below ``k`` do not fill a zero column of ``lay``: those are the
    face's zero columns. The later columns absorb ``Lambda``'s entries below ``k``.
    """
    lam = lay.lambda_matrix(theta)
    lam[column, column] = 0.0
    sigma = lam @ lam.T
    tiny = 1e-12 * max(float(np.max(np.diag(sigma))), 1e-300)
    residual, zero = sigma.copy(), []
    for c in range(lay.q):
        if c == column or residual[c, c] <= tiny:
            zero.append(c)
            continue
        step = residual[:, c] / np.sqrt(residual[c, c])
        residual -= np.outer(step, step)
    return tuple(zero), factor_with_zero_columns(sigma, tuple(zero))


def factor_with_zero_columns(sigma: np.ndarray, zero: tuple[int, ...]) -> np.ndarray:
    """Lower-triangular ``L``, columns ``zero`` 0, with ``L L' = sigma`` when ``sigma``'s
    Schur complements there are 0 (a Cholesky factorisation that skips those pivots)."""
    residual = np.array(sigma, dtype=float)
    factor = np.zeros_like(residual)
    floor = 1e-12 * max(float(np.max(np.diag(residual))), 1e-300)
    for c in range(len(residual)):
        if c in zero:
            continue
        pivot = np.sqrt(max(residual[c, c], floor))
        factor[c:, c] = residual[c:, c] / pivot
        residual -= np.outer(factor[:, c], factor[:, c])
    return factor


def point_on(face: ParameterLayout, theta: np.ndarray, of: ParameterLayout,
             factor: np.ndarray) -> np.ndarray:
    """``theta`` of layout ``of`` moved to ``face`` with covariance factor ``factor``."""
    out = np.zeros(face.size)
    out[face.beta] = theta[of.beta]
    if face.has_dispersion:
        out[face.scale_index] = theta[of.scale_index]
    out[face.cov] = [np.log(factor[r, c]) if face.log_scale(r, c) else factor[r, c]
                     for r, c in face.cholesky_entries()]
    return out


def probe_objective(terms: Terms, face: ParameterLayout
                    ) -> Callable[[np.ndarray, bool], SummedTerms]:
    """The summed terms of ``face``, with the zero columns' Hessian block as ``extra``.

    The sites evaluate the full model with the zero columns present on the
    linear scale and at 0; the face's own terms are a sub-vector of theirs.
    """
    probe = replace(face, zero_columns=(), linear_columns=face.zero_columns)
    entries = probe.cholesky_entries()
    kept = set(face.cholesky_entries())
    cov = [probe.p + k for k, entry in enumerate(entries) if entry in kept]
    free = np.array([*range(probe.p), *cov, *range(probe.p + probe.n_cov, probe.size)])
    zero = np.array([probe.p + k for k, entry in enumerate(entries) if entry not in kept])
    return restricted_objective(terms, probe, free, zero)


def restricted_objective(terms: Callable, probe, free: np.ndarray, zero: np.ndarray
                         ) -> Callable[[np.ndarray, bool], SummedTerms]:
    """``terms(probe, .)`` on the sub-vector ``free`` of its parameters (the others at 0),
    with the Hessian block in the entries ``zero`` as ``extra``."""

    def objective(theta: np.ndarray, derivatives: bool) -> SummedTerms:
        at = np.zeros(probe.size)
        at[free] = theta
        summed = terms(probe, at, derivatives)
        if not derivatives:
            return SummedTerms(summed.value)
        return SummedTerms(summed.value, summed.gradient[free],
                           summed.hessian[np.ix_(free, free)], summed.hessian[np.ix_(zero, zero)])

    return objective
