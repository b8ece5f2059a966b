"""Formula to design matrices, split by site, with groups nested within sites.

A mixed-model formula names the outcome, the fixed effects and one
random-effects term, as in lme4::

    y ~ x1 + x2 + (1 | group)          random intercept
    y ~ x1 + (1 + x1 | group)          random intercept and slope
    y ~ x1 + (0 + x1 | group)          random slope only

The fixed part is parsed with formulaic; terms are named as lme4 names them
(``(Intercept)``, column names, ``period2`` for level 2 of a factor
``period``). Every group must lie in exactly one site, so the marginal
log-likelihood is a sum over sites.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

__all__ = [
    "DesignError",
    "MixedFormula",
    "parse_mixed_formula",
    "fixed_design",
    "GroupedRows",
    "grouped_rows",
]

_RANDOM_TERM = re.compile(r"\(\s*([^()|]+?)\s*\|\s*([A-Za-z_.][\w.]*)\s*\)")


class DesignError(ValueError):
    """The formula or the data cannot make a valid design; the message says why."""


@dataclass(frozen=True)
class MixedFormula:
    """A parsed ``y ~ fixed + (random | group)`` formula."""

    outcome: str
    fixed: str  # right-hand side of the fixed part, formulaic syntax
    random: str | None  # left of the bar, e.g. "1" or "1 + x"
    group: str | None

    @property
    def fixed_formula(self) -> str:
        return f"{self.outcome} ~ {self.fixed}"


def parse_mixed_formula(formula: str, *, require_random: bool = True) -> MixedFormula:
    """Split a formula into outcome, fixed part and one random-effects term."""
    if "~" not in formula:
        raise DesignError(
            f"formula {formula!r} has no '~': write it as 'y ~ x1 + x2 + (1 | group)'")
    lhs, rhs = (part.strip() for part in formula.split("~", 1))
    if not re.fullmatch(r"[A-Za-z_.][\w.]*", lhs):
        raise DesignError(f"the outcome {lhs!r} must be a single column name")
    terms = _RANDOM_TERM.findall(rhs)
    if len(terms) > 1:
        raise DesignError("only one random-effects term (... | group) is supported")
    if require_random and not terms:
        raise DesignError("the formula needs a random-effects term such as (1 | group)")
    fixed = _RANDOM_TERM.sub("", rhs)
    fixed = re.sub(r"\+\s*\+", "+", fixed).strip().strip("+").strip() or "1"
    if "|" in fixed:
        raise DesignError(f"cannot read the random-effects term in {formula!r}")
    random, group = (terms[0] if terms else (None, None))
    return MixedFormula(outcome=lhs, fixed=fixed, random=random, group=group)


def _lme4_name(name: str) -> str:
    """formulaic column name to lme4's: Intercept -> (Intercept), x[T.b] -> xb."""
    if name == "Intercept":
        return "(Intercept)"
    match = re.fullmatch(r"(?:C\()?([\w.]+?)\)?\[T\.(.+)\]", name)
    if match:
        return f"{match.group(1)}{match.group(2)}"
    return name


def fixed_design(rhs: str, data: pd.DataFrame) -> tuple[np.ndarray, tuple[str, ...]]:
    """Model matrix of a right-hand side, with lme4 term names."""
    from formulaic import model_matrix

    try:
        matrix = model_matrix(rhs, data, na_action="raise")
    except Exception as err:  # formulaic raises many types; report one line
        raise DesignError(f"cannot build the design for '{rhs}': {err}".splitlines()[0]) from None
    names = tuple(_lme4_name(str(c)) for c in matrix.columns)
    return np.asarray(matrix, dtype=float), names


@dataclass(frozen=True)
class GroupedRows:
    """One site's rows sorted by group, with the index structures the GLMM needs.

    ``D = [X, Z]`` is kept contiguous; ``starts[g]`` is the first row of group
    ``g``; ``size_buckets`` maps a group size ``m`` to the ``(G_m, m)`` array of
    row indices of the groups of that size (for batched ``D_g^T W D_g``).
    """

    y: np.ndarray
    X: np.ndarray
    Z: np.ndarray
    group_labels: tuple
    starts: np.ndarray
    group_of_row: np.ndarray
    size_buckets: tuple[tuple[np.ndarray, np.ndarray], ...]  # (group ids, row index matrix)

    @property
    def n_rows(self) -> int:
        return self.y.shape[0]

    @property
    def n_groups(self) -> int:
        return self.starts.shape[0]

    @property
    def D(self) -> np.ndarray:  # noqa: N802 - matrix name as in the formulas
        return np.hstack([self.X, self.Z])


def grouped_rows(y: np.ndarray, X: np.ndarray, Z: np.ndarray, groups: np.ndarray) -> GroupedRows:
    """Sort a site's rows by group and index them for per-group sums."""
    labels, codes = np.unique(np.asarray(groups), return_inverse=True)
    order = np.argsort(codes, kind="stable")
    codes = codes[order]
    sizes = np.bincount(codes, minlength=len(labels))
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.intp)
    buckets = []
    for size in np.unique(sizes):
        gids = np.flatnonzero(sizes == size)
        rows = starts[gids][:, None] + np.arange(size)[None, :]
        buckets.append((gids, rows))
    return GroupedRows(
        y=np.ascontiguousarray(y[order], dtype=float),
        X=np.ascontiguousarray(X[order], dtype=float),
        Z=np.ascontiguousarray(Z[order], dtype=float),
        group_labels=tuple(labels.tolist()),
        starts=starts,
        group_of_row=codes,
        size_buckets=tuple(buckets),
    )
