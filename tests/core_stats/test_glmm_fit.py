"""Fit behaviour: singular fits, the L2 penalty and lambda selection, collinearity."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import optimize
from simdata import simulate_nested

from securefed.glmm_run import GLMMOptions, run_glmm


def _glm_mle(frame) -> np.ndarray:
    X = np.column_stack([np.ones(len(frame)), frame.x1, frame.x2])
    y = frame.y.to_numpy(float)

    def negloglik(beta):
        eta = X @ beta
        return -(y @ eta - np.logaddexp(0, eta).sum())

    return optimize.minimize(negloglik, np.zeros(3), method="BFGS", options={"gtol": 1e-10}).x


def test_zero_variance_is_reported_singular_with_glm_estimates() -> None:
    frame = simulate_nested("binomial", n_sites=6, groups_per_site=1, rows_per_group=80, sd=0.0,
                            seed=5)
    fit = run_glmm(frame, GLMMOptions("y ~ x1 + x2 + (1 | hospital)", "binomial", "hospital"))
    assert fit.singular and fit.converged
    assert fit.random_effects[0].sd == 0.0
    np.testing.assert_allclose([fe.estimate for fe in fit.fixed_effects], _glm_mle(frame),
                               atol=1e-6)
    assert "singular" in fit.summary()


def test_penalty_shrinks_slopes_but_not_the_intercept() -> None:
    frame = simulate_nested("binomial", seed=2)
    formula = "y ~ x1 + x2 + (1 | patient)"
    free = run_glmm(frame, GLMMOptions(formula, "binomial", "hospital"))
    zero = run_glmm(frame, GLMMOptions(formula, "binomial", "hospital", lam=0.0))
    strong = run_glmm(frame, GLMMOptions(formula, "binomial", "hospital", lam=50.0))
    assert free.coef() == zero.coef()
    for term in ("x1", "x2"):
        assert abs(strong.coef()[term]) < 0.5 * abs(free.coef()[term])
    # at the penalised optimum the penalised gradient is zero: d l / d beta = 2 lambda beta
    assert strong.converged and strong.penalty_lambda == 50.0


@pytest.mark.parametrize("criterion", ["aic", "bic", "heldout"])
def test_lambda_grid_selection_reports_table_and_auc(criterion: str) -> None:
    frame = simulate_nested("binomial", seed=3)
    opts = GLMMOptions("y ~ x1 + x2 + (1 | patient)", "binomial", "hospital",
                       lambda_grid=(0.0, 1.0, 100.0), select=criterion, seed=1)
    fit = run_glmm(frame, opts)
    table = fit.to_dict()["lambda_selection"]
    assert [row["lambda"] for row in table["table"]] == [0.0, 1.0, 100.0]
    assert table["chosen"] == fit.penalty_lambda
    key = "heldout_loglik" if criterion == "heldout" else criterion
    sign = -1.0 if criterion == "heldout" else 1.0
    best = min(table["table"], key=lambda row: sign * row[key])
    assert table["chosen"] == best["lambda"]
    assert 0.6 < fit.to_dict()["auc_validation"] <= 1.0
    dfs = [row["effective_df"] for row in table["table"]]
    assert dfs[0] == pytest.approx(4.0) and dfs[0] > dfs[1] > dfs[2]
    again = run_glmm(frame, opts)
    assert again.coef() == fit.coef()  # the seed fixes the split


def test_collinear_column_is_dropped_with_a_warning() -> None:
    frame = simulate_nested("poisson", seed=8)
    frame["x3"] = 2.0 * frame.x1 - frame.x2
    fit = run_glmm(frame, GLMMOptions("y ~ x1 + x2 + x3 + (1 | patient)", "poisson", "hospital"))
    assert fit.dropped_columns == ("x3",)
    assert any("x3" in w for w in fit.warnings)
    assert [fe.term for fe in fit.fixed_effects] == ["(Intercept)", "x1", "x2"]


@pytest.mark.parametrize(("seed", "singular", "sds"), [
    (9, True, (0.93396, 0.09332)),   # lme4: isSingular TRUE, corr -1.000
    (12, False, (0.89960, 0.17542)),  # lme4: corr 0.011
])
def test_slope_covariance_boundary_as_lme4_reports_it(seed, singular, sds) -> None:
    """Reference values: lmer(y ~ x1 + x2 + (1 + x1 | patient), REML = FALSE) on the same data."""
    frame = simulate_nested("gaussian", n_sites=4, groups_per_site=6, rows_per_group=8, sd=0.8,
                            seed=seed)
    fit = run_glmm(frame, GLMMOptions("y ~ x1 + x2 + (1 + x1 | patient)", "gaussian",
                                      "hospital"))
    assert fit.singular == singular
    assert [round(r.sd, 3) for r in fit.random_effects[:2]] == [round(v, 3) for v in sds]
    if singular:
        assert not fit.converged and "simplify" in fit.message
    else:
        assert fit.converged
