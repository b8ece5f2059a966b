"""Jet arithmetic against closed-form derivatives."""

from __future__ import annotations

import numpy as np
import pytest

from core_stats.jets import Jet, jet_cholesky, jet_solve_upper_transposed, logsumexp_jets


def _vars(x, y):
    return Jet.variable(x, 0, 1, 2), Jet.variable(y, 1, 1, 2)


def test_product_quotient_and_elementary_functions() -> None:
    x, y = _vars(0.7, 1.3)
    f = (x * y).exp() / y + (x.square() + 1.0).log() - y.sqrt()
    xv, yv = 0.7, 1.3
    # closed form
    e = np.exp(xv * yv)
    gx = e + 2 * xv / (xv**2 + 1)
    gy = e * (xv * yv - 1) / yv**2 - 0.5 / np.sqrt(yv)
    hxx = e * yv + (2 * (xv**2 + 1) - 4 * xv**2) / (xv**2 + 1) ** 2
    hxy = e * xv
    hyy = e * (xv**2 * yv**2 - 2 * xv * yv + 2) / yv**3 + 0.25 * yv**-1.5
    assert f.val[0] == pytest.approx(e / yv + np.log(xv**2 + 1) - np.sqrt(yv))
    np.testing.assert_allclose(f.grad[0], [gx, gy], rtol=1e-12)
    np.testing.assert_allclose(f.hess[0], [[hxx, hxy], [hxy, hyy]], rtol=1e-12)


def test_logsumexp_is_shift_safe_and_exact() -> None:
    x, y = _vars(1000.0, 999.0)
    out = logsumexp_jets([x, y])
    assert out.val[0] == pytest.approx(1000 + np.log1p(np.exp(-1.0)))
    p = 1 / (1 + np.exp(-1.0))
    np.testing.assert_allclose(out.grad[0], [p, 1 - p])
    np.testing.assert_allclose(out.hess[0], p * (1 - p) * np.array([[1, -1], [-1, 1]]))


def test_cholesky_and_triangular_solve_match_numpy() -> None:
    rng = np.random.default_rng(0)
    A = rng.normal(size=(3, 3))
    M = A @ A.T + 3 * np.eye(3)
    mat = [[Jet.constant(M[r, c], 1, 1) for c in range(3)] for r in range(3)]
    L = jet_cholesky(mat)
    L_np = np.linalg.cholesky(M)
    for r in range(3):
        for c in range(r + 1):
            assert L[r][c].val[0] == pytest.approx(L_np[r, c])
    z = np.array([0.3, -1.0, 2.0])
    x = jet_solve_upper_transposed(L, z)
    np.testing.assert_allclose([v.val[0] for v in x], np.linalg.solve(L_np.T, z))
