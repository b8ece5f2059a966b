"""Fit behaviour: singular fits, the L2 penalty and lambda selection, collinearity; start
values, boundary faces of a vector random effect's covariance, Newton's stopping rule."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import optimize
from simdata import simulate_nested

from core_stats.families import get_family
from core_stats.glmm import ParameterLayout
from core_stats.glmm_boundary import face_after, point_on
from core_stats.glmm_fit import LOG_SD_START, starting_values
from core_stats.optimize import SummedTerms, newton_maximize
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


@pytest.mark.parametrize(("seed", "singular", "sds", "corr", "loglik", "rounds"), [
    (9, True, (0.93396, 0.09332), -1.0, -235.190313, 10),   # lme4: isSingular TRUE
    (12, False, (0.89960, 0.17542), 0.0113, -226.320526, 9),
])
def test_slope_covariance_boundary_as_lme4_reports_it(seed, singular, sds, corr, loglik,
                                                       rounds) -> None:
    """Reference values: lmer(y ~ x1 + x2 + (1 + x1 | patient), REML = FALSE) on the same data
    (R 4.2.2, lme4 1.1.31). Before the boundary was fitted, seed 9 stopped unconverged
    after 17 rounds and seed 12 took 17. The rounds include the final counts round."""
    frame = simulate_nested("gaussian", n_sites=4, groups_per_site=6, rows_per_group=8, sd=0.8,
                            seed=seed)
    fit = run_glmm(frame, GLMMOptions("y ~ x1 + x2 + (1 + x1 | patient)", "gaussian",
                                      "hospital"))
    assert fit.converged, fit.message
    assert fit.singular == singular
    assert [round(r.sd, 3) for r in fit.random_effects[:2]] == [round(v, 3) for v in sds]
    assert fit.correlations[0].correlation == pytest.approx(corr, abs=1e-3)
    assert fit.loglik == pytest.approx(loglik, abs=1e-5)
    assert fit.rounds <= rounds


def test_start_values_scale_each_random_effect_and_start_uncorrelated() -> None:
    """A slope's start SD is the intercept's divided by the root mean square of its column
    (from X'X); off-diagonal Cholesky entries start at 0; one random intercept is as before."""
    family = get_family("binomial")
    x = np.linspace(-1.0, 5.0, 50)
    X = np.column_stack([np.ones_like(x), x])
    y = (x > 2).astype(float)
    sums = (50.0, y.sum(), y @ y, X.T @ y, X.T @ X)
    slopes = ParameterLayout(("(Intercept)", "x"), ("(Intercept)", "x"), "g", False)
    theta = starting_values(slopes, family, *sums)
    log_a, b, log_c = theta[slopes.cov]
    assert log_a == LOG_SD_START and b == 0.0
    assert log_c == pytest.approx(LOG_SD_START - 0.5 * np.log(np.mean(x**2)), abs=1e-12)
    intercept = ParameterLayout(("(Intercept)", "x"), ("(Intercept)",), "g", False)
    assert starting_values(intercept, family, *sums)[intercept.cov] == [LOG_SD_START]


def test_collapsing_a_cholesky_diagonal_keeps_the_rest_of_the_covariance() -> None:
    names = ("(Intercept)", "x1", "x2")
    layout = ParameterLayout(names, names, "g", False)
    theta = np.array([0.0, 0.0, 0.0, np.log(0.9), 0.3, -0.2, np.log(0.4), 0.25, np.log(0.5)])
    lam = layout.lambda_matrix(theta)
    for column, expected in [(2, (2,)), (1, (1,)), (0, (0,))]:
        face, factor = face_after(layout, theta, column)
        assert face == expected
        kept = lam.copy()
        kept[column, column] = 0.0
        assert np.allclose(factor @ factor.T, kept @ kept.T, atol=1e-12)
        assert not factor[:, list(face)].any() and np.allclose(factor, np.tril(factor))
        reduced = ParameterLayout(names, names, "g", False, zero_columns=face)
        moved = point_on(reduced, theta, layout, factor)
        assert np.allclose(reduced.lambda_matrix(moved), factor, atol=1e-12)
    # on the face with column 2 at 0, Lambda_11 -> 0 leaves the entry below it to column 2
    rank2 = ParameterLayout(names, names, "g", False, zero_columns=(2,))
    point = point_on(rank2, theta, layout, face_after(layout, theta, 2)[1])
    face, factor = face_after(rank2, point, 1)
    assert face == (1,) and factor[2, 2] > 0
    # and Sigma = 0 is the face with every column at 0
    single = ParameterLayout(names, names, "g", False, zero_columns=(1, 2))
    point = np.array([0.0, 0.0, 0.0, np.log(0.9), 0.0, 0.0])
    assert face_after(single, point, 0)[0] == (0, 1, 2)


def test_newton_stops_one_round_early_when_quadratic_convergence_predicts_the_answer() -> None:
    """f(x) = -log cosh(x - 1) - x^2 / 50: from x = 3 the first Newton step overshoots and is
    halved. Every round asks for derivatives (no value-only line-search rounds), and the
    last full step, predicted by quadratic convergence to leave an error below tol, is
    taken without another round: the answer is not a point that was evaluated."""
    optimum = optimize.brentq(lambda x: np.tanh(x - 1.0) + x / 25.0, -1.0, 2.0, xtol=1e-15)
    calls = []

    def evaluate(theta, derivatives):
        x = float(theta[0])
        calls.append((x, derivatives))
        return SummedTerms(-np.log(np.cosh(x - 1.0)) - x * x / 50.0,
                           np.array([-np.tanh(x - 1.0) - x / 25.0]),
                           np.array([[-1.0 / np.cosh(x - 1.0) ** 2 - 1.0 / 25.0]]))

    result = newton_maximize(evaluate, np.array([3.0]), tol=1e-8)
    assert result.converged and abs(result.theta[0] - optimum) < 1e-10
    assert any(step.step_length < 1.0 for step in result.trace)  # a step was shortened
    assert all(derivatives for _, derivatives in calls)
    assert result.evaluations == len(calls)
    assert min(abs(x - result.theta[0]) for x, _ in calls) > 1e-12
