"""REML terms: X'V^-1 X against the dense matrix and the Laplace Hessian, and the REML
adjustment's gradient and Hessian against central finite differences."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.linalg import block_diag

from core_stats.design import grouped_rows
from core_stats.families import GAUSSIAN
from core_stats.glmm import ParameterLayout, site_terms
from core_stats.glmm_reml import (
    pack_reml,
    reml_adjustment,
    reml_boundary_score,
    reml_site_terms,
    unpack_reml,
)


def _site(q: int, random_effects: bool = True):
    rng = np.random.default_rng(21)
    groups = np.repeat(np.arange(7), rng.integers(3, 9, 7))
    n = groups.size
    X = np.column_stack([np.ones(n), rng.normal(size=n), rng.normal(size=n)])
    Z = X[:, :q]
    y = X @ [0.5, 1.0, -0.4] + rng.normal(size=n)
    rows = grouped_rows(y, X, Z, groups)
    layout = ParameterLayout.for_family(("(Intercept)", "x1", "x2"), ("(Intercept)", "x1")[:q],
                                        "g", GAUSSIAN)
    if not random_effects:
        layout = layout.without_random_effects()
    theta = np.array([0.3, 0.8, -0.2] + ([np.log(0.6), 0.2, np.log(0.4)][: q * (q + 1) // 2]
                                          if random_effects else []) + [np.log(0.9)])
    return rows, layout, theta


@pytest.mark.parametrize("q", [1, 2])
def test_m_is_x_vinv_x_and_the_laplace_hessian(q):
    rows, layout, theta = _site(q)
    terms = reml_site_terms(rows, layout, theta)
    lam = layout.lambda_matrix(theta)
    sigma2 = np.exp(2 * theta[-1])
    blocks = []
    for g in range(rows.n_groups):
        end = rows.starts[g + 1] if g + 1 < rows.n_groups else rows.n_rows
        Zg = rows.Z[rows.starts[g]:end]
        blocks.append(sigma2 * np.eye(len(Zg)) + Zg @ lam @ lam.T @ Zg.T)
    dense = rows.X.T @ np.linalg.solve(block_diag(*blocks), rows.X)
    np.testing.assert_allclose(terms.M, dense, rtol=1e-11)
    hess = site_terms(rows, GAUSSIAN, layout, theta).hessian[:3, :3]
    np.testing.assert_allclose(terms.M, -hess, rtol=1e-9)


@pytest.mark.parametrize(("q", "random_effects"), [(1, True), (2, True), (1, False)])
def test_adjustment_derivatives_match_finite_differences(q, random_effects):
    rows, layout, theta = _site(q, random_effects)

    def adjust(t, derivatives=False):
        return reml_adjustment(unpack_reml(pack_reml(reml_site_terms(rows, layout, t)), layout),
                               layout, derivatives)

    _, grad, hess = adjust(theta, True)
    eps, eye = 1e-5, np.eye(layout.size)
    fd_grad = [(adjust(theta + eps * e)[0] - adjust(theta - eps * e)[0]) / (2 * eps) for e in eye]
    fd_hess = [(adjust(theta + eps * e, True)[1] - adjust(theta - eps * e, True)[1]) / (2 * eps)
               for e in eye]
    np.testing.assert_allclose(grad, fd_grad, atol=1e-7)
    np.testing.assert_allclose(hess, fd_hess, atol=1e-6)


def test_boundary_score_is_the_derivative_at_zero():
    """d(-1/2 log|M|)/d Sigma at Sigma = 0, against a finite difference in Sigma."""
    rows, full, theta = _site(1)
    glm = full.without_random_effects()
    at_zero = np.delete(theta, full.p)
    score = reml_boundary_score(reml_site_terms(rows, glm, at_zero), glm, at_zero)
    eps = 1e-6
    probe = theta.copy()
    probe[full.p] = 0.5 * np.log(eps)  # Sigma = eps
    value = reml_adjustment(reml_site_terms(rows, full, probe), full, False)[0]
    base = reml_adjustment(reml_site_terms(rows, glm, at_zero), glm, False)[0]
    assert score[0, 0] == pytest.approx((value - base) / eps, rel=1e-4)
