"""A site's side of a stratified Cox fit: its own checks, its stratum, its sums.

Every check of a site's rows runs here, at the site, on its own rows: the
time column is numeric, finite and never negative; the status column fits
the study's coding (0/1, R's 1/2, or logical, as ``survival::Surv`` reads
it); the covariates are complete and build exactly the study's design
columns. A site then releases only sums over its own stratum (see
:mod:`securefed.cox_run` for the list).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from core_stats.cox import CoxStratum, cox_stratum, stratum_terms
from core_stats.cox_concordance import concordance_sums
from core_stats.design import DesignError
from core_stats.survival_formula import SurvFormula, parse_surv_formula, r_column_name
from securefed.errors import InputError
from securefed.vectors import pack_terms, upper_triangle

__all__ = ["CoxSiteSpec", "CoxRows", "StatusCoding", "prepare_cox_rows", "status_coding",
           "survival_spec"]


@dataclass(frozen=True)
class StatusCoding:
    """How the status column codes an event: ``event`` is the value that means one."""

    kind: str  # "0/1", "1/2" or "logical"

    @property
    def values(self) -> tuple:
        return {"0/1": (0.0, 1.0), "1/2": (1.0, 2.0), "logical": (False, True)}[self.kind]


def status_coding(column: pd.Series) -> StatusCoding:
    """The coding of a status column as ``Surv`` reads it (ValueError if none fits).

    Logical columns are logical; numeric ones are 1/2 when their largest value
    is 2 and 0/1 otherwise, and every value must then be one of the two.
    """
    if pd.api.types.is_bool_dtype(column):
        return StatusCoding("logical")
    values = pd.to_numeric(column, errors="coerce")
    if values.isna().any():
        raise ValueError("the status column must be 0/1, 1/2 (R's coding) or TRUE/FALSE, "
                         "with no missing values")
    kind = "1/2" if float(values.max()) == 2.0 else "0/1"
    allowed = StatusCoding(kind).values
    if not values.isin(allowed).all():
        raise ValueError(f"the status column must be coded {kind.replace('/', ' or ')} "
                         "(event = the larger value), or TRUE/FALSE")
    return StatusCoding(kind)


@dataclass(frozen=True, eq=False)
class CoxSiteSpec:
    """The public model every site fits: formula, agreed design, status coding, ties."""

    formula: SurvFormula
    design_spec: object  # formulaic ModelSpec agreed by the consortium
    names: tuple[str, ...]
    logical: frozenset[str]
    coding: StatusCoding
    ties: str


@dataclass(frozen=True, eq=False)
class CoxRows:
    """One site's checked stratum."""

    stratum: CoxStratum
    time: np.ndarray
    event: np.ndarray
    X: np.ndarray  # not centred: concordance ties compare risk scores x' beta


def survival_spec(frame: pd.DataFrame, formula_text: str, site_column: str,
                  ties: str = "efron") -> CoxSiteSpec:
    """The public model of a survival formula: InputError (one line) if the table cannot fit it.

    The design (factor levels from the pooled columns, as R codes them), its R
    column names and the status coding are agreed once; every site then checks
    its own rows against them (:func:`prepare_cox_rows`).
    """
    from formulaic import model_matrix

    from core_stats.design import _lme4_name

    try:
        formula = parse_surv_formula(formula_text)
    except DesignError as err:
        raise InputError(str(err)) from None
    source = frame.attrs.get("source", "the data")
    for col in (site_column, formula.time, formula.status, *formula.terms):
        if col not in frame.columns:
            raise InputError(f"column '{col}' is not in {source} "
                             f"(its columns: {', '.join(map(str, frame.columns[:12]))})")
    for col in (site_column, *formula.terms):
        if frame[col].isna().any():
            raise InputError(f"column '{col}' has missing values: remove or impute those "
                             "rows first")
    logical = frozenset(t for t in formula.terms if pd.api.types.is_bool_dtype(frame[t]))
    covariates = frame[list(formula.terms)].assign(**{c: frame[c].astype(float) for c in logical})
    try:
        matrix = model_matrix(formula.design_rhs, covariates, na_action="raise")
    except Exception as err:  # formulaic raises many types; one line, no values
        raise InputError(f"cannot build the design of '{formula.design_rhs}' "
                         f"({type(err).__name__}): numeric columns and factors only") from None
    names = tuple(r_column_name(_lme4_name(str(c)), formula, logical)
                  for c in matrix.columns)[1:]
    try:
        coding = status_coding(frame[formula.status])
    except ValueError as err:
        raise InputError(f"status column '{formula.status}': {err}") from None
    return CoxSiteSpec(formula, matrix.model_spec, names, logical, coding, ties)


