"""Exact discrete Gaussian sampling and the distributed discrete Gaussian.

The discrete Gaussian :math:`N_{\\mathbb{Z}}(0, \\sigma^2)` has
:math:`P[X = x] \\propto e^{-x^2 / (2\\sigma^2)}` on the integers. The sampler
follows Canonne, Kamath & Steinke (NeurIPS 2020, Algorithms 1-3): rational
arithmetic and uniform integers only, so the output distribution is exact
(no floating point at all). It fits secure aggregation's integer ring: each
site adds an integer noise vector to its fixed-point encoded values.

Distributed noise (Kairouz, Liu & Steinke, ICML 2021): when each of n sites
adds :math:`N_{\\mathbb{Z}}(0, \\sigma^2)`, the sum is not exactly discrete
Gaussian, but close; their Proposition 14 bounds its Rényi divergence, and we
use the two terms that are linear in the order α, which give ρ-zCDP with

.. math::
    \\rho = \\tfrac12 \\min\\Big\\{ \\frac{\\Delta_2^2}{n\\sigma^2}
    + \\frac{2\\Delta_1\\tau}{\\sqrt n\\,\\sigma} + \\tau^2 d,\\;
    \\Big(\\frac{\\Delta_2}{\\sqrt n\\,\\sigma} + \\tau\\sqrt d\\Big)^2 \\Big\\},
    \\qquad \\tau = 10 \\sum_{k=1}^{n-1} e^{-2\\pi^2\\sigma^2 k/(k+1)},

for integer L2 / L1 sensitivities :math:`\\Delta_2, \\Delta_1` and dimension d.
With n = 1, τ = 0 and ρ = Δ₂²/(2σ²), the exact discrete Gaussian bound.
"""

from __future__ import annotations

import math
import secrets
from fractions import Fraction
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from protocols.dp_mechanism import DpConfigError

__all__ = [
    "RandomIntegers",
    "OsRandom",
    "DiscreteGaussianSampler",
    "discrete_gaussian_pmf",
    "ddg_tau",
    "ddg_rho",
    "ddg_local_sigma",
]


class RandomIntegers(Protocol):
    """Anything that draws a uniform integer in [0, n)."""

    def randbelow(self, n: int) -> int:
        """Uniform integer in ``[0, n)``."""
        ...


class OsRandom:
    """Uniform integers from the OS CSPRNG (``secrets.randbelow``)."""

    def randbelow(self, n: int) -> int:
        """Uniform integer in ``[0, n)``."""
        return secrets.randbelow(n)


def _bernoulli(p: Fraction, rng: RandomIntegers) -> bool:
    """Bernoulli(p) for rational p ∈ [0, 1]: :math:`U < p` with U uniform on a grid."""
    return rng.randbelow(p.denominator) < p.numerator


def _bernoulli_exp_neg(gamma: Fraction, rng: RandomIntegers) -> bool:
    """Bernoulli(:math:`e^{-\\gamma}`) for rational γ ≥ 0 (CKS 2020, Algorithm 1)."""
    while gamma > 1:
        if not _bernoulli_exp_neg(Fraction(1), rng):
            return False
        gamma -= 1
    k = 1
    while _bernoulli(gamma / k, rng):
        k += 1
    return k % 2 == 1


def _discrete_laplace(t: int, rng: RandomIntegers) -> int:
    """:math:`P[Y=y] \\propto e^{-|y|/t}` for integer t ≥ 1 (CKS 2020, Algorithm 2)."""
    while True:
        u = rng.randbelow(t)
        if not _bernoulli_exp_neg(Fraction(u, t), rng):
            continue
        v = 0
        while _bernoulli_exp_neg(Fraction(1), rng):
            v += 1
        magnitude = u + t * v
        negative = rng.randbelow(2) == 1
        if negative and magnitude == 0:
            continue
        return -magnitude if negative else magnitude


