"""BFI survival models: exact derivatives, and R BFI 3.1.0's numbers (tests/golden/bfi_survival)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core_stats import bfi
from core_stats.bfi_survival import (
    BASELINES,
    R_BASEHAZ,
    baseline_names,
    fit_survival_map,
    r_curvature,
    survival_log_posterior,
)
from core_stats.survival_baselines import Baseline

GOLDEN = Path(__file__).parents[1] / "golden" / "bfi_survival"
CASES = json.loads((GOLDEN / "bfi_survival_golden.json").read_text())
BASELINE_OF = {r: ours for ours, r in R_BASEHAZ.items()}
RUNS = [k for k in CASES if isinstance(CASES[k], dict) and "basehaz" in CASES[k]]


def _centres(case: dict):
    frame = pd.read_csv(GOLDEN / case["data"])
    for k in (1, 2, 3):
        part = frame[frame["centre"] == k]
        yield part["time"].to_numpy(), part["status"].to_numpy() == 1, \
            part[case["covariates"]].to_numpy(dtype=float)


def _fits(case: dict) -> list[bfi.LocalFit]:
    prior = np.array(case["Lambda"])
    return [fit_survival_map(t, d, X, BASELINE_OF[case["basehaz"]], prior,
                             names=case["covariates"]) for t, d, X in _centres(case)]


def _combine(fits, prior):
    layout = bfi.HomogeneousLayout(fits[0].names, fits[0].family)
    return layout.combine(bfi.sum_site_vectors([layout.site_vector(f) for f in fits]), prior)


@pytest.mark.parametrize("baseline", [*BASELINES[:3], Baseline("poly", order=0),
                                      Baseline("poly", order=1), Baseline("poly", order=2),
                                      Baseline("pwexp", knots=(0.0, 0.4, 1.1, 2.0)),
                                      Baseline("unspecified")], ids=str)
def test_derivatives_match_finite_differences(baseline):
    """Every baseline; times rounded so that some tie (unspecified) and some pass pwexp's
    last knot."""
    rng = np.random.default_rng(3)
    X = rng.normal(size=(80, 2))
    time = np.round(rng.exponential(1.0, 80) + 0.01, 2)
    event = rng.random(80) < 0.7
    dim = 2 + len(baseline_names(baseline))
    prior = 0.1 * np.eye(dim)
    theta = np.array([0.3, -0.2, -0.4, 0.2, -0.15, 0.1][:dim])
    value, grad, hess = survival_log_posterior(theta, time, event, X, baseline, prior)
    h = 1e-6
    for j in range(len(theta)):
        e = np.zeros(len(theta))
        e[j] = h
        up = survival_log_posterior(theta + e, time, event, X, baseline, prior)
        down = survival_log_posterior(theta - e, time, event, X, baseline, prior)
        assert grad[j] == pytest.approx((up[0] - down[0]) / (2 * h), rel=1e-6, abs=1e-6)
        np.testing.assert_allclose(hess[:, j], (up[1] - down[1]) / (2 * h), rtol=1e-6,
                                   atol=1e-6)


@pytest.mark.parametrize("key", RUNS)
def test_objective_and_curvature_equal_r_at_r_estimates(key):
    """At R's theta_hat: R's negative log posterior, and R's A_hat from r_curvature."""
    case = CASES[key]
    prior = np.array(case["Lambda"])
    for (t, d, X), r in zip(_centres(case), case["centres"], strict=True):
        value, _, hess = survival_log_posterior(np.array(r["theta_hat"]), t, d, X,
                                                BASELINE_OF[case["basehaz"]], prior)
        assert -value == pytest.approx(r["value"], abs=1e-9)
        np.testing.assert_allclose(r_curvature(-hess, prior), r["A_hat"], rtol=1e-10,
                                   atol=1e-9)


