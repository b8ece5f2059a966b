"""Cox partial likelihood: exact derivatives against finite differences; invariances."""

from __future__ import annotations

import numpy as np
import pytest

from core_stats.cox import cox_stratum, stratum_terms
from core_stats.cox_concordance import concordance, concordance_sums


def _data(seed: int, n: int = 60, p: int = 3, tied: bool = True):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, p))
    time = rng.exponential(np.exp(-X @ np.array([0.5, -0.3, 0.2][:p])))
    if tied:
        time = np.ceil(time * 4) / 4  # many tied times
    event = rng.random(n) < 0.7
    return time, event, X


@pytest.mark.parametrize("ties", ["efron", "breslow"])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_gradient_and_hessian_match_finite_differences(ties, seed):
    time, event, X = _data(seed)
    stratum = cox_stratum(time, event, X)
    assert len(stratum.event_times) < stratum.n_events  # the data have tied events
    beta = np.array([0.3, -0.2, 0.1])
    terms = stratum_terms(stratum, beta, ties)
    h = 1e-5
    grad = np.zeros(3)
    hess = np.zeros((3, 3))
    for j in range(3):
        e = np.zeros(3)
        e[j] = h
        up, down = stratum_terms(stratum, beta + e, ties), stratum_terms(stratum, beta - e, ties)
        grad[j] = (up.loglik - down.loglik) / (2 * h)
        hess[:, j] = (up.gradient - down.gradient) / (2 * h)
    np.testing.assert_allclose(terms.gradient, grad, rtol=1e-7, atol=1e-7)
    np.testing.assert_allclose(terms.hessian, hess, rtol=1e-6, atol=1e-6)


def test_efron_equals_breslow_without_ties():
    time, event, X = _data(4, tied=False)
    stratum = cox_stratum(time, event, X)
    beta = np.array([0.1, 0.2, -0.4])
    a, b = stratum_terms(stratum, beta, "efron"), stratum_terms(stratum, beta, "breslow")
    assert a.loglik == pytest.approx(b.loglik, abs=1e-12)
    np.testing.assert_allclose(a.hessian, b.hessian, atol=1e-12)


def test_efron_differs_from_breslow_with_ties():
    time, event, X = _data(5)
    stratum = cox_stratum(time, event, X)
    beta = np.array([0.1, 0.2, -0.4])
    assert stratum_terms(stratum, beta, "efron").loglik > \
        stratum_terms(stratum, beta, "breslow").loglik + 1e-3


def test_loglik_by_definition_breslow():
    """A direct loop over event times gives the same partial log-likelihood."""
    time, event, X = _data(6)
    beta = np.array([0.2, 0.1, -0.3])
    eta = X @ beta
    expected = 0.0
    for t in np.unique(time[event]):
        dead = event & (time == t)
        expected += eta[dead].sum() - dead.sum() * np.log(np.exp(eta[time >= t]).sum())
    got = stratum_terms(cox_stratum(time, event, X), beta, "breslow", derivatives=False)
    assert got.loglik == pytest.approx(expected, rel=1e-12)


def test_shift_of_covariates_and_large_eta_change_nothing():
    time, event, X = _data(7)
    beta = np.array([3.0, -2.0, 4.0])
    base = stratum_terms(cox_stratum(time, event, X), beta)
    shifted = stratum_terms(cox_stratum(time, event, X + 500.0), beta)
    assert shifted.loglik == pytest.approx(base.loglik, rel=1e-10)
    np.testing.assert_allclose(shifted.gradient, base.gradient, rtol=1e-8, atol=1e-8)


def test_far_apart_linear_predictors_stay_finite_and_exact():
    """Late risk sets whose eta lie ~3000 below the early ones' (no underflow to log 0)."""
    time, event, X = _data(10, tied=False)
    order = np.argsort(time)
    X = X.copy()
    X[order, 0] = np.linspace(30.0, -30.0, len(time))  # early rows: large eta
    beta = np.array([50.0, 0.1, -0.2])
    eta = (X - X.mean(axis=0)) @ beta
    expected = 0.0
    for t in np.unique(time[event]):
        dead = event & (time == t)
        at_risk = eta[time >= t]
        top = at_risk.max()
        expected += eta[dead].sum() - dead.sum() * (top + np.log(np.exp(at_risk - top).sum()))
    terms = stratum_terms(cox_stratum(time, event, X), beta, "breslow")
    assert terms.loglik == pytest.approx(expected, rel=1e-12)
    assert np.all(np.isfinite(terms.gradient)) and np.all(np.isfinite(terms.hessian))


def test_stratum_without_events_contributes_zero():
    time, _, X = _data(8)
    terms = stratum_terms(cox_stratum(time, np.zeros(len(time), bool), X), np.ones(3))
    assert terms.loglik == 0.0 and not terms.gradient.any() and not terms.hessian.any()


def test_concordance_counts_by_brute_force():
    time, event, X = _data(9, n=40)
    risk = np.round(X[:, 0], 1)  # tied risk scores too
    conc = disc = tx = ty = 0
    for i in range(40):
        for j in range(40):
            if i == j or not event[i]:
                continue
            if time[i] < time[j] or (time[i] == time[j] and not event[j]):
                conc += risk[i] > risk[j]
                disc += risk[i] < risk[j]
                tx += risk[i] == risk[j]
            elif time[i] == time[j] and event[j] and i < j:
                ty += 1
    total = concordance_sums(time, event, risk)
    assert total[0] == conc and total[1] == disc and total[2] == tx
    assert total[3] + total[4] == ty
    c = concordance(total)
    assert c.concordance == pytest.approx((conc + tx / 2) / (conc + disc + tx))
