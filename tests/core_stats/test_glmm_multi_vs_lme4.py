"""Several random-effects terms against lme4 / glmmTMB (tests/golden/glmm_multi), federated.

Tolerances as tests/core_stats/test_glmm_vs_lme4.py: |d beta| <= 1e-3 (1 + |beta|), SE within
2%, random-effect SD within 0.01 + 2%, log-likelihood within 0.02. Where lme4 warns that it
did not converge (guImmun) the reference is glmmTMB, and our log-likelihood is higher than
lme4's. Federated (sites of top-level units) equals pooled to 1e-8.
"""

from __future__ import annotations

import numpy as np
import pytest
from multi_data import fit_problem, golden_fit

from core_stats.glmm_multi import MultiLayout
from core_stats.glmm_multi_results import variance_components
from core_stats.inference import covariance

CASES = [("grouseticks", "nagq1"), ("grouseticks", "glmmTMB"), ("egsingle", "lmer_ml"),
         ("egsingle", "glmmTMB"), ("guImmun", "glmmTMB"), ("egsingle_slopes", "lmer_ml"),
         ("egsingle_slopes", "glmmTMB"), ("penicillin", "lmer_ml"), ("penicillin", "glmmTMB")]
@pytest.mark.parametrize(("name", "key"), CASES)
def test_matches_lme4_and_glmmtmb(name: str, key: str) -> None:
    spec, problem, est = golden_fit(name)
    ref = spec["fits"][key]
    assert est.converged and not est.singular and ref["converged"]
    layout: MultiLayout = est.layout
    cov = covariance(-est.terms.hessian)
    se = np.sqrt(np.diag(cov))
    for j, term in enumerate(layout.fixed_names):
        beta = ref["fixef"][term]
        assert abs(est.theta[j] - beta) <= 1e-3 * (1 + abs(beta)), term
        assert se[j] == pytest.approx(ref["se"][term], rel=0.02), term
    sds, corrs = variance_components(layout, est.theta, cov)
    ours = {(sd.group, sd.term): sd.sd for sd in sds}
    expected = {(group, term) for group, by_term in ref["sd_all"].items() for term in by_term}
    assert set(ours) == expected | ({("Residual", "")} if layout.has_dispersion else set())
    for group, by_term in ref["sd_all"].items():
        for term, sd in by_term.items():
            assert abs(ours[group, term] - sd) <= 0.01 + 0.02 * sd, (group, term)
    ours_corr = {c.group: c.correlation for c in corrs}
    for group, values in ref["corr"].items():
        for value in values:  # q = 2: one correlation per term
            assert abs(ours_corr[group] - value) <= 0.02, group
    if ref.get("sigma_residual") is not None:
        assert ours["Residual", ""] == pytest.approx(ref["sigma_residual"], rel=0.02)
    assert abs(est.loglik - ref["loglik"]) <= 0.02
    assert est.rounds <= 12


def test_guimmun_lme4_stops_short_and_glmmtmb_agrees_with_us() -> None:
    spec, _, est = golden_fit("guImmun")
    lme4 = spec["fits"]["nagq1"]
    assert not lme4["converged"] and lme4["warnings"]
    assert est.loglik > lme4["loglik"] + 0.04
    assert est.loglik == pytest.approx(spec["fits"]["glmmTMB"]["loglik"], abs=1e-6)


@pytest.mark.parametrize("name", ["grouseticks", "egsingle"])
def test_loglik_is_glmmtmbs_laplace_to_high_accuracy(name: str) -> None:
    """glmmTMB's Laplace log-likelihood keeps every constant, as ours does."""
    spec, _, est = golden_fit(name)
    assert est.loglik == pytest.approx(spec["fits"]["glmmTMB"]["loglik"], abs=2e-6)


@pytest.mark.parametrize("name", ["grouseticks", "egsingle"])
def test_federated_fit_equals_pooled_fit(name: str) -> None:
    _, problem, federated = golden_fit(name)
    pooled = fit_problem(problem, site=np.zeros(problem.y.size))
    assert len(np.unique(problem.site)) > 1
    np.testing.assert_allclose(federated.theta, pooled.theta, atol=1e-8, rtol=0)
    assert federated.loglik == pytest.approx(pooled.loglik, abs=1e-8)
    np.testing.assert_allclose(federated.terms.hessian, pooled.terms.hessian, rtol=1e-8,
                               atol=1e-8)
