"""The multi-term core takes what the formula parser builds (core_stats.formula), and offsets."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from multi_data import GOLDEN, golden_problem
from scipy.special import gammaln

from core_stats.design import grouped_rows
from core_stats.families import BINOMIAL, POISSON, get_family
from core_stats.formula import agree_schema, model_data, parse_formula, variable_report
from core_stats.glmm import ParameterLayout, site_terms
from core_stats.glmm_multi import (
    MultiLayout,
    RandomTerm,
    multi_rows,
    term_layout,
    terms_from_designs,
)
from core_stats.glmm_multi_laplace import multi_site_terms


def _designs(formula: str, frame: pd.DataFrame):
    schema = agree_schema(formula, [variable_report(parse_formula(formula), frame)])
    return model_data(schema, frame)


def test_parsed_nested_terms_give_the_goldens_terms() -> None:
    spec, problem = golden_problem("grouseticks")
    frame = pd.read_csv(GOLDEN / spec["dataset_path"])
    data = _designs(spec["formula"], frame)
    terms = terms_from_designs(data.random)
    assert [t.name for t in terms] == [t.name for t in problem.terms] == \
        ["BROOD:LOCATION", "LOCATION"]
    layout = MultiLayout(data.fixed_names, tuple(term_layout(t) for t in terms), False)
    assert data.fixed_names == problem.fixed_names
    theta = np.random.default_rng(1).normal(0, 0.3, size=layout.size)
    ours = multi_site_terms(multi_rows(data.y, data.X, terms), POISSON, layout, theta)
    reference = multi_site_terms(problem.sites(np.zeros(problem.y.size))[0], POISSON,
                                 problem.layout(), theta)
    assert ours.loglik == pytest.approx(reference.loglik, abs=1e-9)
    np.testing.assert_allclose(ours.hessian, reference.hessian, atol=1e-8)


def test_uncorrelated_bars_are_named_as_lme4_prints_them() -> None:
    rng = np.random.default_rng(2)
    frame = pd.DataFrame({"y": rng.poisson(2.0, 40).astype(float), "x": rng.normal(size=40),
                          "g": np.repeat(np.arange(8), 5)})
    terms = terms_from_designs(_designs("y ~ x + (1 + x || g)", frame).random)
    assert [(t.name, t.names(), t.correlated) for t in terms] == \
        [("g", ("(Intercept)",), True), ("g.1", ("x",), True)]
    layout = MultiLayout(("(Intercept)", "x"), tuple(term_layout(t) for t in terms), False)
    assert layout.parameter_names()[2:] == ("log_chol[(Intercept),(Intercept)]|g",
                                            "log_chol[x,x]|g.1")


def test_an_offset_enters_the_linear_predictor_as_in_the_single_term_path() -> None:
    rng = np.random.default_rng(3)
    n = 60
    group = np.repeat(np.arange(10), 6)
    exposure = rng.uniform(0.5, 3.0, n)
    X = np.column_stack([np.ones(n), rng.normal(size=n)])
    y = rng.poisson(exposure * np.exp(0.2 + 0.3 * X[:, 1])).astype(float)
    term = RandomTerm("g", np.ones((n, 1)), group)
    layout = MultiLayout(("(Intercept)", "x"), (term_layout(term),), False)
    theta = np.array([0.1, 0.2, np.log(0.5)])
    ours = multi_site_terms(multi_rows(y, X, (term,), offset=np.log(exposure)), POISSON,
                            layout, theta)
    single = ParameterLayout(("(Intercept)", "x"), ("(Intercept)",), "g", False)
    reference = site_terms(grouped_rows(y, X, np.ones((n, 1)), group, np.log(exposure)),
                           POISSON, single, theta)
    assert ours.loglik == pytest.approx(reference.loglik, abs=1e-10)
    np.testing.assert_allclose(ours.gradient, reference.gradient, atol=1e-10)
    np.testing.assert_allclose(ours.hessian, reference.hessian, atol=1e-10)


@pytest.mark.parametrize("family", ["binomial", "poisson", "gaussian"])
def test_prior_weights_as_in_the_single_term_path(family: str) -> None:
    rng = np.random.default_rng(5)
    n = 48
    group = np.repeat(np.arange(8), 6)
    X = np.column_stack([np.ones(n), rng.normal(size=n)])
    weights = rng.integers(1, 5, size=n).astype(float)
    y = {"binomial": rng.binomial(weights.astype(int), 0.4) / weights,
         "poisson": rng.poisson(2.0, size=n).astype(float),
         "gaussian": rng.normal(size=n)}[family]
    fam = get_family(family)
    term = RandomTerm("g", np.ones((n, 1)), group)
    layout = MultiLayout(("(Intercept)", "x"), (term_layout(term),), fam.has_dispersion)
    theta = rng.normal(0, 0.3, size=layout.size)
    ours = multi_site_terms(multi_rows(y, X, (term,), weights=weights), fam, layout, theta)
    single = ParameterLayout(("(Intercept)", "x"), ("(Intercept)",), "g", fam.has_dispersion)
    reference = site_terms(grouped_rows(y, X, np.ones((n, 1)), group, None, weights), fam,
                           single, theta)
    assert ours.loglik == pytest.approx(reference.loglik, abs=1e-9)
    np.testing.assert_allclose(ours.gradient, reference.gradient, atol=1e-9)
    np.testing.assert_allclose(ours.hessian, reference.hessian, atol=1e-9)


def test_binomial_trials_equal_bernoulli_rows_with_two_terms() -> None:
    rng = np.random.default_rng(6)
    n = 40
    mom, comm = np.arange(n) // 2, np.arange(n) // 8
    trials = rng.integers(1, 4, size=n)
    successes = rng.binomial(trials, 0.5)
    X = np.column_stack([np.ones(n), rng.normal(size=n)])
    terms = (RandomTerm("mom", np.ones(n), mom), RandomTerm("comm", np.ones(n), comm))
    layout = MultiLayout(("(Intercept)", "x"), tuple(term_layout(t) for t in terms), False)
    theta = np.array([0.1, -0.3, np.log(0.7), np.log(0.5)])
    grouped = multi_site_terms(multi_rows(successes / trials, X, terms, weights=trials),
                               BINOMIAL, layout, theta)
    row = np.repeat(np.arange(n), trials)
    outcome = np.concatenate([np.r_[np.ones(s), np.zeros(t - s)]
                              for s, t in zip(successes, trials, strict=True)])
    expanded = tuple(RandomTerm(t.name, np.ones(row.size), t.group_codes[row]) for t in terms)
    bernoulli = multi_site_terms(multi_rows(outcome, X[row], expanded), BINOMIAL, layout, theta)
    log_choose = float(np.sum(gammaln(trials + 1) - gammaln(successes + 1)
                              - gammaln(trials - successes + 1)))
    assert grouped.loglik == pytest.approx(bernoulli.loglik + log_choose, abs=1e-9)
    np.testing.assert_allclose(grouped.gradient, bernoulli.gradient, atol=1e-9)
    np.testing.assert_allclose(grouped.hessian, bernoulli.hessian, atol=1e-9)
