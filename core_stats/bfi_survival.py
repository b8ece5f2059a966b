"""Local MAP fit of a parametric proportional-hazards model (BFI for survival outcomes).

A centre's rows have time ``t_i``, event indicator ``d_i`` and covariates
``x_i``; the hazard is ``h(t | x) = h0(t) exp(x' beta)`` with a parametric
baseline ``h0`` and cumulative baseline ``H0``. The log-likelihood is

    l(theta) = sum_i d_i (log h0(t_i) + eta_i) - H0(t_i) exp(eta_i),   eta = X beta,

and the MAP maximises ``l(theta) - theta' Lambda theta / 2``. As in the R
package BFI 3.1.0 (``MAP.estimation(family = "survival", basehaz = ...)``),
``theta = (beta, omega_1[, omega_2])`` with the baseline on unconstrained log
scales, ``a = exp(omega_1)``, ``b = exp(omega_2)``:

=============  ================  ==========================  =============
baseline       R ``basehaz``     ``h0(t)``                   ``H0(t)``
=============  ================  ==========================  =============
exponential    ``"exp"``         ``a``                       ``a t``
weibull        ``"weibul"``      ``a b t^(b-1)``             ``a t^b``
gompertz       ``"gomp"``        ``a exp(b t)``              ``a (e^(bt) - 1) / b``
=============  ================  ==========================  =============

With ``u_i = H0(t_i) e^(eta_i)`` and ``z_i = (x_i, 1)`` the gradient and
Hessian are exact (tested against finite differences):

* exponential: ``g = sum (d - u) z``, ``H = -sum u z z'``;
* weibull (``L = log t``, ``k = b``): the ``omega_2`` score is
  ``d (1 + k L) - u k L``; its second derivative is
  ``d k L - u k L (1 + k L)``; the cross terms are ``-u k L z``;
* gompertz (``v = e^(omega_1 + eta)``, ``g0 = (e^(bt) - 1) / b``,
  ``g1 = t e^(bt) - g0``): the ``omega_2`` score is ``d b t - v g1``;
  its second derivative is ``d b t - v (b t^2 e^(bt) - t e^(bt) + g0)``;
  the cross terms are ``-v g1 z``.

R's BFI computes the curvature ``A_hat`` entry by entry (``A.l.maker``). In
3.1.0 the line ``M_l <- M_l/1 + Lambda`` sits inside the double loop over the
entries, so the prior is added once per remaining loop step (the exponential, Weibull, Gompertz
and polynomial baselines; ``pwexp`` and ``unspecified`` add it once):
``Lambda_jj`` is counted ``d^2 - (j-1) d - j + 1`` times on diagonal entry
``j`` (``d`` parameters), not once. :func:`r_curvature` reproduces that, to
compare with R; the fit itself uses the exact curvature ``-H``. For a
centre's MAP, R's BFGS (``optim``, ``reltol = 1e-8``) stops short of the
optimum that Newton's method reaches here; see ``docs/survival.md``.

The polynomial and piecewise-exponential baselines are in
:mod:`core_stats.survival_poly` and :mod:`core_stats.survival_pwexp`; ``unspecified``
is each centre's Breslow partial likelihood (:mod:`core_stats.cox`) with the prior on
``beta``, as R's ``negloglik.theta``. All baselines: :mod:`core_stats.survival_baselines`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from core_stats.bfi_local import LocalFit, MAPConvergenceError, newton_map
from core_stats.families import Family
from core_stats.survival_baselines import KINDS, Baseline, as_baseline

__all__ = ["BASELINES", "R_BASEHAZ", "SURVIVAL", "baseline_names", "fit_survival_map",
           "r_curvature", "survival_log_posterior"]

@dataclass(frozen=True)
class _Survival(Family):
    """The survival models' marker family (its likelihood lives in this module)."""

    name = "survival"
    r_name = "survival"
    links = ("log",)


SURVIVAL = _Survival()
BASELINES = KINDS
R_BASEHAZ = {kind: Baseline(kind, knots=(0.0, 1.0)).r_name for kind in KINDS}