class DiscreteGaussianSampler:
    """Exact sampler of :math:`N_{\\mathbb{Z}}(0, \\sigma^2)` (CKS 2020, Algorithm 3).

    With :math:`t = \\lfloor\\sigma\\rfloor + 1`, draw :math:`Y` discrete
    Laplace of scale t and accept with probability
    :math:`\\exp(-(|Y| - \\sigma^2/t)^2 / (2\\sigma^2))`. ``sigma_squared`` is
    converted to an exact :class:`~fractions.Fraction`; randomness comes from
    the OS unless a :class:`RandomIntegers` source is given (e.g. a seeded
    :class:`~protocols.dp_mechanism.NoiseSource` in tests).
    """

    def __init__(
        self, sigma_squared: Fraction | float | int, rng: RandomIntegers | None = None
    ) -> None:
        variance = Fraction(sigma_squared)
        if variance <= 0:
            raise DpConfigError("sigma_squared must be positive")
        self._variance = variance
        self._t = math.isqrt(math.floor(variance)) + 1  # floor(sigma) + 1
        self._rng: RandomIntegers = rng if rng is not None else OsRandom()

    @property
    def sigma_squared(self) -> Fraction:
        """The exact variance parameter σ²."""
        return self._variance

    def sample(self) -> int:
        """One exact draw."""
        variance, t = self._variance, self._t
        while True:
            y = _discrete_laplace(t, self._rng)
            gamma = (abs(y) - variance / t) ** 2 / (2 * variance)
            if _bernoulli_exp_neg(gamma, self._rng):
                return y

    def sample_vector(self, dimension: int) -> NDArray[np.int64]:
        """``dimension`` independent draws as int64."""
        if dimension < 1:
            raise DpConfigError("dimension must be >= 1")
        return np.array([self.sample() for _ in range(dimension)], dtype=np.int64)


def discrete_gaussian_pmf(values: NDArray[np.int64], sigma_squared: float) -> NDArray[np.float64]:
    """:math:`e^{-x^2/(2\\sigma^2)} / \\sum_{y \\in \\mathbb{Z}} e^{-y^2/(2\\sigma^2)}`."""
    span = int(math.ceil(12.0 * math.sqrt(sigma_squared))) + 1
    grid = np.arange(-span, span + 1, dtype=np.float64)
    normaliser = np.exp(-(grid**2) / (2.0 * sigma_squared)).sum()
    x = np.asarray(values, dtype=np.float64)
    return np.exp(-(x**2) / (2.0 * sigma_squared)) / normaliser


def ddg_tau(local_sigma: float, n_contributors: int) -> float:
    """:math:`\\tau = 10 \\sum_{k=1}^{n-1} \\exp(-2\\pi^2\\sigma^2 k/(k+1))` (KLS 2021)."""
    if local_sigma < 0.5:
        raise DpConfigError("the distributed discrete Gaussian bound needs sigma >= 1/2")
    if n_contributors < 1:
        raise DpConfigError("n_contributors must be >= 1")
    return 10.0 * sum(
        math.exp(-2.0 * math.pi**2 * local_sigma**2 * k / (k + 1)) for k in range(1, n_contributors)
    )


def ddg_rho(
    local_sigma: float,
    n_contributors: int,
    l2_sensitivity: float,
    dimension: int,
    l1_sensitivity: float | None = None,
) -> float:
    """zCDP ρ of a sum of n per-site :math:`N_{\\mathbb{Z}}(0,\\sigma^2)` vectors (module doc).

    Pass n = ``min_contributors``: extra contributors only add independent
    noise (post-processing), so the bound for m covers every k ≥ m.
    ``l1_sensitivity`` defaults to :math:`\\Delta_2\\sqrt d` (Cauchy–Schwarz).
    """
    if not (l2_sensitivity > 0 and dimension >= 1):
        raise DpConfigError("need l2_sensitivity > 0 and dimension >= 1")
    l1 = l2_sensitivity * math.sqrt(dimension) if l1_sensitivity is None else l1_sensitivity
    tau = ddg_tau(local_sigma, n_contributors)
    scale = math.sqrt(n_contributors) * local_sigma
    first = (l2_sensitivity / scale) ** 2 + 2.0 * l1 * tau / scale + tau**2 * dimension
    second = (l2_sensitivity / scale + tau * math.sqrt(dimension)) ** 2
    return 0.5 * min(first, second)


def ddg_local_sigma(
    target_rho: float,
    min_contributors: int,
    l2_sensitivity: float,
    dimension: int,
    l1_sensitivity: float | None = None,
) -> float:
    """Smallest per-site σ (to 1e-9 relative) with :func:`ddg_rho` ≤ ``target_rho``."""
    if target_rho <= 0:
        raise DpConfigError("target_rho must be positive")

    def rho_at(sigma: float) -> float:
        return ddg_rho(sigma, min_contributors, l2_sensitivity, dimension, l1_sensitivity)

    low, high = 0.5, max(1.0, l2_sensitivity)
    if rho_at(low) <= target_rho:
        return low
    while rho_at(high) > target_rho:
        high *= 2.0
    while high - low > 1e-9 * high:
        mid = 0.5 * (low + high)
        low, high = (low, mid) if rho_at(mid) <= target_rho else (mid, high)
    return high
