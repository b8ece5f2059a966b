"""Local MAP fit: exact derivatives, convergence, priors."""

from __future__ import annotations

import numpy as np
import pytest

from core_stats.bfi import MAPConvergenceError, fit_map, log_posterior, prior_precision
from core_stats.families import BINOMIAL, GAUSSIAN, POISSON, Family


def _data(family: Family, n: int = 60, seed: int = 1):
    rng = np.random.default_rng(seed)
    X = np.column_stack([np.ones(n), rng.normal(size=n), rng.binomial(1, 0.4, n)])
    eta = X @ np.array([0.3, 0.8, -0.5])
    if family is BINOMIAL:
        y = rng.binomial(1, 1 / (1 + np.exp(-eta))).astype(float)
    elif family is POISSON:
        y = rng.poisson(np.exp(eta)).astype(float)
    else:
        y = eta + rng.normal(scale=0.7, size=n)
    return X, y


def _prior(family: Family, fixed: bool = False) -> np.ndarray:
    rng = np.random.default_rng(5)
    d = 3 + int(family.has_dispersion and not fixed)
    root = rng.normal(size=(d, d)) * 0.1
    return root @ root.T + 0.05 * np.eye(d)  # a full (non-diagonal) prior precision


def _central_gradient(fun, theta, h=1e-5):
    out = np.zeros_like(theta)
    for j in range(theta.size):
        e = np.zeros_like(theta)
        e[j] = h
        out[j] = (fun(theta + e) - fun(theta - e)) / (2 * h)
    return out


@pytest.mark.parametrize("family", [BINOMIAL, POISSON, GAUSSIAN], ids=lambda f: f.name)
@pytest.mark.parametrize("fixed", [False, True])
def test_gradient_and_hessian_match_finite_differences(family: Family, fixed: bool) -> None:
    X, y = _data(family)
    prior = _prior(family, fixed)
    fixed_scale = -0.2 if fixed and family.has_dispersion else None
    theta = np.array([0.1, 0.5, -0.3, -0.4])[: prior.shape[0]]

    def value(t):
        return log_posterior(t, X, y, family, prior, fixed_scale)[0]

    def grad(t):
        return log_posterior(t, X, y, family, prior, fixed_scale)[1]

    _, g, H = log_posterior(theta, X, y, family, prior, fixed_scale)
    np.testing.assert_allclose(g, _central_gradient(value, theta), rtol=1e-7, atol=1e-6)
    fd_hess = np.column_stack([_central_gradient(lambda t, k=k: grad(t)[k], theta)
                               for k in range(theta.size)]).T
    np.testing.assert_allclose(H, fd_hess, rtol=1e-7, atol=1e-6)
    np.testing.assert_allclose(H, H.T, atol=1e-12)


@pytest.mark.parametrize("family", [BINOMIAL, POISSON, GAUSSIAN], ids=lambda f: f.name)
def test_map_is_a_stationary_point_with_curvature(family: Family) -> None:
    X, y = _data(family)
    prior = prior_precision(3, family, lam=0.1)
    fit = fit_map(X, y, family, prior, names=["(Intercept)", "x", "z"])
    _, g, H = log_posterior(fit.theta, X, y, family, prior)
    assert np.max(np.abs(g)) <= 1e-10 * X.shape[0]
    assert fit.gradient_max <= 1e-10 * X.shape[0]
    np.testing.assert_allclose(fit.curvature, -H)
    expected = ("(Intercept)", "x", "z") + (("log_sigma",) if family.has_dispersion else ())
    assert fit.names == expected
    assert fit.n == X.shape[0]
    with pytest.raises(ValueError):
        fit.theta[0] = 1.0  # results are read-only


def test_gaussian_map_closed_form_with_fixed_scale() -> None:
    X, y = _data(GAUSSIAN)
    prior = np.diag([0.01, 0.2, 0.3])
    s = -0.3
    fit = fit_map(X, y, GAUSSIAN, prior, fixed_log_scale=s)
    a = np.exp(-2 * s)
    expected = np.linalg.solve(a * X.T @ X + prior, a * X.T @ y)
    np.testing.assert_allclose(fit.theta, expected, rtol=1e-12)
    np.testing.assert_allclose(fit.curvature, a * X.T @ X + prior, rtol=1e-12)


def test_prior_precision_settings() -> None:
    lam = prior_precision(3, GAUSSIAN, lam=0.5, intercept_lam=0.01, scale_lam=0.0)
    np.testing.assert_allclose(np.diag(lam), [0.01, 0.5, 0.5, 0.0])
    assert prior_precision(2, BINOMIAL, lam=1.0).shape == (2, 2)
    with pytest.raises(ValueError):
        prior_precision(2, BINOMIAL, lam=-1.0)


def test_bad_inputs_fail_loudly() -> None:
    X, y = _data(BINOMIAL)
    with pytest.raises(ValueError, match="prior must be"):
        fit_map(X, y, BINOMIAL, np.eye(4))
    with pytest.raises(ValueError, match="0 or 1"):
        fit_map(X, y + 2, BINOMIAL, np.eye(3))
    with pytest.raises(MAPConvergenceError):
        fit_map(X, y, BINOMIAL, np.eye(3), max_iter=1)
