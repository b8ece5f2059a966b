"""Bayesian Federated Inference (Jonker, Pazira & Coolen), public API.

Flow (METHODS.md section 2). Each site fits :func:`fit_map` on its rows and
turns the :class:`LocalFit` into one flat vector with a layout's
``site_vector``; the protection layers deliver the SUM of the vectors; the
coordinator calls the layout's ``combine(total)`` and gets a :class:`BFIFit`.

=============================  ============================================
layout                         model
=============================  ============================================
:class:`HomogeneousLayout`     all parameters shared (eq. 3)
:class:`CentreSpecificLayout`  any subset per centre (Appendix B); each site
                               then computes its own ``centre_estimate``
:class:`CentreCovariateLayout` centre parameters = linear in a centre-level
                               covariate row: categorical (Appendix C) with
                               :func:`categorical_row`, or continuous
=============================  ============================================

Modules: ``bfi_local`` (MAP, priors), ``bfi_combine`` (homogeneous,
centre covariates), ``bfi_centre`` (centre-specific), ``bfi_checks``
(heterogeneity intervals, centre regression, prediction), ``bfi_results``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from core_stats.bfi_centre import CentreSpecificLayout, centre_covariance
from core_stats.bfi_checks import (
    CentreRegression,
    HeterogeneityRow,
    centre_difference,
    leave_one_out_row,
    leave_one_out_table,
    predict,
    regress_centre_effects,
)
from core_stats.bfi_combine import CentreCovariateLayout, HomogeneousLayout, categorical_row
from core_stats.bfi_local import (
    SCALE_NAME,
    LocalFit,
    MAPConvergenceError,
    fit_map,
    log_posterior,
    prior_precision,
)
from core_stats.bfi_results import BFIFit, CentreEstimate, FitKind
from core_stats.families import Family

__all__ = [
    "SCALE_NAME",
    "BFIFit",
    "CentreEstimate",
    "CentreCovariateLayout",
    "CentreRegression",
    "CentreSpecificLayout",
    "FitKind",
    "HeterogeneityRow",
    "HomogeneousLayout",
    "LocalFit",
    "MAPConvergenceError",
    "categorical_row",
    "centre_covariance",
    "centre_difference",
    "fit_map",
    "fit_pooled",
    "leave_one_out_row",
    "leave_one_out_table",
    "log_posterior",
    "predict",
    "prior_precision",
    "regress_centre_effects",
    "sum_site_vectors",
]


def fit_pooled(X: np.ndarray, y: np.ndarray, family: Family, combined_prior: np.ndarray, *,
               names: Sequence[str] | None = None, fixed_log_scale: float | None = None,
               level: float = 0.95, offset: np.ndarray | None = None,
               weights: np.ndarray | None = None) -> BFIFit:
    """The MAP fit of the same model on all rows with the combined prior (reference for BFI).

    ``theta = argmax sum_all log p(y | x, theta) - theta' Lambda theta / 2``,
    covariance ``A^{-1}`` at the MAP (``offset``, prior ``weights``: as :func:`fit_map`).
    """
    local = fit_map(X, y, family, combined_prior, names=names, fixed_log_scale=fixed_log_scale,
                    offset=offset, weights=weights)
    return BFIFit(FitKind.POOLED, family, local.names, local.theta, local.covariance,
                  local.prior, 1, local.n, level)


def sum_site_vectors(vectors: Sequence[np.ndarray]) -> np.ndarray:
    """Plain sum of site vectors (the reference for what a protection layer delivers)."""
    if not vectors:
        raise ValueError("no site vectors to sum")
    lengths = {np.asarray(v).size for v in vectors}
    if len(lengths) != 1:
        raise ValueError(f"site vectors differ in length: {sorted(lengths)}")
    return np.sum([np.asarray(v, dtype=float) for v in vectors], axis=0)
