"""Secure summation end to end: equals the plaintext sum, survives dropouts, aborts below t."""

from __future__ import annotations

import math

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.stats import chisquare

from protocols.errors import AbortError, EncodingError
from protocols.graph import default_threshold
from protocols.secagg import DropPhase, SecureSumResult, secure_sum
from protocols.secagg_config import ConfigError, SecAggConfig
from protocols.secagg_messages import MaskedInput, Message
from protocols.secagg_server import SecAggServer
from protocols.secagg_site import SecAggSite

SESSION = b"test-session"


def expected_contributors(ids: list[int], dropped: set[int], phase: DropPhase | None) -> list[int]:
    if phase in (DropPhase.AFTER_KEY_EXCHANGE, DropPhase.AFTER_KEY_SHARING):
        return sorted(set(ids) - dropped)
    return sorted(ids)


def should_succeed(config: SecAggConfig, dropped: set[int], phase: DropPhase | None) -> bool:
    """Every site whose secrets are needed keeps ≥ t live holders (and enough inputs)."""
    needed = set(config.site_ids)
    if phase is DropPhase.AFTER_KEY_EXCHANGE:
        needed -= dropped
    enough_holders = all(len(config.holders(u) - dropped) >= config.t for u in needed)
    inputs = len(expected_contributors(list(config.site_ids), dropped, phase))
    return enough_holders and inputs >= config.min_contributors


def check_total(result: SecureSumResult, vectors: dict[int, np.ndarray], bound: float) -> None:
    rows = np.array([vectors[u] for u in result.contributors])
    exact = np.array([math.fsum(col) for col in rows.T])
    config_bound = len(vectors) * bound * 2.0**-52  # ≥ n 2^{-f-1} for either word count
    assert np.all(np.abs(result.total - exact) <= config_bound + np.spacing(np.abs(exact)))
    assert np.allclose(result.total, rows.sum(axis=0), rtol=1e-12, atol=1e-12 * bound)


def run_case(n, length, bound, phase, drop, neighbours, seed, order_seed):
    rng = np.random.default_rng(seed)
    ids = [int(u) for u in rng.choice(10 * n, size=n, replace=False)]
    np.random.default_rng(order_seed).shuffle(ids)
    vectors = {u: rng.uniform(-bound, bound, length) for u in ids}
    dropped = set(ids[:drop])
    config = SecAggConfig(SESSION, 3, tuple(ids), length, bound, neighbours=neighbours)
    kwargs = dict(
        bounds=bound,
        session_id=SESSION,
        round_id=3,
        neighbours=neighbours,
        drop_sites=dropped,
        drop_phase=phase if dropped else None,
    )
    if should_succeed(config, dropped, phase if dropped else None):
        result = secure_sum(vectors, **kwargs)
        assert list(result.contributors) == expected_contributors(ids, dropped, phase)
        assert result.dropped == tuple(sorted(dropped))
        check_total(result, vectors, bound)
    else:
        with pytest.raises(AbortError):
            secure_sum(vectors, **kwargs)


phases = st.sampled_from(list(DropPhase))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(3, 25),
    length=st.integers(1, 40),
    log_bound=st.floats(-3, 7),
    phase=phases,
    drop_fraction=st.floats(0, 0.5),
    seed=st.integers(0, 2**32 - 1),
    order_seed=st.integers(0, 2**32 - 1),
)
def test_sum_equals_plaintext_complete_graph(
    n, length, log_bound, phase, drop_fraction, seed, order_seed
) -> None:
    drop = int(drop_fraction * n)
    run_case(n, length, 10.0**log_bound, phase, drop, None, seed, order_seed)


