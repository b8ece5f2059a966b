"""Gaussian mechanism: analytic calibration, noise source, clipping, distributed shares."""

from __future__ import annotations

import math

import numpy as np
import pytest
from dp_accounting.pld import privacy_loss_distribution
from scipy import stats

from protocols.dp import (
    DistributedGaussian,
    DpConfigError,
    GaussianCalibration,
    Mechanism,
    NoiseSource,
    PrivacyBudgetExceeded,
    PrivacyLedger,
    analytic_gaussian_sigma,
    clip_rows_l2,
    gaussian_delta,
    release_gaussian_share,
)
from protocols.errors import AbortError, EncodingError

CALIBRATION_CASES = [
    (0.1, 1e-5, 1.0),
    (0.5, 1e-6, 2.0),
    (1.0, 1e-5, 1.0),
    (3.0, 1e-8, 0.5),
    (8.0, 1e-6, 10.0),
]


@pytest.mark.parametrize(("epsilon", "delta", "sensitivity"), CALIBRATION_CASES)
def test_calibration_meets_exact_condition_tightly(
    epsilon: float, delta: float, sensitivity: float
) -> None:
    sigma = analytic_gaussian_sigma(epsilon, delta, sensitivity)
    assert gaussian_delta(sigma, epsilon, sensitivity) <= delta
    assert gaussian_delta(sigma * (1 - 1e-9), epsilon, sensitivity) > delta * (1 - 1e-6)
    # exact condition at the returned sigma holds with equality to ~1e-9
    assert gaussian_delta(sigma, epsilon, sensitivity) == pytest.approx(delta, rel=1e-6)


@pytest.mark.parametrize(("epsilon", "delta", "sensitivity"), CALIBRATION_CASES)
def test_calibration_agrees_with_dp_accounting_pld(
    epsilon: float, delta: float, sensitivity: float
) -> None:
    sigma = analytic_gaussian_sigma(epsilon, delta, sensitivity)
    pld = privacy_loss_distribution.from_gaussian_mechanism(
        sigma / sensitivity, sensitivity=1.0, value_discretization_interval=1e-3
    )
    # Google's accountant evaluates the same (epsilon, delta) curve independently
    assert pld.get_delta_for_epsilon(epsilon) == pytest.approx(delta, rel=1e-6)


def test_analytic_sigma_beats_classical_calibration() -> None:
    for epsilon in (0.1, 0.5, 0.9):
        classical = math.sqrt(2 * math.log(1.25 / 1e-5)) / epsilon
        assert analytic_gaussian_sigma(epsilon, 1e-5, 1.0) < classical


def test_calibration_scales_linearly_in_sensitivity() -> None:
    base = analytic_gaussian_sigma(1.0, 1e-6, 1.0)
    assert analytic_gaussian_sigma(1.0, 1e-6, 7.0) == pytest.approx(7 * base, rel=1e-9)


def test_calibration_record() -> None:
    calibration = GaussianCalibration.calibrate(1.0, 1e-5, 2.0)
    assert calibration.rho == pytest.approx(4.0 / (2 * calibration.sigma**2))


@pytest.mark.parametrize(
    ("epsilon", "delta", "sensitivity"),
    [(0.0, 1e-5, 1.0), (-1.0, 1e-5, 1.0), (1.0, 0.0, 1.0), (1.0, 1.0, 1.0), (1.0, 1e-5, 0.0)],
)
def test_invalid_calibration_rejected(epsilon: float, delta: float, sensitivity: float) -> None:
    with pytest.raises(DpConfigError):
        analytic_gaussian_sigma(epsilon, delta, sensitivity)


def test_noise_statistics_seeded() -> None:
    z = NoiseSource.from_seed(b"moments").standard_normal(200_000)
    assert abs(z.mean()) < 5 / math.sqrt(z.size)
    assert abs(z.var() - 1.0) < 5 * math.sqrt(2 / z.size)
    assert stats.kstest(z, "norm").pvalue > 1e-3


def test_seeded_source_is_reproducible_and_os_source_is_not() -> None:
    a = NoiseSource.from_seed(42).standard_normal(8)
    b = NoiseSource.from_seed(42).standard_normal(8)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(NoiseSource.from_os().uniform(8), NoiseSource.from_os().uniform(8))


