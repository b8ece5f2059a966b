"""A site's side of a stratified Cox fit: its own checks, its stratum, its sums.

Every check of a site's rows runs here, at the site, on its own rows: the
time column is numeric, finite and never negative; the status column fits
the study's coding (0/1, R's 1/2, or logical, as ``survival::Surv`` reads
it); the covariates build exactly the study's design columns. Rows with a
missing value in the model's columns are omitted and counted, as R does.
A site then releases only sums over its own stratum (see
:mod:`securefed.cox_run` for the list).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from core_stats.cox import CoxStratum, cox_stratum, stratum_terms
from core_stats.cox_concordance import concordance_sums
from securefed.site import SiteDataError
from securefed.survival_spec import CoxSiteSpec, StatusCoding
from securefed.vectors import pack_terms, upper_triangle

__all__ = ["CoxRows", "bfi_survival_fit", "concordance_vector", "poly_order_vector",
           "prepare_cox_rows", "summary_vector", "terms_vector"]


@dataclass(frozen=True, eq=False)
class CoxRows:
    """One site's checked stratum."""

    stratum: CoxStratum
    time: np.ndarray
    event: np.ndarray
    X: np.ndarray  # not centred: concordance ties compare risk scores x' beta
    n_omitted: int = 0


def _events(site: str, status: pd.Series, coding: StatusCoding) -> np.ndarray:
    if coding.kind == "logical":
        if not pd.api.types.is_bool_dtype(status):
            raise SiteDataError(f"site {site}: the status column must be TRUE/FALSE like the "
                             "other sites'")
        return status.to_numpy(dtype=bool)
    values = pd.to_numeric(status, errors="coerce")
    low, high = coding.values
    if values.isna().any() or not values.isin((low, high)).all():
        raise SiteDataError(f"site {site}: the status column must be coded "
                         f"{coding.kind.replace('/', ' or ')} like the other sites'")
    return values.to_numpy(dtype=float) == high


def prepare_cox_rows(site: str, frame: pd.DataFrame, spec: CoxSiteSpec) -> CoxRows:
    """Check this site's rows against ``spec`` and index its stratum (ValueError if not).

    Rows with a missing time, status or covariate are omitted and counted (R's
    ``na.omit``), or refused under ``na_action = "fail"``.
    """
    from core_stats.formula import FormulaError, model_data

    f = spec.formula
    used = [f.time, f.status, *f.covariates]
    missing = [c for c in used if c not in frame.columns]
    if missing:
        raise SiteDataError(f"site {site}: column '{missing[0]}' is missing")
    incomplete = frame[used].isna().any(axis=1).to_numpy()
    if incomplete.any() and spec.na_action == "fail":
        raise SiteDataError(f"site {site}: {int(incomplete.sum())} row(s) have missing values in "
                         "the model's columns (use --na-action omit to drop them, as R does)")
    rows = frame.loc[~incomplete]
    time = pd.to_numeric(rows[f.time], errors="coerce").to_numpy(dtype=float)
    if not np.all(np.isfinite(time)):
        raise SiteDataError(f"site {site}: the time column '{f.time}' must hold numbers")
    if np.any(time < 0):
        raise SiteDataError(f"site {site}: the time column '{f.time}' has negative times")
    event = _events(site, rows[f.status], spec.coding)
    try:
        data = model_data(spec.schema, rows, na_action="fail")
    except FormulaError as err:
        raise SiteDataError(f"site {site}: {err}") from None
    if data.fixed_names[1:] != spec.names:
        raise SiteDataError(f"site {site}: the design has columns {list(data.fixed_names[1:])}, "
                         f"the model {list(spec.names)}")
    X = data.X[:, 1:]
    return CoxRows(cox_stratum(time, event, X), time, event, X, int(incomplete.sum()))


def summary_vector(rows: CoxRows) -> np.ndarray:
    """``[rows, events, omitted rows, 1, upper(Xc'Xc)]``, ``Xc`` centred by the site's means."""
    Xc = rows.stratum.X
    return np.concatenate([[rows.stratum.n_rows, rows.stratum.n_events, rows.n_omitted, 1.0],
                           upper_triangle(Xc.T @ Xc)])


def terms_vector(rows: CoxRows, beta: np.ndarray, ties: str, derivatives: bool) -> np.ndarray:
    """``[l, g, upper(H)]`` (or ``[l]``) of this site's stratum at ``beta``."""
    terms = stratum_terms(rows.stratum, beta, ties, derivatives)
    return pack_terms(terms.loglik, terms.gradient, terms.hessian)


def concordance_vector(rows: CoxRows, beta: np.ndarray) -> np.ndarray:
    """This stratum's concordance sums at ``beta`` (:mod:`core_stats.cox_concordance`)."""
    return concordance_sums(rows.time, rows.event, rows.X @ np.asarray(beta, dtype=float))


def bfi_survival_fit(site: str, rows: CoxRows, layout, baseline, prior: np.ndarray):
    """This site's local MAP of a survival model (ValueError naming the site)."""
    from core_stats.bfi_local import MAPConvergenceError
    from core_stats.bfi_survival import fit_survival_map
    from core_stats.survival_baselines import as_baseline

    baseline = as_baseline(baseline)
    covariates = layout.names[:rows.X.shape[1]]
    try:
        local = fit_survival_map(rows.time, rows.event, rows.X, baseline, prior,
                                 names=covariates)
    except (ValueError, MAPConvergenceError) as err:
        raise SiteDataError(f"site {site}: the local {baseline.kind} fit failed ({err})") from None
    return local


def poly_order_vector(rows: CoxRows, max_order: int, alpha: float) -> np.ndarray:
    """``[1[q = 0], ..., 1[q = max_order]]`` for this site's order ``q`` of a polynomial
    baseline, chosen as R's ``ql.LRT`` does (:func:`core_stats.survival_poly.select_order`)."""
    from core_stats.survival_poly import select_order

    chosen = select_order(rows.time, rows.event, rows.X, max_order, alpha)
    return np.eye(max_order + 1)[chosen]
