"""Survival curves of parametric hazard fits: values, delta-method gradient, time axis."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from core_stats.bfi_survival import survival_log_posterior
from core_stats.survival_baselines import Baseline
from core_stats.survival_curves import survival_curve, time_grid

THETA = {"exponential": np.array([0.4, -0.3, -0.6]),
         "weibull": np.array([0.4, -0.3, -0.6, 0.3]),
         "gompertz": np.array([0.4, -0.3, -0.6, -0.2]),
         "pwexp": np.array([0.4, -0.3, 0.0, 0.3, 0.5]),
         "poly": np.array([0.4, -0.3, -0.6, 0.2, 0.1])}
MODEL = {"pwexp": Baseline("pwexp", knots=(0.0, 0.8, 1.6, 4.0)),
         "poly": Baseline("poly", order=2)}


def _log_h(theta, baseline, x, t):
    # log H from the model's own log-likelihood: one censored row at t gives -H(t | x)
    value, _, _ = survival_log_posterior(theta, np.array([t]), np.array([False]), x[None, :],
                                         baseline, np.zeros((theta.size, theta.size)))
    return np.log(-value)


@pytest.mark.parametrize("baseline", list(THETA))
def test_curve_and_band_against_the_likelihood_and_finite_differences(baseline):
    theta, baseline = THETA[baseline], MODEL.get(baseline, baseline)
    rng = np.random.default_rng(1)
    a = rng.normal(size=(theta.size, theta.size))
    cov = 0.01 * a @ a.T
    x = np.array([1.0, 0.5])
    times = np.array([0.3, 1.0, 2.5])
    curve = survival_curve(theta, cov, baseline, x, times)
    z = stats.norm.ppf(0.975)
    for k, t in enumerate(times):
        log_h = _log_h(theta, baseline, x, t)
        assert curve.survival[k] == pytest.approx(np.exp(-np.exp(log_h)), rel=1e-12)
        grad = np.array([(_log_h(theta + e, baseline, x, t) - _log_h(theta - e, baseline, x, t))
                         / 2e-6 for e in 1e-6 * np.eye(theta.size)])
        se = np.sqrt(grad @ cov @ grad)
        assert curve.lower[k] == pytest.approx(np.exp(-np.exp(log_h + z * se)), rel=1e-6)
        assert curve.upper[k] == pytest.approx(np.exp(-np.exp(log_h - z * se)), rel=1e-6)
        assert curve.lower[k] < curve.survival[k] < curve.upper[k]


@pytest.mark.parametrize("baseline", list(THETA))
def test_time_grid_ends_where_survival_reaches_the_floor(baseline):
    theta, x, baseline = THETA[baseline], np.zeros(2), MODEL.get(baseline, baseline)
    times = time_grid(theta, baseline, x, points=40, floor=0.05)
    assert len(times) == 40 and times[0] > 0
    end = survival_curve(theta, np.zeros((theta.size, theta.size)), baseline, x, times[-1:])
    assert end.survival[0] == pytest.approx(0.05, rel=1e-6)


def test_non_positive_times_are_refused():
    with pytest.raises(ValueError, match="positive times"):
        survival_curve(THETA["weibull"], np.eye(4), "weibull", np.zeros(2), np.array([0.0]))


def test_a_pwexp_time_grid_stops_at_the_last_knot():
    theta = np.array([0.4, -0.3, -3.0, -3.0, -3.0])  # S(4) is still 0.82
    times = time_grid(theta, MODEL["pwexp"], np.zeros(2), points=10)
    assert times[-1] == pytest.approx(4.0)
