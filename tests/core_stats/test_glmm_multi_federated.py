"""Several random-effects terms: each site's terms sum to the pooled terms (federated ==
pooled), whatever the assignment of top-level units to sites."""

from __future__ import annotations

import numpy as np
import pytest
from multi_data import Problem, golden_problem

from core_stats.glmm_multi import RandomTerm, level_in_two_sites
from core_stats.glmm_multi_laplace import multi_site_terms


def _terms(problem: Problem, site: np.ndarray, theta: np.ndarray):
    parts = [multi_site_terms(rows, problem.family, problem.layout(), theta)
             for rows in problem.sites(site)]
    return (sum(p.loglik for p in parts), sum(p.gradient for p in parts),
            sum(p.hessian for p in parts), sum(p.n_blocks for p in parts))


@pytest.mark.parametrize("name", ["grouseticks", "egsingle", "guImmun"])
def test_site_terms_sum_to_the_pooled_terms(name: str) -> None:
    _, problem = golden_problem(name)
    rng = np.random.default_rng(3)
    theta = np.zeros(problem.layout().size)
    theta[0] = problem.family.link_value(float(problem.y.mean()))
    theta[1:] = rng.normal(0, 0.2, size=theta.size - 1)
    pooled = _terms(problem, np.zeros(problem.y.size), theta)
    top = problem.terms[-1].group_codes  # the top-level unit of each row
    units = np.unique(top)
    shuffled = dict(zip(units, rng.integers(0, 5, size=units.size), strict=True))
    for site in (problem.site, np.array([shuffled[u] for u in top])):
        federated = _terms(problem, site, theta)
        assert federated[0] == pytest.approx(pooled[0], abs=1e-8, rel=0)
        np.testing.assert_allclose(federated[1], pooled[1], atol=1e-8, rtol=0)
        np.testing.assert_allclose(federated[2], pooled[2], atol=1e-8, rtol=0)
        assert federated[3] == pooled[3] == units.size


def test_a_level_in_two_sites_is_found_by_factor_and_sites() -> None:
    ones = np.ones(4)
    a = (RandomTerm("ward:hospital", ones, [1, 1, 2, 2]), RandomTerm("hospital", ones, [7] * 4))
    b = (RandomTerm("ward:hospital", ones, [3, 3, 4, 4]), RandomTerm("hospital", ones, [8] * 4))
    crossed = (RandomTerm("ward:hospital", ones, [5, 5, 6, 6]),
               RandomTerm("hospital", ones, [8, 8, 9, 9]))
    assert level_in_two_sites({"A": a, "B": b}) is None
    assert level_in_two_sites({"A": a, "B": b, "C": crossed}) == ("hospital", "B", "C")


def test_each_blocks_terms_are_those_of_a_site_holding_it_alone() -> None:
    """Per-block gradients and Hessians (for releases bounding one top-level unit) sum to
    the site's and equal the terms of that unit's rows on their own."""
    _, problem = golden_problem("grouseticks")
    layout = problem.layout()
    theta = np.random.default_rng(4).normal(0, 0.3, size=layout.size)
    site = problem.sites()[2]
    terms = multi_site_terms(site, problem.family, layout, theta, per_block_terms=True)
    np.testing.assert_allclose(terms.block_gradients.sum(axis=0), terms.gradient, atol=1e-10)
    np.testing.assert_allclose(terms.block_hessians.sum(axis=0), terms.hessian, atol=1e-10)
    top = problem.terms[-1].group_codes[problem.site == np.unique(problem.site)[2]]
    for b, unit in enumerate(dict.fromkeys(top)):  # blocks are numbered by their first row
        alone = Problem(problem.y, problem.X, problem.fixed_names, problem.terms,
                        problem.family, np.where(problem.terms[-1].group_codes == unit, 0, 1))
        own = multi_site_terms(alone.sites()[0], problem.family, layout, theta)
        np.testing.assert_allclose(terms.block_gradients[b], own.gradient, atol=1e-10)
        np.testing.assert_allclose(terms.block_hessians[b], own.hessian, atol=1e-10)


def test_crossed_factors_split_across_sites_are_found() -> None:
    """Penicillin's samples are crossed with its plates: sites of plates share samples."""
    _, problem = golden_problem("penicillin")
    assert problem.sites()[0].n_blocks == 1
    plate = problem.terms[0].group_codes
    by_site = {}
    for name, keep in (("A", plate < 12), ("B", plate >= 12)):
        by_site[name] = tuple(RandomTerm(t.name, t.Z[keep], t.group_codes[keep])
                              for t in problem.terms)
    assert level_in_two_sites(by_site) == ("sample", "A", "B")
