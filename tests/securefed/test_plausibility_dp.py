"""Interval checks on noisy sums (plausibility_dp): honest sums pass, skipped clipping not."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import securefed.bfi_run as bfi_run
from securefed.bfi_run import BFIOptions, run_bfi
from securefed.dp_statistics import summary_vector
from securefed.plausibility import ImplausibleAggregate
from securefed.plausibility_dp import (
    check_dp_count,
    check_dp_standardize,
    check_dp_summary,
    check_dp_terms,
)
from securefed.privacy import DPOptions
from securefed.protection import ProtectionOptions, build_protection
from securefed.vectors import upper_triangle

CLIP, BOUND = 3.0, 4.0


def _sites(family: str, rng, n_sites: int = 4, rows: int = 50) -> list[np.ndarray]:
    out = []
    for _ in range(n_sites):
        X = np.column_stack([np.ones(rows), rng.normal(0, 2.0, (rows, 2))])
        y = {"binomial": rng.binomial(1, 0.3, rows), "poisson": rng.poisson(2.0, rows),
             "gaussian": rng.normal(0, 3.0, rows)}[family].astype(float)
        out.append(summary_vector(X, y, CLIP, BOUND, family, n_groups=3))
    return out


@pytest.mark.parametrize("family", ["binomial", "poisson", "gaussian"])
def test_honest_noisy_sums_pass(family) -> None:
    rng = np.random.default_rng(1)
    for sd in (0.0, 0.5, 5.0, 50.0):
        for _ in range(50):
            total = np.sum(_sites(family, rng), axis=0)
            noisy = total + rng.normal(0.0, sd, total.size) if sd else total
            check_dp_summary(noisy, sd, p=3, clip=CLIP, outcome_bound=BOUND, family=family,
                             contributors=4, purpose="dp-design-summary")


@pytest.mark.parametrize(("change", "check"), [
    (lambda v: v + np.r_[np.zeros(6), 1e4 * CLIP**2, np.zeros(v.size - 7)], "noisy-gram"),
    (lambda v: v * np.r_[1.0, 40.0, np.ones(v.size - 2)], "noisy-outcome"),
    (lambda v: v * np.r_[-10.0, np.ones(v.size - 1)], "noisy-count"),
])
def test_a_site_that_skips_clipping_is_refused(change, check) -> None:
    rng = np.random.default_rng(2)
    vectors = _sites("binomial", rng)
    vectors[0] = change(vectors[0])  # site 1 does not clip
    total = np.sum(vectors, axis=0) + rng.normal(0.0, 5.0, vectors[0].size)
    with pytest.raises(ImplausibleAggregate) as refused:
        check_dp_summary(total, 5.0, p=3, clip=CLIP, outcome_bound=BOUND, family="binomial",
                         contributors=4, purpose="bfi-sufficient-statistics")
    assert refused.value.check == check


def test_count_standardize_and_terms() -> None:
    rng = np.random.default_rng(3)
    check_dp_count(np.array([200.0, 4.0]) + rng.normal(0, 2.0, 2), 2.0, 4)
    with pytest.raises(ImplausibleAggregate, match="noisy-count"):
        check_dp_count(np.array([200.0, 9.0]), 0.5, 4)
    half = np.array([10.0])
    x = rng.uniform(-10, 10, 300)
    honest = np.array([300.0, x.sum(), (x**2).sum()])
    check_dp_standardize(honest + rng.normal(0, 3.0, 3), 3.0, half, 4)
    with pytest.raises(ImplausibleAggregate, match="noisy-standardize"):
        check_dp_standardize(honest + np.array([0, 0, 1e6]), 3.0, half, 4)
    groups = rng.normal(size=(30, 5))
    groups /= np.maximum(1.0, np.linalg.norm(groups, axis=1))[:, None]
    units = (3, 5)
    total = groups.sum(axis=0) * np.r_[np.full(2, 8.0), np.full(3, 32.0)]
    check_dp_terms(total, 0.1, 30.0, 2, units)
    with pytest.raises(ImplausibleAggregate, match="noisy-terms-norm"):
        check_dp_terms(total * 40.0, 0.1, 30.0, 2, units)


def test_a_dp_bfi_run_with_a_site_that_skips_clipping_is_refused(monkeypatch) -> None:
    rng = np.random.default_rng(8)
    frame = pd.DataFrame({"site": np.repeat(np.arange(1, 5), 300), "x": rng.normal(0, 0.7, 1200)})
    frame["y"] = rng.binomial(1, 1 / (1 + np.exp(-(0.2 + 0.6 * frame.x))))
    sites = [str(s) for s in range(1, 5)]
    opts = BFIOptions(formula="y ~ x", family="binomial", site_column="site", lam=0.1)

    def stack():
        return build_protection(ProtectionOptions(protect="secagg,dp", dp=DPOptions(
            epsilon=2.0, clip=3.0)), sites, "binomial")

    run_bfi(frame, opts, protection=stack(), site_runtime=False)  # honest: passes the checks
    honest = bfi_run.Coordinator

    class Unclipped(honest):
        def secure_sum(self, purpose, compute, key=None, dp=None):
            if purpose == "bfi-sufficient-statistics":
                inner = compute

                def compute(site):  # site 1 releases 100 rows of x = 50 (clip 3)
                    vector = np.array(inner(site), dtype=float)
                    if site.name == "1":
                        x = np.column_stack([np.ones(100), np.full(100, 50.0)])
                        vector[3 + 2:3 + 2 + 3] += upper_triangle(x.T @ x)
                    return vector
            return super().secure_sum(purpose, compute, key=key, dp=dp)

    monkeypatch.setattr(bfi_run, "Coordinator", Unclipped)
    with pytest.raises(ImplausibleAggregate) as refused:  # the summed-statistics path
        run_bfi(frame, opts, protection=stack(), site_runtime=False)
    assert refused.value.check == "noisy-gram"
