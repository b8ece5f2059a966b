"""Design matrices exactly as R's ``model.matrix`` builds them, from a public schema.

A :class:`DesignSchema` is what the consortium agrees on before any fit: the
formula text and the levels of every factor. Each site re-reads the formula
with the project's parser (it is data, never code) and builds its own
columns with :func:`model_matrix`; the column names depend on the schema
alone (:func:`column_names`), so the coordinator knows them without rows.

Coding follows R (``model.c``): numeric variables enter as they are; a
factor in a term is coded by treatment contrasts (first level dropped) when
the term without it is an earlier term of the model (or empty), otherwise by
one indicator per level; without an intercept the first factor of the first
term holding one gets all its indicators. In an interaction the first
variable varies fastest. Names are R's: ``period2``, ``I(age^2)``,
``FoodTreatmentSatiated:SexParentMale``, ``factor(x)2``, ``sexTRUE``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pandas as pd

from core_stats.formula.levels import is_factor_node, r_label
from core_stats.formula.syntax import BinOp, Call, FormulaError, Name, Node, Number, Paren, Unary
from core_stats.formula.terms import ModelFormula, TermList, parse_formula

__all__ = ["DesignSchema", "column_names", "model_matrix", "evaluate_numeric", "term_coding"]


@dataclass(frozen=True)
class DesignSchema:
    """The public design every site builds: formula text and agreed factor levels."""

    formula: str
    factors: tuple[tuple[str, tuple[str, ...]], ...] = ()

    @cached_property
    def parsed(self) -> ModelFormula:
        return parse_formula(self.formula)

    @property
    def levels(self) -> dict[str, tuple[str, ...]]:
        return dict(self.factors)

    def to_fields(self) -> dict[str, object]:
        return {"formula": self.formula, "factors": [[k, list(v)] for k, v in self.factors]}

    @classmethod
    def from_fields(cls, fields: dict) -> DesignSchema:
        factors = tuple((str(k), tuple(str(v) for v in levels))
                        for k, levels in fields.get("factors", []))
        return cls(str(fields["formula"]), factors)

    def __getstate__(self) -> dict:
        return {"formula": self.formula, "factors": self.factors}

    def __setstate__(self, state: dict) -> None:
        object.__setattr__(self, "formula", state["formula"])
        object.__setattr__(self, "factors", state["factors"])


_DUMMY, _CONTRAST = 2, 1
MAX_COLUMNS = 1000  # a design wider than this is a mistake (or an attack on a site's memory)


def term_coding(terms: TermList, levels: dict[str, tuple[str, ...]]
                ) -> list[list[tuple[str, int]]]:
    """For each term, its variables with R's code: 0 numeric, 1 contrasts, 2 indicators."""
    coding: list[list[tuple[str, int]]] = []
    for k, term in enumerate(terms.terms):
        codes = []
        for var in term:
            if var not in levels:
                codes.append((var, 0))
                continue
            rest = set(term) - {var}
            margin = not rest or any(rest <= set(t) for t in terms.terms[:k])
            codes.append((var, _CONTRAST if margin else _DUMMY))
        coding.append(codes)
    if not terms.intercept:
        for codes in coding:
            factor_positions = [i for i, (v, c) in enumerate(codes) if c]
            if factor_positions:
                var, _ = codes[factor_positions[0]]
                codes[factor_positions[0]] = (var, _DUMMY)
                break
    return coding


def _pieces(var: str, code: int, levels: dict[str, tuple[str, ...]]) -> list[str]:
    if code == 0:
        return [var]
    kept = levels[var] if code == _DUMMY else levels[var][1:]
    return [f"{var}{level}" for level in kept]


def column_names(terms: TermList, levels: dict[str, tuple[str, ...]]) -> tuple[str, ...]:
    """The design's column names, from the schema alone (no rows needed)."""
    names = ["(Intercept)"] if terms.intercept else []
    for codes in term_coding(terms, levels):
        width = 1
        for var, code in codes:
            width *= len(_pieces(var, code, levels))
        if len(names) + width > MAX_COLUMNS:
            raise FormulaError(f"the design would have more than {MAX_COLUMNS} columns: "
                               "interactions of factors with many levels multiply")
        combos = [""]
        for var, code in codes:  # first variable varies fastest
            combos = [f"{c}:{p}" if c else p for p in _pieces(var, code, levels) for c in combos]
        names += combos
    return tuple(names)


