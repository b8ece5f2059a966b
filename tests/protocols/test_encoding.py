"""Fixed-point encoding: exact sums, stated precision, no wrap-around, strict input checks."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols.encoding import FixedPointEncoder
from protocols.errors import EncodingError, InvalidMessage


def ring_sum(encoder: FixedPointEncoder, rows: np.ndarray) -> np.ndarray:
    total = np.zeros(encoder.n_words, dtype=np.uint64)
    for row in rows:
        total += encoder.encode(row)
    return total


def quantised(encoder: FixedPointEncoder, rows: np.ndarray) -> np.ndarray:
    return np.ldexp(np.rint(np.ldexp(rows, encoder.frac_bits)), -encoder.frac_bits)


def exact_column_sums(rows: np.ndarray) -> np.ndarray:
    return np.array([math.fsum(col) for col in rows.T])


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 1000),
    length=st.integers(1, 8),
    log_bound=st.floats(-12, 15),
    per_coordinate=st.booleans(),
    words=st.sampled_from([None, 1, 2]),
    seed=st.integers(0, 2**32 - 1),
)
def test_decoded_sum_is_the_correctly_rounded_sum_of_quantised_values(
    n: int, length: int, log_bound: float, per_coordinate: bool, words: int | None, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    bound = 10.0**log_bound
    bounds = bound * rng.uniform(0.1, 10, length) if per_coordinate else bound
    encoder = FixedPointEncoder.for_sum(bounds, n, length, words=words)
    limits = np.broadcast_to(bounds, (length,))
    rows = rng.uniform(-1, 1, (min(n, 50), length)) * limits
    rows[0] = limits  # extremes included
    if len(rows) > 1:
        rows[1] = -limits
    decoded = encoder.decode(ring_sum(encoder, rows))
    # The ring sum is exact: decoding rounds Σ q(x_u) 2^{-f} once, like fsum does.
    assert np.array_equal(decoded, exact_column_sums(quantised(encoder, rows)))
    # Stated precision against the exact real sum.
    error = np.abs(decoded - exact_column_sums(rows))
    ulp = np.spacing(np.abs(exact_column_sums(rows)))
    assert np.all(error <= encoder.error_bound + ulp)


def test_values_up_to_1e6_over_1000_sites_decode_within_1e_9() -> None:
    n, length, bound = 1000, 16, 1e6
    encoder = FixedPointEncoder.for_sum(bound, n, length)
    assert encoder.words == 2  # one word cannot meet the tolerance
    assert FixedPointEncoder.for_sum(bound, n, length, words=1).error_bound.max() > 1e-9
    assert encoder.error_bound.max() <= 1e-16
    rng = np.random.default_rng(7)
    rows = rng.uniform(-bound, bound, (n, length))
    rows[:, 0] = bound  # the largest possible sum, n·B, must not wrap
    rows[:, 1] = -bound
    rows[:, 2] = rng.uniform(-1, 1, n) * 1e-3  # small sum: absolute error is what matters
    decoded = encoder.decode(ring_sum(encoder, rows))
    exact = [sum(Fraction(v) for v in col) for col in rows.T]
    errors = [abs(Fraction(d) - e) for d, e in zip(decoded, exact, strict=True)]
    halfulp = [Fraction(float(np.spacing(abs(float(e))))) / 2 for e in exact]
    bound_term = Fraction(float(encoder.error_bound.max()))
    assert all(err <= bound_term + h for err, h in zip(errors, halfulp, strict=True))
    assert float(errors[2]) <= 1e-9
    assert decoded[0] == n * bound and decoded[1] == -n * bound


@pytest.mark.parametrize("words", [1, 2])
def test_extreme_sums_do_not_wrap(words: int) -> None:
    n, bound = 997, 3.5
    encoder = FixedPointEncoder.for_sum(bound, n, 2, words=words)
    rows = np.tile([bound, -bound], (n, 1))
    assert np.array_equal(encoder.decode(ring_sum(encoder, rows)), [n * bound, -n * bound])


def test_per_coordinate_bounds_give_per_coordinate_precision() -> None:
    encoder = FixedPointEncoder.for_sum(np.array([1e-3, 1.0, 1e6]), 10, 3)
    assert encoder.frac_bits[0] > encoder.frac_bits[1] > encoder.frac_bits[2]
    with pytest.raises(EncodingError):
        encoder.encode(np.array([2e-3, 0.0, 0.0]))  # within the scalar max, outside its own bound
    encoder.encode(np.array([1e-3, -1.0, 1e6]))


def test_negative_values_use_twos_complement() -> None:
    encoder = FixedPointEncoder.for_sum(1.0, 4, 1, words=1)
    word = encoder.encode(np.array([-1.0]))[0]
    assert int(word) == 2**64 - 2 ** int(encoder.frac_bits[0])


@pytest.mark.parametrize(
    "values",
    [
        pytest.param([np.nan, 0.0], id="nan"),
        pytest.param([np.inf, 0.0], id="inf"),
        pytest.param([-np.inf, 0.0], id="-inf"),
        pytest.param([1.0000001, 0.0], id="above-bound"),
        pytest.param([0.0, -1.5], id="below-bound"),
    ],
)
def test_bad_values_rejected(values: list[float]) -> None:
    encoder = FixedPointEncoder.for_sum(1.0, 5, 2)
    with pytest.raises(EncodingError):
        encoder.encode(np.array(values))


@pytest.mark.parametrize(
    "values",
    [
        pytest.param(np.zeros(3), id="too-long"),
        pytest.param(np.zeros(1), id="too-short"),
        pytest.param(np.zeros((2, 1)), id="2-d"),
        pytest.param(np.zeros(2, dtype=complex), id="complex"),
        pytest.param(np.zeros(2, dtype=bool), id="bool"),
        pytest.param(np.array(["0", "1"]), id="str"),
        pytest.param(np.array([0.0, None], dtype=object), id="object"),
    ],
)
def test_wrong_shapes_and_dtypes_rejected(values: np.ndarray) -> None:
    encoder = FixedPointEncoder.for_sum(1.0, 5, 2)
    with pytest.raises(EncodingError):
        encoder.encode(values)


def test_integer_and_float32_inputs_accepted() -> None:
    encoder = FixedPointEncoder.for_sum(10.0, 3, 2)
    assert np.array_equal(encoder.decode(encoder.encode(np.array([3, -4]))), [3.0, -4.0])
    assert encoder.decode(encoder.encode(np.array([0.5, 0.25], dtype=np.float32)))[0] == 0.5


@pytest.mark.parametrize("bounds", [0.0, -1.0, np.nan, np.inf, np.array([1.0, 0.0])])
def test_bad_bounds_rejected(bounds: float | np.ndarray) -> None:
    with pytest.raises(EncodingError):
        FixedPointEncoder.for_sum(bounds, 5, 2)


def test_bad_configuration_rejected() -> None:
    with pytest.raises(EncodingError):
        FixedPointEncoder.for_sum(1.0, 5, 0)
    with pytest.raises(EncodingError):
        FixedPointEncoder.for_sum(1.0, 0, 2)
    with pytest.raises(EncodingError):
        FixedPointEncoder.for_sum(1.0, 5, 2, words=3)
    with pytest.raises(EncodingError):
        FixedPointEncoder.for_sum(np.ones(3), 5, 2)


def test_decode_rejects_wrong_length_and_dtype() -> None:
    encoder = FixedPointEncoder.for_sum(1.0, 5, 2, words=2)
    with pytest.raises(InvalidMessage):
        encoder.decode(np.zeros(2, dtype=np.uint64))
    with pytest.raises(InvalidMessage):
        encoder.decode(np.zeros(4, dtype=np.int64))


def test_encoder_is_immutable() -> None:
    encoder = FixedPointEncoder.for_sum(np.array([1.0, 2.0]), 5, 2)
    with pytest.raises(ValueError):
        encoder.bounds[0] = 10.0
    with pytest.raises(AttributeError):
        encoder.words = 1  # type: ignore[misc]