@pytest.mark.parametrize("key", RUNS)
def test_combination_of_r_fits_equals_r_bfi(key):
    case = CASES[key]
    prior = np.array(case["Lambda"])
    names = tuple(case["names"])
    fits = [bfi.LocalFit(family=_fits(case)[0].family, names=names,
                         theta=np.array(r["theta_hat"]), curvature=np.array(r["A_hat"]),
                         prior=prior, n=1, log_posterior=0.0, gradient_max=0.0, iterations=0)
            for r in case["centres"]]
    combined = _combine(fits, prior)
    np.testing.assert_allclose(combined.estimate, case["theta_bfi"], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(combined.sd, case["sd_bfi"], rtol=1e-10)


def test_gompertz_matches_r_bfi():
    """Where R's optimiser converges (tight reltol), local MAPs agree to 1e-5 and BFI to 2e-3;
    with R's curvature convention the combination agrees to 1e-5."""
    case = CASES["gomp_tight"]
    prior = np.array(case["Lambda"])
    fits = _fits(case)
    for fit, r in zip(fits, case["centres"], strict=True):
        np.testing.assert_allclose(fit.theta, r["theta_hat"], atol=1e-5)
    combined = _combine(fits, prior)
    np.testing.assert_allclose(combined.estimate, case["theta_bfi"], atol=2e-3)
    np.testing.assert_allclose(combined.sd, case["sd_bfi"], atol=2e-3)
    as_r = [dataclasses.replace(f, curvature=r_curvature(f.curvature, prior)) for f in fits]
    r_style = _combine(as_r, prior)
    np.testing.assert_allclose(r_style.estimate, case["theta_bfi"], atol=1e-5)
    np.testing.assert_allclose(r_style.sd, case["sd_bfi"], rtol=1e-5)


@pytest.mark.parametrize("key", ["exp_default", "weibul_default", "weibul_tight",
                                 "gomp_default"])
def test_r_stops_short_of_the_map(key):
    """Our MAP has a zero gradient and a log posterior at least R's at every centre."""
    case = CASES[key]
    prior = np.array(case["Lambda"])
    for fit, (t, d, X), r in zip(_fits(case), _centres(case), case["centres"], strict=True):
        assert fit.gradient_max < 1e-8
        assert -fit.log_posterior <= r["value"] + 1e-9
        _, grad_r, _ = survival_log_posterior(np.array(r["theta_hat"]), t, d, X,
                                              BASELINE_OF[case["basehaz"]], prior)
        assert np.max(np.abs(grad_r)) > 1e-4  # R's BFGS point is not stationary


def test_weibull_needs_positive_times():
    with pytest.raises(ValueError, match="positive times"):
        fit_survival_map(np.array([0.0, 1.0, 2.0]), np.array([1, 0, 1]), np.ones((3, 1)),
                         "weibull", 0.01 * np.eye(3))


def _r_fits(case: dict, names: tuple[str, ...]) -> list[bfi.LocalFit]:
    prior = 0.01 * np.eye(len(names))
    family = _fits(CASES["gomp_tight"])[0].family
    return [bfi.LocalFit(family=family, names=names, theta=np.array(r["theta_hat"]),
                         curvature=np.array(r["A_hat"]), prior=prior, n=1, log_posterior=0.0,
                         gradient_max=0.0, iterations=0) for r in case["centres"]]


def _centre_run(fits, centre):
    layout = bfi.CentreSpecificLayout(fits[0].names, fits[0].family, centre)
    fit = layout.combine(bfi.sum_site_vectors([layout.site_vector(f) for f in fits]))
    estimates = dict(zip(fit.names, fit.estimate, strict=True))
    sds = dict(zip(fit.names, fit.sd, strict=True))
    for k, f in enumerate(fits, start=1):
        est = layout.centre_estimate(f, fit)
        for n, e, s in zip(est.names, est.estimate, est.sd, strict=True):
            estimates[f"{n}_loc{k}"], sds[f"{n}_loc{k}"] = e, s
    return estimates, sds


def test_centre_specific_baseline_equals_r_bfi():
    """strat_par = 1: our Appendix-B combination of R's fits equals R's bfi() to 1e-10, and
    our own fits equal it to 2e-3 (1e-5 with R's curvature convention)."""
    case = CASES["gomp_stratified"]["1"]
    names = ("x1", "x2", "omega_1", "omega_2")
    est, sd = _centre_run(_r_fits(case, names), (2,))
    np.testing.assert_allclose([est[n] for n in case["names"]], case["theta_bfi"], atol=1e-10)
    np.testing.assert_allclose([sd[n] for n in case["names"]], case["sd_bfi"], rtol=1e-10)
    ours = _fits(CASES["gomp_tight"])
    est, sd = _centre_run(ours, (2,))
    np.testing.assert_allclose([est[n] for n in case["names"]], case["theta_bfi"], atol=2e-3)
    np.testing.assert_allclose([sd[n] for n in case["names"]], case["sd_bfi"], atol=2e-3)
    prior = 0.01 * np.eye(4)
    est, _ = _centre_run([dataclasses.replace(f, curvature=r_curvature(f.curvature, prior))
                          for f in ours], (2,))
    np.testing.assert_allclose([est[n] for n in case["names"]], case["theta_bfi"], atol=1e-5)


def test_r_bfi_sd_with_two_centre_parameters_uses_an_untransposed_block():
    """strat_par = c(1, 2) with 2 shared covariates: the estimates agree, but R's SDs come
    from A_bfi[b, a] <- A_ab (not t(A_ab)), so they are not the combined posterior's."""
    case = CASES["gomp_stratified"]["1_2"]
    names = ("x1", "x2", "omega_1", "omega_2")
    fits = _r_fits(case, names)
    est, sd = _centre_run(fits, (2, 3))
    np.testing.assert_allclose([est[n] for n in case["names"]], case["theta_bfi"], atol=1e-10)
    assert np.max(np.abs(np.array([sd[n] for n in case["names"]]) - case["sd_bfi"])) > 0.02
    a, b = [0, 1], [2, 3]
    joint = np.zeros((8, 8))
    joint[:2, :2] = sum(f.curvature[np.ix_(a, a)] for f in fits) - 2 * 0.01 * np.eye(2)
    for j, f in enumerate(fits):
        own = [2 + j, 5 + j]
        joint[np.ix_(own, own)] = f.curvature[np.ix_(b, b)]
        joint[np.ix_(own, a)] = f.curvature[np.ix_(a, b)]  # R's orientation
        joint[np.ix_(a, own)] = f.curvature[np.ix_(a, b)]
    np.testing.assert_allclose(np.sqrt(np.diag(np.linalg.inv(joint))), case["sd_bfi"],
                               rtol=1e-10)
