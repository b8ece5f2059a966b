"""Mixed-model formulas read for a fit, and a site's rows grouped for the GLMM.

A mixed-model formula names the outcome, the fixed effects and the
random-effects terms, as in lme4::

    y ~ x1 + x2 + (1 | group)          random intercept
    y ~ x1 + (1 + x1 | group)          random intercept and slope
    y ~ x1 + (0 + x1 | group)          random slope only
    y ~ x1 + (1 + x1 || group)         uncorrelated intercept and slope

It is read by the project's own parser (:mod:`core_stats.formula`: data,
never code) with R's semantics; design columns are named as lme4 names them.
Every group must lie in exactly one site, so the marginal log-likelihood is
a sum over sites.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core_stats.formula import FormulaError, ModelFormula, RandomTerm, deparse, parse_formula

__all__ = [
    "DesignError",
    "MixedFormula",
    "parse_mixed_formula",
    "GroupedRows",
    "grouped_rows",
]

DesignError = FormulaError  # one exception for every formula or design problem


@dataclass(frozen=True)
class MixedFormula:
    """A formula with at most one random-effects term (the fits' current scope)."""

    text: str
    model: ModelFormula

    @property
    def outcome(self) -> str:
        return deparse(self.model.response)

    @property
    def random(self) -> RandomTerm | None:
        return self.model.random[0] if self.model.random else None

    @property
    def group(self) -> str | None:
        return None if self.random is None else self.random.group_name


def parse_mixed_formula(formula: str, *, require_random: bool = True,
                        several: bool = False) -> MixedFormula:
    """Read ``formula``; refuse what the fits cannot mean yet, in one line.

    ``several`` allows more than one random-effects term (the multi-term GLMM).
    """
    model = parse_formula(formula)
    if require_random and not model.random:
        raise DesignError("the formula needs a random-effects term such as (1 | group)")
    if len(model.random) > 1 and not several:
        kinds = "'||' splits a term into uncorrelated ones" if any(
            not t.correlated for t in model.random) else "several grouping factors"
        raise DesignError(f"only one random-effects term is supported yet ({kinds}): "
                          "write a single (... | group)")
    if not require_random and model.random:
        raise DesignError("BFI formulas have no random-effects term: drop the '(... | group)'")
    return MixedFormula(formula, model)


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
    offset: np.ndarray | None = None  # a known term of each row's linear predictor (R's offset)
    weights: np.ndarray | None = None  # prior weights (binomial: trials), as glmer's weights=

    @property
    def n_rows(self) -> int:
        return self.y.shape[0]

    @property
    def n_groups(self) -> int:
        return self.starts.shape[0]

    @property
    def D(self) -> np.ndarray:  # noqa: N802 - matrix name as in the formulas
        return np.hstack([self.X, self.Z])


def grouped_rows(y: np.ndarray, X: np.ndarray, Z: np.ndarray, groups: np.ndarray,
                 offset: np.ndarray | None = None,
                 weights: np.ndarray | None = None) -> GroupedRows:
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
        offset=None if offset is None else np.ascontiguousarray(offset[order], dtype=float),
        weights=None if weights is None else np.ascontiguousarray(weights[order], dtype=float),
    )
