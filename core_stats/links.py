"""Link functions as objects, and the binomial kernels of its non-canonical links.

One :class:`Link` subclass per link (as glum's ``Link`` classes), named as R
names it: ``logit``, ``probit``, ``cloglog``, ``log``, ``identity``, ``inverse``.
A link maps the mean ``mu`` to the linear predictor ``eta = g(mu)``; ``inverse``
is ``g^{-1}``; ``clip`` keeps a starting mean inside the link's domain (an
explicit guard: ``logit(0)`` is infinite). Which family allows which link is the family's
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
from typing import ClassVar

import numpy as np

from core_stats.special import expit, log_ndtr, ndtr, ndtri

__all__ = ["BINOMIAL_LINKS", "LINKS", "Link", "Logit", "Probit", "Cloglog", "Log", "Inverse",
           "Identity", "binomial_kernel_derivatives", "get_link"]

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


_EPS = 1e-6
_UNIT, _POSITIVE, _LINE = (0.0, 1.0), (0.0, np.inf), (-np.inf, np.inf)


@dataclass(frozen=True)
class Link:
    """A link ``eta = g(mu)`` with its inverse; one subclass per link (as glum's ``Link``).

    Class attributes: ``name`` as R's ``make.link`` names it, and ``domain``,
    the open interval of means the link accepts (start values are clipped
    ``_EPS`` inside it: an explicit guard, ``logit(0)`` is infinite).
    """

    name: ClassVar[str]
    domain: ClassVar[tuple[float, float]]

    def inverse(self, eta: np.ndarray) -> np.ndarray:
        """``mu = g^{-1}(eta)``."""
        raise NotImplementedError

    def _link(self, mu: float) -> float:
        raise NotImplementedError

    def clip(self, mu: float) -> float:
        """``mu`` moved ``_EPS`` inside the link's domain (explicit guard for start values)."""
        low, high = self.domain
        return float(min(max(mu, low + _EPS), high - _EPS))

    def value(self, mu: float) -> float:
        """``eta = g(mu)`` of one mean, clipped inside the domain first."""
        return float(self._link(self.clip(mu)))


@dataclass(frozen=True)
class Logit(Link):
    """``g(mu) = log(mu / (1 - mu))``, ``g^{-1} = expit`` (the binomial's canonical link)."""

    name = "logit"
    domain = _UNIT

    def inverse(self, eta: np.ndarray) -> np.ndarray:
        return expit(np.asarray(eta, dtype=float))

    def _link(self, mu: float) -> float:
        return np.log(mu / (1.0 - mu))


@dataclass(frozen=True)
class Probit(Link):
    """``g(mu) = Phi^{-1}(mu)``."""

    name = "probit"
    domain = _UNIT

    def inverse(self, eta: np.ndarray) -> np.ndarray:
        return ndtr(np.asarray(eta, dtype=float))

    def _link(self, mu: float) -> float:
        return ndtri(mu)


@dataclass(frozen=True)
class Cloglog(Link):
    """``g(mu) = log(-log(1 - mu))``, ``g^{-1} = 1 - exp(-e^eta)`` (as ``-expm1``)."""

    name = "cloglog"
    domain = _UNIT

    def inverse(self, eta: np.ndarray) -> np.ndarray:
        return -np.expm1(-np.exp(np.asarray(eta, dtype=float)))

    def _link(self, mu: float) -> float:
        return np.log(-np.log1p(-mu))


@dataclass(frozen=True)
class Log(Link):
    """``g(mu) = log mu``."""

    name = "log"
    domain = _POSITIVE

    def inverse(self, eta: np.ndarray) -> np.ndarray:
        return np.exp(np.asarray(eta, dtype=float))

    def _link(self, mu: float) -> float:
        return np.log(mu)


@dataclass(frozen=True)
class Inverse(Link):
    """``g(mu) = 1 / mu`` (the Gamma's canonical link; means exist for ``eta > 0``)."""

    name = "inverse"
    domain = _POSITIVE

    def inverse(self, eta: np.ndarray) -> np.ndarray:
        return 1.0 / np.asarray(eta, dtype=float)

    def _link(self, mu: float) -> float:
        return 1.0 / mu


@dataclass(frozen=True)
class Identity(Link):
    """``g(mu) = mu``."""

    name = "identity"
    domain = _LINE

    def inverse(self, eta: np.ndarray) -> np.ndarray:
        return np.asarray(eta, dtype=float)

    def _link(self, mu: float) -> float:
        return mu


LINKS: dict[str, Link] = {link.name: link for link in (
    Logit(), Probit(), Cloglog(), Log(), Inverse(), Identity())}


def get_link(name: str) -> Link:
    """The link called ``name``; ``ValueError`` names the valid ones."""
    try:
        return LINKS[name]
    except KeyError:
        raise ValueError(f"unknown link {name!r}: choose one of {', '.join(LINKS)}") from None
