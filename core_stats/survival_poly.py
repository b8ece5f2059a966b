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
``I_m(t_i)`` is a composite Gauss-Legendre rule on ``[0, t_i]`` (panels of
:data:`NODES` nodes graded towards 0 and towards the turning points of
``log h0``, split 1, 2, 4, 8 times until two successive rules agree to 1e-11
relative), the same rule for the value and all derivatives, so the
derivatives are exact for the computed value; the rule is within 1e-12 of
``scipy.integrate.quad`` in the tests, and a time scale it cannot resolve is
refused rather than integrated roughly.

**Order.** R's ``ql.LRT`` fits the maximum-likelihood model (no prior) of
order 0, 1, ... and stops at the first order whose likelihood-ratio statistic
``2 (l_(q+1) - l_q)`` is below ``qchisq(1 - alpha, 1)``, or at ``max_order``
(:func:`select_order`). ``bfi()`` then combines every centre's MAP at the
largest order any centre chose.
"""

from __future__ import annotations

import numpy as np

__all__ = ["NODES", "SPLITS", "poly_integrals", "poly_loglik", "select_order"]

NODES = 16
#: panel edges on [0, 1] (times t_i): graded towards 0 (a hazard that falls fast from
#: t = 0) and towards every turning point of log h0 inside the follow-up (a peak), each
#: panel split into 1, 2, 4, 8 until the 16- and 8-node rules agree (module docstring)
EDGES = np.concatenate([[0.0], 2.0 ** -np.arange(8, 0, -1), [1.0]])
SPLITS = (1, 2, 4, 8)
AGREE = 1e-11
_RULES = {k: np.polynomial.legendre.leggauss(k) for k in (NODES, NODES // 2)}


def _edges(time: np.ndarray, omega: np.ndarray) -> np.ndarray:
    """Each patient's panel edges on [0, 1], sorted: (n, E), or (E,) shared by all. A
    turning point of ``log h0`` at ``c`` adds an edge at ``c``, and a peak (width
    ``w = (-d2 log h0 / dt2)^(-1/2)``) edges at ``c +- w 2^k``."""
    n = time.size
    edges = [np.broadcast_to(EDGES, (n, EDGES.size))]
    top = float(np.max(time)) if n else 0.0
    if omega.size >= 3 and top > 0:  # turning points: real roots of d log h0 / dt
        slope = np.polynomial.polynomial.polyder(omega)
        for root in np.polynomial.polynomial.polyroots(slope):
            if abs(root.imag) > 1e-12 * max(1.0, abs(root.real)) or not 0 < root.real < top:
                continue
            c = float(root.real)
            curvature = float(np.polynomial.polynomial.polyval(
                c, np.polynomial.polynomial.polyder(omega, 2)))
            points = [c]
            if curvature < 0:
                width = 1.0 / np.sqrt(-curvature)
                steps = width * 2.0 ** np.arange(0, min(60, int(np.log2(top / width)) + 2))
                points += [*(c - steps), *(c + steps)]
            edges.append(np.asarray(points)[None, :] / np.maximum(time, 1e-300)[:, None])
    if len(edges) == 1:
        return EDGES
    return np.sort(np.clip(np.hstack(edges), 0.0, 1.0), axis=1)


def _nodes(time: np.ndarray, edges: np.ndarray, split: int,
           nodes: int) -> tuple[np.ndarray, np.ndarray]:
    """Quadrature nodes ``s`` and weights ``w`` on ``[0, t_i]`` (rows = patients)."""
    parts = np.linspace(0.0, 1.0, split + 1)[:-1]
    if edges.ndim == 1:  # the same panels for every patient, scaled to [0, t_i]
        unit, weight = _nodes(np.ones(1), edges[None, :], split, nodes)
        return time[:, None] * unit, time[:, None] * weight
    width = np.diff(edges, axis=1)
    left = (edges[:, :-1, None] + width[:, :, None] * parts[None, None, :]).reshape(
        len(edges), -1)
    half = np.repeat(width / split, split, axis=1) / 2.0
    x, w = _RULES[nodes]
    unit = (left + half)[:, :, None] + half[:, :, None] * x[None, None, :]
    weight = half[:, :, None] * w[None, None, :]
    n = len(edges)
    return time[:, None] * unit.reshape(n, -1), time[:, None] * weight.reshape(n, -1)


def _rule(time: np.ndarray, omega: np.ndarray, top: int, edges: np.ndarray,
          split: int, nodes: int = NODES) -> np.ndarray:
    s, w = _nodes(time, edges, split, nodes)
    with np.errstate(over="ignore", invalid="ignore", under="ignore"):
        term = w * np.exp(np.polynomial.polynomial.polyval(s, omega))
        out = np.empty((len(time), top + 1))
        for m in range(top + 1):
            out[:, m] = term.sum(axis=1)
            term = term * s
        return out


def poly_integrals(time: np.ndarray, omega: np.ndarray, top: int) -> np.ndarray:
    """``I_m(t_i) = int_0^t_i s^m exp(sum_q omega_q s^q) ds`` for ``m = 0..top``: (n, top+1).

    The composite rule (panels graded towards 0 and towards the turning points of
    ``log h0``) is used once its 8-node version on the same panels agrees with it to
    :data:`AGREE` relative in every entry (the 16-node rule is then far closer);
    otherwise every panel is split in 2, 4, 8. ValueError if
    they do not (time on a scale where the log hazard varies by hundreds across the
    follow-up: measure time in larger units).
    """
    time = np.asarray(time, dtype=float)
    omega = np.asarray(omega, dtype=float)
    edges = _edges(time, omega)
    for split in SPLITS:
        current = _rule(time, omega, top, edges, split)
        if not np.all(np.isfinite(current)):
            return current  # an overflowing trial point: the caller halves its step
        check = _rule(time, omega, top, edges, split, NODES // 2)
        if np.all(np.abs(current - check) <= AGREE * np.maximum(np.abs(current), 1e-300)):
            return current
    return np.full_like(current, np.nan)  # unresolved: not a value to use


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
    from scipy.special import ndtri

    from core_stats.bfi_local import MAPConvergenceError, newton_map

    critical = float(ndtri(1.0 - alpha / 2.0)) ** 2  # qchisq(1 - alpha, 1)
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
