"""Binomial links other than the logit: probit and complementary log-log.

For a non-canonical link the kernel ``r(y, eta) = y log mu + (1 - y) log(1 - mu)``
(``mu = F(eta)``) has no short closed-form derivatives, so they are computed
exactly by univariate Taylor arithmetic: each function of ``eta`` is carried
as its Taylor coefficients ``c_0 .. c_4`` at the point (``f^(k) = k! c_k``),
and ``exp`` and ``log`` of a series follow the standard recurrences

    b = exp(a):  b_0 = e^{a_0},   k b_k = sum_{j=1..k} j a_j b_{k-j}
    b = log(a):  b_0 = log a_0,   a_0 b_k = a_k - (1/k) sum_{j=1..k-1} j b_j a_{k-j}

Both branches are evaluated stably in the tails:

* probit: ``log Phi(eta)`` from ``log_ndtr``; its derivative is the inverse
  Mills ratio ``lambda = phi / Phi``, whose series follows from the ODE
  ``lambda' = -lambda (eta + lambda)``; ``log(1 - Phi(eta)) = log Phi(-eta)``.
* cloglog: ``log(1 - mu) = -e^eta`` exactly and ``log mu = log(-expm1(-e^eta))``.

Both kernels are concave in ``eta`` (log-concave distribution functions), as
the Laplace mode search needs.
"""

from __future__ import annotations

from math import factorial

import numpy as np
from scipy.special import log_ndtr, ndtr, ndtri

__all__ = ["BINOMIAL_LINKS", "binomial_kernel_derivatives", "inverse_link", "link_value"]

BINOMIAL_LINKS = ("logit", "probit", "cloglog")
_ORDER = 4


def _exp(a: np.ndarray) -> np.ndarray:
    b = np.zeros_like(a)
    b[0] = np.exp(a[0])
    for k in range(1, len(a)):
        b[k] = sum(j * a[j] * b[k - j] for j in range(1, k + 1)) / k
    return b


def _log(a: np.ndarray, log_a0: np.ndarray) -> np.ndarray:
    b = np.zeros_like(a)
    b[0] = log_a0
    for k in range(1, len(a)):
        b[k] = (a[k] - sum(j * b[j] * a[k - j] for j in range(1, k)) / k) / a[0]
    return b


def _mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    out = np.zeros_like(a)
    for k in range(len(a)):
        out[k] = sum(a[j] * b[k - j] for j in range(k + 1))
    return out


def _identity_series(eta: np.ndarray) -> np.ndarray:
    s = np.zeros((_ORDER + 1, eta.size))
    s[0], s[1] = eta, 1.0
    return s


def _log_ndtr_series(eta: np.ndarray) -> np.ndarray:
    """Taylor coefficients of ``log Phi`` at ``eta``."""
    x = _identity_series(eta)
    lam = np.zeros_like(x)  # inverse Mills ratio phi/Phi, series by its ODE
    lam[0] = np.exp(-0.5 * eta**2 - 0.5 * np.log(2.0 * np.pi) - log_ndtr(eta))
    for k in range(_ORDER):
        lam[k + 1] = -_mul(lam, x + lam)[k] / (k + 1)
    out = np.zeros_like(x)
    out[0] = log_ndtr(eta)
    out[1:] = lam[:-1] / np.arange(1, _ORDER + 1)[:, None]
    return out


def _log_mu_series(link: str, eta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Taylor coefficients of ``log mu`` and ``log(1 - mu)`` at ``eta``."""
    if link == "probit":
        upper = _log_ndtr_series(eta)
        lower = _log_ndtr_series(-eta) * ((-1.0) ** np.arange(_ORDER + 1))[:, None]
        return upper, lower
    t = _exp(_identity_series(eta))  # e^eta
    u = _exp(-t)  # 1 - mu
    w = -u
    w[0] = -np.expm1(-t[0])  # mu, without cancellation
    return _log(w, np.log(w[0])), -t


def binomial_kernel_derivatives(link: str, y: np.ndarray, eta: np.ndarray,
                                order: int) -> list[np.ndarray]:
    """``[r, r', ..., r^(order)]`` of ``y log mu + (1 - y) log(1 - mu)`` for ``link``."""
    y = np.asarray(y, dtype=float)
    eta = np.atleast_1d(np.asarray(eta, dtype=float))
    shape = np.broadcast(y, eta).shape
    y_flat = np.broadcast_to(y, shape).ravel()
    log_mu, log_one_minus = _log_mu_series(link, np.broadcast_to(eta, shape).ravel())
    series = y_flat * log_mu + (1.0 - y_flat) * log_one_minus
    return [(factorial(k) * series[k]).reshape(shape) for k in range(order + 1)]


def inverse_link(link: str, eta: np.ndarray) -> np.ndarray:
    if link == "probit":
        return ndtr(eta)
    return -np.expm1(-np.exp(eta))


def link_value(link: str, mu: float) -> float:
    mu = min(max(mu, 1e-6), 1 - 1e-6)
    if link == "probit":
        return float(ndtri(mu))
    return float(np.log(-np.log1p(-mu)))
