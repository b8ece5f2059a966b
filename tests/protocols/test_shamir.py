"""Shamir t-of-n sharing: every t-subset reconstructs, t−1 shares say nothing, bad input refused."""

from __future__ import annotations

import itertools
import secrets

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols.errors import InvalidMessage
from protocols.shamir import PRIME, SHARE_BYTES, ShamirError, Share, combine, split

SMALL_PRIMES = [2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53, 59, 61, 67, 71]


def is_probable_prime(n: int) -> bool:
    """Miller-Rabin with the first 20 primes as bases (error < 4^-20 for composites)."""
    if n < 2:
        return False
    for p in SMALL_PRIMES:
        if n % p == 0:
            return n == p
    d, r = n - 1, 0
    while d % 2 == 0:
        d, r = d // 2, r + 1
    for a in SMALL_PRIMES:
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(r - 1):
            x = x * x % n
            if x == n - 1:
                break
        else:
            return False
    return True


def test_field_is_the_smallest_prime_above_2_256() -> None:
    assert is_probable_prime(PRIME)
    assert not any(is_probable_prime(c) for c in range(2**256, PRIME))
    assert is_probable_prime(2**255 - 19) and not is_probable_prime(2**256 + 1)  # F8 composite


@pytest.mark.parametrize(("n", "t"), [(3, 2), (5, 3), (7, 5), (8, 8)])
def test_every_t_subset_reconstructs(n: int, t: int) -> None:
    secret = secrets.token_bytes(32)
    shares = split(secret, list(range(1, n + 1)), t)
    for subset in itertools.combinations(shares.values(), t):
        assert combine(subset, t) == secret
    assert combine(shares, t) == secret  # more than t shares: still the secret


@settings(max_examples=30, deadline=None)
@given(
    secret=st.binary(min_size=32, max_size=32),
    points=st.lists(st.integers(1, 2**62), min_size=2, max_size=12, unique=True),
    data=st.data(),
)
def test_reconstruction_round_trip(secret: bytes, points: list[int], data: st.DataObject) -> None:
    t = data.draw(st.integers(2, len(points)))
    shares = list(split(secret, points, t).values())
    chosen = data.draw(st.permutations(shares))[:t]
    assert combine(chosen, t) == secret


def test_t_minus_1_shares_do_not_determine_the_secret() -> None:
    """For any t−1 shares and ANY candidate secret there is a consistent polynomial.

    Interpolating the t−1 shares together with the point (0, s') for an arbitrary
    s' yields a degree-(t−1) polynomial through all t−1 shares, so every secret is
    equally consistent with what t−1 holders see (perfect secrecy).
    """
    t = 4
    secret = secrets.token_bytes(32)
    shares = list(split(secret, [1, 2, 3, 4, 5, 6], t).values())[: t - 1]
    for candidate in (bytes(32), b"\xff" * 32, secrets.token_bytes(32)):
        s = int.from_bytes(candidate, "big")
        points = [(0, s)] + [(sh.x, sh.y) for sh in shares]
        # Lagrange interpolation of the polynomial through `points`, evaluated at each share.
        for sh in shares:
            value = 0
            for i, (xi, yi) in enumerate(points):
                num, den = 1, 1
                for j, (xj, _) in enumerate(points):
                    if i != j:
                        num = num * (sh.x - xj) % PRIME
                        den = den * (xi - xj) % PRIME
                value = (value + yi * num * pow(den, -1, PRIME)) % PRIME
            assert value == sh.y
    # and t−1 shares are refused outright
    with pytest.raises(ShamirError):
        combine(shares, t)


def test_t_minus_1_shares_are_uniform_in_the_field() -> None:
    """The top byte of a single share (t = 2) is spread over all 2^8 + 1 values."""
    secret = bytes(32)
    tops = {split(secret, [1, 2], 2)[1].y >> 248 for _ in range(2000)}
    assert len(tops) > 200


def test_duplicate_and_zero_indices_rejected() -> None:
    secret = secrets.token_bytes(32)
    with pytest.raises(ShamirError):
        split(secret, [1, 2, 2], 2)
    with pytest.raises(ShamirError):
        split(secret, [0, 1, 2], 2)
    with pytest.raises(ShamirError):
        split(secret, [1, 2, PRIME], 2)
    shares = list(split(secret, [1, 2, 3], 2).values())
    with pytest.raises(ShamirError):
        combine([shares[0], shares[0]], 2)
    with pytest.raises(ShamirError):
        combine([Share(0, 5), shares[1]], 2)


def test_bad_thresholds_and_secret_sizes_rejected() -> None:
    with pytest.raises(ShamirError):
        split(secrets.token_bytes(32), [1, 2, 3], 1)
    with pytest.raises(ShamirError):
        split(secrets.token_bytes(32), [1, 2, 3], 4)
    with pytest.raises(ShamirError):
        split(secrets.token_bytes(31), [1, 2, 3], 2)
    shares = list(split(secrets.token_bytes(32), [1, 2, 3], 3).values())
    with pytest.raises(ShamirError):
        combine(shares[:2], 3)


def test_share_serialisation_round_trip_and_range_check() -> None:
    share = split(secrets.token_bytes(32), [7, 8], 2)[7]
    assert Share.from_value_bytes(7, share.value_bytes()) == share
    assert len(share.value_bytes()) == SHARE_BYTES
    with pytest.raises(InvalidMessage):
        Share.from_value_bytes(7, PRIME.to_bytes(SHARE_BYTES, "big"))
    with pytest.raises(InvalidMessage):
        Share.from_value_bytes(7, bytes(32))


def test_inconsistent_shares_detected_when_out_of_range() -> None:
    # Secret 0; adding 1 to share 2 moves the reconstruction to λ_2 · 1 = −1 ≡ p − 1 ≥ 2^256.
    shares = split(bytes(32), [1, 2], 2)
    forged = [shares[1], Share(2, (shares[2].y + 1) % PRIME)]
    with pytest.raises(ShamirError):
        combine(forged, 2)


def test_robust_combine_finds_the_secret_and_the_wrong_share():
    from protocols.shamir import robust_combine

    secret = bytes(range(32))
    shares = split(secret, list(range(1, 8)), 3)  # n = 7, t = 3: up to 2 wrong shares
    honest = list(shares.values())
    assert robust_combine(honest, 3) == (secret, ())
    for bad in ([1], [5], [1, 2], [2, 7]):  # among the first t, beyond them, both
        altered = [Share(s.x, (s.y + 1) % PRIME) if s.x in bad else s for s in honest]
        assert robust_combine(altered, 3) == (secret, tuple(bad))
    three = [Share(s.x, (s.y + 1) % PRIME) if s.x in (1, 4, 6) else s for s in honest]
    with pytest.raises(ShamirError):  # more than (n - t)/2 wrong: no secret is trusted
        robust_combine(three, 3)
    only_t = honest[:3]
    assert robust_combine(only_t, 3) == (secret, ())  # exactly t: nothing to check