def baseline_names(baseline: str | Baseline) -> tuple[str, ...]:
    """R BFI's names of the baseline parameters (``omega_1 = log a``, ``omega_2 = log b``,
    ``omega_0..omega_q`` for ``poly``, ``omega_1..omega_K`` for ``pwexp``, none for
    ``unspecified``)."""
    return as_baseline(baseline).names


def _loglik(theta: np.ndarray, time: np.ndarray, event: np.ndarray, X: np.ndarray,
            baseline: Baseline, stratum=None) -> tuple[float, np.ndarray, np.ndarray]:
    if baseline.kind == "poly":
        from core_stats.survival_poly import poly_loglik

        return poly_loglik(theta, time, event, X, baseline.order)
    if baseline.kind == "pwexp":
        from core_stats.survival_pwexp import pwexp_loglik

        return pwexp_loglik(theta, time, event, X, baseline.knots)
    if baseline.kind == "unspecified":  # R's partial likelihood: Breslow ties
        from core_stats.cox import cox_stratum, stratum_terms

        terms = stratum_terms(stratum if stratum is not None else cox_stratum(time, event, X),
                              theta, "breslow")
        return terms.loglik, terms.gradient, terms.hessian
    return _parametric_loglik(theta, time, event, X, baseline.kind)


def _parametric_loglik(theta: np.ndarray, time: np.ndarray, event: np.ndarray, X: np.ndarray,
                       baseline: str) -> tuple[float, np.ndarray, np.ndarray]:
    p = X.shape[1]
    beta, omega = theta[:p], theta[p:]
    eta = X @ beta + omega[0]
    d = event.astype(float)
    Z = np.hstack([X, np.ones((len(time), 1))])
    if baseline == "exponential":
        u = time * np.exp(eta)
        value = float(d @ eta - u.sum())
        return value, Z.T @ (d - u), -(Z.T @ (u[:, None] * Z))
    k = float(np.exp(omega[1]))
    if baseline == "weibull":
        log_t = np.log(time)
        u = np.exp(eta + k * log_t)
        value = float(d @ (eta + omega[1] + (k - 1.0) * log_t) - u.sum())
        score_b = d * (1.0 + k * log_t) - u * k * log_t
        cross = -(u * k * log_t)
        curv_b = float(d @ (k * log_t) - u @ (k * log_t * (1.0 + k * log_t)))
    else:  # gompertz
        v = np.exp(eta)
        ebt = np.exp(k * time)
        g0 = np.expm1(k * time) / k
        g1 = time * ebt - g0
        u = v * g0
        value = float(d @ (eta + k * time) - u.sum())
        score_b = d * k * time - v * g1
        cross = -(v * g1)
        curv_b = float(d @ (k * time) - v @ (k * time**2 * ebt - time * ebt + g0))
    grad = np.append(Z.T @ (d - u), score_b.sum())
    hess = np.zeros((p + 2, p + 2))
    hess[:p + 1, :p + 1] = -(Z.T @ (u[:, None] * Z))
    hess[:p + 1, p + 1] = hess[p + 1, :p + 1] = Z.T @ cross
    hess[p + 1, p + 1] = curv_b
    return value, grad, hess


def survival_log_posterior(theta: np.ndarray, time: np.ndarray, event: np.ndarray,
                           X: np.ndarray, baseline: str | Baseline, prior: np.ndarray, *,
                           stratum=None) -> tuple[float, np.ndarray, np.ndarray]:
    """``l(theta) - theta' Lambda theta / 2`` with its exact gradient and Hessian.

    ``stratum`` (``unspecified`` only) is :func:`core_stats.cox.cox_stratum` of the rows,
    built once by the caller.
    """
    theta = np.asarray(theta, dtype=float)
    value, grad, hess = _loglik(theta, np.asarray(time, dtype=float),
                                np.asarray(event, dtype=bool), np.asarray(X, dtype=float),
                                as_baseline(baseline), stratum)
    return value - 0.5 * theta @ prior @ theta, grad - prior @ theta, hess - prior


