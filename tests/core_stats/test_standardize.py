"""Federated standardisation from one secure sum."""

from __future__ import annotations

import numpy as np
import pytest

from core_stats.standardize import StandardizeLayout


def _sites(seed: int = 0):
    rng = np.random.default_rng(seed)
    return [np.column_stack([rng.normal(40 + i, 10, 30 + i), rng.gamma(2.0, 3.0, 30 + i)])
            for i in range(6)]


@pytest.mark.parametrize("shift", [None, (40.0, 6.0)])
def test_pooled_mean_and_sample_sd_from_the_sum(shift) -> None:
    sites = _sites()
    layout = StandardizeLayout(2, shift)
    vectors = [layout.site_vector(x) for x in sites]
    assert all(v.shape == (layout.length,) == (5,) for v in vectors)
    std = layout.combine(np.sum(vectors, axis=0))
    pooled = np.vstack(sites)
    assert std.n == pooled.shape[0]
    np.testing.assert_allclose(std.mean, pooled.mean(axis=0), rtol=1e-13)
    np.testing.assert_allclose(std.sd, pooled.std(axis=0, ddof=1), rtol=1e-12)
    z = std.apply(pooled)
    np.testing.assert_allclose(z.mean(axis=0), 0, atol=1e-12)
    np.testing.assert_allclose(z.std(axis=0, ddof=1), 1, rtol=1e-12)
    np.testing.assert_allclose(std.invert(z), pooled, rtol=1e-12)


def test_shift_protects_against_cancellation() -> None:
    rng = np.random.default_rng(1)
    sites = [1e8 + rng.normal(size=(50, 1)) for _ in range(4)]
    truth = np.vstack(sites).std(ddof=1)
    shifted = StandardizeLayout(1, (1e8,))
    std = shifted.combine(np.sum([shifted.site_vector(x) for x in sites], axis=0))
    assert std.sd[0] == pytest.approx(truth, rel=1e-9)


def test_standardisation_fails_loudly() -> None:
    layout = StandardizeLayout(2)
    with pytest.raises(ValueError, match="columns"):
        layout.site_vector(np.zeros((3, 3)))
    with pytest.raises(ValueError, match="missing"):
        layout.site_vector(np.array([[1.0, np.nan]]))
    with pytest.raises(ValueError, match="constant"):
        layout.combine(layout.site_vector(np.ones((4, 2))))
    with pytest.raises(ValueError, match="two rows"):
        layout.combine(layout.site_vector(np.ones((1, 2))))
    with pytest.raises(ValueError, match="length"):
        layout.combine(np.zeros(4))
