"""Exact GLMM gradients and Hessians against central finite differences."""

from __future__ import annotations

import numpy as np
import pytest
from simdata import simulate_nested

from core_stats.design import grouped_rows
from core_stats.families import get_family
from core_stats.glmm import ParameterLayout, gauss_hermite_rule, site_terms


def _site(family: str, q: int, seed: int = 1):
    frame = simulate_nested(family, n_sites=1, groups_per_site=6, rows_per_group=10, q=q,
                            seed=seed)
    X = np.column_stack([np.ones(len(frame)), frame.x1, frame.x2])
    Z = np.ones((len(frame), 1)) if q == 1 else np.column_stack([np.ones(len(frame)), frame.x1])
    rows = grouped_rows(frame.y.to_numpy(float), X, Z, frame.patient.to_numpy())
    fam = get_family(family)
    layout = ParameterLayout(("(Intercept)", "x1", "x2"), ("(Intercept)", "x1")[:q], "patient",
                             fam.has_dispersion)
    return rows, fam, layout


@pytest.mark.parametrize("family", ["binomial", "poisson", "gaussian"])
@pytest.mark.parametrize("nagq", [1, 2, 5])
@pytest.mark.parametrize("q", [1, 2])
def test_gradient_and_hessian_match_finite_differences(family: str, nagq: int, q: int) -> None:
    if q == 2 and nagq == 5:
        nagq = 3  # 25 nodes per group is slow for no extra insight
    rows, fam, layout = _site(family, q)
    rng = np.random.default_rng(7)
    theta = rng.normal(0, 0.3, size=layout.size)
    terms = site_terms(rows, fam, layout, theta, nagq=nagq)
    eps = 1e-5
    eye = np.eye(layout.size)

    def value(t):
        return site_terms(rows, fam, layout, t, nagq=nagq, derivatives=False).loglik

    def grad(t):
        return site_terms(rows, fam, layout, t, nagq=nagq).gradient

    fd_grad = np.array([(value(theta + eps * e) - value(theta - eps * e)) / (2 * eps) for e in eye])
    fd_hess = np.array([(grad(theta + eps * e) - grad(theta - eps * e)) / (2 * eps) for e in eye])
    scale = 1.0 + np.abs(terms.gradient).max()
    assert np.max(np.abs(terms.gradient - fd_grad)) < 1e-6 * scale
    assert np.max(np.abs(terms.hessian - fd_hess)) < 1e-6 * (1.0 + np.abs(terms.hessian).max())
    assert terms.loglik == pytest.approx(value(theta), abs=1e-12)


def test_agq_converges_to_the_exact_integral() -> None:
    from scipy import integrate

    rows, fam, layout = _site("poisson", 1, seed=3)
    theta = np.array([0.1, 0.4, -0.3, np.log(0.9)])
    exact = 0.0
    for g in range(rows.n_groups):
        sl = slice(rows.starts[g], rows.starts[g] + 10)
        eta0 = rows.X[sl] @ theta[:3]

        def integrand(u, sl=sl, eta0=eta0):
            ll = fam.loglik(rows.y[sl], eta0 + 0.9 * u).sum()
            return np.exp(ll - u * u / 2) / np.sqrt(2 * np.pi)

        exact += np.log(integrate.quad(integrand, -12, 12, epsabs=0, epsrel=1e-13, limit=400)[0])
    errors = [abs(site_terms(rows, fam, layout, theta, nagq=k).loglik - exact) for k in (1, 5, 25)]
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 1e-8


def test_gaussian_laplace_is_exact_and_agq_agrees() -> None:
    rows, fam, layout = _site("gaussian", 1)
    theta = np.array([0.2, 0.4, -0.3, np.log(0.7), np.log(0.8)])
    values = [site_terms(rows, fam, layout, theta, nagq=k).loglik for k in (1, 3, 7)]
    assert np.ptp(values) < 1e-9


def test_gauss_hermite_rule_integrates_polynomials() -> None:
    nodes, log_w = gauss_hermite_rule(5, 2)
    w = np.exp(log_w)
    assert w.sum() == pytest.approx(np.pi)
    assert np.sum(w * nodes[:, 0] ** 2 * nodes[:, 1] ** 2) == pytest.approx(np.pi / 4)
    with pytest.raises(ValueError):
        gauss_hermite_rule(0, 1)