@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(60, 100),
    phase=phases,
    drop_fraction=st.floats(0, 0.3),
    seed=st.integers(0, 2**32 - 1),
)
def test_sum_equals_plaintext_many_sites(n, phase, drop_fraction, seed) -> None:
    run_case(n, 5, 1e6, phase, int(drop_fraction * n), None, seed, seed + 1)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(8, 100),
    k=st.sampled_from([4, 6, 8]),
    phase=phases,
    drop_fraction=st.floats(0, 0.25),
    seed=st.integers(0, 2**32 - 1),
)
def test_sum_equals_plaintext_secagg_plus(n, k, phase, drop_fraction, seed) -> None:
    run_case(n, 12, 100.0, phase, int(drop_fraction * n), k, seed, seed + 1)


@pytest.mark.parametrize("phase", list(DropPhase))
@pytest.mark.parametrize("n", [3, 7, 10])
def test_exactly_t_survivors_succeed_and_t_minus_1_abort(n: int, phase: DropPhase) -> None:
    t = default_threshold(n)
    rng = np.random.default_rng(n)
    vectors = {u: rng.uniform(-1, 1, 6) for u in range(n)}
    common = dict(bounds=1.0, session_id=SESSION, round_id=1, drop_phase=phase)
    if n - t > 0:
        result = secure_sum(vectors, drop_sites=range(n - t), **common)
        check_total(result, vectors, 1.0)
    with pytest.raises(AbortError):
        secure_sum(vectors, drop_sites=range(n - t + 1), **common)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(4, 30),
    phase=phases,
    explicit=st.booleans(),
    data=st.data(),
)
def test_threshold_boundary_random(n: int, phase: DropPhase, explicit: bool, data) -> None:
    """With t survivors the round succeeds; with t − 1 it aborts (random n, t, phase, victims)."""
    t = data.draw(st.integers(n // 2 + 1, n)) if explicit else default_threshold(n)
    ids = data.draw(st.permutations(range(n)))
    vectors = {u: np.full(3, u / n) for u in ids}
    common = dict(
        bounds=1.0,
        session_id=SESSION,
        round_id=5,
        threshold=t,
        drop_phase=phase,
        min_contributors=min(3, t),
    )
    if t < n:
        result = secure_sum(vectors, drop_sites=ids[: n - t], **common)
        assert np.allclose(result.total, sum(vectors[u] for u in result.contributors))
    with pytest.raises(AbortError):
        secure_sum(vectors, drop_sites=ids[: n - t + 1], **common)


@pytest.mark.parametrize("phase", list(DropPhase))
def test_explicit_threshold_respected(phase: DropPhase) -> None:
    vectors = {u: np.full(3, float(u)) for u in range(9)}
    common = dict(bounds=10.0, session_id=SESSION, round_id=1, threshold=5, drop_phase=phase)
    result = secure_sum(vectors, drop_sites=range(4), **common)
    assert np.allclose(result.total, sum(vectors[u] for u in result.contributors))
    with pytest.raises(AbortError):
        secure_sum(vectors, drop_sites=range(5), **common)


@pytest.mark.parametrize("phase", list(DropPhase))
def test_secagg_plus_threshold_is_per_neighbourhood(phase: DropPhase) -> None:
    n, k = 20, 4
    config = SecAggConfig(SESSION, 1, tuple(range(n)), 2, 1.0, neighbours=k)
    assert config.t == default_threshold(k + 1) == 4
    victim = 0
    # dropping two of the victim's neighbours leaves it exactly t live holders ...
    two = sorted(config.graph[victim])[:2]
    vectors = {u: np.full(2, 0.5) for u in range(n)}
    common = dict(bounds=1.0, session_id=SESSION, round_id=1, neighbours=k, drop_phase=phase)
    if should_succeed(config, set(two), phase):
        result = secure_sum(vectors, drop_sites=two, **common)
        assert np.allclose(result.total, 0.5 * len(result.contributors))
    # ... dropping three leaves t − 1 and the round aborts
    three = sorted(config.graph[victim])[:3]
    with pytest.raises(AbortError):
        secure_sum(vectors, drop_sites=three, **common)


def test_min_contributors_enforced() -> None:
    vectors = {u: np.ones(2) for u in range(6)}
    with pytest.raises(ConfigError):
        secure_sum(vectors, bounds=1.0, session_id=SESSION, round_id=1, min_contributors=7)
    with pytest.raises(AbortError):
        secure_sum(
            vectors,
            bounds=1.0,
            session_id=SESSION,
            round_id=1,
            threshold=4,
            min_contributors=5,
            drop_sites=[0, 1],
            drop_phase=DropPhase.AFTER_KEY_SHARING,
        )
    result = secure_sum(
        vectors,
        bounds=1.0,
        session_id=SESSION,
        round_id=1,
        threshold=4,
        min_contributors=4,
        drop_sites=[0, 1],
        drop_phase=DropPhase.AFTER_KEY_SHARING,
    )
    assert result.contributors == (2, 3, 4, 5) and np.allclose(result.total, 4.0)


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"vectors": {0: np.ones(2), 1: np.ones(2)}}, id="n<3"),
        pytest.param({"threshold": 1}, id="t<2"),
        pytest.param({"threshold": 2}, id="t<=n/2"),
        pytest.param({"threshold": 6}, id="t>n"),
        pytest.param({"neighbours": 1}, id="k<2"),
        pytest.param({"session_id": b""}, id="empty-session"),
        pytest.param({"round_id": -1}, id="negative-round"),
        pytest.param({"drop_sites": [1]}, id="drop-without-phase"),
        pytest.param(
            {"drop_sites": [99], "drop_phase": DropPhase.DURING_UNMASK}, id="unknown-drop"
        ),
        pytest.param({"identities": {0: Ed25519PrivateKey.generate()}}, id="missing-identities"),
    ],
)
def test_bad_parameters_refused(kwargs: dict) -> None:
    args = {
        "vectors": {u: np.ones(2) for u in range(5)},
        "bounds": 1.0,
        "session_id": SESSION,
        "round_id": 1,
    }
    args.update(kwargs)
    with pytest.raises(ConfigError):
        secure_sum(args.pop("vectors"), **args)


