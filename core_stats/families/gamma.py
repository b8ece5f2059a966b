"""Gamma with the inverse (canonical) or log link, the dispersion estimated.

With shape ``nu`` and mean ``mu`` (``Var y = mu^2 / nu``), as glmmTMB's
``Gamma()``: ``theta`` holds ``s = log sigma`` with ``sigma^2 = 1 / nu`` (the
coefficient of variation squared, which glmmTMB reports as "sigma^2"), so
``nu = e^{-2s}`` and

    log p = nu r(y, eta) + nu log nu + nu log y - lgamma(nu) - log y,

kernel ``r = -y / mu - log mu``. Log link: with ``t = y e^{-eta}``,
``r = -t - eta``, ``r' = t - 1``, ``r'' = -t``, ``r''' = t``, ``r'''' = -t``.
Inverse link (``mu = 1 / eta``, ``eta > 0``): ``r = -y eta + log eta``,
``r' = 1/eta - y``, ``r'' = -1/eta^2``, ``r''' = 2/eta^3``, ``r'''' = -6/eta^4``;
an explicit guard continues ``r`` below ``eta = 1 / (10^6 y)`` (a mean above a
million times the row's outcome) by its second-order Taylor polynomial there:
concave and finite where no mean exists (``eta <= 0``), so a Newton step that
leaves the domain gets a very low, finite value and step-halving backs off
(a sum of ``-inf`` could not be securely aggregated). The optimum lies inside.
With ``f(nu) = nu (log nu + log y) - lgamma(nu)``, ``f' = log nu + 1 + log y -
psi(nu)``, ``f'' = 1/nu - psi'(nu)``, the ``s``-derivatives of the
``eta``-free terms are ``-2 nu f'`` and ``4 nu^2 f'' + 4 nu f'``. Both kernels
are concave in ``eta``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core_stats.families.base import Dispersion, Family, inverse_square_scale
from core_stats.special import digamma, gammaln, polygamma

__all__ = ["Gamma"]

_MAX_MEAN_RATIO = 1e6  # the inverse link's guard: means up to 1e6 times the outcome


@dataclass(frozen=True)
class GammaDispersion(Dispersion):
    def report(self, log_dispersion: float) -> float:
        """glmmTMB's "sigma^2" of a Gamma fit: ``1 / shape = e^{2s}``."""
        return float(np.exp(2.0 * log_dispersion))


@dataclass(frozen=True)
class Gamma(Family):
    name = "Gamma"
    r_name = "Gamma"
    links = ("inverse", "log")
    aliases = ("gamma",)
    dispersion = GammaDispersion("log_sigma_gamma", residual_sd=False,
                                 label="Dispersion estimate for Gamma family (sigma^2): {value}")

    def _check_values(self, y: np.ndarray, weights: np.ndarray | None) -> None:
        if np.any(y <= 0):
            raise ValueError("a Gamma outcome must be positive in every row")

    def summary_problem(self, n: float, sum_y: float, sum_y2: float, weighted: bool,
                        atol: float, rtol: float) -> str | None:
        return None if sum_y > -atol else f"need sum y > 0 (sum y = {sum_y:.6g})"

    def mean_slope(self, mu: float) -> float:
        mu = max(mu, 1e-6)
        return mu if self.link == "log" else -mu * mu

    def start_dispersion(self, n: float, sum_y: float, sum_y2: float) -> float:
        """Half the outcome's squared coefficient of variation for ``sigma^2``."""
        cv2 = (n * sum_y2 - sum_y**2) / max(sum_y**2, 1e-300)
        return 0.5 * float(np.log(min(max(0.5 * cv2, 1e-4), 10.0)))

    def random_sd_start(self, eta0: float, default: float) -> float:
        return default if self.link == "log" else 0.1 * abs(eta0)

    def kernel_derivatives(self, y: np.ndarray, eta: np.ndarray, order: int) -> list[np.ndarray]:
        if not 0 <= order <= 4:
            raise ValueError("order must be between 0 and 4")
        y = np.asarray(y, dtype=float)
        eta = np.asarray(eta, dtype=float)
        if self.link == "log":
            t = y * np.exp(-eta)
            return [-t - eta, t - 1.0, -t, t, -t][: order + 1]
        # guard: below eta = delta (a mean above 1e6 y) the kernel is continued by its
        # second-order Taylor polynomial at delta (C^2, concave, finite for eta <= 0)
        delta = 1.0 / (_MAX_MEAN_RATIO * y)
        e = np.maximum(eta, delta)
        d = np.minimum(eta - delta, 0.0)
        r0, r1, r2 = -y * e + np.log(e), 1.0 / e - y, -1.0 / e**2
        inside = eta > delta
        out = [r0 + r1 * d + 0.5 * r2 * d * d, r1 + r2 * d, r2,
               np.where(inside, 2.0 / e**3, 0.0), np.where(inside, -6.0 / e**4, 0.0)]
        return out[: order + 1]

    def log_normalizer(self, y: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        return -np.log(np.asarray(y, dtype=float))

    def scale_partials(self, log_dispersion: float) -> np.ndarray:
        return inverse_square_scale(log_dispersion)

    def dispersion_partials(self, y: np.ndarray, log_dispersion: float) -> np.ndarray:
        nu = float(np.exp(-2.0 * log_dispersion))
        log_y = np.log(np.asarray(y, dtype=float))
        f0 = nu * (np.log(nu) + log_y) - gammaln(nu)
        f1 = np.log(nu) + 1.0 + log_y - digamma(nu)
        f2 = 1.0 / nu - float(polygamma(1, nu))
        return np.stack([f0, -2.0 * nu * f1, 4.0 * nu * nu * f2 + 4.0 * nu * f1])
