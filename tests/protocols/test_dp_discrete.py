"""Exact discrete Gaussian sampler and the distributed discrete Gaussian bound."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from scipy import stats

from protocols.dp import (
    DiscreteGaussianSampler,
    DpConfigError,
    Mechanism,
    NoiseSource,
    PrivacyBudgetExceeded,
    PrivacyLedger,
    ddg_local_sigma,
    ddg_rho,
    ddg_tau,
    discrete_gaussian_pmf,
    release_discrete_share,
)
from protocols.dp_discrete import _bernoulli_exp_neg, _discrete_laplace
from protocols.errors import EncodingError


def _chi_square_pvalue(samples: np.ndarray, pmf: callable, support: int) -> float:
    """Chi-square goodness of fit on [-support, support] with both tails merged."""
    grid = np.arange(-support, support + 1)
    expected = pmf(grid) * samples.size
    observed = np.array([(samples == x).sum() for x in grid], dtype=float)
    tail_expected = samples.size - expected.sum()
    tail_observed = samples.size - observed.sum()
    expected = np.append(expected, tail_expected)
    observed = np.append(observed, tail_observed)
    keep = expected > 5
    merged_expected = np.append(expected[keep], expected[~keep].sum())
    merged_observed = np.append(observed[keep], observed[~keep].sum())
    if merged_expected[-1] == 0:
        merged_expected, merged_observed = merged_expected[:-1], merged_observed[:-1]
    merged_expected *= merged_observed.sum() / merged_expected.sum()
    return float(stats.chisquare(merged_observed, merged_expected).pvalue)


@pytest.mark.parametrize("sigma_squared", [0.3, 2.5, 40.0])
def test_discrete_gaussian_pmf_chi_square(sigma_squared: float) -> None:
    sampler = DiscreteGaussianSampler(sigma_squared, NoiseSource.from_seed(f"pmf{sigma_squared}"))
    samples = sampler.sample_vector(12_000)
    support = int(4 * math.sqrt(sigma_squared)) + 1
    pvalue = _chi_square_pvalue(samples, lambda x: discrete_gaussian_pmf(x, sigma_squared), support)
    assert pvalue > 1e-4


@pytest.mark.parametrize("sigma_squared", [1.0, 400.0])
def test_discrete_gaussian_moments(sigma_squared: float) -> None:
    samples = DiscreteGaussianSampler(sigma_squared, NoiseSource.from_seed("m")).sample_vector(
        15_000
    )
    span = np.arange(-int(15 * math.sqrt(sigma_squared)) - 1, int(15 * math.sqrt(sigma_squared)))
    exact_var = float((discrete_gaussian_pmf(span, sigma_squared) * span**2).sum())
    assert exact_var == pytest.approx(sigma_squared, rel=1e-6)  # true for sigma >= 1
    assert abs(samples.mean()) < 5 * math.sqrt(exact_var / samples.size)
    assert samples.var() == pytest.approx(exact_var, rel=5 * math.sqrt(2 / samples.size))
    assert abs(stats.skew(samples)) < 0.1


def test_bernoulli_exp_neg_probabilities() -> None:
    source = NoiseSource.from_seed("bern")
    n = 20_000
    for gamma in (Fraction(1, 2), Fraction(23, 10)):
        hits = sum(_bernoulli_exp_neg(gamma, source) for _ in range(n))
        p = math.exp(-float(gamma))
        assert abs(hits / n - p) < 5 * math.sqrt(p * (1 - p) / n)


def test_discrete_laplace_pmf_chi_square() -> None:
    source = NoiseSource.from_seed("lap")
    t = 3
    samples = np.array([_discrete_laplace(t, source) for _ in range(12_000)])
    normaliser = (1 - math.exp(-1 / t)) / (1 + math.exp(-1 / t))
    pvalue = _chi_square_pvalue(samples, lambda x: normaliser * np.exp(-np.abs(x) / t), 15)
    assert pvalue > 1e-4


def test_default_randomness_is_os_and_exact_variance_kept() -> None:
    sampler = DiscreteGaussianSampler(Fraction(9, 4))
    assert sampler.sigma_squared == Fraction(9, 4)
    a, b = sampler.sample_vector(64), sampler.sample_vector(64)
    assert a.dtype == np.int64 and not np.array_equal(a, b)
    with pytest.raises(DpConfigError):
        DiscreteGaussianSampler(0)
    with pytest.raises(DpConfigError):
        sampler.sample_vector(0)


def test_sum_of_site_noise_has_intended_variance_under_dropout() -> None:
    local = 4.0  # per-site sigma^2 sized for m = 5 of 8 sites
    source = NoiseSource.from_seed("sum")
    sampler = DiscreteGaussianSampler(local, source)
    shares = np.stack([sampler.sample_vector(4_000) for _ in range(8)])
    assert shares[:5].sum(axis=0).var() == pytest.approx(5 * local, rel=0.08)
    assert shares.sum(axis=0).var() == pytest.approx(8 * local, rel=0.08)


def test_ddg_rho_single_site_is_exact_discrete_gaussian_bound() -> None:
    assert ddg_tau(3.0, 1) == 0.0
    assert ddg_rho(3.0, 1, 2.0, 100) == pytest.approx(4.0 / (2 * 9.0))


def test_ddg_rho_properties() -> None:
    ideal = 10.0**2 / (2 * 20 * 2.0**2)  # Delta^2 / (2 n sigma^2)
    rho = ddg_rho(2.0, 20, 10.0, 1000)
    assert ideal <= rho <= ideal * (1 + 1e-12)  # tau ~ 1e-32 at sigma = 2
    small = ddg_rho(0.6, 20, 10.0, 1000)
    assert small > 10.0**2 / (2 * 20 * 0.36)  # tau penalty is visible at small sigma
    sigmas = [0.5, 0.8, 1.0, 2.0, 5.0]
    values = [ddg_rho(s, 10, 5.0, 64) for s in sigmas]
    assert all(a > b for a, b in zip(values, values[1:], strict=False))
    with pytest.raises(DpConfigError):
        ddg_tau(0.4, 3)


def test_ddg_local_sigma_meets_target_tightly() -> None:
    sigma = ddg_local_sigma(0.05, 10, 100.0, 256)
    assert ddg_rho(sigma, 10, 100.0, 256) <= 0.05
    assert ddg_rho(sigma * (1 - 1e-6), 10, 100.0, 256) > 0.05
    assert ddg_local_sigma(1e6, 3, 1.0, 4) == 0.5


def test_release_discrete_share_charges_ledger() -> None:
    ledger = PrivacyLedger(epsilon=1.0, delta=1e-6)
    encoded = np.arange(10, dtype=np.int64)
    noisy, entry = release_discrete_share(
        encoded,
        sensitivity=100.0,
        local_sigma_squared=ddg_local_sigma(0.01, 5, 100.0, 10) ** 2,
        min_contributors=5,
        ledger=ledger,
        rng=NoiseSource.from_seed("dshare"),
        purpose="counts",
    )
    assert noisy.dtype == np.int64 and noisy.shape == (10,)
    assert entry.release.mechanism is Mechanism.DISTRIBUTED_DISCRETE_GAUSSIAN
    assert ledger.rho_spent == pytest.approx(0.01, rel=1e-6)
    before = ledger.entries
    with pytest.raises(PrivacyBudgetExceeded):
        release_discrete_share(
            encoded,
            sensitivity=100.0,
            local_sigma_squared=1.0,
            min_contributors=5,
            ledger=ledger,
            purpose="too costly",
        )
    assert ledger.entries is before
    with pytest.raises(EncodingError):
        release_discrete_share(
            np.array([0.5]),
            sensitivity=1.0,
            local_sigma_squared=1.0,
            min_contributors=1,
            ledger=ledger,
            purpose="floats",
        )
