"""``Surv(time, status) ~ rhs`` formulas, read as data with the project's parser.

The left-hand side must be ``Surv(time, status)`` naming two columns (a small
pattern; nothing is evaluated). The right-hand side is read by
:mod:`core_stats.formula` (R's formula grammar: ``+``, ``:``, ``*``,
``factor()``, ``I()``, ``log()``, ...) as the model ``time ~ rhs``, whose
fixed design, minus R's intercept column, is the Cox (or parametric hazard)
design: ``survival::coxph`` codes factors with an intercept and then drops
its column, and so do we. Refused, each in one line: ``strata()`` (the
sites are the strata), random-effects terms, ``offset()``, a removed
intercept (``- 1``, ``0 +``), and a covariate that is the time or status
column.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property

from core_stats.formula import FormulaError, ModelFormula, parse_formula

__all__ = ["SurvFormula", "parse_surv_formula"]

_NAME = r"(?:[A-Za-z.][A-Za-z0-9._]*|`[^`]+`)"
_LHS = re.compile(rf"\s*Surv\s*\(\s*({_NAME})\s*,\s*({_NAME})\s*\)\s*")


@dataclass(frozen=True)
class SurvFormula:
    """A parsed survival formula: time and status columns and the covariates' model."""

    text: str
    time: str
    status: str
    rhs: str

    @property
    def model_text(self) -> str:
        """``time ~ rhs``: the formula whose fixed design (without intercept) is the model's."""
        return f"`{self.time}` ~ {self.rhs}"

    @cached_property
    def model(self) -> ModelFormula:
        return parse_formula(self.model_text)

    @property
    def covariates(self) -> tuple[str, ...]:
        """The data columns the covariates read (the right-hand side alone)."""
        return parse_formula(f"1 ~ {self.rhs}").columns


def _unquote(name: str) -> str:
    return name[1:-1] if name.startswith("`") else name


def parse_surv_formula(text: str) -> SurvFormula:
    """Read ``Surv(time, status) ~ rhs``; FormulaError (one line) for anything else."""
    if text.count("~") != 1:
        raise FormulaError("write the formula as 'Surv(time, status) ~ x1 + x2'")
    lhs, rhs = text.split("~")
    match = _LHS.fullmatch(lhs)
    if match is None:
        raise FormulaError("the left-hand side must be Surv(time, status), naming two columns")
    time, status = (_unquote(g) for g in match.groups())
    if time == status:
        raise FormulaError("Surv(time, status) needs two different columns")
    if re.search(r"\bstrata\s*\(", rhs):
        raise FormulaError("strata(...) is not needed: the model is stratified by the sites "
                           "(--site-column)")
    formula = SurvFormula(text, time, status, rhs.strip())
    model = formula.model
    if model.random:
        raise FormulaError("a survival model here has no random-effects term (... | group)")
    if model.offsets:
        raise FormulaError("offset() is not supported in a survival model yet")
    if not model.fixed.intercept:
        raise FormulaError("a Cox model has no intercept to remove: drop the '- 1' or '0 +'")
    if not model.fixed.terms:
        raise FormulaError("the model has no covariates: name at least one after '~'")
    clash = [c for c in (time, status) if c in formula.covariates]
    if clash:
        raise FormulaError(f"'{clash[0]}' is in Surv(...) and cannot be a covariate")
    return formula
