"""Empirical sensitivity: neighbouring data sets move each DP release by at most its Δ.

Neighbours differ by one record, added or removed, including worst-case
records at (and beyond) the declared bounds. A stated Δ that is too small
fails these tests; the tightness checks fail if a Δ is needlessly large.
"""

from __future__ import annotations

import numpy as np
import pytest

from core_stats.design import grouped_rows
from core_stats.families import get_family
from core_stats.glmm import ParameterLayout
from securefed.dp_statistics import (
    clipped_terms_vector,
    group_clip_units,
    summary_sensitivity,
    summary_vector,
)

R, B = 3.0, 4.0


def _records(rng, n, p, family):
    X = np.column_stack([np.ones(n), rng.normal(0.0, 1.5, size=(n, p - 1))])
    if family == "binomial":
        y = rng.integers(0, 2, n).astype(float)
    elif family == "poisson":
        y = rng.poisson(2.0, n).astype(float)
    else:
        y = rng.normal(0.0, 3.0, n)
    return X, y


def _worst_records(rng, p, family):
    """Records at and beyond the bounds: long covariate rows, extreme outcomes."""
    out = []
    for scale in (1.0, 5.0, 100.0):
        x = rng.normal(size=p)
        x = x / np.linalg.norm(x) * R * scale
        for y in ((0.0, 1.0) if family == "binomial" else (-50.0, -B, 0.0, B, 50.0)):
            if family == "poisson" and y < 0:
                continue
            out.append((x, y))
    return out


@pytest.mark.parametrize("family", ["binomial", "poisson", "gaussian"])
def test_design_summary_moves_by_at_most_delta(family: str) -> None:
    rng = np.random.default_rng(11)
    bound = 1.0 if family == "binomial" else B
    delta = summary_sensitivity(R, bound)
    worst = 0.0
    for _ in range(20):
        n, p = int(rng.integers(5, 60)), int(rng.integers(2, 6))
        X, y = _records(rng, n, p, family)
        groups = int(rng.integers(1, 5))
        base = summary_vector(X, y, R, bound, family, groups)
        candidates = _worst_records(rng, p, family) + [(X[0] * 7.0, y[0])]
        for x_new, y_new in candidates:
            for new_group in (0, 1):
                added = summary_vector(np.vstack([X, x_new]), np.append(y, y_new), R, bound,
                                       family, groups + new_group)
                worst = max(worst, float(np.linalg.norm(added - base)))
        removed = summary_vector(X[1:], y[1:], R, bound, family, groups)
        worst = max(worst, float(np.linalg.norm(removed - base)))
    assert worst <= delta * (1 + 1e-12)
    assert worst >= 0.7 * delta  # the bound is nearly attained by worst-case records


@pytest.mark.parametrize(("family", "q"), [("binomial", 1), ("poisson", 1), ("gaussian", 1),
                                           ("binomial", 2)])
def test_clipped_glmm_terms_move_by_at_most_two_units(family: str, q: int) -> None:
    rng = np.random.default_rng(5)
    fam = get_family(family)
    p = 3
    names = ("(Intercept)", "x1", "x2")
    random = ("(Intercept)", "x1")[:q]
    layout = ParameterLayout(names, random, "g", fam.has_dispersion)
    bound = 1.0 if family == "binomial" else B
    units = group_clip_units(layout, R, bound, group_clip=2.0)
    scale = np.concatenate([np.full(layout.size, 2.0 ** units[0]),
                            np.full(layout.size * (layout.size + 1) // 2, 2.0 ** units[1])])
    worst = 0.0
    for _trial in range(6):
        n = 40
        X, y = _records(rng, n, p, family)
        if family == "poisson":
            y = np.minimum(y, B)
        groups = rng.integers(0, 6, n)
        theta = rng.normal(0.0, 0.3, layout.size)

        def release(X, y, groups, theta=theta):
            rows = grouped_rows(y, X, X[:, :q], groups)
            vector, _ = clipped_terms_vector(rows, fam, layout, theta, 1, units)
            return vector / scale

        base = release(X, y, groups)
        for x_new, y_new in _worst_records(rng, p, family)[:4]:
            x_new = x_new.copy()
            x_new[0] = 1.0
            if family == "poisson":
                y_new = min(max(y_new, 0.0), B)
            for group in (0, 99):  # an existing group, and a new one
                moved = release(np.vstack([X, x_new]), np.append(y, y_new),
                                np.append(groups, group))
                worst = max(worst, float(np.linalg.norm(moved - base)))
        moved = release(X[1:], y[1:], groups[1:])
        worst = max(worst, float(np.linalg.norm(moved - base)))
    assert worst <= 2.0 + 1e-9
    assert worst >= 0.5  # clipping binds: the bound is reached within a small factor


def test_group_clip_units_are_powers_of_two_above_the_record_bounds() -> None:
    layout = ParameterLayout(("(Intercept)", "x"), ("(Intercept)",), "g", False)
    g_units, h_units = group_clip_units(layout, 3.0, 1.0, group_clip=8.0)
    assert 2.0**g_units >= 8 * 3.0 > 2.0 ** (g_units - 1)
    assert 2.0**h_units >= 8 * 9.0 > 2.0 ** (h_units - 1)


def test_standardisation_sums_move_by_at_most_delta() -> None:
    from securefed.dp_statistics import standardize_sensitivity, standardize_vector

    rng = np.random.default_rng(2)
    low, high = np.array([18.0, 0.0]), np.array([70.0, 50.0])
    delta = standardize_sensitivity(low, high)
    worst = 0.0
    for _ in range(20):
        X = np.column_stack([rng.uniform(10, 80, 30), rng.uniform(-5, 60, 30)])
        base = standardize_vector(X, low, high)
        for new in ([18.0, 0.0], [70.0, 50.0], [1e4, -1e4], [44.0, 25.0], X[0]):
            added = standardize_vector(np.vstack([X, new]), low, high)
            worst = max(worst, float(np.linalg.norm(added - base)))
        worst = max(worst, float(np.linalg.norm(standardize_vector(X[1:], low, high) - base)))
    assert worst <= delta * (1 + 1e-12)
    assert worst >= 0.99 * delta  # a record at a corner of the ranges attains it
