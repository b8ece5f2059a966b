"""Local maximum-a-posteriori (MAP) fit of a GLM with a Gaussian prior.

This is what every centre computes on its own rows in Bayesian Federated
Inference (Jonker, Pazira & Coolen; METHODS.md section 2).

Parameterisation
----------------
``theta = (beta, s)`` for the Gaussian family, ``theta = beta`` otherwise, with
``s = log sigma`` the log of the error standard deviation: the same scale that
``core_stats.families`` uses (``log_scale``). The estimate ``theta_hat`` *and*
the curvature ``A_hat`` are both expressed in ``s``, so ``A_hat^{-1}`` is the
covariance of ``theta_hat`` as reported. The prior is Gaussian in these same
coordinates, ``theta ~ N(0, Lambda^{-1})``, so its log-density is exactly
quadratic and the BFI prior correction ``Lambda - sum Lambda_l`` is exact.

Relation to the R package BFI (3.x): there ``theta_hat`` reports ``sigma^2`` in
its last slot while ``A_hat`` is the curvature in ``-log sigma`` (the sign of
the cross terms is flipped), and the prior on the scale is ``-lambda sigma^2 / 2``
(Gaussian in ``sigma``, not in ``log sigma``). With ``n`` in the hundreds the two
scale priors give the same MAP to about ``lambda / n`` (Table 1 of the paper is
reproduced to all printed decimals either way), but only a prior that is
Gaussian in the coordinates of ``theta`` makes the BFI algebra consistent, so
we use ``s ~ N(0, 1 / lambda_scale)``; set ``scale_lam=0`` for a flat prior.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from core_stats.families import Family

__all__ = [
    "SCALE_NAME",
    "LocalFit",
    "MAPConvergenceError",
    "prior_precision",
    "log_posterior",
    "fit_map",
    "newton_map",
]

SCALE_NAME = "log_sigma"
_LOG_2PI = float(np.log(2.0 * np.pi))


class MAPConvergenceError(RuntimeError):
    """Newton's method did not reach the requested gradient tolerance."""


def _frozen(array: np.ndarray) -> np.ndarray:
    out = np.array(array, dtype=float, copy=True)
    out.setflags(write=False)
    return out


@dataclass(frozen=True, eq=False)
class LocalFit:
    """A centre's MAP estimate and curvature.

    Attributes
    ----------
    family : Family
    names : tuple of str
        Parameter names; the Gaussian scale, when present, is last and named
        ``"log_sigma"``.
    theta : ndarray, shape (d,)
        ``theta_hat = argmax sum_i log p(y_i | x_i, theta) - theta' Lambda theta / 2``.
    curvature : ndarray, shape (d, d)
        ``A_hat = -grad^2 log posterior`` at ``theta_hat`` (includes ``Lambda``).
    prior : ndarray, shape (d, d)
        The centre's prior precision ``Lambda_l``.
    n : int
        Number of rows.
    log_posterior : float
        Unnormalised log posterior at ``theta_hat``.
    gradient_max : float
        ``max |grad|`` at ``theta_hat`` (convergence evidence).
    iterations : int
        Newton iterations used.
    """

    family: Family
    names: tuple[str, ...]
    theta: np.ndarray
    curvature: np.ndarray
    prior: np.ndarray
    n: int
    log_posterior: float
    gradient_max: float
    iterations: int

    def __post_init__(self) -> None:
        for field in ("theta", "curvature", "prior"):
            object.__setattr__(self, field, _frozen(getattr(self, field)))

    @property
    def dim(self) -> int:
        """Number of parameters ``d``."""
        return int(self.theta.size)

    @property
    def covariance(self) -> np.ndarray:
        """``A_hat^{-1}``, the local posterior covariance."""
        return np.linalg.inv(self.curvature)


def prior_precision(
    n_coefficients: int,
    family: Family,
    *,
    lam: float = 0.01,
    intercept_lam: float | None = None,
    scale_lam: float | None = None,
    intercept_index: int | None = 0,
) -> np.ndarray:
    """Diagonal prior precision ``Lambda = diag(lambda_j)``.

    ``lambda_j = lam`` for every coefficient, ``intercept_lam`` (default ``lam``)
    for the column ``intercept_index`` (``None``: no intercept), and
    ``scale_lam`` (default ``lam``) for ``s = log sigma`` when the family has a
    scale. The paper (section 4, Table 1) and the R package put the same
    ``lambda`` on every parameter, the scale included.
    """
    diag = np.full(n_coefficients, float(lam))
    if intercept_index is not None and intercept_lam is not None:
        diag[intercept_index] = float(intercept_lam)
    if family.has_dispersion:
        diag = np.append(diag, float(lam if scale_lam is None else scale_lam))
    if np.any(diag < 0):
        raise ValueError("prior precisions must be non-negative")
    return np.diag(diag)