def model_matrix(terms: TermList, levels: dict[str, tuple[str, ...]], nodes: dict[str, Node],
                 frame: pd.DataFrame) -> np.ndarray:
    """The ``(n, p)`` design of ``terms`` for ``frame``'s rows (no missing values)."""
    column_names(terms, levels)  # refuses a design too wide before building it
    n = len(frame)
    columns = [np.ones(n)] if terms.intercept else []
    cache: dict[str, np.ndarray] = {}
    for codes in term_coding(terms, levels):
        blocks = [np.ones((n, 1))]
        for var, code in codes:
            if var not in cache:
                cache[var] = _variable_columns(var, nodes[var], levels, frame)
            full = cache[var]
            part = full if code != _CONTRAST else full[:, 1:]
            # first variable fastest: new variable's columns are the outer loop
            blocks = [np.einsum("ni,nj->nji", np.hstack(blocks), part).reshape(n, -1)]
        columns += [blocks[0][:, j] for j in range(blocks[0].shape[1])]
    if not columns:
        return np.zeros((n, 0))
    return np.column_stack(columns).astype(float)


def _variable_columns(var: str, node: Node, levels: dict[str, tuple[str, ...]],
                      frame: pd.DataFrame) -> np.ndarray:
    if var in levels:
        column = frame[node.args[0].id if is_factor_node(node) else node.id]  # type: ignore
        labels = np.array([r_label(v) for v in column.to_numpy()], dtype=object)
        known = levels[var]
        index = {level: i for i, level in enumerate(known)}
        codes = np.array([index.get(lab, -1) for lab in labels])
        if (codes < 0).any():
            raise FormulaError(f"factor '{var}' has a category the consortium did not agree on")
        out = np.zeros((len(frame), len(known)))
        out[np.arange(len(frame)), codes] = 1.0
        return out
    return evaluate_numeric(node, frame)[:, None]


_MATH = {"log": np.log, "log2": np.log2, "log10": np.log10, "log1p": np.log1p, "exp": np.exp,
         "expm1": np.expm1, "sqrt": np.sqrt, "abs": np.abs}


def evaluate_numeric(node: Node, frame: pd.DataFrame) -> np.ndarray:
    """The value of an arithmetic expression over ``frame``'s columns (never ``eval``)."""
    with np.errstate(all="ignore"):
        value = _evaluate(node, frame)
    value = np.broadcast_to(np.asarray(value, dtype=float), (len(frame),)).copy()
    return value


def _evaluate(node: Node, frame: pd.DataFrame):
    if isinstance(node, Number):
        return node.value
    if isinstance(node, Name):
        column = frame[node.id]
        if pd.api.types.is_bool_dtype(column):
            return column.to_numpy(dtype=float)
        if not pd.api.types.is_numeric_dtype(column):
            raise FormulaError(f"column '{node.id}' holds text here but the consortium's design "
                               "uses it as a number")
        return column.to_numpy(dtype=float)
    if isinstance(node, Paren):
        return _evaluate(node.inner, frame)
    if isinstance(node, Unary):
        value = _evaluate(node.operand, frame)
        return -value if node.op == "-" else value
    if isinstance(node, BinOp):
        left, right = _evaluate(node.left, frame), _evaluate(node.right, frame)
        if node.op == "+":
            return left + right
        if node.op == "-":
            return left - right
        if node.op == "*":
            return left * right
        if node.op == "/":
            return left / right
        if node.op == "^":
            return np.power(left, right)
        raise FormulaError(f"operator {node.op!r} is not arithmetic")
    if isinstance(node, Call):
        args = [_evaluate(a, frame) for a in node.args]
        if node.func == "I":
            return args[0]
        if node.func == "log" and len(args) == 2:
            return np.log(args[0]) / np.log(args[1])
        if node.func in _MATH:
            return _MATH[node.func](args[0])
    raise FormulaError("the formula holds an expression that is not arithmetic")
