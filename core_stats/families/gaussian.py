"""Gaussian with the identity link and the residual SD ``sigma = e^s`` in ``theta``.

``log p = w e^{-2s} r(y, eta) - s - log(2 pi)/2 + (1/2) log w`` with
``r = -(y - eta)^2 / 2`` (variance ``sigma^2 / w``, as R's gaussian family):
``r' = y - eta``, ``r'' = -1``, higher derivatives 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core_stats.families.base import Dispersion, Family, inverse_square_scale

__all__ = ["Gaussian"]

_LOG_2PI = float(np.log(2.0 * np.pi))


@dataclass(frozen=True)
class Gaussian(Family):
    name = "gaussian"
    r_name = "gaussian"
    links = ("identity",)
    dispersion = Dispersion("log_sigma_residual", residual_sd=True)
    t_statistic = True
    reml = True
    bfi = True
    dp_outcome = "bounded"
    several_terms = True
    dp_sufficient_statistics = True
    prior_weights = True

    def information_bounds(self, random_effects: bool, laplace_intercept: bool,
                           sigma: float) -> tuple[float, float | None] | None:
        """``X'V^{-1}X`` with ``V >= sigma^2 I``: ``0 <= -H <= G / sigma^2``."""
        return 0.0, 1.0 / sigma**2

    def score_bound(self, random_effects: bool, laplace_intercept: bool, n: float,
                    rss_over_sigma4: float) -> float | None:
        """``(a'g)^2 <= sigma^{-4} a'Ga RSS(beta)``."""
        return rss_over_sigma4

    def loglik_upper_per_row(self, log_dispersion: float) -> float | None:
        """``-(1/2) log(2 pi sigma^2)``: ``l = log N(y; X beta, V)`` with ``V >= sigma^2 I``."""
        return -0.5 * float(np.log(2.0 * np.pi)) - float(log_dispersion)

    def mean_slope(self, mu: float) -> float:
        return 1.0

    def kernel_derivatives(self, y: np.ndarray, eta: np.ndarray, order: int) -> list[np.ndarray]:
        if not 0 <= order <= 4:
            raise ValueError("order must be between 0 and 4")
        resid = np.asarray(y, dtype=float) - np.asarray(eta, dtype=float)
        zero = np.zeros_like(resid)
        return [-0.5 * resid**2, resid, zero - 1.0, zero, zero][: order + 1]

    def log_normalizer(self, y: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        """``(1/2) log w`` (0 without weights; the ``-s - log(2 pi)/2`` carry ``s``)."""
        y = np.asarray(y, dtype=float)
        if weights is None:
            return np.zeros_like(y)
        w = np.asarray(weights, dtype=float)
        return np.where(w > 0, 0.5 * np.log(np.where(w > 0, w, 1.0)), 0.0)

    def scale_partials(self, log_dispersion: float) -> np.ndarray:
        return inverse_square_scale(log_dispersion)

    def dispersion_partials(self, y: np.ndarray, log_dispersion: float) -> np.ndarray:
        """``c = -s - log(2 pi)/2`` per row: ``[c, -1, 0]``."""
        n = np.asarray(y).size
        out = np.zeros((3, n))
        out[0], out[1] = -log_dispersion - 0.5 * _LOG_2PI, -1.0
        return out