def _check(time: np.ndarray, event: np.ndarray, X: np.ndarray, baseline: Baseline,
           prior: np.ndarray) -> None:
    dim = X.shape[1] + len(baseline.names)
    if X.ndim != 2 or X.shape[0] != time.size or event.size != time.size:
        raise ValueError("time, status and X must have one row per patient")
    if prior.shape != (dim, dim):
        raise ValueError(f"prior must be {dim} x {dim}, got {prior.shape}")
    if not np.all(np.isfinite(time)) or np.any(time < 0):
        raise ValueError("times must be finite and not negative")
    if baseline.kind == "weibull" and np.any(time <= 0):
        raise ValueError("a Weibull baseline needs positive times (log t enters the model)")
    if not event.any():
        raise ValueError("the centre has no events")


def fit_survival_map(time: np.ndarray, event: np.ndarray, X: np.ndarray,
                     baseline: str | Baseline,
                     prior: np.ndarray, *, names: Sequence[str] | None = None,
                     gtol: float = 1e-12, max_iter: int = 200) -> LocalFit:
    """The centre's MAP ``theta_hat`` and exact curvature ``A_hat = -H(theta_hat)``.

    Newton's method with step halving from R's start ``(0, ..., 0, -0.5, ..., -0.5)``;
    ``names`` are the covariate names (the baseline names are appended).

    Raises
    ------
    MAPConvergenceError
        No convergence, or ``A_hat`` not positive definite.
    """
    time = np.asarray(time, dtype=float).ravel()
    event = np.asarray(event, dtype=bool).ravel()
    X = np.asarray(X, dtype=float)
    prior = np.asarray(prior, dtype=float)
    baseline = as_baseline(baseline)
    _check(time, event, X, baseline, prior)
    extra = baseline.names
    start = baseline.start(X.shape[1])
    stratum = None
    if baseline.kind == "unspecified":
        from core_stats.cox import cox_stratum

        stratum = cox_stratum(time, event, X)
    theta, value, grad, hess, iterations = newton_map(
        lambda th: survival_log_posterior(th, time, event, X, baseline, prior,
                                          stratum=stratum), start,
        tol=gtol * max(1.0, float(time.size)), max_iter=max_iter)
    curvature = -0.5 * (hess + hess.T)
    if np.min(np.linalg.eigvalsh(curvature)) <= 0:
        raise MAPConvergenceError("the curvature A_hat at the MAP is not positive definite")
    covariates = list(names) if names is not None else [f"x{j}" for j in range(X.shape[1])]
    if len(covariates) != X.shape[1]:
        raise ValueError(f"{len(covariates)} names for {X.shape[1]} columns")
    return LocalFit(family=SURVIVAL, names=tuple(covariates) + extra, theta=theta,
                    curvature=curvature, prior=prior, n=int(time.size), log_posterior=value,
                    gradient_max=float(np.max(np.abs(grad))), iterations=iterations)


def r_curvature(curvature: np.ndarray, prior: np.ndarray,
                baseline: str | Baseline = "exponential") -> np.ndarray:
    """R BFI 3.1.0's ``A_hat`` from the exact curvature (see the module docstring).

    Diagonal entry ``j`` (1-based) of a ``d``-parameter model carries
    ``d^2 - (j-1) d - j + 1`` copies of ``Lambda_jj`` instead of one; an
    off-diagonal prior entry would be counted likewise (BFI's priors are diagonal).
    This is R's entry-by-entry loop of the exponential, Weibull, Gompertz and
    polynomial baselines; for ``pwexp`` and ``unspecified`` R adds the prior once,
    so their ``A_hat`` is the exact curvature.
    """
    kind = baseline if isinstance(baseline, str) else baseline.kind
    if kind in ("pwexp", "unspecified"):
        return curvature.copy()
    d = curvature.shape[0]
    j = np.arange(1, d + 1)
    copies = d * d - (j - 1) * d - j + 1
    return curvature + np.diag((copies - 1) * np.diag(prior))