def _assert_matches_finite_differences(rows, fam, layout, theta, nagq) -> None:
    terms = site_terms(rows, fam, layout, theta, nagq=nagq)
    eps, eye = 1e-5, np.eye(layout.size)

    def value(t):
        return site_terms(rows, fam, layout, t, nagq=nagq, derivatives=False).loglik

    def grad(t):
        return site_terms(rows, fam, layout, t, nagq=nagq).gradient

    fd_grad = np.array([(value(theta + eps * e) - value(theta - eps * e)) / (2 * eps) for e in eye])
    fd_hess = np.array([(grad(theta + eps * e) - grad(theta - eps * e)) / (2 * eps) for e in eye])
    assert np.max(np.abs(terms.gradient - fd_grad)) < 1e-6 * (1.0 + np.abs(fd_grad).max())
    assert np.max(np.abs(terms.hessian - fd_hess)) < 1e-6 * (1.0 + np.abs(fd_hess).max())


@pytest.mark.parametrize("family", ["binomial", "poisson", "gaussian"])
@pytest.mark.parametrize("nagq", [1, 3])
def test_weighted_rows_with_an_offset_match_finite_differences(family: str, nagq: int) -> None:
    """Prior weights (binomial: trials) and an offset keep the derivatives exact."""
    plain, fam, layout = _site(family, 1)
    rng = np.random.default_rng(11)
    n = plain.n_rows
    weights = rng.integers(1, 6, size=n).astype(float)
    y = np.round(plain.y * weights) / weights if family == "binomial" else plain.y
    rows = grouped_rows(y, plain.X, plain.Z, plain.group_of_row, rng.normal(0, 0.3, n), weights)
    theta = rng.normal(0, 0.3, size=layout.size)
    _assert_matches_finite_differences(rows, fam, layout, theta, nagq)


def test_binomial_trials_equal_expanded_bernoulli_rows() -> None:
    """k successes of m trials is m Bernoulli rows, up to log choose(m, k)."""
    plain, fam, layout = _site("binomial", 1)
    rng = np.random.default_rng(5)
    trials = rng.integers(1, 4, size=plain.n_rows)
    successes = rng.binomial(trials, 0.4)
    rows = grouped_rows(successes / trials, plain.X, plain.Z, plain.group_of_row,
                        weights=trials.astype(float))
    index = np.repeat(np.arange(plain.n_rows), trials)
    bern = np.concatenate([np.r_[np.ones(k), np.zeros(m - k)]
                           for k, m in zip(successes, trials, strict=True)])
    expanded = grouped_rows(bern, plain.X[index], plain.Z[index], plain.group_of_row[index])
    theta = np.array([0.1, 0.3, -0.2, np.log(0.8)])
    from scipy.special import gammaln

    const = float(np.sum(gammaln(trials + 1) - gammaln(successes + 1)
                         - gammaln(trials - successes + 1)))
    a, b = site_terms(rows, fam, layout, theta, nagq=5), site_terms(expanded, fam, layout, theta,
                                                                    nagq=5)
    assert a.loglik == pytest.approx(b.loglik + const, abs=1e-9)
    np.testing.assert_allclose(a.gradient, b.gradient, atol=1e-9)
    np.testing.assert_allclose(a.hessian, b.hessian, atol=1e-9)


@pytest.mark.parametrize("link", ["probit", "cloglog"])
@pytest.mark.parametrize("nagq", [1, 3])
@pytest.mark.parametrize("q", [1, 2])
def test_non_canonical_links_match_finite_differences(link: str, nagq: int, q: int) -> None:
    rows, _, layout = _site("binomial", q)
    fam = get_family("binomial", link)
    theta = np.random.default_rng(3).normal(0, 0.3, size=layout.size)
    _assert_matches_finite_differences(rows, fam, layout, theta, nagq)


@pytest.mark.parametrize("link", ["probit", "cloglog"])
def test_link_kernels_are_exact_in_the_tails(link: str) -> None:
    """Taylor-arithmetic derivatives of the kernel against finite differences, |eta| to 12;
    finite and concave to |eta| = 30 (there the third and fourth derivatives of log Phi
    lose digits to cancellation: 3e-5 and 1e-2 relative at -30, 2e-9 and 7e-8 absolute)."""
    fam = get_family("binomial", link)
    far = fam.kernel_derivatives(np.array([0.0, 1.0, 0.0, 1.0]), np.array([-30, -30, 30, 30.0]), 4)
    assert np.all(np.isfinite(far)) and np.all(far[2] <= 0)
    eta = np.array([-12.0, -8.0, -1.0, 0.0, 0.7, 4.0, 8.0, 12.0])[:, None].repeat(2, 1).ravel()
    y = np.tile([0.0, 1.0], 8)
    d = fam.kernel_derivatives(y, eta, 4)
    h = 1e-5
    for k in range(4):
        up, down = (fam.kernel_derivatives(y, eta + s, 3)[k] for s in (h, -h))
        fd = (up - down) / (2 * h)
        assert np.all(np.abs(fd - d[k + 1]) <= 1e-5 * (1 + np.abs(d[k + 1]))), k
    assert np.all(np.isfinite(d)) and np.all(d[2] <= 0)
