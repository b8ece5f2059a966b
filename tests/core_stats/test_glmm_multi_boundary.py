"""Several random-effects terms on the boundary: a term whose variance lme4 puts at 0.

The golden data (tests/golden/glmm_multi/*_ward_boundary) have no ward variance; lme4's fit
is singular with the ward SD exactly 0. Ours moves to the face where that term is 0, keeps
it when the curvature there (the probe, at no extra round) shows no direction of ascent, and
reports the fit singular with lme4's estimates. Tolerances as test_glmm_multi_vs_lme4.py.
"""

from __future__ import annotations

import numpy as np
import pytest
from multi_data import Federation, fit_problem, golden_fit, golden_problem

from core_stats.glmm_multi_boundary import multi_probe, multi_probe_objective
from core_stats.glmm_multi_fit import fit_glmm_multi, multi_starting_values
from core_stats.glmm_multi_results import variance_components
from core_stats.inference import covariance

NAMES = [("poisson_ward_boundary", "nagq1"), ("poisson_ward_boundary", "glmmTMB"),
         ("gaussian_ward_boundary", "lmer_ml")]
@pytest.mark.parametrize(("name", "key"), NAMES)
def test_singular_fit_matches_lme4(name: str, key: str) -> None:
    spec, _, est = golden_fit(name)
    ref = spec["fits"][key]
    assert spec["fits"]["nagq1" if "nagq1" in spec["fits"] else "lmer_ml"]["singular"]
    assert est.converged and est.singular
    ward, hospital = est.layout.terms
    assert not ward.random_effects and hospital.random_effects
    for j, term in enumerate(est.layout.fixed_names):
        beta = ref["fixef"][term]
        assert abs(est.theta[j] - beta) <= 1e-3 * (1 + abs(beta)), term
    sds, _ = variance_components(est.layout, est.theta, covariance(-est.terms.hessian))
    ours = {sd.group: sd.sd for sd in sds}
    assert ours["ward:hospital"] == 0.0
    for group, sd in ref["sd"].items():
        assert abs(ours[group] - sd) <= 0.01 + 0.02 * sd, group
    assert abs(est.loglik - ref["loglik"]) <= 0.02


@pytest.mark.parametrize("name", ["poisson_ward_boundary", "gaussian_ward_boundary"])
def test_boundary_curvature_is_the_second_derivative_at_zero(name: str) -> None:
    """The probe's curvature in the ward SD (linear scale, at 0) is the central second
    difference of the log-likelihood there (even in that SD), and it is not positive."""
    _, problem, est = golden_fit(name)
    federation = Federation(problem.family, problem.sites())
    extra = multi_probe_objective(federation, est.layout)(est.theta, True).extra
    probe = multi_probe(est.layout)
    names = probe.parameter_names()
    at = np.array([est.theta[est.layout.parameter_names().index(n)]
                   if n in est.layout.parameter_names() else 0.0 for n in names])
    k = names.index("chol[(Intercept),(Intercept)]|ward:hospital")
    eps = 1e-3
    bump = np.eye(probe.size)[k] * eps
    values = [federation(probe, at + s * bump, False).value for s in (-1, 0, 1)]
    assert values[0] == pytest.approx(values[2], abs=1e-9)  # even
    second = (values[0] - 2 * values[1] + values[2]) / eps**2
    assert extra.shape == (1, 1) and extra[0, 0] == pytest.approx(second, rel=1e-4, abs=1e-6)
    assert extra[0, 0] <= 0


def test_boundary_fit_is_the_same_federated_and_pooled() -> None:
    _, problem, federated = golden_fit("poisson_ward_boundary")
    pooled = fit_problem(problem, site=np.zeros(problem.y.size))
    assert pooled.layout == federated.layout and pooled.singular
    np.testing.assert_allclose(federated.theta, pooled.theta, atol=1e-8, rtol=0)
    assert federated.loglik == pytest.approx(pooled.loglik, abs=1e-8)


@pytest.mark.parametrize("term", [0, 1])
def test_a_face_that_is_not_a_maximum_is_left_for_the_interior_optimum(term: int) -> None:
    """Started with one SD at 0.01 the fit turns to that term's face at once; the face's
    curvature shows a direction of ascent, so the face is rejected and the fit goes on to
    the interior optimum (grouseticks, where lme4 and glmmTMB agree)."""
    spec, problem = golden_problem("grouseticks")
    layout, y, X = problem.layout(), problem.y, problem.X
    start = multi_starting_values(layout, problem.family, len(y), y.sum(), (y * y).sum(),
                                  X.T @ y, X.T @ X)
    start[layout.term_slice(term)] = np.log(0.01)
    federation = Federation(problem.family, problem.sites())
    seen = []

    def evaluate(lay, theta, derivatives):
        seen.append(lay)
        return federation(lay, theta, derivatives)

    est = fit_glmm_multi(evaluate, layout, start)
    assert any(lay.terms[term].linear_columns for lay in seen)  # the face was fitted (probe)
    assert est.converged and not est.singular and est.layout == layout
    assert est.loglik == pytest.approx(spec["fits"]["glmmTMB"]["loglik"], abs=2e-6)
