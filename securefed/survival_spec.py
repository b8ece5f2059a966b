"""The public model of a survival fit: formula, agreed design, status coding.

Agreed once before any fit, from the sites' own reports: each site reports the
kinds and factor levels of the formula's variables in its rows
(:func:`core_stats.formula.variable_report`: labels of categories, never
counts) and the coordinator takes their union in R's order. The status
coding follows ``survival::Surv`` on the pooled column. Every site then
checks its own rows against this spec (:mod:`securefed.cox_site`).
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from core_stats.formula import (
    DesignSchema,
    FormulaError,
    agree_schema,
    fixed_column_names,
    variable_report,
)
from core_stats.survival_formula import SurvFormula, parse_surv_formula
from securefed.errors import InputError

__all__ = ["CoxSiteSpec", "StatusCoding", "status_coding", "survival_spec"]


@dataclass(frozen=True)
class StatusCoding:
    """How the status column codes an event: ``values`` are (no event, event)."""

    kind: str  # "0/1", "1/2" or "logical"

    @property
    def values(self) -> tuple:
        return {"0/1": (0.0, 1.0), "1/2": (1.0, 2.0), "logical": (False, True)}[self.kind]


def status_coding(column: pd.Series) -> StatusCoding:
    """The coding of a status column as ``Surv`` reads it (ValueError if none fits).

    Logical columns are logical; numeric ones are 1/2 when their largest value
    is 2 and 0/1 otherwise, and every value must then be one of the two.
    Missing values are ignored here (the sites omit those rows).
    """
    column = column[column.notna()]
    if pd.api.types.is_bool_dtype(column):
        return StatusCoding("logical")
    values = pd.to_numeric(column, errors="coerce")
    if values.isna().any() or values.empty:
        raise ValueError("the status column must be 0/1, 1/2 (R's coding) or TRUE/FALSE")
    kind = "1/2" if float(values.max()) == 2.0 else "0/1"
    if not values.isin(StatusCoding(kind).values).all():
        raise ValueError(f"the status column must be coded {kind.replace('/', ' or ')} "
                         "(event = the larger value), or TRUE/FALSE")
    return StatusCoding(kind)


@dataclass(frozen=True, eq=False)
class CoxSiteSpec:
    """The public model every site fits (``names``: design columns, R's, no intercept)."""

    formula: SurvFormula
    schema: DesignSchema
    names: tuple[str, ...]
    coding: StatusCoding
    ties: str = "efron"
    na_action: str = "omit"


def survival_spec(frame: pd.DataFrame, formula_text: str, site_column: str,
                  ties: str = "efron", na_action: str = "omit") -> CoxSiteSpec:
    """The spec of ``formula_text`` for the sites of ``frame``; InputError (one line) if none."""
    if na_action not in ("omit", "fail"):
        raise InputError(f"--na-action {na_action!r}: choose omit or fail")
    try:
        formula = parse_surv_formula(formula_text)
    except FormulaError as err:
        raise InputError(str(err)) from None
    source = frame.attrs.get("source", "the data")
    for col in (site_column, formula.time, formula.status, *formula.covariates):
        if col not in frame.columns:
            raise InputError(f"column '{col}' is not in {source} "
                             f"(its columns: {', '.join(map(str, frame.columns[:12]))})")
    if frame[site_column].isna().any():
        raise InputError(f"column '{site_column}' has missing values")
    parts = [part for _, part in frame.groupby(site_column, sort=True)]
    try:
        schema = agree_schema(formula.model_text,
                              [variable_report(formula.model, part) for part in parts])
        coding = status_coding(frame[formula.status])
    except (FormulaError, ValueError) as err:
        prefix = "" if isinstance(err, FormulaError) else f"status column '{formula.status}': "
        raise InputError(prefix + str(err)) from None
    names = fixed_column_names(schema)[1:]  # coxph drops the intercept column
    return CoxSiteSpec(formula, schema, names, coding, ties, na_action)
