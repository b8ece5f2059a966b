"""Several random-effects terms: exact Laplace gradients and Hessians against central
finite differences (two and three levels, crossed factors, slopes, boundary layouts), the
single-term path, and the exact Gaussian marginal likelihood."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from scipy import stats

from core_stats.design import grouped_rows
from core_stats.families import get_family
from core_stats.glmm import ParameterLayout, site_terms
from core_stats.glmm_multi import (
    MultiLayout,
    RandomTerm,
    multi_rows,
    split_uncorrelated,
    term_layout,
)
from core_stats.glmm_multi_laplace import multi_site_terms


def simulate(family: str, kind: str, seed: int = 1):
    """Rows in classes in schools (``three``), in schools (``two``), or with a crossed
    rater factor inside each school (``crossed``); a slope on ``x`` for schools."""
    rng = np.random.default_rng(seed)
    school = np.repeat(np.arange(3), 16)
    klass = np.repeat(np.arange(12), 4)
    n = school.size
    x = rng.normal(size=n)
    rater = school * 3 + rng.integers(0, 3, size=n)
    eta = 0.2 + 0.5 * x + rng.normal(0, 0.7, 3)[school] + rng.normal(0, 0.5, 12)[klass]
    y = {"poisson": lambda: rng.poisson(np.exp(eta)),
         "binomial": lambda: rng.binomial(1, 1 / (1 + np.exp(-eta))),
         "gaussian": lambda: eta + rng.normal(0, 0.5, n)}[family]()
    ones = np.ones((n, 1))
    terms = [RandomTerm("school", np.column_stack([ones[:, 0], x]), school,
                        random_names=("(Intercept)", "x"))]
    if kind == "three":
        terms.append(RandomTerm("klass:school", ones, klass))
        terms.append(RandomTerm("row:klass:school", ones, np.arange(n) // 2))
    elif kind == "crossed":
        terms.append(RandomTerm("rater", ones, rater))
        terms.append(RandomTerm("klass:school", ones, klass))
    X = np.column_stack([np.ones(n), x])
    fam = get_family(family)
    terms = split_uncorrelated(terms)
    layout = MultiLayout(("(Intercept)", "x"), tuple(term_layout(t) for t in terms),
                         fam.has_dispersion)
    return multi_rows(np.asarray(y, float), X, terms), fam, layout


def central_differences(function, theta: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    return np.array([(function(theta + eps * e) - function(theta - eps * e)) / (2 * eps)
                     for e in np.eye(theta.size)])


def check_derivatives(rows, fam, layout, theta) -> None:
    terms = multi_site_terms(rows, fam, layout, theta)
    fd_grad = central_differences(
        lambda t: multi_site_terms(rows, fam, layout, t, derivatives=False).loglik, theta)
    fd_hess = central_differences(
        lambda t: multi_site_terms(rows, fam, layout, t).gradient, theta)
    assert np.max(np.abs(terms.gradient - fd_grad)) < 1e-6 * (1 + np.abs(fd_grad).max())
    assert np.max(np.abs(terms.hessian - fd_hess)) < 1e-6 * (1 + np.abs(fd_hess).max())
    value = multi_site_terms(rows, fam, layout, theta, derivatives=False).loglik
    assert terms.loglik == pytest.approx(value, abs=1e-10)


@pytest.mark.parametrize("family", ["binomial", "poisson", "gaussian"])
@pytest.mark.parametrize("kind", ["two", "three", "crossed"])
def test_gradient_and_hessian_match_finite_differences(family: str, kind: str) -> None:
    rows, fam, layout = simulate(family, kind)
    theta = np.random.default_rng(7).normal(0, 0.3, size=layout.size)
    check_derivatives(rows, fam, layout, theta)


def test_blocks_are_the_connected_components_of_shared_levels() -> None:
    nested, _, _ = simulate("poisson", "three")
    crossed, _, _ = simulate("poisson", "crossed")
    assert nested.n_blocks == 3 and crossed.n_blocks == 3  # raters stay within schools
    codes = np.array([0, 0, 1, 1, 2, 2])
    joined = multi_rows(np.zeros(6), np.ones((6, 1)), (
        RandomTerm("a", np.ones(6), codes), RandomTerm("b", np.ones(6), [5, 6, 6, 7, 8, 8])))
    np.testing.assert_array_equal(joined.block_of_row, [0, 0, 0, 0, 1, 1])
    assert joined.n_u == 3 + 4 and list(joined.u_starts) == [0, 5, 7]  # a: 0, 1 | 2; b: 5-7 | 8


@pytest.mark.parametrize("family", ["binomial", "poisson", "gaussian"])
def test_boundary_layouts_have_exact_derivatives(family: str) -> None:
    """A term fixed at 0, a zero column, and zero columns on the linear scale at 0."""
    rows, fam, layout = simulate(family, "three", seed=4)
    rng = np.random.default_rng(3)
    school = layout.terms[0]
    for terms in [(replace(school, zero_columns=(1,)), layout.terms[1],
                   layout.terms[2].without_random_effects()),
                  (replace(school, linear_columns=(1,)), layout.terms[1],
                   replace(layout.terms[2], linear_columns=(0,)))]:
        lay = replace(layout, terms=terms)
        theta = rng.normal(0, 0.3, size=lay.size)
        names = lay.parameter_names()
        for k, name in enumerate(names):
            if name.startswith("chol[x,x]") or name.startswith("chol[(Intercept),(Intercept)]"):
                theta[k] = 0.0
        check_derivatives(rows, fam, lay, theta)


@pytest.mark.parametrize("family", ["binomial", "poisson", "gaussian"])
def test_one_term_equals_the_single_term_path(family: str) -> None:
    rows, fam, layout = simulate(family, "two", seed=2)
    rng = np.random.default_rng(5)
    n = rows.n_rows
    Z = rows.Z[0]
    single = ParameterLayout(layout.fixed_names, ("(Intercept)", "x"), "school",
                             fam.has_dispersion)
    theta = rng.normal(0, 0.3, size=single.size)
    reference = site_terms(grouped_rows(rows.y, rows.X, Z, rows.levels[0]), fam, single, theta)
    ours = multi_site_terms(rows, fam, layout, theta)
    assert ours.loglik == pytest.approx(reference.loglik, abs=1e-10)
    np.testing.assert_allclose(ours.gradient, reference.gradient, atol=1e-10)
    np.testing.assert_allclose(ours.hessian, reference.hessian, atol=1e-9)
    assert n == 48


@pytest.mark.parametrize("kind", ["three", "crossed"])
def test_gaussian_laplace_is_the_exact_marginal_likelihood(kind: str) -> None:
    rows, fam, layout = simulate("gaussian", kind, seed=6)
    theta = np.random.default_rng(8).normal(0, 0.3, size=layout.size)
    beta, sigma = theta[:2], np.exp(theta[-1])
    cov = sigma**2 * np.eye(rows.n_rows)
    for t, (Z, lev) in enumerate(zip(rows.Z, rows.levels, strict=True)):
        lam = layout.lambda_matrices(theta)[t]
        design = np.zeros((rows.n_rows, lev.max() + 1, Z.shape[1]))
        design[np.arange(rows.n_rows), lev] = Z
        design = design.reshape(rows.n_rows, -1)
        cov += design @ np.kron(np.eye(lev.max() + 1), lam @ lam.T) @ design.T
    exact = stats.multivariate_normal(rows.X @ beta, cov).logpdf(rows.y)
    assert multi_site_terms(rows, fam, layout, theta).loglik == pytest.approx(exact, abs=1e-9)


@pytest.mark.parametrize("family", ["binomial", "poisson", "gaussian"])
def test_weights_and_an_offset_keep_the_derivatives_exact(family: str) -> None:
    rows, fam, layout = simulate(family, "three", seed=9)
    rng = np.random.default_rng(11)
    weights = rng.integers(1, 4, size=rows.n_rows).astype(float)
    y = np.round(rows.y * weights) / weights if family == "binomial" else rows.y
    weighted = replace(rows, y=y, weights=weights, offset=rng.normal(0, 0.3, rows.n_rows))
    theta = rng.normal(0, 0.3, size=layout.size)
    check_derivatives(weighted, fam, layout, theta)


@pytest.mark.parametrize("link", ["probit", "cloglog"])
def test_non_canonical_binomial_links_keep_the_derivatives_exact(link: str) -> None:
    rows, _, layout = simulate("binomial", "three", seed=12)
    theta = np.random.default_rng(13).normal(0, 0.3, size=layout.size)
    check_derivatives(rows, get_family("binomial", link), layout, theta)
