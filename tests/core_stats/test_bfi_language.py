"""BFI with R's formula language: factors, interactions, I(), cbind(), weights, offsets.

Against R BFI 3.1.0 (tests/golden/bfi_language, R's model.matrix passed to
MAP.estimation and bfi()) on mlmRev's guImmun and lme4's cbpp, and against a
Poisson MAP written in R (R BFI has no Poisson family or offsets) on mlmRev's
Mmmec and glmmTMB's Owls.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core_stats import bfi
from core_stats.families import BINOMIAL, GAUSSIAN, POISSON
from core_stats.formula import agree_schema, model_data, parse_formula, variable_report

GOLDEN = Path(__file__).parents[1] / "golden" / "bfi_language"
CASES = json.loads((GOLDEN / "bfi_language_golden.json").read_text())
FAMILIES = {"binomial": BINOMIAL, "poisson": POISSON}
TEXT = {"comm": str, "ord": str, "herd": str, "period": str, "region": str}


def _site_data(case: dict):
    frame = pd.read_csv(GOLDEN / case["data"], dtype=TEXT)
    parts = {str(k): p for k, p in frame.groupby(case["site_column"], sort=True)}
    formula = parse_formula(case["formula"])
    schema = agree_schema(case["formula"], [variable_report(formula, p) for p in parts.values()])
    return {name: model_data(schema, part) for name, part in parts.items()}


def _local(case: dict) -> dict[str, bfi.LocalFit]:
    prior = np.array(case["Lambda"]) if "Lambda" in case else \
        0.01 * np.eye(len(case["names"]))
    return {name: bfi.fit_map(d.X, d.y, FAMILIES[case["family"]], prior, names=case["names"],
                              offset=d.offset, weights=d.weights)
            for name, d in _site_data(case).items()}


def _combine(fits: list[bfi.LocalFit]) -> bfi.BFIFit:
    layout = bfi.HomogeneousLayout.for_fit(fits[0])
    return layout.combine(bfi.sum_site_vectors([layout.site_vector(f) for f in fits]))


@pytest.mark.parametrize("key", ["guimmun_default", "guimmun_tight", "cbpp_tight",
                                 "mmmec_offset", "owls_offset"])
def test_column_names_are_r_model_matrix_names(key):
    case = CASES[key]
    for data in _site_data(case).values():
        assert list(data.fixed_names) == case["names"]


@pytest.mark.parametrize("key", ["guimmun_default", "guimmun_tight", "cbpp_tight",
                                 "mmmec_offset", "owls_offset"])
def test_combination_of_r_fits_equals_r_bfi(key):
    case = CASES[key]
    family = FAMILIES[case["family"]]
    prior = np.array(case["Lambda"]) if "Lambda" in case else \
        0.01 * np.eye(len(case["names"]))
    fits = [bfi.LocalFit(family=family, names=tuple(case["names"]),
                         theta=np.array(r["theta_hat"]), curvature=np.array(r["A_hat"]),
                         prior=prior, n=1, log_posterior=0.0, gradient_max=0.0, iterations=0)
            for r in case["centres"]]
    combined = _combine(fits)
    np.testing.assert_allclose(combined.estimate, case["theta_bfi"], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(combined.sd, case["sd_bfi"], rtol=1e-10)


@pytest.mark.parametrize("key, atol_theta, atol_sd", [("guimmun_tight", 2e-6, 1e-7),
                                                      ("cbpp_tight", 5e-7, 1e-7),
                                                      ("mmmec_offset", 1e-8, 1e-10),
                                                      ("owls_offset", 1e-8, 1e-10)])
def test_bfi_equals_r(key, atol_theta, atol_sd):
    """R's L-BFGS-B tightened (factr = 1, pgtol = 0) and, for Mmmec, BFGS on the MAP
    written in R: the federated estimate equals R's within the optimiser's reach."""
    case = CASES[key]
    fit = _combine(list(_local(case).values()))
    assert fit.names == tuple(case["names"])
    np.testing.assert_allclose(fit.estimate, case["theta_bfi"], atol=atol_theta)
    np.testing.assert_allclose(fit.sd, case["sd_bfi"], atol=atol_sd)


def test_r_defaults_stop_short_of_the_map():
    """With R BFI's default control two guImmun sites hit maxit (convergence 1); our MAP
    has a zero gradient and a log posterior at least R's at every site."""
    case = CASES["guimmun_default"]
    prior = np.array(case["Lambda"])
    data = _site_data(case)
    fits = _local(case)
    assert sum(r["convergence"] != "0" for r in case["centres"]) == 2
    for (name, fit), r in zip(fits.items(), case["centres"], strict=True):
        value, grad, _ = bfi.log_posterior(np.array(r["theta_hat"]), data[name].X,
                                           data[name].y, BINOMIAL, prior)
        assert fit.gradient_max < 1e-9
        assert fit.log_posterior >= value - 1e-12
    gap = np.abs(_combine(list(fits.values())).estimate - case["theta_bfi"])
    assert 1e-5 < gap.max() < 0.05