def test_secagg_plus_with_odd_degree_needs_even_n() -> None:
    with pytest.raises(ConfigError):
        secure_sum(
            {u: np.ones(1) for u in range(9)},
            bounds=1.0,
            session_id=SESSION,
            round_id=1,
            neighbours=3,
        )


def test_bad_values_rejected_before_anything_is_released() -> None:
    vectors = {u: np.zeros(3) for u in range(4)}
    for bad in (np.array([np.nan, 0, 0]), np.array([np.inf, 0, 0]), np.array([2.0, 0, 0])):
        with pytest.raises(EncodingError):
            secure_sum({**vectors, 2: bad}, bounds=1.0, session_id=SESSION, round_id=1)
    with pytest.raises(EncodingError):
        secure_sum({**vectors, 2: np.zeros(4)}, bounds=1.0, session_id=SESSION, round_id=1)
    with pytest.raises(EncodingError):
        secure_sum(
            {**vectors, 2: np.zeros(3, dtype=complex)}, bounds=1.0, session_id=SESSION, round_id=1
        )


def test_per_coordinate_bounds_and_two_word_precision() -> None:
    rng = np.random.default_rng(11)
    bounds = np.array([1e6, 1e-3, 1.0])
    vectors = {u: rng.uniform(-1, 1, 3) * bounds for u in range(40)}
    vectors[0] = bounds.copy()
    result = secure_sum(vectors, bounds=bounds, session_id=SESSION, round_id=2)
    exact = [math.fsum(v[j] for v in vectors.values()) for j in range(3)]
    assert np.all(np.abs(result.total - exact) <= 1e-9)


