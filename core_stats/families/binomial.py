"""Binomial (Bernoulli rows, or proportions with trials as prior weights).

``log p = w r(y, eta) + log choose(w, w y)`` with the kernel
``r = y log mu + (1 - y) log(1 - mu)``. Logit (canonical): ``mu = expit(eta)``,
``r = y eta - log(1 + e^eta)``, and with ``v = mu (1 - mu)``:
``r' = y - mu``, ``r'' = -v``, ``r''' = -v (1 - 2 mu)``, ``r'''' = -v (1 - 6 v)``
(``log(1 + e^eta)`` as ``logaddexp(0, eta)``, which never overflows). Probit
and cloglog: exact Taylor arithmetic (:mod:`core_stats.links`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core_stats.families.base import Family
from core_stats.links import binomial_kernel_derivatives
from core_stats.special import expit, gammaln

__all__ = ["Binomial"]


@dataclass(frozen=True)
class Binomial(Family):
    name = "binomial"
    r_name = "binomial"
    links = ("logit", "probit", "cloglog")
    density_at_most_one = True
    bfi = True
    dp_outcome = "unit"
    several_terms = True
    dp_sufficient_statistics = True
    binary = True
    prior_weights = True

    def _check_values(self, y: np.ndarray, weights: np.ndarray | None) -> None:
        if weights is None and not np.all((y == 0) | (y == 1)):
            raise ValueError("a binomial outcome must be 0 or 1 in every row")
        if weights is not None:
            successes = weights * y
            if np.any((y < 0) | (y > 1)) or not np.allclose(successes, np.round(successes),
                                                             atol=1e-8):
                raise ValueError("a weighted binomial outcome must be a proportion of whole "
                                 "numbers of successes (weights = trials)")

    def summary_problem(self, n: float, sum_y: float, sum_y2: float, weighted: bool,
                        atol: float, rtol: float) -> str | None:
        moments = (-atol <= sum_y2 <= sum_y * (1 + rtol) + atol) if weighted else \
            abs(sum_y2 - sum_y) <= atol + rtol * max(1.0, abs(sum_y))
        if not (-atol <= sum_y <= n + atol) or not moments:
            return (f"need 0 <= sum y <= n and sum y^2 = sum y (sum y = {sum_y:.6g}, "
                    f"sum y^2 = {sum_y2:.6g}, n = {n:.6g})")
        return None

    def information_bounds(self, random_effects: bool, laplace_intercept: bool,
                           sigma: float) -> tuple[float, float | None] | None:
        """GLM: ``0 <= X'WX <= G/4``; Laplace with a random intercept: ``-6 G .. 25/4 G``."""
        if not random_effects:
            return 0.0, 0.25
        return (-6.0, 6.25) if laplace_intercept else None

    def score_bound(self, random_effects: bool, laplace_intercept: bool, n: float,
                    rss_over_sigma4: float) -> float | None:
        """GLM: ``||y - mu||^2 <= n``; Laplace with a random intercept: ``(2)^2 n``."""
        if not random_effects:
            return n
        return 4.0 * n if laplace_intercept else None

    def mean_slope(self, mu: float) -> float:
        mu = float(np.clip(mu, 1e-6, 1 - 1e-6))
        return mu * (1.0 - mu)

    def kernel_derivatives(self, y: np.ndarray, eta: np.ndarray, order: int) -> list[np.ndarray]:
        if not 0 <= order <= 4:
            raise ValueError("order must be between 0 and 4")
        y = np.asarray(y, dtype=float)
        eta = np.asarray(eta, dtype=float)
        if not self.canonical:
            return binomial_kernel_derivatives(self.link, y, eta, order)
        mu = expit(eta)
        v = mu * (1.0 - mu)
        out = [y * eta - np.logaddexp(0.0, eta), y - mu, -v, -v * (1.0 - 2.0 * mu),
               -v * (1.0 - 6.0 * v)]
        return out[: order + 1]

    def log_normalizer(self, y: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        """``log choose(w, w y)`` with ``w`` trials (0 for Bernoulli rows)."""
        y = np.asarray(y, dtype=float)
        if weights is None:
            return np.zeros_like(y)
        w = np.asarray(weights, dtype=float)
        successes = np.round(w * y)
        return gammaln(w + 1.0) - gammaln(successes + 1.0) - gammaln(w - successes + 1.0)