def _covariate_frame(frame: pd.DataFrame, spec: CoxSiteSpec) -> pd.DataFrame:
    missing = [c for c in spec.formula.terms if frame[c].isna().any()]
    if missing:
        raise ValueError(f"covariate '{missing[0]}' has missing values")
    return frame.assign(**{c: frame[c].astype(float) for c in spec.logical})


def prepare_cox_rows(site: str, frame: pd.DataFrame, spec: CoxSiteSpec) -> CoxRows:
    """Check this site's rows against ``spec`` and index its stratum (ValueError if not)."""
    from formulaic import model_matrix

    f = spec.formula
    for col in (f.time, f.status, *f.terms):
        if col not in frame.columns:
            raise ValueError(f"site {site}: column '{col}' is missing")
    time = pd.to_numeric(frame[f.time], errors="coerce").to_numpy(dtype=float)
    if not np.all(np.isfinite(time)):
        raise ValueError(f"site {site}: the time column '{f.time}' must be numbers, "
                         "with no missing values")
    if np.any(time < 0):
        raise ValueError(f"site {site}: the time column '{f.time}' has negative times")
    status = frame[f.status]
    if spec.coding.kind == "logical":
        if not pd.api.types.is_bool_dtype(status):
            raise ValueError(f"site {site}: the status column must be TRUE/FALSE like the "
                             "other sites'")
        event = status.to_numpy(dtype=bool)
    else:
        values = pd.to_numeric(status, errors="coerce")
        low, high = spec.coding.values
        if values.isna().any() or not values.isin((low, high)).all():
            raise ValueError(f"site {site}: the status column must be coded "
                             f"{spec.coding.kind.replace('/', ' or ')} like the other sites'")
        event = (values.to_numpy(dtype=float) == high)
    try:
        X = np.asarray(model_matrix(spec.design_spec, _covariate_frame(frame, spec),
                                    na_action="raise"), dtype=float)[:, 1:]
    except Exception as err:  # formulaic raises many types; one line, no values
        raise ValueError(f"site {site}: the covariates do not fit the study's design "
                         f"({type(err).__name__})") from None
    if X.shape[1] != len(spec.names):
        raise ValueError(f"site {site}: the design has {X.shape[1]} columns, the model "
                         f"{len(spec.names)}")
    return CoxRows(cox_stratum(time, event, X), time, event, X)


def summary_vector(rows: CoxRows) -> np.ndarray:
    """``[rows, events, 1, upper(Xc'Xc)]`` with ``Xc`` centred by this site's means."""
    Xc = rows.stratum.X
    return np.concatenate([[rows.stratum.n_rows, rows.stratum.n_events, 1.0],
                           upper_triangle(Xc.T @ Xc)])


def terms_vector(rows: CoxRows, beta: np.ndarray, ties: str, derivatives: bool) -> np.ndarray:
    """``[l, g, upper(H)]`` (or ``[l]``) of this site's stratum at ``beta``."""
    terms = stratum_terms(rows.stratum, beta, ties, derivatives)
    return pack_terms(terms.loglik, terms.gradient, terms.hessian)


def concordance_vector(rows: CoxRows, beta: np.ndarray) -> np.ndarray:
    """This stratum's concordance sums at ``beta`` (:mod:`core_stats.cox_concordance`)."""
    return concordance_sums(rows.time, rows.event, rows.X @ np.asarray(beta, dtype=float))


def bfi_survival_vector(site: str, rows: CoxRows, layout, baseline: str,
                        prior: np.ndarray) -> np.ndarray:
    """The homogeneous BFI vector of this site's local MAP of a parametric hazard model."""
    from core_stats.bfi_local import MAPConvergenceError
    from core_stats.bfi_survival import fit_survival_map

    covariates = layout.names[:rows.X.shape[1]]
    try:
        local = fit_survival_map(rows.time, rows.event, rows.X, baseline, prior,
                                 names=covariates)
    except (ValueError, MAPConvergenceError) as err:
        raise ValueError(f"site {site}: the local {baseline} fit failed ({err})") from None
    return layout.site_vector(local)
