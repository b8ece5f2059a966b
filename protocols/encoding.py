"""Fixed-point encoding of bounded float vectors into the ring Z_{2^64} (one or two words).

A value x with declared bound |x| ≤ B is encoded as the integer
q(x) = rint(x · 2^f) in two's complement; numpy ``uint64`` arithmetic wraps
for free, so masks and sums live in Z_{2^64} per word. The number of
fractional bits f is chosen per coordinate from B and the number of sites n
so that the sum of n encoded values cannot wrap:

* one word (64-bit ring):   f = ⌊62 − log2(n B)⌋, so |Σ q| ≤ 2^62 + n/2 < 2^63;
* two words (96-bit range): f = ⌊93 − log2(n B)⌋; q = hi · 2^32 + lo with
  0 ≤ lo < 2^32 in word 0 and hi (two's complement) in word 1. Each word is
  summed in Z_{2^64} independently; word 0 collects at most n · 2^32 < 2^64 and
  word 1 at most 2^61 + 2n, so neither wraps and no carry crosses words
  while masks are added. The carry is resolved once, at decoding.

**Precision.** Each site's value is rounded once (error ≤ 2^{−f−1}), the
integer sum is exact, and decoding rounds once to float64, so

    | decode(Σ_u q(x_u)) − Σ_u x_u | ≤ n · 2^{−f−1} + ½ ulp(Σ_u x_u)

per coordinate, against the exact real sum. :attr:`FixedPointEncoder.error_bound`
returns the first term. :meth:`FixedPointEncoder.for_sum` picks one word when
that bound is below ``tolerance`` (default 1e-10) in every coordinate and two
words otherwise; e.g. B = 1e6, n = 1000 needs two words (f = 63, bound 5e-17)
since one word gives f = 32 and a bound of 1.2e-7.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from protocols.errors import EncodingError, InvalidMessage

__all__ = ["FixedPointEncoder", "DEFAULT_TOLERANCE"]

DEFAULT_TOLERANCE = 1e-10
_HEADROOM_BITS = {1: 62, 2: 93}
_MAX_FRAC_BITS = 1000
_LOW_MASK = np.uint64(0xFFFFFFFF)


def _frac_bits(bounds: np.ndarray, n_sites: int, words: int) -> np.ndarray:
    bits = np.floor(_HEADROOM_BITS[words] - np.log2(n_sites * bounds))
    return np.clip(bits, -_MAX_FRAC_BITS, _MAX_FRAC_BITS).astype(np.int64)


@dataclass(frozen=True, eq=False)
class FixedPointEncoder:
    """Encoder for vectors of a fixed length whose sum over ``n_sites`` must not wrap.

    Attributes
    ----------
    bounds : numpy.ndarray
        Per-coordinate bound B_i > 0 on |x_i| for each site's value (float64).
    n_sites : int
        Maximum number of summed vectors n.
    words : int
        1 (64-bit ring) or 2 (two 64-bit words, 96-bit range).
    frac_bits : numpy.ndarray
        Fractional bits f_i per coordinate.
    """

    bounds: np.ndarray
    n_sites: int
    words: int
    frac_bits: np.ndarray

    @classmethod
    def for_sum(
        cls,
        bounds: float | np.ndarray,
        n_sites: int,
        length: int,
        *,
        tolerance: float = DEFAULT_TOLERANCE,
        words: int | None = None,
    ) -> FixedPointEncoder:
        """Choose the encoding for a sum of ``n_sites`` vectors of ``length`` values.

        Parameters
        ----------
        bounds : float or numpy.ndarray
            One bound for all coordinates, or one per coordinate (shape ``(length,)``).
        n_sites : int
            Number of vectors that may be summed.
        length : int
            Vector length.
        tolerance : float
            Largest acceptable quantisation error n · 2^{−f−1} of the decoded sum;
            decides between one and two words when ``words`` is None.
        words : int, optional
            Force 1 or 2 words.
        """
        if length < 1 or n_sites < 1:
            raise EncodingError("length and n_sites must be positive")
        raw_bounds = np.asarray(bounds, dtype=np.float64)
        if raw_bounds.shape not in ((), (length,)):
            raise EncodingError(f"bounds must be a scalar or have shape ({length},)")
        bound_array = np.broadcast_to(raw_bounds, (length,)).copy()
        if not np.all(np.isfinite(bound_array)) or np.any(bound_array <= 0):
            raise EncodingError("bounds must be finite and positive")
        if words is None:
            one_word = _frac_bits(bound_array, n_sites, 1)
            fits = np.all(n_sites * np.ldexp(1.0, -one_word - 1) <= tolerance)
            words = 1 if fits else 2
        if words not in (1, 2):
            raise EncodingError("words must be 1 or 2")
        if words == 2 and n_sites >= 2**31:
            raise EncodingError("two-word encoding supports fewer than 2^31 sites")
        bound_array.setflags(write=False)
        frac = _frac_bits(bound_array, n_sites, words)
        frac.setflags(write=False)
        return cls(bound_array, int(n_sites), int(words), frac)

    @property
    def length(self) -> int:
        """Number of float values per vector."""
        return int(self.bounds.shape[0])

    @property
    def n_words(self) -> int:
        """Number of uint64 ring words per encoded vector (``words × length``)."""
        return self.words * self.length

    @property
    def error_bound(self) -> np.ndarray:
        """Quantisation bound n · 2^{−f−1} on |decoded sum − exact sum| per coordinate."""
        return self.n_sites * np.ldexp(1.0, -self.frac_bits - 1)

    def encode(self, values: np.ndarray) -> np.ndarray:
        """Encode one site's vector; reject bad input before anything is masked.

        Raises
        ------
        EncodingError
            Wrong shape or dtype, NaN or infinite values, or |x_i| > B_i.
        """
        array = np.asarray(values)
        if array.dtype.kind not in "iuf":
            raise EncodingError(f"values must be real numbers, got dtype {array.dtype}")
        if array.shape != (self.length,):
            raise EncodingError(f"expected shape ({self.length},), got {array.shape}")
        x = array.astype(np.float64)
        if not np.all(np.isfinite(x)):
            raise EncodingError("values contain NaN or infinity")
        outside = np.flatnonzero(np.abs(x) > self.bounds)
        if outside.size:
            raise EncodingError(
                f"{outside.size} value(s) exceed their declared bound, first at index {outside[0]}"
            )
        scaled = np.rint(np.ldexp(x, self.frac_bits))
        if self.words == 1:
            return scaled.astype(np.int64).view(np.uint64)
        high = np.floor(np.ldexp(scaled, -32))
        low = scaled - np.ldexp(high, 32)
        return np.concatenate([low.astype(np.uint64), high.astype(np.int64).view(np.uint64)])

    def decode(self, total: np.ndarray) -> np.ndarray:
        """Decode an (unmasked) ring sum of at most ``n_sites`` encodings to float64."""
        if not isinstance(total, np.ndarray) or total.dtype != np.uint64:
            raise InvalidMessage("a ring vector must be a numpy uint64 array")
        if total.shape != (self.n_words,):
            raise InvalidMessage(f"expected {self.n_words} ring words, got {total.shape}")
        if self.words == 1:
            return np.ldexp(total.view(np.int64).astype(np.float64), -self.frac_bits)
        low, high = total[: self.length], total[self.length :].view(np.int64)
        high = high + (low >> np.uint64(32)).astype(np.int64)
        low32 = (low & _LOW_MASK).astype(np.float64)
        high_float = high.astype(np.float64)
        residual = (high - high_float.astype(np.int64)).astype(np.float64)
        exact_once = np.ldexp(high_float, 32) + (np.ldexp(residual, 32) + low32)
        return np.ldexp(exact_once, -self.frac_bits)
