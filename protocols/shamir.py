"""Shamir t-of-n secret sharing of 32-byte secrets over GF(p), p = 2^256 + 297.

A secret s ∈ [0, 2^256) is the constant term of a random polynomial
f(x) = s + a_1 x + … + a_{t−1} x^{t−1} over GF(p) with a_i drawn from OS
randomness (384 bits reduced mod p: within 2^−128 of uniform, so the secrecy
below is statistical at that distance); share i is (x_i, f(x_i)) for a
non-zero x_i. Any t shares
give s by Lagrange interpolation at 0,

    s = Σ_i f(x_i) Π_{j≠i} x_j / (x_j − x_i)  (mod p),

and any t − 1 shares are uniformly distributed, independent of s (perfect
secrecy). p is the smallest prime above 2^256, so every 32-byte string is a
field element; shares are serialised as 33 bytes.
"""

from __future__ import annotations

import itertools
import operator
import secrets
from collections.abc import Iterable, Iterator, Mapping, Sequence
from functools import lru_cache
from typing import NamedTuple

from protocols.errors import InvalidMessage, ProtocolError

__all__ = ["PRIME", "SHARE_BYTES", "Share", "ShamirError", "split", "combine", "robust_combine"]

PRIME = 2**256 + 297
SHARE_BYTES = 33
SECRET_BYTES = 32


class ShamirError(ProtocolError):
    """Shares are malformed (duplicate or zero index, too few, out of range)."""


class Share(NamedTuple):
    """One Shamir share: evaluation point ``x`` (non-zero) and value ``y = f(x)``.

    Immutable; a named tuple rather than a frozen dataclass because a round
    builds one per holder per site (3,600 at 60 sites) and a tuple is built
    in C.
    """

    x: int
    y: int

    def value_bytes(self) -> bytes:
        """The 33-byte big-endian encoding of ``y`` (``x`` travels separately)."""
        return self.y.to_bytes(SHARE_BYTES, "big")

    @classmethod
    def from_value_bytes(cls, x: int, data: bytes) -> Share:
        """Parse a share value received for evaluation point ``x``."""
        if len(data) != SHARE_BYTES:
            raise InvalidMessage("a share value has 33 bytes")
        y = int.from_bytes(data, "big")
        if y >= PRIME:
            raise InvalidMessage("share value outside the field")
        return tuple.__new__(cls, (x, y))


def _check_points(xs: Sequence[int]) -> None:
    if any(not 0 < x < PRIME for x in xs):
        raise ShamirError("share indices must be in [1, p)")
    if len(set(xs)) != len(xs):
        raise ShamirError("duplicate share indices")


def split(secret: bytes, points: Sequence[int], threshold: int) -> dict[int, Share]:
    """Split a 32-byte secret into shares at ``points`` with reconstruction threshold ``t``.

    Parameters
    ----------
    secret : bytes
        32 bytes, read big-endian as an integer < 2^256 < p.
    points : sequence of int
        Distinct non-zero evaluation points (we use site id + 1).
    threshold : int
        t ≥ 2 and t ≤ len(points).

    Returns
    -------
    dict
        point → :class:`Share`.
    """
    if len(secret) != SECRET_BYTES:
        raise ShamirError("secrets are 32 bytes")
    _check_points(points)
    if not 2 <= threshold <= len(points):
        raise ShamirError("need 2 <= t <= number of shares")
    coefficients = [int.from_bytes(secret, "big"), *_random_elements(threshold - 1)]
    table = _powers(tuple(points), threshold)
    return {x: Share(x, sum(map(operator.mul, coefficients, row)) % PRIME)
            for x, row in zip(points, table, strict=True)}


_WIDE = 48  # bytes per random coefficient: 384 bits reduced mod p


def _random_elements(count: int) -> list[int]:
    """``count`` field elements from one OS-randomness call: each is a 384-bit integer
    reduced mod p, within statistical distance 2^−128 of uniform on GF(p)."""
    pool = secrets.token_bytes(_WIDE * count)
    return [int.from_bytes(pool[i : i + _WIDE], "big") % PRIME
            for i in range(0, len(pool), _WIDE)]


@lru_cache(maxsize=256)
def _powers(points: tuple[int, ...], threshold: int) -> tuple[tuple[int, ...], ...]:
    """x^0 … x^{t−1} mod p for every point: f(x) = Σ_i c_i x^i is then one dot product
    (the same points serve every secret a site shares, round after round)."""
    return tuple(tuple(pow(x, i, PRIME) for i in range(threshold)) for x in points)


def _lagrange_at_zero(xs: tuple[int, ...]) -> tuple[int, ...]:
    """λ_i = Π_{j≠i} x_j / (x_j − x_i) mod p: the weights of f(0)."""
    return _lagrange_at(xs, 0)


@lru_cache(maxsize=4096)
def _lagrange_at(xs: tuple[int, ...], x: int) -> tuple[int, ...]:
    """λ_i(x) = Π_{j≠i} (x − x_j) / (x_i − x_j) mod p, with one modular inversion in total."""
    numerators, denominators = [], []
    for i, xi in enumerate(xs):
        num, den = 1, 1
        for j, xj in enumerate(xs):
            if i != j:
                num = num * (x - xj) % PRIME
                den = den * (xi - xj) % PRIME
        numerators.append(num)
        denominators.append(den)
    # Batch inversion (Montgomery's trick).
    prefix = [1]
    for den in denominators:
        prefix.append(prefix[-1] * den % PRIME)
    inverse = pow(prefix[-1], -1, PRIME)
    inverses = [0] * len(xs)
    for i in range(len(xs) - 1, -1, -1):
        inverses[i] = inverse * prefix[i] % PRIME
        inverse = inverse * denominators[i] % PRIME
    return tuple(n * d % PRIME for n, d in zip(numerators, inverses, strict=True))


