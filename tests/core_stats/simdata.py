"""Simulated data shared by the core_stats tests."""

from __future__ import annotations

import numpy as np
import pandas as pd


def simulate_nested(family: str, *, n_sites: int = 4, groups_per_site: int = 5,
                    rows_per_group: int = 12, q: int = 1, sd: float = 0.8,
                    seed: int = 0) -> pd.DataFrame:
    """Patients (groups) nested within hospitals (sites), two covariates."""
    rng = np.random.default_rng(seed)
    n_groups = n_sites * groups_per_site
    n = n_groups * rows_per_group
    group = np.repeat(np.arange(n_groups), rows_per_group)
    site = group // groups_per_site
    x1, x2 = rng.normal(size=n), rng.uniform(-1, 1.5, size=n)
    b = rng.normal(0.0, sd, size=(n_groups, 2))
    eta = 0.3 + 0.5 * x1 - 0.4 * x2 + b[group, 0]
    if q == 2:
        eta = eta + 0.5 * b[group, 1] * x1
    if family == "binomial":
        y = rng.binomial(1, 1 / (1 + np.exp(-eta)))
    elif family == "poisson":
        y = rng.poisson(np.exp(eta - 0.5))
    else:
        y = eta + rng.normal(0, 0.7, size=n)
    return pd.DataFrame({"y": y, "x1": x1, "x2": x2, "patient": group, "hospital": site})

