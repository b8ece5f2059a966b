"""core_stats.special against scipy.special, and the import it saves."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import scipy.special as sc

from core_stats import special

POINTS = np.array([-40.0, -38.5, -12.0, -8.3, -1.0, -0.70710678, -1e-9, 0.0, 1e-300, 0.3, 0.7071,
                   1.96, 6.0, 8.25, 37.0, 40.0])


def test_expit_matches_scipy_without_overflow() -> None:
    x = np.concatenate([POINTS, [-745.0, -800.0, 710.0, 1e308, -1e308]])
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        ours = special.expit(x)
    np.testing.assert_allclose(ours, sc.expit(x), rtol=4e-16, atol=1e-320)  # denormals
    assert isinstance(special.expit(0.5), float) and special.expit(0.0) == 0.5
    assert np.isnan(special.expit(np.nan))


def test_normal_tail_matches_scipy_in_both_tails() -> None:
    np.testing.assert_allclose(special.ndtr(POINTS), sc.ndtr(POINTS), rtol=2e-14, atol=0)
    assert special.ndtr(-np.inf) == 0.0 and special.ndtr(np.inf) == 1.0
    assert np.isnan(special.ndtr(np.nan))
    assert special.ndtr(POINTS.reshape(4, 4)).shape == (4, 4)


def test_normal_quantile_matches_scipy_and_inverts_the_tail() -> None:
    p = np.array([1e-300, 1e-20, 1e-8, 0.001, 0.025, 0.3, 0.5, 0.6, 0.975, 0.999, 1 - 1e-12])
    np.testing.assert_allclose(special.ndtri(p), sc.ndtri(p), rtol=1e-14, atol=0)
    assert float(special.ndtri(0.975)) == pytest.approx(1.959963984540054, rel=1e-15)
    z = np.linspace(-8, 2, 21)  # above, Phi(z) rounds to within a few ulps of 1
    np.testing.assert_allclose(special.ndtri(special.ndtr(z)), z, rtol=1e-9, atol=1e-12)
    edges = special.ndtri(np.array([0.0, 1.0, -0.1, 1.1, np.nan]))
    assert edges[0] == -np.inf and edges[1] == np.inf and np.isnan(edges[2:]).all()


def test_large_arrays_use_scipy_and_gammaln_is_scipys() -> None:
    x = np.linspace(-10, 10, special.SMALL + 1)
    np.testing.assert_array_equal(special.ndtr(x), sc.ndtr(x))
    np.testing.assert_array_equal(special.ndtri(special.ndtr(x)), sc.ndtri(sc.ndtr(x)))
    y = np.array([0.0, 1.0, 4.5, 170.0])
    np.testing.assert_array_equal(special.gammaln(y + 1.0), sc.gammaln(y + 1.0))


def test_a_fit_and_a_bfi_run_import_no_scipy() -> None:
    code = ("import sys, securefed.glmm_run, securefed.bfi_run, securefed.cli_fit; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'scipy'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]"
