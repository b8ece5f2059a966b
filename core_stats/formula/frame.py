"""A site's model frame: outcome, fixed design, offsets and random-effects designs.

:func:`model_data` is R's ``model.frame`` + ``model.matrix`` (and lme4's
``mkReTrms``) for one site's rows under the consortium's
:class:`~core_stats.formula.design.DesignSchema`. Rows with a missing value
in any variable the model reads are dropped (R's default ``na.omit``) and
counted, or refused with ``na_action="fail"``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from core_stats.formula.design import (
    DesignSchema,
    column_names,
    evaluate_numeric,
    model_matrix,
)
from core_stats.formula.levels import r_label
from core_stats.formula.syntax import Call, FormulaError, Name, deparse
from core_stats.formula.terms import ModelFormula, RandomTerm

__all__ = ["ModelData", "RandomDesign", "model_data", "predictor_matrix", "response_key",
           "incomplete_rows",
           "fixed_column_names", "random_column_names", "NA_ACTIONS"]

NA_ACTIONS = ("omit", "fail")


@dataclass(frozen=True)
class RandomDesign:
    """One random-effects term at a site: its columns and each row's group label."""

    term: RandomTerm
    names: tuple[str, ...]
    Z: np.ndarray  # noqa: N815 - the matrix's name in the model
    groups: np.ndarray  # object array of group labels ("a:b" for an interaction)


@dataclass(frozen=True)
class ModelData:
    """What a site's rows give under a schema (after dropping incomplete rows)."""

    y: np.ndarray  # a proportion for cbind(successes, failures)
    weights: np.ndarray | None  # prior weights; cbind's trials (times any weights= column)
    X: np.ndarray  # noqa: N815
    fixed_names: tuple[str, ...]
    offset: np.ndarray | None
    random: tuple[RandomDesign, ...]
    n_omitted: int


def response_key(formula: ModelFormula) -> str | None:
    """The factor key under which a text response's levels are agreed (``~name``)."""
    return f"~{formula.response.id}" if isinstance(formula.response, Name) else None


def fixed_column_names(schema: DesignSchema) -> tuple[str, ...]:
    return column_names(schema.parsed.fixed, schema.levels)


def random_column_names(schema: DesignSchema) -> tuple[tuple[str, ...], ...]:
    return tuple(column_names(t.expression, schema.levels) for t in schema.parsed.random)


def _used_columns(formula: ModelFormula) -> list[str]:
    return list(formula.columns)


def incomplete_rows(schema: DesignSchema, frame: pd.DataFrame,
                    weights_column: str | None = None) -> np.ndarray:
    """Which rows miss a value the model reads (R's ``na.omit`` drops them)."""
    used = _used_columns(schema.parsed) + ([weights_column] if weights_column else [])
    missing = [c for c in used if c not in frame.columns]
    if missing:
        found = ", ".join(map(str, frame.columns[:12]))
        raise FormulaError(f"column '{missing[0]}' is not in the data (its columns: {found})")
    return frame[used].isna().any(axis=1).to_numpy()


def model_data(schema: DesignSchema, frame: pd.DataFrame, *, na_action: str = "omit",
               weights_column: str | None = None) -> ModelData:
    """Build this site's model frame under ``schema``."""
    if na_action not in NA_ACTIONS:
        raise FormulaError(f"na_action {na_action!r}: choose omit or fail")
    formula = schema.parsed
    incomplete = incomplete_rows(schema, frame, weights_column)
    if incomplete.any() and na_action == "fail":
        raise FormulaError(f"{int(incomplete.sum())} row(s) have missing values in the model's "
                           "columns (use --na-action omit to drop them, as R does)")
    rows = frame.loc[~incomplete]
    levels = schema.levels
    nodes = formula.variable_nodes
    y, weights = _response(formula, rows, levels)
    if weights_column is not None:
        prior = pd.to_numeric(rows[weights_column], errors="coerce").to_numpy(dtype=float)
        if not np.all(np.isfinite(prior)) or np.any(prior <= 0):
            raise FormulaError(f"the weights column '{weights_column}' must hold positive "
                               "numbers in every row")
        weights = prior if weights is None else weights * prior
    X = model_matrix(formula.fixed, levels, nodes, rows)
    fixed_names = column_names(formula.fixed, levels)
    _require_finite(X, fixed_names)
    offset = None
    if formula.offsets:
        offset = sum(evaluate_numeric(node, rows) for node in formula.offsets)
        if not np.all(np.isfinite(offset)):
            raise FormulaError("offset() gives a missing or infinite value in some rows "
                               "(log of zero or a negative number?)")
    random = tuple(_random_design(term, levels, nodes, rows) for term in formula.random)
    return ModelData(y=y, weights=weights, X=X, fixed_names=fixed_names,
                     offset=offset, random=random, n_omitted=int(incomplete.sum()))


