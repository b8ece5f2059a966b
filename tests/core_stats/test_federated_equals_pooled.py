"""The marginal log-likelihood is a sum over sites, so federated == pooled.

Groups (patients) are nested within sites (hospitals): the sum of the site
terms equals the pooled terms to 1e-10, and the federated fit equals the fit
of the pooled data (one site holding every row) to 1e-8.
"""

from __future__ import annotations

import numpy as np
import pytest
from simdata import simulate_nested

from core_stats.design import grouped_rows
from core_stats.families import get_family
from core_stats.glmm import ParameterLayout, site_terms
from securefed.glmm_run import GLMMOptions, run_glmm


def _rows(frame):
    X = np.column_stack([np.ones(len(frame)), frame.x1, frame.x2])
    return grouped_rows(frame.y.to_numpy(float), X, np.ones((len(frame), 1)),
                        frame.patient.to_numpy())


@pytest.mark.parametrize("family", ["binomial", "poisson", "gaussian"])
@pytest.mark.parametrize("nagq", [1, 5])
def test_site_terms_sum_to_pooled_terms(family: str, nagq: int) -> None:
    frame = simulate_nested(family, seed=11)
    fam = get_family(family)
    layout = ParameterLayout(("(Intercept)", "x1", "x2"), ("(Intercept)",), "patient",
                             fam.has_dispersion)
    theta = np.random.default_rng(2).normal(0, 0.3, size=layout.size)
    pooled = site_terms(_rows(frame), fam, layout, theta, nagq=nagq)
    parts = [site_terms(_rows(part), fam, layout, theta, nagq=nagq)
             for _, part in frame.groupby("hospital")]
    assert sum(p.loglik for p in parts) == pytest.approx(pooled.loglik, abs=1e-10, rel=0)
    np.testing.assert_allclose(sum(p.gradient for p in parts), pooled.gradient, atol=1e-10, rtol=0)
    np.testing.assert_allclose(sum(p.hessian for p in parts), pooled.hessian, atol=1e-10, rtol=0)


@pytest.mark.parametrize("family", ["binomial", "poisson", "gaussian"])
def test_federated_fit_equals_pooled_fit(family: str) -> None:
    frame = simulate_nested(family, seed=5)
    formula = "y ~ x1 + x2 + (1 | patient)"
    federated = run_glmm(frame, GLMMOptions(formula, family, "hospital", nagq=2))
    pooled = run_glmm(frame.assign(one=0), GLMMOptions(formula, family, "one", nagq=2))
    assert federated.n_sites == 4 and pooled.n_sites == 1
    np.testing.assert_allclose(federated.theta, pooled.theta, atol=1e-8, rtol=0)
    assert federated.loglik == pytest.approx(pooled.loglik, abs=1e-8)
    fed_se = [fe.std_error for fe in federated.fixed_effects]
    np.testing.assert_allclose(fed_se, [fe.std_error for fe in pooled.fixed_effects], rtol=1e-7)
