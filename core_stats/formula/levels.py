"""What kind each formula variable is, and the factor levels every site agrees on.

A variable is *numeric* (a number column, or arithmetic of number columns:
``I(age^2)``, ``log(dose)``) or a *factor* (a text or logical column, or
``factor(x)``). Each site reports, for every variable, its kind and, for a
factor, the levels present in its rows (:func:`variable_report`); the
coordinator takes the union (:func:`agree_levels`) in the order R's
``factor()`` gives: numbers numerically for ``factor(x)`` of a number column,
``FALSE, TRUE`` for logicals, and text in a UTF-8 locale's collation
(letters before case, lower case first: ``a < B < b``). A column that is text
at any site is a factor everywhere, as it would be in R on the pooled data.

The levels are labels of the data's categories, not counts: a site reveals
which categories occur in its rows, nothing about how often.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping

import numpy as np
import pandas as pd

from core_stats.formula.syntax import Call, FormulaError, Name, Node
from core_stats.formula.terms import FACTOR_FUNCTIONS, ModelFormula

__all__ = ["variable_report", "level_counts", "agree_levels", "check_agreed_levels",
           "r_label", "r_level_order", "is_factor_node"]

NUMERIC = "numeric"


def is_factor_node(node: Node) -> bool:
    return isinstance(node, Call) and node.func in FACTOR_FUNCTIONS


def r_label(value: object) -> str:
    """A value as R's ``as.character`` writes it (``1``, ``2.5``, ``TRUE``)."""
    if isinstance(value, (bool, np.bool_)):
        return "TRUE" if value else "FALSE"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        value = float(value)
        if value == int(value) and abs(value) < 1e15:
            return str(int(value))
        return f"{value:.15g}"
    return str(value)


def _collation_key(label: str) -> tuple:
    letters = re.sub(r"[^0-9A-Za-z]", "", label)
    return (letters.casefold(), label.casefold(), label.swapcase())


def r_level_order(labels: Iterable[str], numeric: bool) -> tuple[str, ...]:
    """Levels sorted as R's ``factor()`` sorts them."""
    unique = set(labels)
    if numeric:
        return tuple(sorted(unique, key=float))
    if unique <= {"FALSE", "TRUE"}:
        return tuple(v for v in ("FALSE", "TRUE") if v in unique)
    return tuple(sorted(unique, key=_collation_key))


def _column(frame: pd.DataFrame, name: str) -> pd.Series:
    if name not in frame.columns:
        found = ", ".join(map(str, frame.columns[:12]))
        more = ", ..." if len(frame.columns) > 12 else ""
        raise FormulaError(f"column '{name}' is not in the data (its columns: {found}{more})")
    column = frame[name]
    if isinstance(column, pd.DataFrame):
        raise FormulaError(f"the data has more than one column named '{name}': rename them")
    return column


def _is_number_column(column: pd.Series) -> bool:
    return (pd.api.types.is_numeric_dtype(column)
            and not pd.api.types.is_bool_dtype(column))


def _present(column: pd.Series) -> pd.Series:
    return column[column.notna()]


def variable_report(formula: ModelFormula, frame: pd.DataFrame) -> dict[str, object]:
    """This site's kinds and factor levels for every variable of ``formula``.

    Returns a JSON-safe mapping: variable key -> ``"numeric"`` or
    ``{"levels": [...], "numeric": bool}`` (``numeric`` says the labels came
    from numbers and sort numerically).
    """
    report: dict[str, object] = {}
    for key, node in formula.variables:
        report[key] = _report_one(node, frame)
    for name in formula.group_columns:
        _column(frame, name)
    if isinstance(formula.response, Name):
        column = _column(frame, formula.response.id)
        if not pd.api.types.is_numeric_dtype(column):
            report[f"~{formula.response.id}"] = {
                "levels": sorted({r_label(v) for v in _present(column)}), "numeric": False}
    return report


def level_counts(formula: ModelFormula, frame: pd.DataFrame,
                 report: Mapping[str, object]) -> dict[str, dict[str, int]]:
    """Rows behind each label of ``report`` (:func:`variable_report`) in ``frame``.

    For a site's own disclosure checks: the counts never leave the site.
    """
    columns = {key: node.args[0].id if is_factor_node(node) else node.id  # type: ignore
               for key, node in formula.variables
               if isinstance(report.get(key), dict)}
    if isinstance(formula.response, Name) and f"~{formula.response.id}" in report:
        columns[f"~{formula.response.id}"] = formula.response.id
    counts: dict[str, dict[str, int]] = {}
    for key, name in columns.items():
        labels = pd.Series([r_label(v) for v in _present(frame[name])], dtype=object)
        counts[key] = {str(k): int(v) for k, v in labels.value_counts().items()}
    return counts


