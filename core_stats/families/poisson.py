"""Poisson counts with the log link.

``log p = w (y eta - e^eta) - w log y!``: the kernel ``r = y eta - e^eta`` has
``r' = y - e^eta`` and every derivative from the second on ``-e^eta``. The
log-likelihood keeps its full constant ``-log y!``, as glmer's and glmmTMB's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core_stats.families.base import Family, check_counts, count_summary_problem
from core_stats.special import gammaln

__all__ = ["Poisson"]


@dataclass(frozen=True)
class Poisson(Family):
    name = "poisson"
    r_name = "poisson"
    links = ("log",)
    counts = True
    density_at_most_one = True
    bfi = True
    dp_outcome = "count"
    several_terms = True
    prior_weights = True

    def _check_values(self, y: np.ndarray, weights: np.ndarray | None) -> None:
        check_counts(y, "Poisson")

    def summary_problem(self, n: float, sum_y: float, sum_y2: float, weighted: bool,
                        atol: float, rtol: float) -> str | None:
        return count_summary_problem(sum_y, sum_y2, atol, rtol)

    def information_bounds(self, random_effects: bool, laplace_intercept: bool,
                           sigma: float) -> tuple[float, float | None] | None:
        """GLM: ``X' diag(mu) X >= 0``."""
        return None if random_effects else (0.0, None)

    def mean_slope(self, mu: float) -> float:
        return max(mu, 1e-6)

    def kernel_derivatives(self, y: np.ndarray, eta: np.ndarray, order: int) -> list[np.ndarray]:
        if not 0 <= order <= 4:
            raise ValueError("order must be between 0 and 4")
        y = np.asarray(y, dtype=float)
        mu = np.exp(np.asarray(eta, dtype=float))
        return [y * np.asarray(eta, dtype=float) - mu, y - mu, -mu, -mu, -mu][: order + 1]

    def log_normalizer(self, y: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        y = np.asarray(y, dtype=float)
        if weights is None:
            return -gammaln(y + 1.0)
        return -np.asarray(weights, dtype=float) * gammaln(y + 1.0)