def test_a_level_absent_at_a_site_keeps_its_columns():
    case = CASES["guimmun_tight"]
    data = _site_data(case)
    missing = case["missing_level"]
    cols = [case["names"].index(n) for n in ("ethnN", "ethnN:ruralY")]
    assert np.all(data[missing].X[:, cols] == 0)
    assert data[missing].X.shape[1] == len(case["names"])
    local = _local(case)[missing]
    # no rows: the prior alone (mean 0, precision lambda); the other sites carry it
    np.testing.assert_allclose(local.theta[cols], 0.0, atol=1e-12)


def test_cbind_equals_weights_and_one_row_per_animal():
    """cbind(s, f), s/(s+f) with weights s+f, and one 0/1 row per animal: one MAP."""
    case = CASES["cbpp_tight"]
    frame = pd.read_csv(GOLDEN / case["data"], dtype=TEXT)
    prior = np.array(case["Lambda"])
    fits = {}
    for label, formula, expand, weights in (
            ("cbind", "cbind(incidence, size - incidence) ~ period", False, None),
            ("weights", "p ~ period", False, "size"),
            ("bernoulli", "y ~ period", True, None)):
        part = frame.assign(p=frame.incidence / frame["size"])
        if expand:
            rows = part.loc[part.index.repeat(part["size"])]
            rows = rows.assign(y=(rows.groupby(level=0).cumcount() < rows.incidence).astype(int))
            part = rows.reset_index(drop=True)
        schema = agree_schema(formula, [variable_report(parse_formula(formula), part)])
        data = model_data(schema, part, weights_column=weights)
        fits[label] = bfi.fit_map(data.X, data.y, BINOMIAL, prior, weights=data.weights)
    for label in ("weights", "bernoulli"):
        np.testing.assert_allclose(fits[label].theta, fits["cbind"].theta, atol=1e-10)
        np.testing.assert_allclose(fits[label].curvature, fits["cbind"].curvature, rtol=1e-10)


def test_r_bfi_two_column_y_drops_the_trials():
    """R BFI 3.1.0 given cbind-style y fits the proportions with weight 1: not glm's model."""
    case = CASES["cbpp_tight"]
    ours = _combine(list(_local(case).values())).estimate
    theirs = np.array(CASES["cbpp_two_column_y"]["theta_bfi"])
    assert np.max(np.abs(theirs - ours)) > 0.3


def _fd_check(theta, X, y, family, prior, **extra):
    value, grad, hess = bfi.log_posterior(theta, X, y, family, prior, **extra)
    h = 1e-6
    for j in range(theta.size):
        e = np.zeros(theta.size)
        e[j] = h
        up = bfi.log_posterior(theta + e, X, y, family, prior, **extra)
        down = bfi.log_posterior(theta - e, X, y, family, prior, **extra)
        assert grad[j] == pytest.approx((up[0] - down[0]) / (2 * h), rel=1e-6, abs=1e-6)
        np.testing.assert_allclose(hess[:, j], (up[1] - down[1]) / (2 * h), rtol=1e-5,
                                   atol=1e-5)


@pytest.mark.parametrize("family", [GAUSSIAN, BINOMIAL, POISSON])
def test_weighted_offset_derivatives_match_finite_differences(family):
    rng = np.random.default_rng(11)
    n = 60
    X = np.column_stack([np.ones(n), rng.normal(size=n)])
    offset = rng.normal(scale=0.3, size=n)
    trials = rng.integers(1, 6, size=n).astype(float)
    if family is BINOMIAL:
        y = rng.binomial(trials.astype(int), 0.4) / trials
    elif family is POISSON:
        y = rng.poisson(2.0, size=n).astype(float)
    else:
        y = rng.normal(size=n)
    theta = np.array([0.2, -0.3] + ([0.1] if family.has_dispersion else []))
    prior = 0.05 * np.eye(theta.size)
    _fd_check(theta, X, y, family, prior, offset=offset, weights=trials)


def test_gaussian_weights_and_offset_equal_the_transformed_fit():
    """Weights w: the fit of sqrt(w) y on sqrt(w) X (the same MAP, log-likelihoods differ by
    sum log(w) / 2); an offset o: the fit of y - o."""
    rng = np.random.default_rng(4)
    n = 80
    X = np.column_stack([np.ones(n), rng.normal(size=n)])
    w = rng.uniform(0.5, 3.0, size=n)
    o = rng.normal(size=n)
    y = X @ [1.0, 0.5] + o + rng.normal(size=n) / np.sqrt(w)
    prior = bfi.prior_precision(2, GAUSSIAN, lam=0.01)
    fit = bfi.fit_map(X, y, GAUSSIAN, prior, offset=o, weights=w)
    root = np.sqrt(w)
    plain = bfi.fit_map(root[:, None] * X, root * (y - o), GAUSSIAN, prior)
    np.testing.assert_allclose(fit.theta, plain.theta, atol=1e-12)
    np.testing.assert_allclose(fit.curvature, plain.curvature, rtol=1e-10)
    assert fit.log_posterior == pytest.approx(plain.log_posterior + 0.5 * np.log(w).sum(),
                                              abs=1e-9)
