"""A seeded synthetic multi-hospital data generator (the paper-000 design).

Each hospital ``h`` has a random intercept ``b_h ~ N(0, sigma^2)``; patients
have 4 binary covariates ``x2..x5 ~ Bernoulli(0.5)`` and 5 continuous ones
``x6..x10 ~ Uniform(-1, 1.5)``; the outcome is binary with
``logit P(y = 1) = -1.5 + x' beta + b_h`` and ``beta`` the authors' values
(0.1, -0.5, -0.3, 0.4, -0.2, -0.25, 0.35, -0.1, 0.5).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["TRUE_COEFFICIENTS", "make_hospitals", "make_clustered"]

TRUE_COEFFICIENTS = {
    "(Intercept)": -1.5, "x2": 0.1, "x3": -0.5, "x4": -0.3, "x5": 0.4,
    "x6": -0.2, "x7": -0.25, "x8": 0.35, "x9": -0.1, "x10": 0.5,
}


def make_hospitals(n_sites: int = 12, rows_per_site: int = 250, sd: float = 1.0,
                   seed: int = 2024) -> pd.DataFrame:
    """One row per patient: ``hospital``, ``x2..x10`` and the binary ``y``."""
    if n_sites < 1 or rows_per_site < 1:
        raise ValueError("need at least one site with at least one row")
    rng = np.random.default_rng(seed)
    n = n_sites * rows_per_site
    hospital = np.repeat(np.arange(1, n_sites + 1), rows_per_site)
    binary = rng.binomial(1, 0.5, size=(n, 4)).astype(float)
    uniform = rng.uniform(-1.0, 1.5, size=(n, 5))
    X = np.hstack([binary, uniform])
    beta = np.array(list(TRUE_COEFFICIENTS.values())[1:])
    b = rng.normal(0.0, sd, size=n_sites)
    eta = TRUE_COEFFICIENTS["(Intercept)"] + X @ beta + b[hospital - 1]
    y = rng.binomial(1, 1.0 / (1.0 + np.exp(-eta)))
    frame = pd.DataFrame(X, columns=[f"x{j}" for j in range(2, 11)])
    frame.insert(0, "hospital", hospital)
    frame["y"] = y
    return frame


def make_clustered(n_sites: int = 12, clusters_per_site: int = 50, rows_per_cluster: int = 5,
                   sd: float = 1.0, seed: int = 2024) -> pd.DataFrame:
    """Like :func:`make_hospitals`, but the random intercept belongs to small clusters
    (e.g. a patient's repeated visits) nested in the hospitals: column ``cluster``."""
    if min(n_sites, clusters_per_site, rows_per_cluster) < 1:
        raise ValueError("need at least one site, cluster and row")
    rng = np.random.default_rng(seed)
    n_clusters = n_sites * clusters_per_site
    n = n_clusters * rows_per_cluster
    cluster = np.repeat(np.arange(n_clusters), rows_per_cluster)
    X = np.hstack([rng.binomial(1, 0.5, size=(n, 4)).astype(float),
                   rng.uniform(-1.0, 1.5, size=(n, 5))])
    beta = np.array(list(TRUE_COEFFICIENTS.values())[1:])
    b = rng.normal(0.0, sd, size=n_clusters)
    eta = TRUE_COEFFICIENTS["(Intercept)"] + X @ beta + b[cluster]
    frame = pd.DataFrame(X, columns=[f"x{j}" for j in range(2, 11)])
    frame.insert(0, "cluster", cluster)
    frame.insert(0, "hospital", cluster // clusters_per_site + 1)
    frame["y"] = rng.binomial(1, 1.0 / (1.0 + np.exp(-eta)))
    return frame
