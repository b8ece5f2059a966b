"""Bounded influence: how far one site moves the combined estimate (pure numerics).

Leave-one-out shifts in honest standard errors, from the per-site summaries the
validator holds (:mod:`securefed.robust.validator`):

* **BFI** (exact, the combination is linear in the sums): with ``T`` the sum of
  all site vectors and ``v_l`` site ``l``'s,
  ``theta_(-l) = combine(T - v_l)`` and the shift of coefficient ``j`` is
  ``s_lj = (theta_j - theta_(-l),j) / sd_(-l),j`` with ``sd_(-l)`` from
  ``A_(-l)^{-1}``, the precision of the *other* sites only.
* **GLMM** (one Newton step, the case-deletion approximation of Cook's
  distance for mixed models): at the estimate ``theta`` with summed
  (penalised) gradient ``G`` and information ``J``, site ``l``'s gradient
  ``g_l`` and information ``J_l``, the other sites' objective has gradient
  ``G - g_l`` and information ``J_(-l) = J - J_l``, so
  ``theta_(-l) = theta + J_(-l)^{-1} (G - g_l)`` and
  ``s_l = (theta - theta_(-l)) / sqrt(diag J_(-l)^{-1})``. Where ``J_(-l)`` is
  not positive definite because of the variance parameters (a fit near a
  boundary), the step is taken on the fixed effects alone, the variance
  parameters held (``J_(-l)`` restricted to them; its SEs are the smaller
  conditional ones, so the check is stricter).
  A site the one step puts above the bound is checked again by Newton
  iterations to the other sites' optimum (:func:`newton_leave_one_out`: each
  other site evaluates its terms at the iterates, for the validator only), so
  a refusal rests on the refit, not on the one-step approximation (which can
  overstate an intercept's shift when the site is an outlier of the
  random-effect distribution).

In both the reference point ``theta_(-l)`` and its SE come from the *other*
sites' contributions alone (``T - v_l``; ``J - J_l`` and ``G - g_l``), so once
the validator has checked that the site summaries add up to the secure sums a
site cannot move its own yardstick: ``|s_lj| <= bound`` says that the combined
estimate lies within ``bound`` SEs of what the other sites alone give.

A robust companion for BFI, :func:`huber_combination`, is a multivariate Huber
M-estimate over the sites' local estimates ``theta_l = A_l^{-1} b_l``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["NoOtherInformation", "SiteInfluence", "bfi_influence", "glmm_influence",
           "huber_combination", "newton_leave_one_out"]


class NoOtherInformation(ValueError):
    """Without site ``site`` the other sites carry no information on some coefficient."""

    def __init__(self, site: str) -> None:
        self.site = site
        super().__init__(site)


@dataclass(frozen=True)
class SiteInfluence:
    """One site's leave-one-out shift of every checked coefficient, in honest SEs.

    Attributes
    ----------
    site : str
    shift_se : ndarray
        ``(theta_j - theta_(-l),j) / sd_(-l),j`` for the checked coefficients.
    """

    site: str
    shift_se: np.ndarray

    @property
    def largest(self) -> float:
        return float(np.max(np.abs(self.shift_se))) if self.shift_se.size else 0.0

    def worst_index(self) -> int:
        return int(np.argmax(np.abs(self.shift_se)))


def _sd_from_precision(precision: np.ndarray) -> np.ndarray:
    """``sqrt(diag(P^{-1}))``; :class:`numpy.linalg.LinAlgError` unless ``P`` is PD."""
    sym = 0.5 * (precision + precision.T)
    chol = np.linalg.cholesky(sym)  # raises for a matrix that is not PD
    inv = np.linalg.inv(chol)
    return np.sqrt(np.sum(inv * inv, axis=0))


def bfi_influence(layout, vectors: Mapping[str, np.ndarray], checked: Sequence[int],
                  combined_prior: np.ndarray | None = None) -> tuple[SiteInfluence, ...]:
    """Exact leave-one-out shifts of a homogeneous BFI combination (module docstring).

    Parameters
    ----------
    layout : core_stats.bfi_combine.HomogeneousLayout
    vectors : mapping of site name to its ``bfi-terms`` site vector
    checked : indices of the coefficients to check
    combined_prior : the combined-data prior (None: the sites' mean prior)
    """
    total = np.sum([np.asarray(v, dtype=float) for v in vectors.values()], axis=0)
    fit = layout.combine(total, combined_prior=combined_prior)
    idx = np.asarray(checked, dtype=int)
    out = []
    for site, vector in vectors.items():
        try:
            minus = layout.combine(total - np.asarray(vector, dtype=float),
                                   combined_prior=combined_prior)
        except (np.linalg.LinAlgError, ValueError):
            raise NoOtherInformation(site) from None
        sd = np.sqrt(np.diag(minus.covariance))[idx]
        if not np.all(np.isfinite(sd)) or np.any(sd <= 0):
            raise NoOtherInformation(site)
        out.append(SiteInfluence(site, (fit.estimate[idx] - minus.estimate[idx]) / sd))
    return tuple(out)


def glmm_influence(gradient: np.ndarray, information: np.ndarray,
                   site_terms: Mapping[str, tuple[np.ndarray, np.ndarray]],
                   checked: Sequence[int]) -> tuple[SiteInfluence, ...]:
    """One-step leave-one-out shifts of a GLMM estimate (module docstring).

    Parameters
    ----------
    gradient, information : the summed (penalised) gradient ``G`` and ``J = -H`` at
        the estimate
    site_terms : site name to ``(g_l, J_l)``, its gradient and ``-Hessian`` there
    checked : indices of the coefficients (the fixed effects) to check
    """
    idx = np.asarray(checked, dtype=int)
    out = []
    for site, (grad, info) in site_terms.items():
        others = information - info
        try:
            step, sd = _newton(others, gradient - grad)
        except np.linalg.LinAlgError:
            # the variance parameters' block of the others' information is not PD (near a
            # boundary): the step on the fixed effects with the variance parameters held
            try:
                step, sd = _newton(others[np.ix_(idx, idx)], (gradient - grad)[idx])
            except np.linalg.LinAlgError:
                raise NoOtherInformation(site) from None
            out.append(SiteInfluence(site, -step / sd))
            continue
        out.append(SiteInfluence(site, -step[idx] / sd[idx]))
    return tuple(out)


def newton_leave_one_out(site: str, others_at, theta: np.ndarray, checked: Sequence[int], *,
                         iterations: int = 20, tol: float = 1e-3) -> SiteInfluence:
    """The leave-one-out shift by Newton iterations to the other sites' optimum.

    ``others_at(point)`` returns the other sites' summed (penalised) objective,
    gradient and information at ``point``. From the estimate ``theta``: Newton
    steps with the information's eigenvalues floored (a variance parameter near
    its boundary), capped at 1 per coordinate (as the fit's trust region) and
    halved until the objective does not decrease; it stops when no parameter
    moves by more than ``tol`` of its SE. The SE is the others' at their optimum.
    """
    idx = np.asarray(checked, dtype=int)
    point = np.asarray(theta, dtype=float).copy()
    value, grad, info = others_at(point)
    for _ in range(iterations):
        floored = _floored(info)
        step = np.linalg.solve(floored, grad)
        step = step / max(1.0, float(np.max(np.abs(step))))
        moved = float(np.max(np.abs(step) / np.sqrt(np.diag(np.linalg.inv(floored)))))
        if moved < tol:
            break
        for _ in range(12):
            trial = others_at(point + step)
            if np.isfinite(trial[0]) and trial[0] >= value - 1e-10 * (1 + abs(value)):
                break
            step = step / 2.0
        else:
            break
        point = point + step
        value, grad, info = trial
    try:
        sd = _sd_from_precision(info)[idx]
    except np.linalg.LinAlgError:
        try:
            sd = _sd_from_precision(info[np.ix_(idx, idx)])
        except np.linalg.LinAlgError:
            raise NoOtherInformation(site) from None
    return SiteInfluence(site, (np.asarray(theta)[idx] - point[idx]) / sd)


def _floored(info: np.ndarray) -> np.ndarray:
    """The symmetric part of ``info`` with its eigenvalues raised to 1e-8 of the largest."""
    sym = 0.5 * (info + info.T)
    values, vectors = np.linalg.eigh(sym)
    floor = 1e-8 * max(float(np.max(np.abs(values))), 1e-300)
    return (vectors * np.maximum(np.abs(values), floor)) @ vectors.T


def _newton(precision: np.ndarray, gradient: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(P^{-1} g, sqrt(diag P^{-1}))``; LinAlgError unless ``P`` is PD."""
    sd = _sd_from_precision(precision)
    return np.linalg.solve(0.5 * (precision + precision.T), gradient), sd


def huber_combination(curvatures: Sequence[np.ndarray], linears: Sequence[np.ndarray],
                      priors: Sequence[np.ndarray], checked: Sequence[int], *,
                      c: float = 2.0, iterations: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """A Huber M-combination of the sites' local estimates; returns ``(theta, weights)``.

    Site ``l``'s local estimate is ``theta_l = A_l^{-1} b_l``; its standardised
    distance from the combination ``theta`` on the checked coefficients is
    ``r_l = max_j |theta_l,j - theta_j| / sqrt((A_l^{-1})_jj)``, its weight
    ``w_l = min(1, c / r_l)``, and ``theta = (sum w_l (A_l - Lambda_l) +
    Lambda)^{-1} sum w_l A_l theta_l`` with ``Lambda`` the
    sites' mean prior (iteratively reweighted to a fixed point; with every
    ``w_l = 1`` this is the BFI combination).
    """
    idx = np.asarray(checked, dtype=int)
    locals_ = [np.linalg.solve(a, b) for a, b in zip(curvatures, linears, strict=True)]
    sds = [np.sqrt(np.diag(np.linalg.inv(a)))[idx] for a in curvatures]
    prior = np.mean(priors, axis=0)
    weights = np.ones(len(curvatures))
    theta = np.zeros_like(locals_[0])
    for _ in range(iterations):
        precision = prior + sum(w * (a - p) for w, a, p in
                                zip(weights, curvatures, priors, strict=True))
        linear = sum(w * np.asarray(b, dtype=float) for w, b in
                     zip(weights, linears, strict=True))
        new = np.linalg.solve(precision, linear)
        resid = np.array([np.max(np.abs(t[idx] - new[idx]) / s) for t, s in
                          zip(locals_, sds, strict=True)])
        weights = np.minimum(1.0, c / np.maximum(resid, 1e-12))
        if np.max(np.abs(new - theta)) < 1e-12 * (1.0 + np.max(np.abs(new))):
            theta = new
            break
        theta = new
    return theta, weights