def _report_one(node: Node, frame: pd.DataFrame) -> object:
    if isinstance(node, Name):
        column = _column(frame, node.id)
        if _is_number_column(column):
            return NUMERIC
        present = _present(column)
        if not pd.api.types.is_bool_dtype(column) and _looks_like_numbers_with_typos(present):
            raise FormulaError(f"column '{node.id}' holds numbers with text in some rows: "
                               f"correct the text, or write factor({node.id}) to use its "
                               "values as categories")
        return {"levels": sorted({r_label(v) for v in present}), "numeric": False}
    if is_factor_node(node):
        column = _column(frame, node.args[0].id)  # type: ignore[union-attr]
        numeric = _is_number_column(column)
        return {"levels": sorted({r_label(v) for v in _present(column)}), "numeric": numeric}
    for name in _arithmetic_columns(node):
        column = _column(frame, name)
        if not _is_number_column(column):
            raise FormulaError(f"column '{name}' is not numeric, so it cannot be used in "
                               "arithmetic or a math function")
    return NUMERIC


def _looks_like_numbers_with_typos(present: pd.Series) -> bool:
    """Mostly numbers over many distinct values: a measurement with stray text.

    R would silently make such a column a factor with a level per value; a
    category code such as ``01, 23, 46, 7p`` (few distinct values) is a factor.
    """
    if not len(present):
        return False
    numbers = pd.to_numeric(present, errors="coerce")
    return bool(numbers.notna().mean() > 0.5 and numbers.nunique() > 20)


def _arithmetic_columns(node: Node) -> list[str]:
    from core_stats.formula.terms import _column_names

    return _column_names(node)


def agree_levels(formula: ModelFormula, reports: Iterable[Mapping[str, object]]
                 ) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """The consortium's factor levels: per factor variable, the union in R's order."""
    reports = list(reports)
    factors: list[tuple[str, tuple[str, ...]]] = []
    for key, node in formula.variables:
        entries = [r.get(key, NUMERIC) for r in reports]
        if all(e == NUMERIC for e in entries) and not is_factor_node(node):
            continue
        if not isinstance(node, Name) and not is_factor_node(node):
            raise FormulaError(f"'{key}' is numeric at some sites and text at others")
        labels: set[str] = set()
        numeric = True
        for entry in entries:
            if entry == NUMERIC:
                raise FormulaError(f"column '{key}' holds numbers at some sites and text at "
                                   "others: clean the column or wrap it in factor()")
            labels |= set(entry["levels"])  # type: ignore[index]
            numeric = numeric and bool(entry["numeric"])  # type: ignore[index]
        if numeric and not all(_is_number_text(v) for v in labels):
            numeric = False
        levels = r_level_order(labels, numeric)
        if len(levels) < 2:
            raise FormulaError(f"factor '{key}' has only one level ({_short(levels)}): "
                               "contrasts need at least two levels (R refuses it too)")
        factors.append((key, levels))
    if isinstance(formula.response, Name):
        key = f"~{formula.response.id}"
        entries = [r.get(key) for r in reports]
        if any(e is not None for e in entries):
            if any(e is None for e in entries):
                raise FormulaError(f"the outcome '{formula.response.id}' holds numbers at some "
                                   "sites and text at others")
            labels = set().union(*(set(e["levels"]) for e in entries))  # type: ignore[index]
            if len(labels) != 2:
                raise FormulaError(f"the outcome '{formula.response.id}' is text with "
                                   f"{len(labels)} categories: a binomial outcome needs two")
            factors.append((key, r_level_order(labels, False)))
    return tuple(factors)


def check_agreed_levels(factors: Iterable[tuple[str, tuple[str, ...]]]) -> None:
    """Refuse levels that :func:`agree_levels` cannot have given: repeated, or not in R's
    order (a schema from elsewhere must not move a factor's reference level)."""
    for key, levels in factors:
        orders = [r_level_order(levels, False)]
        if all(_is_number_text(v) for v in levels):
            orders.append(r_level_order(levels, True))
        if len(set(levels)) != len(levels) or tuple(levels) not in orders:
            raise FormulaError(f"the levels of '{key}' are not distinct and in R's order: "
                               "the schema was not agreed from the sites' reports")


def _is_number_text(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def _short(levels: tuple[str, ...]) -> str:
    return "none" if not levels else "one category"