def predictor_matrix(schema: DesignSchema, frame: pd.DataFrame) -> np.ndarray:
    """The fixed design for new rows (no outcome needed); a missing value is refused."""
    formula = schema.parsed
    from core_stats.formula.terms import _column_names

    fixed = {v for term in formula.fixed.terms for v in term}
    used = [c for key, node in formula.variables if key in fixed for c in _column_names(node)]
    missing = [c for c in used if c not in frame.columns]
    if missing:
        found = ", ".join(map(str, frame.columns[:12]))
        raise FormulaError(f"column '{missing[0]}' is not in the data (its columns: {found})")
    if used and frame[used].isna().any(axis=None):
        raise FormulaError("some rows have missing values in the model's covariates")
    X = model_matrix(formula.fixed, schema.levels, formula.variable_nodes, frame)
    _require_finite(X, column_names(formula.fixed, schema.levels))
    return X


def _require_finite(matrix: np.ndarray, names: tuple[str, ...]) -> None:
    if matrix.size and not np.all(np.isfinite(matrix)):
        bad = np.flatnonzero(~np.all(np.isfinite(matrix), axis=0))
        raise FormulaError(f"design column '{names[int(bad[0])]}' is infinite or undefined in "
                           f"{int((~np.isfinite(matrix[:, bad[0]])).sum())} row(s) (an infinite "
                           "value, or a transform such as log of zero)")


def _response(formula: ModelFormula, rows: pd.DataFrame, levels: dict[str, tuple[str, ...]]
              ) -> tuple[np.ndarray, np.ndarray | None]:
    node = formula.response
    key = response_key(formula)
    if key is not None and key in levels:
        known = levels[key]
        labels = np.array([r_label(v) for v in rows[node.id].to_numpy()], dtype=object)
        return (labels != known[0]).astype(float), None
    if isinstance(node, Call) and node.func == "cbind":
        successes = evaluate_numeric(node.args[0], rows)
        failures = evaluate_numeric(node.args[1], rows)
        trials = successes + failures
        if not (np.all(np.isfinite(trials)) and np.all(successes >= 0)
                and np.all(failures >= 0)):
            raise FormulaError("cbind(successes, failures) needs counts that are not negative")
        if np.any(trials == 0):
            raise FormulaError("some rows of cbind(successes, failures) have no trials: "
                               "drop them")
        return successes / trials, trials
    if isinstance(node, Name) and not _numeric_column(rows[node.id]):
        raise FormulaError(f"the outcome '{node.id}' is text: a binomial outcome may be a "
                           "two-category column; other families need numbers")
    y = evaluate_numeric(node, rows)
    if not np.all(np.isfinite(y)):
        raise FormulaError(f"the outcome {deparse(node)} is missing or infinite in some rows")
    return y, None


def _numeric_column(column: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(column)


def _random_design(term: RandomTerm, levels, nodes, rows: pd.DataFrame) -> RandomDesign:
    Z = model_matrix(term.expression, levels, nodes, rows)
    names = column_names(term.expression, levels)
    _require_finite(Z, names)
    parts = [np.array([r_label(v) for v in rows[g].to_numpy()], dtype=object)
             for g in term.group]
    groups = parts[0] if len(parts) == 1 else \
        np.array([":".join(p) for p in zip(*parts, strict=True)], dtype=object)
    return RandomDesign(term=term, names=names, Z=Z,
                        groups=groups)
