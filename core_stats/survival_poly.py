"""The polynomial baseline of R BFI 3.1.0 (``basehaz = "poly"``): log-likelihood and order.

The log baseline hazard is a polynomial of order ``q`` in time,
``log h0(t) = omega_0 + omega_1 t + ... + omega_q t^q``, so with
``I_m(t) = int_0^t s^m h0(s) ds`` (``H0 = I_0``), ``eta = x' beta`` and
``u_i = e^(eta_i)`` the log-likelihood and its exact derivatives are::

    l          = sum_i d_i (log h0(t_i) + eta_i) - u_i I_0(t_i)
    dl/dbeta   = sum_i (d_i - u_i I_0(t_i)) x_i
    dl/domega_r = sum_i d_i t_i^r - u_i I_r(t_i)
    d2l/dbeta2 = -sum_i u_i I_0 x x',   d2l/dbeta domega_r = -sum_i u_i I_r x,
    d2l/domega_r domega_s = -sum_i u_i I_(r+s)

(``log h0`` is linear in ``omega``). The integrals have no closed form for
``q >= 2``; R uses ``integrate()`` (adaptive Gauss-Kronrod). Here every
``I_m(t_i)`` is one fixed composite Gauss-Legendre rule on ``[0, t_i]``
(:data:`PANELS` panels of :data:`NODES` nodes), the same rule for the value and
all derivatives, so the derivatives are exact for the computed value; the rule
itself is within ~1e-14 relative of the integral for the smooth integrands met
here (tested against ``scipy.integrate.quad``).

**Order.** R's ``ql.LRT`` fits the maximum-likelihood model (no prior) of
order 0, 1, ... and stops at the first order whose likelihood-ratio statistic
``2 (l_(q+1) - l_q)`` is below ``qchisq(1 - alpha, 1)``, or at ``max_order``
(:func:`select_order`). ``bfi()`` then combines every centre's MAP at the
largest order any centre chose.
"""

from __future__ import annotations

import numpy as np

__all__ = ["NODES", "PANELS", "poly_integrals", "poly_loglik", "select_order"]

NODES = 24
PANELS = 4
_X, _W = np.polynomial.legendre.leggauss(NODES)


def _nodes(time: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Quadrature nodes ``s`` and weights ``w`` on ``[0, t_i]`` (rows = patients)."""
    edges = np.arange(PANELS + 1) / PANELS
    centre = 0.5 * (edges[:-1] + edges[1:])
    unit = (centre[:, None] + 0.5 / PANELS * _X[None, :]).ravel()  # nodes on [0, 1]
    weight = np.tile(0.5 / PANELS * _W, PANELS)
    return time[:, None] * unit[None, :], time[:, None] * weight[None, :]


def poly_integrals(time: np.ndarray, omega: np.ndarray, top: int) -> np.ndarray:
    """``I_m(t_i) = int_0^t_i s^m exp(sum_q omega_q s^q) ds`` for ``m = 0..top``: (n, top+1)."""
    s, w = _nodes(np.asarray(time, dtype=float))
    with np.errstate(over="ignore", invalid="ignore"):
        h0 = np.exp(np.polynomial.polynomial.polyval(s, omega))
        powers = s[:, :, None] ** np.arange(top + 1)[None, None, :]
        return np.einsum("nk,nkm->nm", w * h0, powers)


def poly_loglik(theta: np.ndarray, time: np.ndarray, event: np.ndarray, X: np.ndarray,
                order: int) -> tuple[float, np.ndarray, np.ndarray]:
    """``l``, its gradient and Hessian (module docstring) at ``theta = (beta, omega)``."""
    p = X.shape[1]
    beta, omega = theta[:p], theta[p:p + order + 1]
    d = event.astype(float)
    with np.errstate(over="ignore", invalid="ignore"):
        u = np.exp(X @ beta)
        integrals = poly_integrals(time, omega, 2 * order)
        T = time[:, None] ** np.arange(order + 1)[None, :]
        log_h0 = T @ omega
        value = float(d @ (log_h0 + X @ beta) - u @ integrals[:, 0])
        grad = np.concatenate([X.T @ (d - u * integrals[:, 0]),
                               T.T @ d - integrals[:, :order + 1].T @ u])
        dim = p + order + 1
        hess = np.empty((dim, dim))
        hess[:p, :p] = -(X.T @ ((u * integrals[:, 0])[:, None] * X))
        cross = -(X.T @ (u[:, None] * integrals[:, :order + 1]))
        hess[:p, p:] = cross
        hess[p:, :p] = cross.T
        moments = u @ integrals  # sum_i u_i I_m(t_i), m = 0..2q
        r = np.arange(order + 1)
        hess[p:, p:] = -moments[r[:, None] + r[None, :]]
    return value, grad, hess


def select_order(time: np.ndarray, event: np.ndarray, X: np.ndarray, max_order: int,
                 alpha: float = 0.1) -> int:
    """R BFI's ``ql.LRT``: a centre's order by likelihood-ratio tests of its MLEs.

    Order 0 starts at zero, order ``q + 1`` at the order-``q`` MLE with
    ``omega_(q+1) = 0``, as R does. An MLE that does not converge ends the
    search at the previous order (R's fallback); if order 0 itself fails, R
    uses ``max_order``.
    """
    from scipy import stats

    from core_stats.bfi_local import MAPConvergenceError, newton_map

    critical = float(stats.chi2.ppf(1.0 - alpha, df=1))
    p = X.shape[1]

    def mle(order: int, start: np.ndarray) -> tuple[np.ndarray, float]:
        theta, value, grad, _, _ = newton_map(
            lambda th: poly_loglik(th, time, event, X, order), start,
            tol=1e-9 * max(1.0, float(time.size)), max_iter=200)
        if not np.isfinite(value):
            raise MAPConvergenceError("no finite maximum")
        return theta, value

    try:
        theta, value = mle(0, np.zeros(p + 1))
    except MAPConvergenceError:
        return max_order
    for order in range(1, max_order + 1):
        try:
            theta_next, value_next = mle(order, np.append(theta, 0.0))
        except MAPConvergenceError:
            return order - 1
        if 2.0 * (value_next - value) < critical:
            return order - 1
        theta, value = theta_next, value_next
    return max_order