def combine(shares: Iterable[Share] | Mapping[int, Share], threshold: int) -> bytes:
    """Reconstruct the 32-byte secret from at least ``threshold`` shares.

    Uses exactly the ``threshold`` shares with the smallest indices, so the
    result does not depend on how many extra shares arrived.

    Raises
    ------
    ShamirError
        Fewer than ``threshold`` shares, duplicate or zero indices, or a
        reconstructed value ≥ 2^256 (inconsistent shares).
    """
    items = list(shares.values()) if isinstance(shares, Mapping) else list(shares)
    _check_points([s.x for s in items])
    if threshold < 2 or len(items) < threshold:
        raise ShamirError("too few shares to reconstruct")
    chosen = sorted(items, key=lambda s: s.x)[:threshold]
    weights = _lagrange_at_zero(tuple(s.x for s in chosen))
    value = sum(w * s.y for w, s in zip(weights, chosen, strict=True)) % PRIME
    if value >= 2 ** (8 * SECRET_BYTES):
        raise ShamirError("shares are inconsistent")
    return value.to_bytes(SECRET_BYTES, "big")


def _agreeing(basis: list[Share], items: list[Share]) -> set[int]:
    """The x of every share in ``items`` on the polynomial through the t shares ``basis``."""
    xs = tuple(s.x for s in basis)
    on = set()
    for share in items:
        weights = _lagrange_at(xs, share.x)
        if sum(w * b.y for w, b in zip(weights, basis, strict=True)) % PRIME == share.y:
            on.add(share.x)
    return on


def robust_combine(shares: Iterable[Share], threshold: int) -> tuple[bytes, tuple[int, ...]]:
    """The secret and the x of the shares that are not on its polynomial.

    Every share is checked against the polynomial through the ``threshold``
    shares of smallest index. A polynomial is accepted only if at least
    ⌈(n + t)/2⌉ of the n shares lie on it (then it is the only such
    polynomial of degree t − 1, so up to ⌊(n − t)/2⌋ wrong shares are
    corrected); otherwise other t-subsets are tried (at most 512). With
    exactly t shares nothing can be checked.

    Raises
    ------
    ShamirError
        Too few shares, or no polynomial is agreed by enough of them (more
        than (n − t)/2 wrong shares): the shares do not determine a secret.
    """
    items = sorted(shares, key=lambda s: s.x)
    _check_points([s.x for s in items])
    if threshold < 2 or len(items) < threshold:
        raise ShamirError("too few shares to reconstruct")
    if len(items) == threshold:
        return combine(items, threshold), ()
    needed = -(-(len(items) + threshold) // 2)
    if _all_agree(items, threshold):  # the honest case: one check instead of n
        return combine(items, threshold), ()
    for basis in itertools.islice(_bases(items, threshold), _MAX_BASES):
        on = _agreeing(list(basis), items)
        if len(on) >= needed:
            secret = combine(basis, threshold)
            return secret, tuple(s.x for s in items if s.x not in on)
    raise ShamirError("shares are inconsistent")


_MAX_BASES = 512  # polynomials tried before the shares are declared inconsistent


def _all_agree(items: list[Share], threshold: int) -> bool:
    """True (up to probability 1/p) if every share lies on the polynomial through the first t.

    With f̂ that polynomial and secret random weights r_j (drawn once per
    process, never revealed), Σ_j r_j (f̂(x_j) − y_j) = Σ_i μ_i y_i − Σ_j r_j y_j
    with μ_i = Σ_j r_j λ_i(x_j); a nonzero error vector passes with probability
    1/p (Schwartz–Zippel). t + n products instead of n·t; a failure falls back
    to checking each share.
    """
    xs = tuple(s.x for s in items)
    mu, weights = _combined_weights(xs[:threshold], xs)
    basis = items[:threshold]
    left = sum(m * s.y for m, s in zip(mu, basis, strict=True))
    right = sum(w * s.y for w, s in zip(weights, items, strict=True))
    return (left - right) % PRIME == 0


@lru_cache(maxsize=1024)
def _combined_weights(basis: tuple[int, ...], xs: tuple[int, ...]
                      ) -> tuple[tuple[int, ...], tuple[int, ...]]:
    weights = tuple(secrets.randbelow(PRIME - 1) + 1 for _ in xs)
    mu = [0] * len(basis)
    for r, x in zip(weights, xs, strict=True):
        for i, lam in enumerate(_lagrange_at(basis, x)):
            mu[i] = (mu[i] + r * lam) % PRIME
    return tuple(mu), weights


def _bases(items: list[Share], threshold: int) -> Iterator[Sequence[Share]]:
    """t-subsets to interpolate through: the first t (the honest case), each of them
    left out in turn (one wrong share), then every t-subset in order."""
    yield items[:threshold]
    for left in items[:threshold]:
        yield [s for s in items if s is not left][:threshold]
    yield from itertools.combinations(items, threshold)