def test_noise_is_not_numpy_global_rng() -> None:
    np.random.seed(0)  # noqa: NPY002 (the point of the test)
    first = NoiseSource.from_seed(7).standard_normal(16)
    np.random.seed(12345)  # noqa: NPY002 (the point of the test)
    second = NoiseSource.from_seed(7).standard_normal(16)
    np.testing.assert_array_equal(first, second)  # global seed has no influence
    np.random.seed(0)  # noqa: NPY002 (the point of the test)
    os_first = NoiseSource.from_os().standard_normal(16)
    np.random.seed(0)  # noqa: NPY002 (the point of the test)
    os_second = NoiseSource.from_os().standard_normal(16)
    assert not np.array_equal(os_first, os_second)  # same global seed, fresh noise
    state = np.random.get_state()[1].copy()  # noqa: NPY002 (the point of the test)
    NoiseSource.from_os().standard_normal(1000)
    after = np.random.get_state()[1]  # noqa: NPY002 (the point of the test)
    np.testing.assert_array_equal(after, state)  # the global RNG was not touched


def test_uniforms_and_randbelow() -> None:
    source = NoiseSource.from_seed("uniform")
    u = source.uniform(100_000)
    assert np.all((u > 0) & (u < 1))
    counts = np.bincount([source.randbelow(7) for _ in range(14_000)], minlength=7)
    assert stats.chisquare(counts).pvalue > 1e-4
    with pytest.raises(DpConfigError):
        source.randbelow(0)
    with pytest.raises(DpConfigError):
        NoiseSource(b"short")


def test_clipping_counts_and_bounds() -> None:
    rows = np.array([[3.0, 4.0], [0.3, 0.4], [0.0, 0.0], [-6.0, 8.0]])
    original = rows.copy()
    result = clip_rows_l2(rows, 1.0)
    assert result.n_clipped == 2
    np.testing.assert_allclose(np.linalg.norm(result.rows, axis=1), [1.0, 0.5, 0.0, 1.0])
    np.testing.assert_allclose(result.rows[0], [0.6, 0.8])  # direction preserved
    np.testing.assert_array_equal(result.rows[1:3], rows[1:3])
    np.testing.assert_array_equal(rows, original)  # input untouched
    single = clip_rows_l2([3.0, 4.0], 2.5)
    assert single.rows.shape == (2,) and single.n_clipped == 1
    with pytest.raises(DpConfigError):
        clip_rows_l2(rows, 0.0)
    with pytest.raises(EncodingError):
        clip_rows_l2([np.nan], 1.0)


def test_distributed_shares_sum_to_target_variance_with_dropouts() -> None:
    noise = DistributedGaussian(sigma=3.0, min_contributors=6)
    source = NoiseSource.from_seed("shares")
    dim = 100_000
    shares = np.stack([noise.noise_share(dim, source) for _ in range(10)])
    survivors = shares[:6].sum(axis=0)  # 4 of 10 sites dropped: exactly sigma^2
    assert survivors.var() == pytest.approx(9.0, rel=0.02)
    assert noise.variance_of_sum(6) == pytest.approx(9.0)
    everyone = shares.sum(axis=0)  # all 10: more noise, never less
    assert everyone.var() == pytest.approx(noise.variance_of_sum(10), rel=0.02)
    assert noise.variance_of_sum(10) >= 9.0
    with pytest.raises(AbortError):
        noise.variance_of_sum(5)
    with pytest.raises(DpConfigError):
        DistributedGaussian(sigma=1.0, min_contributors=0)


def test_release_charges_first_and_adds_noise() -> None:
    ledger = PrivacyLedger(epsilon=2.0, delta=1e-6)
    noise = DistributedGaussian(sigma=analytic_gaussian_sigma(1.0, 1e-6, 1.0), min_contributors=1)
    vector = np.zeros(50_000)
    released, entry = release_gaussian_share(
        vector,
        sensitivity=1.0,
        noise=noise,
        ledger=ledger,
        source=NoiseSource.from_seed("release"),
        purpose="test sum",
    )
    assert entry.release.mechanism is Mechanism.GAUSSIAN
    assert released.var() == pytest.approx(noise.sigma**2, rel=0.03)
    np.testing.assert_array_equal(vector, 0.0)
    before = ledger.entries
    tiny = DistributedGaussian(sigma=0.01, min_contributors=1)
    with pytest.raises(PrivacyBudgetExceeded):
        release_gaussian_share(
            vector,
            sensitivity=1.0,
            noise=tiny,
            ledger=ledger,
            source=NoiseSource.from_os(),
            purpose="too costly",
        )
    assert ledger.entries is before
    with pytest.raises(EncodingError):
        release_gaussian_share(
            [np.inf],
            sensitivity=1.0,
            noise=noise,
            ledger=ledger,
            source=NoiseSource.from_os(),
            purpose="bad",
        )
    assert ledger.entries is before
