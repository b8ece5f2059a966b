"""Negative binomial NB2 (glmmTMB's ``nbinom2``): ``Var y = mu + mu^2 / theta``, log link.

``theta`` (the size) is estimated; the parameter vector holds ``s = log theta``
(glmmTMB's ``betad``) and glmmTMB reports ``theta`` itself. With
``d = eta - s`` and ``p = expit(d) = mu / (mu + theta)`` the log-density is

    log p = y log p + theta log(1 - p) + lgamma(y + theta) - lgamma(theta) - log y!
          = A(d) - e^s B(d) + G(e^s) - log y!,

``B = log(1 + e^d)``, ``A = y (d - B)``, ``G(theta) = lgamma(y + theta) -
lgamma(theta)``. It does not separate into ``a(s) r(eta)``, so the partial
derivatives are written out: ``B' = p``, ``B^(k+1) = dB^(k)/dd`` with
``dp/dd = p (1 - p)`` (polynomials in ``p``), ``A' = y (1 - p)``,
``A^(k) = -y B^(k)`` for ``k >= 2``, and

    d^i/d eta^i d^j/ds^j [A - e^s B] = (-1)^j A^(i+j) - e^s sum_k C(j, k) (-1)^k B^(i+k),

plus ``G_s = theta G'``, ``G_ss = theta G' + theta^2 G''`` (``G' = psi(y + theta) -
psi(theta)``). Concave in ``eta``: ``d2/deta2 = -(y + theta) p (1 - p)``. The
log-likelihood keeps its full constants, as glmmTMB's ``logLik``.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import comb

import numpy as np
from numpy.polynomial import polynomial as P

from core_stats.families.base import (
    Dispersion,
    Family,
    check_counts,
    count_summary_problem,
)
from core_stats.special import digamma, expit, gammaln, polygamma

__all__ = ["NegativeBinomial"]

_MAX_ORDER = 6


def _p_polynomials(order: int) -> list[np.ndarray]:
    """Coefficients (in ``p``) of ``B^(k)`` for ``k = 1 .. order``."""
    polys = [np.array([0.0, 1.0])]  # B' = p
    dp = np.array([0.0, 1.0, -1.0])  # p (1 - p)
    for _ in range(order - 1):
        polys.append(P.polymul(P.polyder(polys[-1]), dp))
    return polys


_B_POLYS = _p_polynomials(_MAX_ORDER)


@dataclass(frozen=True)
class NegativeBinomial(Family):
    name = "negative_binomial"
    r_name = "nbinom2"
    links = ("log",)
    aliases = ("nbinom2",)
    dispersion = Dispersion("log_theta_nbinom2", residual_sd=False,
                            label="Dispersion parameter for nbinom2 family (): {value}")
    counts = True
    density_at_most_one = True

    def _check_values(self, y: np.ndarray, weights: np.ndarray | None) -> None:
        check_counts(y, "negative binomial")

    def summary_problem(self, n: float, sum_y: float, sum_y2: float, weighted: bool,
                        atol: float, rtol: float) -> str | None:
        return count_summary_problem(sum_y, sum_y2, atol, rtol)

    def mean_slope(self, mu: float) -> float:
        return max(mu, 1e-6)

    def start_dispersion(self, n: float, sum_y: float, sum_y2: float) -> float:
        """``log theta`` from the moments ``var = m + m^2 / theta`` (theta in [0.1, 100])."""
        m = sum_y / n
        excess = (sum_y2 / n - m * m) - m
        theta = m * m / excess if excess > 0 else 100.0
        return float(np.log(min(max(theta, 0.1), 100.0)))

    def log_normalizer(self, y: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        return -gammaln(np.asarray(y, dtype=float) + 1.0)

    def row_partials(self, y: np.ndarray, eta: np.ndarray, log_dispersion: float,
                     weights: np.ndarray | None, eta_order: int,
                     s_order: int = 0) -> np.ndarray:
        if weights is not None:
            raise ValueError("prior weights are not supported for the negative binomial")
        y = np.asarray(y, dtype=float)
        d = np.asarray(eta, dtype=float) - log_dispersion
        theta = float(np.exp(log_dispersion))
        p = expit(d)
        top = eta_order + s_order
        B = [np.logaddexp(0.0, d)] + [P.polyval(p, c) for c in _B_POLYS[:top]]
        A = [-y * np.logaddexp(0.0, -d), y * expit(-d)] + [-y * b for b in B[2:]]
        out = np.empty((eta_order + 1, s_order + 1, y.size))
        for i in range(eta_order + 1):
            for j in range(s_order + 1):
                mixed = sum(comb(j, k) * (-1) ** k * B[i + k] for k in range(j + 1))
                out[i, j] = (-1) ** j * A[i + j] - theta * mixed
        G1 = digamma(y + theta) - digamma(theta)
        G = [gammaln(y + theta) - gammaln(theta), theta * G1,
             theta * G1 + theta**2 * (polygamma(1, y + theta) - polygamma(1, theta))]
        for j in range(s_order + 1):
            out[0, j] += G[j]
        return out
