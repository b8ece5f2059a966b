"""Layouts: sum of site vectors, then combine == the paper's formulas written out."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core_stats.bfi import (
    CentreCovariateLayout,
    CentreSpecificLayout,
    FitKind,
    HomogeneousLayout,
    LocalFit,
    categorical_row,
    centre_covariance,
    centre_difference,
    fit_map,
    leave_one_out_row,
    leave_one_out_table,
    predict,
    prior_precision,
    sum_site_vectors,
)
from core_stats.bfi_layout import triu_pack, triu_unpack
from core_stats.families import BINOMIAL, GAUSSIAN

NAMES = ("(Intercept)", "x1", "x2")


def _fits(family=GAUSSIAN, n_sites: int = 5, seed: int = 0, lams=None) -> list[LocalFit]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n_sites):
        n = 40 + 7 * i
        X = np.column_stack([np.ones(n), rng.normal(size=n), rng.binomial(1, 0.5, n)])
        eta = 0.3 * i - 0.4 + X[:, 1:] @ np.array([0.6, -0.4])
        if family is BINOMIAL:
            y = rng.binomial(1, 1 / (1 + np.exp(-eta))).astype(float)
        else:
            y = eta + rng.normal(scale=0.5 + 0.1 * i, size=n)
        lam = 0.05 + 0.02 * i if lams is None else lams[i]
        out.append(fit_map(X, y, family, prior_precision(3, family, lam=lam), names=NAMES))
    return out


def test_homogeneous_round_trip_equals_eq3() -> None:
    fits = _fits()
    layout = HomogeneousLayout.for_fit(fits[0])
    assert layout.length == 4 * 5 + 4 + 2
    vectors = [layout.site_vector(f) for f in fits]
    assert all(v.shape == (layout.length,) for v in vectors)
    prior = np.diag([0.1, 0.2, 0.3, 0.4])
    fit = layout.combine(sum_site_vectors(vectors), prior)
    curvature = sum(f.curvature for f in fits) + prior - sum(f.prior for f in fits)
    expected = np.linalg.solve(curvature, sum(f.curvature @ f.theta for f in fits))
    np.testing.assert_allclose(fit.estimate, expected, rtol=1e-12)
    np.testing.assert_allclose(fit.covariance, np.linalg.inv(curvature), rtol=1e-10)
    default = layout.combine(sum_site_vectors(vectors))      # mean site prior
    np.testing.assert_allclose(default.prior, sum(f.prior for f in fits) / 5)
    assert (fit.kind, fit.n_sites, fit.n_obs) == (FitKind.HOMOGENEOUS, 5, sum(f.n for f in fits))


def _appendix_b(fits, a, b, centre_prior, prior_a):
    """Appendix B of the paper, written out term by term."""
    A_a = sum(f.curvature[np.ix_(a, a)] for f in fits) + prior_a \
        - sum(f.prior[np.ix_(a, a)] for f in fits)
    lhs, rhs, tildes = A_a.copy(), np.zeros(len(a)), []
    for f in fits:
        A_ab, A_bb = f.curvature[np.ix_(a, b)], f.curvature[np.ix_(b, b)]
        A_tilde = A_bb + centre_prior - f.prior[np.ix_(b, b)]
        tildes.append(A_tilde)
        inv = np.linalg.inv(A_tilde)
        lhs -= A_ab @ inv @ A_ab.T
        rhs += (f.curvature[np.ix_(a, a)] - A_ab @ inv @ A_ab.T) @ f.theta[a] \
            + A_ab @ (np.eye(len(b)) - inv @ A_bb) @ f.theta[b]
    theta_a = np.linalg.solve(lhs, rhs)
    centres = [np.linalg.solve(t, f.curvature[np.ix_(b, b)] @ f.theta[b]
                               + f.curvature[np.ix_(a, b)].T @ (f.theta[a] - theta_a))
               for f, t in zip(fits, tildes, strict=True)]
    return theta_a, centres


def _full_precision(fits, a, b, centre_prior, prior_a):
    """The joint precision Q over (theta_a, theta_b,1..L) of the combined approximation."""
    da, db, n_sites = len(a), len(b), len(fits)
    Q = np.zeros((da + db * n_sites,) * 2)
    Q[:da, :da] = prior_a + sum(f.curvature[np.ix_(a, a)] - f.prior[np.ix_(a, a)] for f in fits)
    for i, f in enumerate(fits):
        block = slice(da + i * db, da + (i + 1) * db)
        Q[:da, block] = f.curvature[np.ix_(a, b)]
        Q[block, :da] = Q[:da, block].T
        Q[block, block] = f.curvature[np.ix_(b, b)] + centre_prior - f.prior[np.ix_(b, b)]
    return Q


def test_centre_specific_round_trip_any_subset() -> None:
    fits = _fits()
    b, a = [1, 3], [0, 2]                           # a slope and the Gaussian scale
    centre_prior = np.diag([0.5, 0.7])
    prior_a = np.diag([0.2, 0.3])
    layout = CentreSpecificLayout(fits[0].names, GAUSSIAN, tuple(b), centre_prior)
    assert layout.length == 2 * 3 + 2 + 2
    shared = layout.combine(sum_site_vectors([layout.site_vector(f) for f in fits]), prior_a)
    theta_a, centres = _appendix_b(fits, a, b, centre_prior, prior_a)
    np.testing.assert_allclose(shared.estimate, theta_a, rtol=1e-11)
    assert shared.names == ("(Intercept)", "x2")
    estimates = [layout.centre_estimate(f, shared) for f in fits]
    for mine, paper in zip(estimates, centres, strict=True):
        np.testing.assert_allclose(mine.estimate, paper, rtol=1e-10)
    joint = np.linalg.inv(_full_precision(fits, a, b, centre_prior, prior_a))
    np.testing.assert_allclose(shared.covariance, joint[:2, :2], rtol=1e-9)
    np.testing.assert_allclose(centre_covariance(estimates, shared), joint[2:, 2:], rtol=1e-9,
                               atol=1e-14)


def _appendix_c(fits, a, b, category, n_cat, prior_a, prior_bk):
    """Appendix C of the paper (scalar theta_b), written out."""
    A_a = sum(f.curvature[np.ix_(a, a)] - f.prior[np.ix_(a, a)] for f in fits) + prior_a
    in_k = [[f for f, c in zip(fits, category, strict=True) if c == k] for k in range(n_cat)]
    A_bk = [sum(f.curvature[b, b] - f.prior[b, b] for f in group) + prior_bk for group in in_k]
    A_abk = [sum(f.curvature[a, b] for f in group) for group in in_k]
    rhs_k = [sum(f.curvature[b, b] * f.theta[b] + f.curvature[a, b] @ f.theta[a] for f in group)
             for group in in_k]
    lhs = A_a - sum(np.outer(A_abk[k], A_abk[k]) / A_bk[k] for k in range(n_cat))
    rhs = sum(f.curvature[np.ix_(a, a)] @ f.theta[a] + f.curvature[a, b] * f.theta[b]
              for f in fits) - sum(A_abk[k] * rhs_k[k] / A_bk[k] for k in range(n_cat))
    theta_a = np.linalg.solve(lhs, rhs)
    theta_b = [(rhs_k[k] - A_abk[k] @ theta_a) / A_bk[k] for k in range(n_cat)]
    return theta_a, np.array(theta_b)


def test_categorical_round_trip_equals_appendix_c() -> None:
    fits = _fits(BINOMIAL, n_sites=7)
    category = [0, 1, 2, 0, 1, 2, 2]
    layout = CentreCovariateLayout(NAMES, BINOMIAL, (0,), ("k0", "k1", "k2"))
    assert layout.length == 15 + 5 + 6 + 6 + 2
    vectors = [layout.site_vector(f, categorical_row(k, 3)) for f, k in zip(fits, category,
                                                                             strict=True)]
    prior = np.diag([0.2, 0.3, 0.4, 0.4, 0.4])
    fit = layout.combine(sum_site_vectors(vectors), prior)
    theta_a, theta_b = _appendix_c(fits, [1, 2], 0, category, 3, prior[:2, :2], 0.4)
    np.testing.assert_allclose(fit.estimate[:2], theta_a, rtol=1e-11)
    np.testing.assert_allclose(fit.estimate[2:], theta_b, rtol=1e-11)
    # block k of site l's vector is zero unless z_l = k (one sum yields all category sums)
    J = layout.jacobian(categorical_row(1, 3))
    assert np.all(J[:, [2, 4]] == 0)


def test_covariate_layout_rejects_an_empty_category() -> None:
    fits = _fits(n_sites=3)
    layout = CentreCovariateLayout(fits[0].names, GAUSSIAN, (0,), ("a", "b", "c"))
    total = sum_site_vectors([layout.site_vector(f, categorical_row(k, 3))
                              for f, k in zip(fits, [0, 1, 1], strict=True)])
    with pytest.raises(ValueError, match="not identifiable"):
        layout.combine(total)


def test_layouts_validate_inputs() -> None:
    fits = _fits(n_sites=2)
    layout = HomogeneousLayout.for_fit(fits[0])
    with pytest.raises(ValueError, match="length"):
        layout.combine(np.zeros(layout.length + 1))
    bad = layout.site_vector(fits[0])
    bad[0] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        layout.combine(bad)
    with pytest.raises(ValueError, match="expects"):
        HomogeneousLayout(NAMES, GAUSSIAN).site_vector(fits[0])
    with pytest.raises(ValueError, match="positive definite"):
        layout.combine(sum_site_vectors([layout.site_vector(f) for f in fits]), -np.eye(4) * 1e4)
    with pytest.raises(ValueError):
        CentreSpecificLayout(fits[0].names, GAUSSIAN, (0, 1, 2, 3))
    with pytest.raises(ValueError, match="differ in length"):
        sum_site_vectors([np.zeros(3), np.zeros(4)])


@settings(max_examples=40, deadline=None)
@given(st.integers(min_value=1, max_value=7), st.integers(min_value=0, max_value=2**31))
def test_triu_pack_round_trip(d: int, seed: int) -> None:
    root = np.random.default_rng(seed).normal(size=(d, d))
    sym = root + root.T
    np.testing.assert_array_equal(triu_unpack(triu_pack(sym), d), sym)


def test_leave_one_out_and_centre_difference() -> None:
    fits = _fits(BINOMIAL, n_sites=5, lams=[0.1] * 5)
    layout = HomogeneousLayout.for_fit(fits[0])
    rows = leave_one_out_table(layout, fits, "(Intercept)", labels=list("ABCDE"))
    assert [r.label for r in rows] == list("ABCDE")
    others = layout.combine(sum_site_vectors([layout.site_vector(f) for f in fits[1:]]))
    assert rows[0].estimate == pytest.approx(others.estimate[0] - fits[0].theta[0], rel=1e-12)
    var = others.covariance[0, 0] + fits[0].covariance[0, 0]
    assert rows[0].sd == pytest.approx(np.sqrt(var), rel=1e-12)
    assert rows[0].lower == pytest.approx(rows[0].estimate - 1.959963984540054 * rows[0].sd)
    total = sum_site_vectors([layout.site_vector(f) for f in fits])
    assert leave_one_out_row(layout, total, fits[0], "(Intercept)") .estimate \
        == pytest.approx(rows[0].estimate, rel=1e-12)
    pair = centre_difference(fits[0], fits[4], "(Intercept)", level=0.9)
    assert pair.estimate == pytest.approx(fits[0].theta[0] - fits[4].theta[0])
    assert pair.sd ** 2 == pytest.approx(fits[0].covariance[0, 0] + fits[4].covariance[0, 0])
    assert pair.excludes_zero == (pair.lower > 0 or pair.upper < 0)


def test_prediction_and_result_dict() -> None:
    fits = _fits(BINOMIAL)
    layout = HomogeneousLayout.for_fit(fits[0])
    fit = layout.combine(sum_site_vectors([layout.site_vector(f) for f in fits]))
    X = np.array([[1.0, 0.5, 1.0], [1.0, -1.0, 0.0]])
    eta = predict(fit.estimate, fit.names, X, BINOMIAL, response=False)
    np.testing.assert_allclose(eta, X @ fit.estimate)
    np.testing.assert_allclose(predict(fit.estimate, fit.names, X, BINOMIAL),
                               1 / (1 + np.exp(-eta)))
    strat = CentreSpecificLayout(fits[0].names, BINOMIAL, (0,))
    shared = strat.combine(sum_site_vectors([strat.site_vector(f) for f in fits]))
    centre = strat.centre_estimate(fits[2], shared)
    own = predict(centre.local_theta, centre.local_names, X, BINOMIAL, response=False)
    np.testing.assert_allclose(own, centre.estimate[0] + X[:, 1:] @ shared.estimate)
    payload = json.loads(json.dumps(shared.with_centres((centre,)).to_dict()))
    assert payload["kind"] == "centre_specific" and payload["dispersion"] is None
    assert payload["centres"][0]["estimate"] == [pytest.approx(centre.estimate[0])]
    gauss = _fits(GAUSSIAN)
    glay = HomogeneousLayout.for_fit(gauss[0])
    gfit = glay.combine(sum_site_vectors([glay.site_vector(f) for f in gauss]))
    assert gfit.dispersion == pytest.approx(np.exp(2 * gfit.estimate[3]))
    assert gfit.coefficients.shape == (3,)
    cov = CentreCovariateLayout(gauss[0].names, GAUSSIAN, (0,), ("1", "z"))
    cfit = cov.combine(sum_site_vectors([cov.site_vector(f, [1.0, 0.1 * i])
                                         for i, f in enumerate(gauss)]))
    theta = cov.site_theta(cfit, [1.0, 0.2])
    assert theta[0] == pytest.approx(cfit.estimate[3] + 0.2 * cfit.estimate[4])
    assert predict(theta, gauss[0].names, X, GAUSSIAN).shape == (2,)
