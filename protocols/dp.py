"""Differential privacy for released sums: the public face of the DP layer.

A site releases a flat vector whose sum over sites has a stated L2
sensitivity Δ (derived by the statistics code, enforced by clipping or
bounding). The site charges the release to its :class:`PrivacyLedger`
*before* any noise is drawn, then adds its noise share:

1. ``ledger.spend(NoiseRelease(...))`` — raises :class:`PrivacyBudgetExceeded`
   and leaves the ledger untouched if the budget would be exceeded;
2. continuous: :class:`DistributedGaussian` share :math:`N(0, \\sigma^2/m)`
   from a ChaCha20 :class:`NoiseSource`; or discrete: an exact
   :class:`DiscreteGaussianSampler` vector on fixed-point encoded values.

The pieces live in :mod:`protocols.dp_mechanism`,
:mod:`protocols.dp_discrete` and :mod:`protocols.dp_accountant`.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

from protocols.dp_accountant import (
    LedgerEntry,
    Mechanism,
    NoiseRelease,
    PrivacyLedger,
    total_rho,
    zcdp_epsilon,
    zcdp_epsilon_classical,
    zcdp_rho_for_epsilon,
)
from protocols.dp_discrete import (
    DiscreteGaussianSampler,
    OsRandom,
    RandomIntegers,
    ddg_local_sigma,
    ddg_rho,
    ddg_tau,
    discrete_gaussian_pmf,
)
from protocols.dp_mechanism import (
    ClipResult,
    DistributedGaussian,
    DpConfigError,
    GaussianCalibration,
    NoiseSource,
    analytic_gaussian_sigma,
    clip_rows_l2,
    gaussian_delta,
)
from protocols.errors import EncodingError, PrivacyBudgetExceeded

__all__ = [
    "ClipResult",
    "DiscreteGaussianSampler",
    "DistributedGaussian",
    "DpConfigError",
    "GaussianCalibration",
    "LedgerEntry",
    "Mechanism",
    "NoiseRelease",
    "NoiseSource",
    "OsRandom",
    "PrivacyBudgetExceeded",
    "PrivacyLedger",
    "RandomIntegers",
    "analytic_gaussian_sigma",
    "clip_rows_l2",
    "ddg_local_sigma",
    "ddg_rho",
    "ddg_tau",
    "discrete_gaussian_pmf",
    "gaussian_delta",
    "release_gaussian_share",
    "release_discrete_share",
    "total_rho",
    "zcdp_epsilon",
    "zcdp_epsilon_classical",
    "zcdp_rho_for_epsilon",
]


def release_gaussian_share(
    vector: ArrayLike,
    *,
    sensitivity: float,
    noise: DistributedGaussian,
    ledger: PrivacyLedger,
    source: NoiseSource,
    purpose: str,
) -> tuple[NDArray[np.float64], LedgerEntry]:
    """Charge the ledger, then return :math:`x + N(0, \\sigma^2/m)` and the entry.

    The release is accounted as the Gaussian mechanism on the sum with
    std σ = ``noise.sigma`` (guaranteed while ≥ m sites contribute) and
    L2 sensitivity Δ: :math:`\\rho = \\Delta^2/(2\\sigma^2)`. With
    ``min_contributors = 1`` this is the central Gaussian mechanism.
    """
    array = _finite_vector(vector)
    release = NoiseRelease(Mechanism.GAUSSIAN, noise.sigma, sensitivity, purpose=purpose)
    entry = ledger.spend(release)
    return array + noise.noise_share(array.size, source), entry


def release_discrete_share(
    encoded: ArrayLike,
    *,
    sensitivity: float,
    local_sigma_squared: float,
    min_contributors: int,
    ledger: PrivacyLedger,
    rng: RandomIntegers | None = None,
    purpose: str,
    l1_sensitivity: float | None = None,
) -> tuple[NDArray[np.int64], LedgerEntry]:
    """Charge the ledger, then return :math:`x + N_{\\mathbb{Z}}(0, \\sigma^2)^d` (integers).

    ``encoded`` holds fixed-point integers; ``sensitivity`` is the L2
    sensitivity of their sum in the same integer units (after rounding).
    Accounted with the Kairouz–Liu–Steinke bound for ``min_contributors``.
    """
    array = np.asarray(encoded)
    if array.ndim != 1 or array.size == 0 or array.dtype.kind not in "iu":
        raise EncodingError("expected a non-empty flat integer vector")
    release = NoiseRelease(
        Mechanism.DISTRIBUTED_DISCRETE_GAUSSIAN,
        float(np.sqrt(local_sigma_squared)),
        sensitivity,
        purpose=purpose,
        n_contributors=min_contributors,
        dimension=array.size,
        l1_sensitivity=l1_sensitivity,
    )
    entry = ledger.spend(release)
    sampler = DiscreteGaussianSampler(local_sigma_squared, rng)
    return array.astype(np.int64) + sampler.sample_vector(array.size), entry


def _finite_vector(vector: ArrayLike) -> NDArray[np.float64]:
    array = np.asarray(vector, dtype=np.float64)
    if array.ndim != 1 or array.size == 0 or not np.all(np.isfinite(array)):
        raise EncodingError("expected a non-empty, finite flat vector")
    return array
