"""Link functions as objects, and the binomial kernels of its non-canonical links.

One :class:`Link` per link, named as R names it: ``logit``, ``probit``,
``cloglog``, ``log``, ``identity``, ``inverse``. A link maps the mean ``mu``
to the linear predictor ``eta = g(mu)``; ``inverse`` is ``g^{-1}``;
``clip`` keeps a starting mean inside the link's domain (an explicit guard:
``logit(0)`` is infinite). Which family allows which link is the family's
business (:mod:`core_stats.families`).

For a non-canonical binomial link the kernel ``r(y, eta) = y log mu + (1 - y) log(1 - mu)``
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

from dataclasses import dataclass
from math import factorial

import numpy as np
from scipy.special import expit, log_ndtr, ndtr, ndtri

__all__ = ["BINOMIAL_LINKS", "LINKS", "Link", "binomial_kernel_derivatives", "get_link",
           "inverse_link", "link_value"]

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


_EPS = 1e-6


@dataclass(frozen=True)
class Link:
    """A link ``eta = g(mu)`` with its inverse (``name`` as R's ``make.link`` names it).

    Attributes
    ----------
    name : str
        R's name of the link.
    domain : tuple of float
        Open interval of means the link accepts; starting means are clipped
        ``_EPS`` inside it.
    """

    name: str
    domain: tuple[float, float]

    def inverse(self, eta: np.ndarray) -> np.ndarray:
        """``mu = g^{-1}(eta)``."""
        eta = np.asarray(eta, dtype=float)
        if self.name == "logit":
            return expit(eta)
        if self.name in ("probit", "cloglog"):
            return inverse_link(self.name, eta)
        if self.name == "log":
            return np.exp(eta)
        if self.name == "inverse":
            return 1.0 / eta
        return eta

    def clip(self, mu: float) -> float:
        """``mu`` moved ``_EPS`` inside the link's domain (explicit guard for start values)."""
        low, high = self.domain
        return float(min(max(mu, low + _EPS), high - _EPS))

    def value(self, mu: float) -> float:
        """``eta = g(mu)`` of one mean, clipped inside the domain first."""
        mu = self.clip(mu)
        if self.name == "logit":
            return float(np.log(mu / (1.0 - mu)))
        if self.name in ("probit", "cloglog"):
            return link_value(self.name, mu)
        if self.name == "log":
            return float(np.log(mu))
        if self.name == "inverse":
            return 1.0 / mu
        return float(mu)


_UNIT, _POSITIVE, _LINE = (0.0, 1.0), (0.0, np.inf), (-np.inf, np.inf)
LINKS: dict[str, Link] = {link.name: link for link in (
    Link("logit", _UNIT), Link("probit", _UNIT), Link("cloglog", _UNIT),
    Link("log", _POSITIVE), Link("inverse", _POSITIVE), Link("identity", _LINE))}


def get_link(name: str) -> Link:
    """The link called ``name``; ``ValueError`` names the valid ones."""
    try:
        return LINKS[name]
    except KeyError:
        raise ValueError(f"unknown link {name!r}: choose one of {', '.join(LINKS)}") from None
