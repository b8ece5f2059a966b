"""A small, safe reader of ``Surv(time, status) ~ x1 + factor(x2) + ...`` formulas.

A formula is data, never code: it is split into tokens and checked against
a tiny grammar, and nothing in it is evaluated. What it accepts::

    formula := "Surv(" NAME "," NAME ")" "~" term ("+" term)*
    term    := NAME | "factor(" NAME ")"
    NAME    := an R syntactic name ([A-Za-z.][A-Za-z0-9._]*) or `any text`

``strata(...)`` is refused with a pointer to ``--site-column`` (in a
federated Cox model the sites are the strata); interactions, transformations
and intercept terms are refused with one line saying so. The right-hand side
is handed to :func:`core_stats.design.fixed_design` with every name
back-quoted, and the design's column names are mapped to R's
(``factor(x)2``, ``sexmale``, ``flagTRUE``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from core_stats.design import DesignError

__all__ = ["SurvFormula", "parse_surv_formula", "r_column_name"]

_NAME = r"(?:[A-Za-z.][A-Za-z0-9._]*|`[^`]+`)"
_LHS = re.compile(rf"\s*Surv\s*\(\s*({_NAME})\s*,\s*({_NAME})\s*\)\s*")
_TERM = re.compile(rf"\s*(?:(factor|strata)\s*\(\s*({_NAME})\s*\)|({_NAME}))\s*")


@dataclass(frozen=True)
class SurvFormula:
    """A parsed survival formula: time and status columns, covariate terms."""

    time: str
    status: str
    terms: tuple[str, ...]
    factors: tuple[str, ...]  # the terms written factor(name)

    @property
    def covariates(self) -> tuple[str, ...]:
        return self.terms

    @property
    def design_rhs(self) -> str:
        """The right-hand side for :func:`core_stats.design.fixed_design` (names quoted)."""
        return " + ".join(f"C(`{t}`)" if t in self.factors else f"`{t}`" for t in self.terms)


def _unquote(name: str) -> str:
    return name[1:-1] if name.startswith("`") else name


def parse_surv_formula(formula: str) -> SurvFormula:
    """Parse ``Surv(time, status) ~ rhs``; DesignError (one line) for anything else."""
    if formula.count("~") != 1:
        raise DesignError("write the formula as 'Surv(time, status) ~ x1 + x2'")
    lhs, rhs = formula.split("~")
    match = _LHS.fullmatch(lhs)
    if match is None:
        raise DesignError("the left-hand side must be Surv(time, status), naming two columns")
    time, status = (_unquote(g) for g in match.groups())
    if time == status:
        raise DesignError("Surv(time, status) needs two different columns")
    terms: list[str] = []
    factors: list[str] = []
    for part in rhs.split("+"):
        term = _TERM.fullmatch(part)
        if term is None:
            raise DesignError(f"cannot read the term {part.strip()!r}: write column names or "
                              "factor(name) joined by '+' (no interactions, transformations "
                              "or intercept terms)")
        call, inner, plain = term.groups()
        if call == "strata":
            raise DesignError("strata(...) is not needed: the model is stratified by the "
                              "sites (--site-column)")
        name = _unquote(inner if call else plain)
        if name in terms:
            raise DesignError(f"the term {name!r} appears twice")
        if name in (time, status):
            raise DesignError(f"{name!r} is in Surv(...) and cannot be a covariate")
        terms.append(name)
        if call == "factor":
            factors.append(name)
    return SurvFormula(time, status, tuple(terms), tuple(factors))


def r_column_name(name: str, formula: SurvFormula, logical: frozenset[str]) -> str:
    """R's name for a design column built from :attr:`SurvFormula.design_rhs`."""
    match = re.fullmatch(r"C\(`(.+)`\)\[T\.(.*)\]", name)
    if match:
        return f"factor({match.group(1)}){match.group(2)}"
    if name in logical:
        return f"{name}TRUE"
    return name