def test_result_accounting() -> None:
    n, length = 6, 50
    vectors = {u: np.zeros(length) for u in range(n)}
    result = secure_sum(
        vectors,
        bounds=1.0,
        session_id=SESSION,
        round_id=1,
        drop_sites=[5],
        drop_phase=DropPhase.AFTER_MASKED_INPUT,
    )
    assert set(result.bytes_sent_per_site) == set(range(n))
    assert result.bytes_received_by_server == sum(result.bytes_sent_per_site.values())
    config = SecAggConfig(SESSION, 1, tuple(range(n)), length, 1.0)
    payload = 8 * config.encoder.n_words
    assert all(b > payload for b in result.bytes_sent_per_site.values())
    shares_and_keys = 64 + 2 * 33 * (n - 1)
    assert all(
        b < 2 * (payload + shares_and_keys) + 1500 for b in result.bytes_sent_per_site.values()
    )
    assert result.bytes_sent_per_site[5] < result.bytes_sent_per_site[0]  # sent no unmask
    assert result.seconds_site > 0 and result.seconds_server > 0
    assert result.total.dtype == np.float64 and np.array_equal(result.total, np.zeros(length))


def test_site_order_does_not_matter() -> None:
    rng = np.random.default_rng(3)
    vectors = {u: rng.uniform(-1, 1, 4) for u in (5, 2, 9, 7, 1)}
    reverse = dict(reversed(list(vectors.items())))
    a = secure_sum(vectors, bounds=1.0, session_id=SESSION, round_id=1)
    b = secure_sum(reverse, bounds=1.0, session_id=SESSION, round_id=1)
    assert np.array_equal(a.total, b.total) and a.contributors == b.contributors == (1, 2, 5, 7, 9)


@pytest.mark.parametrize(
    ("text", "phase"),
    [
        ("after-key-exchange", DropPhase.AFTER_KEY_EXCHANGE),
        ("after-key-sharing", DropPhase.AFTER_KEY_SHARING),
        ("AFTER_MASKED_INPUT", DropPhase.AFTER_MASKED_INPUT),
        (" during-unmask ", DropPhase.DURING_UNMASK),
    ],
)
def test_drop_phase_from_cli(text: str, phase: DropPhase) -> None:
    assert DropPhase.from_cli(text) is phase


def test_drop_phase_from_cli_rejects_unknown() -> None:
    with pytest.raises(ConfigError, match="after-key-exchange"):
        DropPhase.from_cli("before-lunch")


def _one_masked_input(length: int, value: float) -> np.ndarray:
    ids = (0, 1, 2)
    config = SecAggConfig(SESSION, 1, ids, length, 1.0, tolerance=1.0)
    identities = {u: Ed25519PrivateKey.generate() for u in ids}
    roster = {u: k.public_key() for u, k in identities.items()}
    server_identity = Ed25519PrivateKey.generate()
    server = SecAggServer(config, server_identity, roster)
    sites = {
        u: SecAggSite(u, config, identities[u], roster, server_identity.public_key()) for u in ids
    }
    for u in ids:
        server.receive(sites[u].advertise_keys())
    lists = server.advance()
    for u in ids:
        server.receive(sites[u].share_keys(lists[u]))
    bundles = server.advance()
    data = sites[0].masked_input(bundles[0], np.full(length, value))
    return Message.parse(data).body.words


@pytest.mark.parametrize("value", [0.0, 1.0])
def test_masked_input_bits_look_uniform(value: float) -> None:
    words = _one_masked_input(4096, value)
    assert isinstance(Message, type) and words.dtype == np.uint64
    bits = np.unpackbits(words.view(np.uint8)).reshape(-1, 64)
    ones = bits.sum(axis=0)
    observed = np.concatenate([ones, len(bits) - ones])
    assert chisquare(observed).pvalue > 1e-6  # each bit position balanced
    byte_counts = np.bincount(words.view(np.uint8), minlength=256)
    assert chisquare(byte_counts).pvalue > 1e-6  # all byte values equally likely
    assert MaskedInput(words).words is words