def _split(theta: np.ndarray, family: Family, fixed_log_scale: float | None):
    if family.has_dispersion and fixed_log_scale is None:
        return theta[:-1], float(theta[-1]), True
    return theta, (0.0 if fixed_log_scale is None else float(fixed_log_scale)), False


def log_posterior(
    theta: np.ndarray,
    X: np.ndarray,
    y: np.ndarray,
    family: Family,
    prior: np.ndarray,
    fixed_log_scale: float | None = None,
    *,
    offset: np.ndarray | None = None,
    weights: np.ndarray | None = None,
) -> tuple[float, np.ndarray, np.ndarray]:
    """Log posterior, its exact gradient and exact Hessian.

    With ``eta = X beta + o`` (``o`` the offset, 0 without), kernel ``r``,
    prior weights ``w`` (1 without; binomial: trials with ``y`` the
    proportion, as glm's ``weights=`` and ``cbind()``) and ``a(s) = exp(-2 s)``
    (Gaussian; 1 otherwise)::

        f(theta) = sum_i [a(s) w_i r(y_i, eta_i) + c_w(y_i, s)] - theta' Lambda theta / 2
        df/dbeta       = a X' (w r')                - (Lambda theta)_beta
        df/ds          = -2 a sum w r - n           - (Lambda theta)_s
        d2f/dbeta2     = a X' diag(w r'') X         - Lambda_bb
        d2f/dbeta ds   = -2 a X' (w r')             - Lambda_bs
        d2f/ds2        = 4 a sum w r                - Lambda_ss

    ``c_w`` is R's (:meth:`Family.log_normalizer`): the Gaussian adds
    ``-s - log(2 pi)/2 + log(w)/2`` per row. ``fixed_log_scale`` holds ``s``
    fixed (``theta = beta`` only).
    """
    theta = np.asarray(theta, dtype=float)
    beta, s, free_scale = _split(theta, family, fixed_log_scale)
    eta = X @ beta if offset is None else X @ beta + offset
    r, r1, r2 = family.kernel_derivatives(y, eta, 2)
    if weights is not None:
        r, r1, r2 = r * weights, r1 * weights, r2 * weights
    a = float(np.exp(-2.0 * s)) if family.has_dispersion else 1.0
    if family.has_dispersion:
        value = a * r.sum() - y.size * (s + 0.5 * _LOG_2PI)
        if weights is not None:
            value += family.log_normalizer(y, weights).sum()
    else:
        value = r.sum() + family.log_normalizer(y, weights).sum()
    grad_b = a * (X.T @ r1)
    hess_bb = a * (X.T @ (r2[:, None] * X))
    if free_scale:
        grad = np.append(grad_b, -2.0 * a * r.sum() - y.size)
        cross = -2.0 * a * (X.T @ r1)
        hess = np.block([[hess_bb, cross[:, None]], [cross[None, :], 4.0 * a * r.sum()]])
    else:
        grad, hess = grad_b, hess_bb
    value -= 0.5 * theta @ prior @ theta
    return float(value), grad - prior @ theta, hess - prior


def _start(X: np.ndarray, y: np.ndarray, family: Family, prior: np.ndarray, free_scale: bool,
           offset: np.ndarray | None = None, weights: np.ndarray | None = None):
    p = X.shape[1]
    if not family.has_residual_sd:
        return np.zeros(p)
    w = np.ones(y.size) if weights is None else weights
    target = y if offset is None else y - offset
    ridge = prior[:p, :p] + 1e-8 * np.eye(p)
    beta = np.linalg.solve(X.T @ (w[:, None] * X) + ridge, X.T @ (w * target))
    if not free_scale:
        return beta
    resid_sd = max(float(np.sqrt(np.mean(w * (target - X @ beta) ** 2))), 1e-8)
    return np.append(beta, np.log(resid_sd))


def _newton_direction(grad: np.ndarray, hess: np.ndarray) -> np.ndarray:
    """Solve ``(-H + tau I) delta = g``, raising ``tau`` until ``-H + tau I`` is PD."""
    neg = -hess
    tau = 0.0
    scale = max(float(np.max(np.abs(np.diag(neg)))), 1.0)
    for _ in range(60):
        try:
            chol = np.linalg.cholesky(neg + tau * np.eye(neg.shape[0]))
        except np.linalg.LinAlgError:
            tau = max(2.0 * tau, 1e-10 * scale)
            continue
        return np.linalg.solve(chol.T, np.linalg.solve(chol, grad))
    raise MAPConvergenceError("could not regularise the Hessian to positive definite")


