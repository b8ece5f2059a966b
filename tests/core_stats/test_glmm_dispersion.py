"""Gamma and negative-binomial GLMM terms: the dispersion is a parameter of theta with exact
derivatives (against central finite differences), and AGQ tends to the exact integral."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import integrate

from core_stats.design import grouped_rows
from core_stats.families import get_family
from core_stats.glmm import ParameterLayout, site_terms

FAMILIES = [("negative_binomial", "log"), ("Gamma", "log"), ("Gamma", "inverse")]


def _site(name: str, link: str, q: int, seed: int = 4):
    rng = np.random.default_rng(seed)
    groups = np.repeat(np.arange(6), 8)
    x1 = rng.normal(size=groups.size)
    X = np.column_stack([np.ones(groups.size), x1])
    Z = X[:, :q]
    family = get_family(name, link)
    b = rng.normal(0, 0.3, size=(6, q))
    if link == "inverse":
        mu = 1.0 / (1.0 + 0.1 * x1 + 0.2 * b[groups, 0] ** 2)
        y = rng.gamma(4.0, mu / 4.0)
    else:
        mu = np.exp(0.5 + 0.3 * x1 + (Z * b[groups]).sum(axis=1))
        y = rng.negative_binomial(2.0, 2.0 / (2.0 + mu)).astype(float) if name != "Gamma" \
            else rng.gamma(3.0, mu / 3.0)
    rows = grouped_rows(y, X, Z, groups)
    layout = ParameterLayout.for_family(("(Intercept)", "x1"), ("(Intercept)", "x1")[:q], "g",
                                        family)
    theta = np.array([0.4, 0.2] + [np.log(0.3)] + [0.1, np.log(0.2)][: q * (q + 1) // 2 - 1]
                     + [np.log(0.7)])
    if link == "inverse":
        theta[:2] = [1.0, 0.05]
        theta[2:-1] = np.log(0.05) if q == 1 else [np.log(0.05), 0.01, np.log(0.03)]
    return rows, family, layout, theta


@pytest.mark.parametrize(("name", "link"), FAMILIES)
@pytest.mark.parametrize(("q", "nagq"), [(1, 1), (1, 4), (2, 1), (2, 2)])
def test_gradient_and_hessian_match_finite_differences(name, link, q, nagq):
    rows, family, layout, theta = _site(name, link, q)
    assert layout.parameter_names()[-1] == family.dispersion.parameter
    terms = site_terms(rows, family, layout, theta, nagq=nagq)
    eps, eye = 1e-5, np.eye(layout.size)

    def value(t):
        return site_terms(rows, family, layout, t, nagq=nagq, derivatives=False).loglik

    def grad(t):
        return site_terms(rows, family, layout, t, nagq=nagq).gradient

    fd_grad = np.array([(value(theta + eps * e) - value(theta - eps * e)) / (2 * eps) for e in eye])
    fd_hess = np.array([(grad(theta + eps * e) - grad(theta - eps * e)) / (2 * eps) for e in eye])
    assert np.max(np.abs(terms.gradient - fd_grad)) < 1e-6 * (1 + np.abs(terms.gradient).max())
    assert np.max(np.abs(terms.hessian - fd_hess)) < 1e-6 * (1 + np.abs(terms.hessian).max())
    assert terms.loglik == pytest.approx(value(theta), abs=1e-10)


@pytest.mark.parametrize(("name", "link"), FAMILIES[:2])
def test_agq_converges_to_the_exact_integral(name, link):
    rows, family, layout, theta = _site(name, link, 1, seed=9)
    beta, sd, s = theta[:2], float(np.exp(theta[2])), float(theta[-1])
    exact = 0.0
    for g in range(rows.n_groups):
        sl = slice(rows.starts[g], rows.starts[g] + 8)
        eta0 = rows.X[sl] @ beta

        def integrand(u, sl=sl, eta0=eta0):
            ll = family.loglik(rows.y[sl], eta0 + sd * u, s).sum()
            return np.exp(ll - u * u / 2) / np.sqrt(2 * np.pi)

        exact += np.log(integrate.quad(integrand, -12, 12, epsabs=0, epsrel=1e-13, limit=400)[0])
    errors = [abs(site_terms(rows, family, layout, theta, nagq=k).loglik - exact)
              for k in (1, 5, 25)]
    assert errors[0] > errors[2] and errors[2] < 1e-8


def test_inverse_link_terms_stay_finite_where_no_mean_exists():
    """A Newton step past eta = 0 gets a very low, finite value (a sum can carry it)."""
    rows, family, layout, theta = _site("Gamma", "inverse", 1)
    inside = site_terms(rows, family, layout, theta).loglik
    theta = theta.copy()
    theta[:2] = [0.05, -1.0]  # eta < 0 for about half the rows
    terms = site_terms(rows, family, layout, theta)
    assert np.isfinite(terms.loglik) and terms.loglik < inside - 1e3
    assert np.all(np.isfinite(terms.gradient)) and np.all(np.isfinite(terms.hessian))
