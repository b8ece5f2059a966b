"""Gaussian mechanism: cryptographic noise source, analytic calibration, clipping.

Floating-point caveat
---------------------
Continuous Gaussian noise is drawn as :math:`z = \\Phi^{-1}(u)` from a 53-bit
uniform :math:`u` produced by a ChaCha20 keystream. The privacy analysis
assumes exact real-valued noise ("idealised numerics", as OpenDP labels it):
the float output has a discrete, non-uniform lattice of values, its tails are
truncated at :math:`|z| \\approx 8.3`, and Mironov (CCS 2012) showed that the
low-order bits of float noise can leak the un-noised value. The guarantee
stated by :class:`GaussianCalibration` is therefore that of the ideal
mechanism; callers who need a guarantee that holds for the implementation
itself should use the integer discrete Gaussian of :mod:`protocols.dp_discrete`
on fixed-point encoded values.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from numpy.typing import ArrayLike, NDArray

from protocols.errors import AbortError, EncodingError, ProtocolError

__all__ = [
    "DpConfigError",
    "NoiseSource",
    "GaussianCalibration",
    "gaussian_delta",
    "analytic_gaussian_sigma",
    "ClipResult",
    "clip_rows_l2",
    "DistributedGaussian",
]

_SEED_TAG = b"securefed/dp/noise-source/v1\x00"


class DpConfigError(ProtocolError):
    """A differential-privacy parameter is invalid (non-positive ε, δ ∉ (0,1), ...)."""


class NoiseSource:
    """Randomness from a ChaCha20 keystream (RFC 8439 cipher, 256-bit key).

    :meth:`from_os` keys it from ``os.urandom``; :meth:`from_seed` derives the
    key from a caller's seed and exists for reproducible tests only. The
    keystream never repeats within one source, so no draw is ever reused.
    It never touches numpy's global RNG.
    """

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise DpConfigError("ChaCha20 needs a 32-byte key")
        cipher = Cipher(algorithms.ChaCha20(key, b"\x00" * 16), mode=None)
        self._stream = cipher.encryptor()

    @classmethod
    def from_os(cls) -> NoiseSource:
        """A source keyed with 256 bits of OS randomness."""
        return cls(os.urandom(32))

    @classmethod
    def from_seed(cls, seed: bytes | str | int) -> NoiseSource:
        """A deterministic source for tests: key = SHA-256(tag ‖ seed)."""
        raw = seed if isinstance(seed, bytes) else str(seed).encode()
        return cls(hashlib.sha256(_SEED_TAG + raw).digest())

    def random_bytes(self, n: int) -> bytes:
        """The next ``n`` keystream bytes."""
        return self._stream.update(b"\x00" * n)

    def randbelow(self, n: int) -> int:
        """Uniform integer in :math:`[0, n)` by rejection (no modulo bias)."""
        if n <= 0:
            raise DpConfigError("randbelow needs n >= 1")
        bits = (n - 1).bit_length()
        while True:
            candidate = int.from_bytes(self.random_bytes((bits + 7) // 8 or 1), "little")
            candidate &= (1 << bits) - 1
            if candidate < n:
                return candidate

    def uniform(self, size: int) -> NDArray[np.float64]:
        """Uniforms :math:`u = (k + 1/2)\\,2^{-53}`, k a 53-bit integer; u ∈ (0, 1)."""
        words = np.frombuffer(self.random_bytes(8 * size), dtype="<u8")
        return ((words >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0**-53

    def standard_normal(self, size: int) -> NDArray[np.float64]:
        """Standard normals by inversion, :math:`z = \\Phi^{-1}(u)` (see module caveat)."""
        from scipy.special import ndtri  # here: scipy.special costs ~0.3 s to import

        return ndtri(self.uniform(size))


def _check_privacy(epsilon: float, delta: float, sensitivity: float) -> None:
    if not (math.isfinite(epsilon) and epsilon > 0):
        raise DpConfigError("epsilon must be positive and finite")
    if not 0 < delta < 1:
        raise DpConfigError("delta must be in (0, 1)")
    if not (math.isfinite(sensitivity) and sensitivity > 0):
        raise DpConfigError("sensitivity must be positive and finite")


def gaussian_delta(sigma: float, epsilon: float, sensitivity: float) -> float:
    """Exact δ of the Gaussian mechanism at ε (Balle & Wang 2018, Thm. 8).

    .. math::
        \\delta(\\sigma) = \\Phi(a - b) - e^{\\varepsilon}\\,\\Phi(-a - b), \\qquad
        a = \\frac{\\Delta}{2\\sigma},\\; b = \\frac{\\varepsilon\\sigma}{\\Delta}

    The second term is evaluated as :math:`\\exp(\\varepsilon + \\log\\Phi(\\cdot))`
    so it neither overflows nor underflows for large ε.
    """
    from scipy.special import log_ndtr, ndtr

    a = sensitivity / (2.0 * sigma)
    b = epsilon * sigma / sensitivity
    return max(0.0, float(ndtr(a - b) - math.exp(epsilon + float(log_ndtr(-a - b)))))


def analytic_gaussian_sigma(
    epsilon: float, delta: float, sensitivity: float, rel_tol: float = 1e-12
) -> float:
    """Smallest σ (to ``rel_tol``) with :math:`\\delta(\\sigma) \\le \\delta`.

    Bisection on :math:`\\log\\sigma`: :math:`\\delta(\\sigma)` is decreasing in
    σ, and the returned value is the upper end of the final bracket, so the
    exact condition always holds for it.
    """
    _check_privacy(epsilon, delta, sensitivity)
    low = high = sensitivity
    while gaussian_delta(high, epsilon, sensitivity) > delta:
        high *= 2.0
    while gaussian_delta(low, epsilon, sensitivity) <= delta:
        low /= 2.0
    while high - low > rel_tol * high:
        mid = math.sqrt(low * high)
        if gaussian_delta(mid, epsilon, sensitivity) <= delta:
            high = mid
        else:
            low = mid
    return high


@dataclass(frozen=True)
class GaussianCalibration:
    """σ of the Gaussian mechanism for (ε, δ) and L2 sensitivity Δ (analytic).

    ``sigma`` is the standard deviation of the noise on the released sum;
    the zCDP cost of one release is :math:`\\rho = \\Delta^2 / (2\\sigma^2)`.
    """

    epsilon: float
    delta: float
    sensitivity: float
    sigma: float

    @classmethod
    def calibrate(cls, epsilon: float, delta: float, sensitivity: float) -> GaussianCalibration:
        """Run :func:`analytic_gaussian_sigma`."""
        sigma = analytic_gaussian_sigma(epsilon, delta, sensitivity)
        return cls(epsilon, delta, sensitivity, sigma)

    @property
    def rho(self) -> float:
        """zCDP cost :math:`\\Delta^2 / (2\\sigma^2)`."""
        return self.sensitivity**2 / (2.0 * self.sigma**2)


@dataclass(frozen=True, eq=False)
class ClipResult:
    """Rows scaled to L2 norm ≤ ``bound``, and how many needed scaling."""

    rows: NDArray[np.float64]
    n_clipped: int
    bound: float


def clip_rows_l2(rows: ArrayLike, bound: float) -> ClipResult:
    """Scale each row to L2 norm ≤ R: :math:`x_i \\leftarrow x_i \\min(1, R/\\lVert x_i\\rVert_2)`.

    A 1-D input is treated as a single row. Input is never modified.
    """
    if not (math.isfinite(bound) and bound > 0):
        raise DpConfigError("clipping bound must be positive and finite")
    array = np.array(rows, dtype=np.float64, ndmin=1)
    flat = array.reshape(1, -1) if array.ndim == 1 else array
    if flat.ndim != 2 or not np.all(np.isfinite(flat)):
        raise EncodingError("rows must be a finite 1-D or 2-D array")
    norms = np.linalg.norm(flat, axis=1)
    over = norms > bound
    factors = np.where(over, bound / np.where(over, norms, 1.0), 1.0)
    clipped = flat * factors[:, None]
    return ClipResult(clipped.reshape(array.shape), int(over.sum()), float(bound))


@dataclass(frozen=True)
class DistributedGaussian:
    """Gaussian noise split over sites under secure summation.

    Each site adds :math:`N(0, \\sigma^2 / m)` with m = ``min_contributors``,
    so any set of :math:`k \\ge m` contributors gives the sum
    :math:`N(0, k\\sigma^2/m)`, at least the target :math:`N(0, \\sigma^2)`:
    dropouts down to m cannot lower the noise. Fewer than m contributors
    must abort the round (:meth:`variance_of_sum` raises).
    """

    sigma: float
    min_contributors: int

    def __post_init__(self) -> None:
        if not (math.isfinite(self.sigma) and self.sigma > 0):
            raise DpConfigError("sigma must be positive and finite")
        if self.min_contributors < 1:
            raise DpConfigError("min_contributors must be >= 1")

    @property
    def share_sigma(self) -> float:
        """Per-site standard deviation :math:`\\sigma / \\sqrt{m}`."""
        return self.sigma / math.sqrt(self.min_contributors)

    def variance_of_sum(self, n_contributors: int) -> float:
        """Variance :math:`k\\sigma^2/m` of the summed shares of k contributors."""
        if n_contributors < self.min_contributors:
            raise AbortError(
                f"{n_contributors} contributors < min_contributors={self.min_contributors}: "
                "the summed noise would be below the calibrated level"
            )
        return n_contributors * self.share_sigma**2

    def noise_share(self, dimension: int, source: NoiseSource) -> NDArray[np.float64]:
        """One site's share: ``dimension`` draws of :math:`N(0, \\sigma^2/m)`."""
        if dimension < 1:
            raise DpConfigError("dimension must be >= 1")
        return self.share_sigma * source.standard_normal(dimension)