def _check_inputs(X: np.ndarray, y: np.ndarray, prior: np.ndarray, dim: int) -> None:
    if X.ndim != 2 or X.shape[0] != y.size:
        raise ValueError(f"X has shape {X.shape} but y has {y.size} rows")
    if prior.shape != (dim, dim):
        raise ValueError(f"prior must be {dim} x {dim}, got {prior.shape}")
    if not np.allclose(prior, prior.T):
        raise ValueError("prior precision must be symmetric")


def fit_map(
    X: np.ndarray,
    y: np.ndarray,
    family: Family,
    prior: np.ndarray,
    *,
    names: Sequence[str] | None = None,
    fixed_log_scale: float | None = None,
    offset: np.ndarray | None = None,
    weights: np.ndarray | None = None,
    gtol: float = 1e-12,
    max_iter: int = 200,
) -> LocalFit:
    """MAP estimate by Newton's method with step halving.

    Maximises ``f(theta)`` of :func:`log_posterior`. Each step solves
    ``(-H + tau I) delta = g`` (``tau = 0`` unless ``-H`` is not positive
    definite) and halves ``delta`` until ``f`` does not decrease. Stops when
    ``max |g| <= gtol * max(1, n)`` (``g`` is a sum of ``n`` terms), or when
    the Newton step is below ``1e-15`` relative (rounding limit; the reached
    ``max |g|`` is kept in ``gradient_max``). ``A_hat = -H(theta_hat)``.
    ``offset`` and prior ``weights`` as in :func:`log_posterior`.

    Raises
    ------
    MAPConvergenceError
        If the tolerance is not reached in ``max_iter`` iterations or
        ``A_hat`` is not positive definite.
    """
    X = np.asarray(X, dtype=float)
    y = np.asarray(y, dtype=float).ravel()
    prior = np.asarray(prior, dtype=float)
    offset = None if offset is None else np.asarray(offset, dtype=float).ravel()
    weights = None if weights is None else np.asarray(weights, dtype=float).ravel()
    family.check_outcome(y, weights)
    free_scale = family.has_dispersion and fixed_log_scale is None
    dim = X.shape[1] + int(free_scale)
    _check_inputs(X, y, prior, dim)
    for extra in (offset, weights):
        if extra is not None and extra.size != y.size:
            raise ValueError(f"an offset or weights of {extra.size} rows for {y.size} rows")
    scale = float(y.size if weights is None else max(weights.sum(), 1.0))
    theta, value, grad, hess, iteration = newton_map(
        lambda th: log_posterior(th, X, y, family, prior, fixed_log_scale, offset=offset,
                                 weights=weights),
        _start(X, y, family, prior, free_scale, offset, weights), tol=gtol * max(1.0, scale),
        max_iter=max_iter)
    return _make_fit(theta, X, y, family, prior, names, value, grad, hess, iteration)


def newton_map(objective, theta: np.ndarray, *, tol: float, max_iter: int):
    """Maximise ``objective(theta) -> (value, gradient, Hessian)`` by Newton with halving.

    Stops when ``max |g| <= tol`` or the step is below ``1e-15`` relative (the
    rounding limit). Returns ``theta, value, gradient, Hessian, iterations``;
    MAPConvergenceError after ``max_iter`` iterations.
    """
    value, grad, hess = objective(theta)
    for iteration in range(max_iter + 1):
        if np.max(np.abs(grad)) <= tol:
            break
        if iteration == max_iter:
            raise MAPConvergenceError(f"no convergence in {max_iter} Newton iterations")
        step = _newton_direction(grad, hess)
        if np.max(np.abs(step)) <= 1e-15 * (1.0 + np.max(np.abs(theta))):
            break  # at the floating-point limit: g is rounding noise
        for _ in range(60):
            trial = objective(theta + step)
            if np.isfinite(trial[0]) and trial[0] >= value - 1e-12 * abs(value):
                break
            step = step / 2.0
        theta = theta + step
        value, grad, hess = trial
    return theta, value, grad, hess, iteration


def _make_fit(theta, X, y, family, prior, names, value, grad, hess, iterations) -> LocalFit:
    curvature = -hess
    curvature = 0.5 * (curvature + curvature.T)
    if np.min(np.linalg.eigvalsh(curvature)) <= 0:
        raise MAPConvergenceError("the curvature A_hat at the MAP is not positive definite")
    if names is None:
        names = [f"x{j}" for j in range(X.shape[1])]
    names = list(names)
    if len(names) != X.shape[1]:
        raise ValueError(f"{len(names)} names for {X.shape[1]} columns")
    if theta.size > X.shape[1]:
        names.append(SCALE_NAME)
    return LocalFit(
        family=family, names=tuple(names), theta=theta, curvature=curvature, prior=prior,
        n=int(y.size), log_posterior=value, gradient_max=float(np.max(np.abs(grad))),
        iterations=iterations,
    )
