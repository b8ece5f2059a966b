"""Families and links as classes: partial derivatives against finite differences, the
log-densities against scipy's, and the registry's names."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from core_stats.families import FAMILIES, GAMMA, NEGATIVE_BINOMIAL, get_family
from core_stats.links import LINKS, get_link

RNG = np.random.default_rng(16)
CASES = [("negative_binomial", "log", RNG.poisson(3.0, 40).astype(float)),
         ("Gamma", "log", RNG.gamma(2.0, 3.0, 40)),
         ("Gamma", "inverse", RNG.gamma(2.0, 3.0, 40)),
         ("gaussian", "identity", RNG.normal(1.0, 2.0, 40)),
         ("poisson", "log", RNG.poisson(3.0, 40).astype(float)),
         ("binomial", "probit", RNG.integers(0, 2, 40).astype(float))]


def _eta(family, n):
    if family.link == "inverse":
        return RNG.uniform(0.1, 0.6, n)
    return RNG.normal(0.5, 0.7, n)


@pytest.mark.parametrize(("name", "link", "y"), CASES)
def test_row_partials_match_finite_differences(name, link, y):
    family = get_family(name, link)
    eta, s = _eta(family, y.size), 0.3
    s_order = 2 if family.has_dispersion else 0
    D = family.row_partials(y, eta, s, None, 4, s_order)
    h = 1e-5
    for i in range(4):
        for j in range(s_order + 1):
            if i + 1 + j > 4:
                continue
            up = family.row_partials(y, eta + h, s, None, 4, s_order)[i, j]
            down = family.row_partials(y, eta - h, s, None, 4, s_order)[i, j]
            np.testing.assert_allclose((up - down) / (2 * h), D[i + 1, j], rtol=1e-5,
                                       atol=1e-6 * (1 + np.abs(D[i + 1, j]).max()))
            if j < s_order:
                up = family.row_partials(y, eta, s + h, None, 4, s_order)[i, j]
                down = family.row_partials(y, eta, s - h, None, 4, s_order)[i, j]
                np.testing.assert_allclose((up - down) / (2 * h), D[i, j + 1], rtol=1e-5,
                                           atol=1e-6 * (1 + np.abs(D[i, j + 1]).max()))


def test_negative_binomial_density_is_scipys_nbinom2():
    y = RNG.poisson(4.0, 30).astype(float)
    eta, s = RNG.normal(1.0, 0.5, 30), np.log(1.7)
    mu, theta = np.exp(eta), 1.7
    expected = stats.nbinom.logpmf(y, theta, theta / (theta + mu))
    np.testing.assert_allclose(NEGATIVE_BINOMIAL.loglik(y, eta, s), expected, rtol=1e-12)
    assert NEGATIVE_BINOMIAL.dispersion_value(s) == pytest.approx(theta)  # glmmTMB's sigma()


@pytest.mark.parametrize("link", ["log", "inverse"])
def test_gamma_density_is_scipys(link):
    family = get_family("Gamma", link)
    y = RNG.gamma(2.0, 3.0, 30)
    eta, s = _eta(family, 30), np.log(0.4)
    mu, shape = family.mean(eta), 0.4**-2
    expected = stats.gamma.logpdf(y, shape, scale=mu / shape)
    np.testing.assert_allclose(family.loglik(y, eta, s), expected, rtol=1e-12)
    assert family.dispersion_value(s) == pytest.approx(0.16)  # glmmTMB's sigma^2 = 1/shape


def test_gamma_inverse_link_is_continued_finite_and_concave_outside_its_domain():
    family = get_family("Gamma", "inverse")
    y = np.full(5, 2.0)
    delta = 1.0 / (1e6 * 2.0)
    eta = np.array([-0.5, 0.0, delta, 2 * delta, 0.3])
    r, r1, r2 = family.kernel_derivatives(y, eta, 2)
    assert np.all(np.isfinite(r)) and np.all(r2 < 0) and r[0] < r[1] < r[2]
    assert r[4] == pytest.approx(-2.0 * 0.3 + np.log(0.3))  # the true kernel inside
    h = 1e-4 * delta  # value, slope and curvature continuous at the guard
    value, slope, curve = family.kernel_derivatives(y[:2], np.array([delta - h, delta + h]), 2)
    assert value[1] - value[0] == pytest.approx(2 * h * slope.mean(), rel=1e-6)
    assert slope[0] == pytest.approx(slope[1], rel=1e-3)
    assert curve[0] == pytest.approx(curve[1], rel=1e-3)


def test_registry_names_aliases_and_links():
    assert get_family("nbinom2") == NEGATIVE_BINOMIAL
    assert get_family("gamma") == get_family("Gamma", "inverse") and GAMMA.canonical
    assert not get_family("Gamma", "log").canonical
    assert {f.r_name for f in FAMILIES.values()} == {"binomial", "poisson", "gaussian", "Gamma",
                                                     "nbinom2"}
    with pytest.raises(ValueError, match="choose log"):
        get_family("negative_binomial", "identity")
    with pytest.raises(ValueError, match="unknown family"):
        get_family("tweedie")
    for name, link in LINKS.items():
        assert get_link(name) is link
        mu = link.clip(0.3 if name in ("logit", "probit", "cloglog") else 2.5)
        assert link.inverse(np.array([link.value(mu)]))[0] == pytest.approx(mu)


@pytest.mark.parametrize("name", ["negative_binomial", "Gamma"])
def test_new_families_refuse_bad_outcomes_in_one_line(name):
    family = get_family(name)
    with pytest.raises(ValueError, match="non-negative|positive"):
        family.check_outcome(np.array([1.0, -1.0, 2.0]))


def test_the_cli_lists_every_family_the_registry_has():
    from securefed import preflight, study

    names = {alias.lower() for f in FAMILIES.values() for alias in (f.name, *f.aliases)}
    assert set(preflight.FAMILIES) == names == set(study.FAMILIES)
