"""The lme4 model language fitted right: offsets, factors, interactions, factor random slopes,
I() powers and text outcomes, against glmmTMB's exact Laplace fit (goldens from R on
mlmRev's Mmmec and guImmun and glmmTMB's Owls, tests/golden/glmm_language)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from securefed.glmm_run import GLMMOptions, run_glmm

GOLDEN = Path(__file__).parents[1] / "golden" / "glmm_language"
NAMES = sorted(p.stem for p in GOLDEN.glob("*.json"))


def _case(name: str):
    spec = json.loads((GOLDEN / f"{name}.json").read_text())
    return spec, pd.read_csv(GOLDEN / spec["dataset_path"])


@pytest.fixture(scope="module", params=NAMES)
def fitted(request):
    spec, frame = _case(request.param)
    opts = GLMMOptions(spec["formula"], spec["family"], spec["site_column"],
                       link=spec.get("link"))
    return spec, frame, opts, run_glmm(frame, opts)


def test_matches_glmmtmb_exact_laplace(fitted):
    spec, _, _, fit = fitted
    ref = spec["glmmtmb"]
    assert fit.converged, fit.message
    assert fit.n_obs == spec["n_obs"]
    ours = {fe.term: fe for fe in fit.fixed_effects}
    assert list(ours) == list(ref["fixef"])  # lme4's names, in lme4's order
    for term, beta in ref["fixef"].items():
        assert abs(ours[term].estimate - beta) <= 1e-3 * (1 + abs(beta)), term
        assert ours[term].std_error == pytest.approx(ref["se"][term], rel=0.02), term
    sds = [re.sd for re in fit.random_effects]
    for sd, expected in zip(sds, ref["sd"].values(), strict=False):
        assert abs(sd - expected) <= 0.01 + 0.02 * expected
    assert abs(fit.loglik - ref["loglik"]) <= 0.02


def test_federated_equals_pooled(fitted):
    spec, frame, opts, fit = fitted
    pooled = run_glmm(frame.assign(**{spec["site_column"]: "all"}), opts)
    np.testing.assert_allclose(fit.theta, pooled.theta, rtol=1e-8, atol=1e-8)
    assert fit.loglik == pytest.approx(pooled.loglik, abs=1e-8)


def test_summary_prints_what_glmer_prints():
    spec, frame = _case("owls_factor_slope")
    fit = run_glmm(frame, GLMMOptions(spec["formula"], spec["family"], spec["site_column"]))
    text = fit.summary()
    for piece in ("Generalized linear mixed model fit by maximum likelihood (Laplace "
                  "Approximation)", " Family: poisson  ( log )", "deviance", "df.resid",
                  "Variance", "Std.Dev.", "Corr", "groups:  Nest, 27", "z value", "Pr(>|z|)",
                  "Correlation of Fixed Effects:", "Signif. codes"):
        assert piece in text, piece
    assert f"{-2 * fit.loglik:.1f}" in text and f"{fit.n_obs - len(fit.theta)}" in text
    assert fit.to_dict()["df_resid"] == fit.n_obs - len(fit.theta)


def test_gaussian_summary_prints_t_as_lmer_does():
    golden = Path(__file__).parents[1] / "golden" / "glmm"
    frame = pd.read_csv(golden / "data" / "sleepstudy_ri.csv")
    fit = run_glmm(frame.assign(site=frame.Subject % 3),
                   GLMMOptions("Reaction ~ Days + (1 | Subject)", "gaussian", "site"))
    text = fit.summary()
    assert text.startswith("Linear mixed model fit by maximum likelihood")
    assert "t value" in text and "Pr(>|z|)" not in text and "Residual" in text
