"""Gamma (log and inverse links) and glmmTMB's nbinom2 against glmmTMB's exact Laplace fit,
and Gaussian REML against lmer(REML = TRUE), on data R packages ship (lme4's grouseticks and
sleepstudy, glmmTMB's Salamanders, mlmRev's Exam; tests/golden/glmm_families/make_golden.R)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from securefed.glmm_run import GLMMOptions, run_glmm

GOLDEN = Path(__file__).parents[1] / "golden" / "glmm_families"
# exam_reml_issue is the model (school SD 0.2930, ML 0.2848); Dyestuff2 is singular;
# sleepstudy has a correlated random slope
REML = ["exam_reml", "exam_reml_issue", "dyestuff2_reml", "sleepstudy_reml_slope"]
NAMES = sorted(p.stem for p in GOLDEN.glob("*.json") if p.stem not in REML)


def _case(name: str):
    spec = json.loads((GOLDEN / f"{name}.json").read_text())
    return spec, pd.read_csv(GOLDEN / spec["dataset_path"])


@pytest.fixture(scope="module", params=NAMES)
def fitted(request):
    spec, frame = _case(request.param)
    opts = GLMMOptions(spec["formula"], spec["family"], spec["site_column"], link=spec["link"])
    return spec, frame, opts, run_glmm(frame, opts)


def test_matches_glmmtmb_exact_laplace(fitted):
    spec, _, _, fit = fitted
    ref = spec["glmmtmb"]
    assert fit.converged, fit.message
    assert fit.n_obs == spec["n_obs"] and fit.n_groups == spec["n_groups"]
    ours = {fe.term: fe for fe in fit.fixed_effects}
    assert list(ours) == list(ref["fixef"])
    for term, beta in ref["fixef"].items():
        assert abs(ours[term].estimate - beta) <= 1e-3 * (1 + abs(beta)), term
        assert ours[term].std_error == pytest.approx(ref["se"][term], rel=0.02), term
    (sd,) = ref["sd"].values()
    assert [re.group for re in fit.random_effects] == [spec["formula"].split("| ")[1][:-1]]
    assert abs(fit.random_effects[0].sd - sd) <= 0.01 * sd + 1e-6
    dispersion = fit.extra["dispersion"]
    assert dispersion["estimate"] == pytest.approx(ref["dispersion"], rel=0.01)
    assert dispersion["ci_low"] < dispersion["estimate"] < dispersion["ci_high"]
    assert abs(fit.loglik - ref["loglik"]) <= 0.02


def test_federated_equals_pooled(fitted):
    spec, frame, opts, fit = fitted
    pooled = run_glmm(frame.assign(**{spec["site_column"]: "all"}), opts)
    np.testing.assert_allclose(fit.theta, pooled.theta, rtol=1e-8, atol=1e-8)
    assert fit.loglik == pytest.approx(pooled.loglik, abs=1e-8)


def test_summary_and_json_report_the_dispersion_as_glmmtmb_does(fitted):
    spec, _, _, fit = fitted
    text = fit.summary()
    value = f"{spec['glmmtmb']['dispersion']:.3g}"
    if spec["family"] == "Gamma":
        assert f" Family: Gamma  ( {spec['link']} )" in text
        assert f"Dispersion estimate for Gamma family (sigma^2): {value}" in text
    else:
        assert " Family: nbinom2  ( log )" in text
        assert f"Dispersion parameter for nbinom2 family (): {value}" in text
    assert "Residual" not in text and "z value" in text
    out = fit.to_dict()
    assert out["family"] == spec["family"] and out["statistic"] == "z"
    assert out["dispersion"]["parameter"] in out["theta"]


@pytest.fixture(scope="module", params=REML)
def reml_fit(request):
    spec, frame = _case(request.param)
    opts = GLMMOptions(spec["formula"], "gaussian", spec["site_column"], reml=True)
    return spec, frame, opts, run_glmm(frame, opts)


def test_reml_matches_lmer(reml_fit):
    spec, _, _, fit = reml_fit
    ref = spec["lmer"]
    assert fit.converged and fit.reml
    assert [fe.term for fe in fit.fixed_effects] == list(ref["fixef"])
    for fe in fit.fixed_effects:
        assert abs(fe.estimate - ref["fixef"][fe.term]) <= 1e-3 * (1 + abs(fe.estimate))
        assert fe.std_error == pytest.approx(ref["se"][fe.term], rel=1e-5)  # lmer's vcov
    sds = [re.sd for re in fit.random_effects]
    np.testing.assert_allclose(sds, ref["all_sd"], rtol=1e-5, atol=1e-6)
    corr = np.atleast_1d(np.asarray(ref["corr"], dtype=float))  # [] without a slope
    np.testing.assert_allclose([c.correlation for c in fit.correlations], corr, atol=1e-5)
    assert fit.singular == ref["singular"]
    if not ref["singular"]:
        assert sds[0] > ref["ml_sd"] + 2e-3  # REML's larger SD, not ML's
    assert fit.extra["reml_criterion"] == pytest.approx(ref["reml_criterion"], abs=0.02)
    assert fit.to_dict()["reml"] is True


def test_reml_federated_equals_pooled(reml_fit):
    spec, frame, opts, fit = reml_fit
    pooled = run_glmm(frame.assign(**{spec["site_column"]: "all"}), opts)
    np.testing.assert_allclose(fit.theta, pooled.theta, rtol=1e-8, atol=1e-8)
    assert fit.loglik == pytest.approx(pooled.loglik, abs=1e-8)


def test_reml_summary_prints_what_lmer_prints(reml_fit):
    spec, _, _, fit = reml_fit
    text = fit.summary()
    assert text.startswith("Linear mixed model fit by REML")
    assert f"REML criterion at convergence: {spec['lmer']['reml_criterion']:.1f}" in text
    assert "AIC" not in text and "t value" in text


def test_predict_uses_the_fitted_link(fitted):
    spec, frame, _, fit = fitted
    eta = fit.predict(frame.head(3), response=False)
    mu = fit.predict(frame.head(3))
    expected = np.exp(eta) if spec["link"] == "log" else 1.0 / eta
    np.testing.assert_allclose(mu, expected, rtol=1e-12)
