"""The piecewise-exponential baseline of R BFI 3.1.0 (``basehaz = "pwexp"``).

With knots ``0 = c_0 < ... < c_K``, R's ``i.basis`` gives each patient the
piece indicators ``b_ik = 1[c_(k-1) <= t_i < c_k]`` and exposures
``B_ik = min(t_i - c_(k-1), c_k - c_(k-1)) 1[t_i >= c_(k-1)]``; the baseline is
``h0 = exp(omega_k)`` on piece ``k``, so ``H0(t_i) = sum_k B_ik e^(omega_k)``.
R's objective (``negloglik.theta``) is, with ``u_i = e^(x_i' beta)`` and
``F_k = sum_i d_i b_ik``::

    l = sum_k F_k omega_k + sum_i d_i eta_i - sum_i u_i H0(t_i)

and its exact derivatives are ``dl/dbeta = sum (d - u H0) x``,
``dl/domega_k = F_k - e^(omega_k) sum_i u_i B_ik``,
``d2l/dbeta2 = -sum u H0 x x'``, ``d2l/dbeta domega_k = -e^(omega_k) sum u B_ik x``,
``d2l/domega_k2 = -e^(omega_k) sum u B_ik`` (no cross terms between pieces).
R's curvature ``A.l.maker`` is this exact one plus ``Lambda`` (added once).

A time at or after the last knot has no piece: its exposure stops at
``c_K`` and its event enters through ``eta`` alone, without a log-hazard term.
That is R's objective, and it is kept so that the fits match R; R's own
grid ends at the smallest of the centres' largest times (plus 0.001), so the
other centres have such times.
"""

from __future__ import annotations

import numpy as np

__all__ = ["pwexp_basis", "pwexp_loglik"]


def pwexp_basis(time: np.ndarray, knots: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    """R's ``i.basis``: the indicators ``b`` and exposures ``B`` (n x K)."""
    c = np.asarray(knots, dtype=float)
    t = np.asarray(time, dtype=float)[:, None]
    lower, upper = c[None, :-1], c[None, 1:]
    indicator = ((t >= lower) & (t < upper)).astype(float)
    exposure = np.minimum(t - lower, upper - lower) * (t >= lower)
    return indicator, exposure


def pwexp_loglik(theta: np.ndarray, time: np.ndarray, event: np.ndarray, X: np.ndarray,
                 knots: tuple[float, ...]) -> tuple[float, np.ndarray, np.ndarray]:
    """``l``, its gradient and Hessian (module docstring) at ``theta = (beta, omega)``."""
    p = X.shape[1]
    beta, omega = theta[:p], theta[p:]
    d = event.astype(float)
    indicator, exposure = pwexp_basis(time, knots)
    eta = X @ beta
    with np.errstate(over="ignore", invalid="ignore"):
        u = np.exp(eta)
        hazard = np.exp(omega)
        cumulative = exposure @ hazard
        failures = d @ indicator
        value = float(failures @ omega + d @ eta - u @ cumulative)
        per_piece = hazard * (u @ exposure)  # e^omega_k sum_i u_i B_ik
        grad = np.concatenate([X.T @ (d - u * cumulative), failures - per_piece])
        dim = p + len(omega)
        hess = np.zeros((dim, dim))
        hess[:p, :p] = -(X.T @ ((u * cumulative)[:, None] * X))
        cross = -(X.T @ (u[:, None] * exposure)) * hazard[None, :]
        hess[:p, p:] = cross
        hess[p:, :p] = cross.T
        hess[p:, p:] = -np.diag(per_piece)
    return value, grad, hess
