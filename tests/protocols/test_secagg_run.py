"""Secure aggregation per run: keys agreed once, fresh masks every round, no return after a drop."""

from __future__ import annotations

import math

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from protocols import primitives
from protocols.errors import AbortError, InvalidMessage
from protocols.primitives import AgreementKey, round_key, sign, verify
from protocols.secagg import DropPhase, SecureSumRun
from protocols.secagg_config import SecAggConfig
from protocols.secagg_messages import Message, UnmaskShares
from protocols.secagg_run import SiteRun
from protocols.secagg_site import SecAggSite, pair_seed
from protocols.stack import SecAggSum

BOUND = 50.0


def vectors_for(ids, rng, length=7):
    return {u: rng.uniform(-BOUND, BOUND, length) for u in ids}


def assert_exact(result, vectors):
    """The released total is the sum of the contributors' vectors to the encoding's exactness."""
    rows = np.array([vectors[u] for u in result.contributors])
    exact = np.array([math.fsum(col) for col in rows.T])
    allowed = len(vectors) * BOUND * 2.0**-52 + np.spacing(np.abs(exact))
    assert np.all(np.abs(result.total - exact) <= allowed)


def session(round_id: int) -> bytes:
    return f"round-{round_id}".encode()


@pytest.mark.parametrize("neighbours", [None, 4])
def test_every_round_of_a_run_equals_the_plaintext_sum(neighbours):
    rng = np.random.default_rng(3)
    ids = list(range(1, 11))
    run = SecureSumRun(ids, session_id=b"run", neighbours=neighbours)
    for round_id in range(1, 6):
        vectors = vectors_for(ids, rng)
        result = run.round(vectors, bounds=BOUND, session_id=session(round_id),
                           round_id=round_id)
        assert result.contributors == tuple(ids)
        assert_exact(result, vectors)


def test_keys_are_agreed_once_per_run(monkeypatch):
    calls = []
    exchange = AgreementKey.exchange
    monkeypatch.setattr(AgreementKey, "exchange",
                        lambda self, peer: calls.append(1) or exchange(self, peer))
    rng = np.random.default_rng(4)
    ids = list(range(6))
    run = SecureSumRun(ids, session_id=b"run")
    run.round(vectors_for(ids, rng), bounds=BOUND, session_id=session(1), round_id=1)
    assert len(calls) == 2 * len(ids) * (len(ids) - 1)  # two pair keys per ordered pair
    assert all(r.cipher_key is None and r.mask_key is None for r in run.site_runs.values())
    for round_id in (2, 3):
        run.round(vectors_for(ids, rng), bounds=BOUND, session_id=session(round_id),
                  round_id=round_id)
    assert len(calls) == 2 * len(ids) * (len(ids) - 1)  # none after the first round


@pytest.mark.parametrize("phase", list(DropPhase))
def test_a_dropout_is_recovered_and_the_site_never_returns(phase):
    rng = np.random.default_rng(5)
    ids = list(range(8))
    run = SecureSumRun(ids, session_id=b"run")
    run.round(vectors_for(ids, rng), bounds=BOUND, session_id=session(1), round_id=1)
    vectors = vectors_for(ids, rng)
    result = run.round(vectors, bounds=BOUND, session_id=session(2), round_id=2,
                       drop_sites=[3], drop_phase=phase)
    counted = phase in (DropPhase.AFTER_MASKED_INPUT, DropPhase.DURING_UNMASK)
    assert (3 in result.contributors) is counted
    assert_exact(result, vectors)
    assert 3 not in run.eligible
    with pytest.raises(AbortError, match="dropped out"):
        run.round(vectors_for(ids, rng), bounds=BOUND, session_id=session(3), round_id=3)
    rest = [u for u in ids if u != 3]
    later = vectors_for(rest, rng)
    result = run.round(later, bounds=BOUND, session_id=session(3), round_id=3)
    assert result.contributors == tuple(rest)
    assert_exact(result, later)


def test_the_same_vector_is_masked_differently_in_every_round():
    rng = np.random.default_rng(6)
    ids = list(range(5))
    fixed = vectors_for(ids, rng)
    seen: dict[int, list[bytes]] = {u: [] for u in ids}

    def network(u, step, data):
        if step == "masked_input":
            seen[u].append(Message.parse(data).body.words.tobytes())
        return data

    run = SecureSumRun(ids, session_id=b"run")
    for round_id in (1, 2, 3):
        result = run.round(fixed, bounds=BOUND, session_id=b"same", round_id=round_id,
                           network=network)
        assert_exact(result, fixed)
    for u in ids:
        assert len(set(seen[u])) == 3  # same x_u, three different masked inputs


def test_a_round_seed_serves_one_round_only():
    key = bytes(range(32))
    seeds = {round_key(key, session_id=s, round_id=r, purpose=p, low=1, high=2)
             for s in (b"a", b"b") for r in (1, 2) for p in ("pairwise-mask", "share-encryption")}
    assert len(seeds) == 8
    configs = [SecAggConfig(b"s", r, (0, 1, 2), 2, 1.0, run_session=b"run") for r in (1, 2)]
    assert pair_seed(configs[0], key, 0, 1, "pairwise-mask") != pair_seed(
        configs[1], key, 0, 1, "pairwise-mask")
    assert pair_seed(configs[0], key, 0, 1, "pairwise-mask") == pair_seed(
        configs[0], key, 1, 0, "pairwise-mask")  # both ends derive the same seed


def test_a_round_key_is_hkdf_expand_of_the_documented_info():
    import struct

    key = bytes(range(32, 64))
    info = (b"securefed/secagg/v1/round" + struct.pack(">I", 2) + b"s1" + struct.pack(">Q", 9)
            + struct.pack(">I", 13) + b"pairwise-mask" + struct.pack(">qq", 3, 7))
    assert round_key(key, session_id=b"s1", round_id=9, purpose="pairwise-mask", low=3,
                     high=7) == primitives.hkdf_expand_sha256(key, info)


def test_hkdf_expand_matches_rfc5869_case_1():
    prk = bytes.fromhex("077709362c2e32df0ddc3f0dc47bba6390b6c73bb50f9c3122ec844ad7c2b3e5")
    okm = bytes.fromhex("3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf"
                        "34007208d5b887185865")
    assert primitives.hkdf_expand_sha256(prk, bytes.fromhex("f0f1f2f3f4f5f6f7f8f9"), 42) == okm


def test_a_dropped_sites_pair_seeds_are_revealed_for_its_round_only():
    """What the server gets for a dropout is the round's pair seed, never a run key."""
    rng = np.random.default_rng(7)
    ids = list(range(5))
    revealed: list[bytes] = []

    def network(u, step, data):
        if step == "unmask":
            revealed.extend(seed for _, seed in Message.parse(data).body.pair_seeds)
        return data

    run = SecureSumRun(ids, session_id=b"run")
    run.round(vectors_for(ids, rng), bounds=BOUND, session_id=session(1), round_id=1)
    run.round(vectors_for(ids, rng), bounds=BOUND, session_id=session(2), round_id=2,
              drop_sites=[4], drop_phase=DropPhase.AFTER_KEY_SHARING, network=network)
    assert len(revealed) == 4  # one per live neighbour of site 4
    config = SecAggConfig(session(2), 2, (0, 1, 2, 3, 4), 7, BOUND, run_session=b"run")
    earlier = SecAggConfig(session(1), 1, (0, 1, 2, 3, 4), 7, BOUND, run_session=b"run")
    for u in range(4):
        mask_key = run.site_runs[u].mask_keys[4]
        assert pair_seed(config, mask_key, u, 4, "pairwise-mask") in revealed
        assert pair_seed(earlier, mask_key, u, 4, "pairwise-mask") not in revealed
        assert mask_key not in revealed


def test_a_neighbour_of_a_dropout_that_hides_its_seed_aborts_the_round():
    rng = np.random.default_rng(8)
    ids = list(range(6))
    run = SecureSumRun(ids, session_id=b"run", threshold=4)
    with pytest.raises(AbortError, match="pair seed"):
        run.round(vectors_for(ids, rng), bounds=BOUND, session_id=session(1), round_id=1,
                  drop_sites=[5], drop_phase=DropPhase.AFTER_KEY_SHARING,
                  network=lambda u, step, data: b"" if (u, step) == (1, "unmask") else data)
    assert run.server_run.closed  # an aborted run releases nothing and never goes on


def test_a_malformed_pair_seed_is_that_sites_dropout():
    rng = np.random.default_rng(9)
    ids = list(range(6))
    identities = {u: Ed25519PrivateKey.generate() for u in ids}

    def short_seed(u, step, data):
        if (u, step) != (2, "unmask"):
            return data
        message = Message.parse(data)
        body = message.body
        bad = UnmaskShares(body.self_mask_shares, tuple((v, s[:31]) for v, s in body.pair_seeds))
        h = message.header
        return Message.build(bad, session_id=h.session_id, round_id=h.round_id, sender=u,
                             recipient=h.recipient, identity=identities[u])

    run = SecureSumRun(ids, session_id=b"run", identities=identities, threshold=4)
    with pytest.raises(AbortError):  # its seed is needed: the round cannot be unmasked
        run.round(vectors_for(ids, rng), bounds=BOUND, session_id=session(1), round_id=1,
                  drop_sites=[5], drop_phase=DropPhase.AFTER_KEY_SHARING, network=short_seed)
    run = SecureSumRun(ids, session_id=b"run", identities=identities, threshold=4)
    vectors = vectors_for(ids, rng)
    result = run.round(vectors, bounds=BOUND, session_id=session(1), round_id=1,
                       network=short_seed)  # nobody dropped: no seed is needed
    assert result.rejected == {} and result.contributors == tuple(ids)
    assert_exact(result, vectors)


def site_run_after_one_round():
    rng = np.random.default_rng(10)
    ids = list(range(5))
    run = SecureSumRun(ids, session_id=b"run")
    run.round(vectors_for(ids, rng), bounds=BOUND, session_id=session(1), round_id=1,
              drop_sites=[4], drop_phase=DropPhase.AFTER_KEY_SHARING)
    return run


@pytest.mark.parametrize("change, why", [
    (dict(round_id=1), "follow"),
    (dict(site_ids=(0, 1, 2, 3, 4)), "dropped out"),
    (dict(run_session=b"another run"), "belong"),
])
def test_a_site_refuses_a_round_its_run_cannot_admit(change, why):
    run = site_run_after_one_round()
    fields = dict(session_id=session(2), round_id=2, site_ids=(0, 1, 2, 3), vector_length=7,
                  bounds=BOUND, run_session=b"run", run_sites=(0, 1, 2, 3, 4)) | change
    config = SecAggConfig(**fields)
    identity = Ed25519PrivateKey.generate()
    roster = {u: identity.public_key() for u in config.site_ids}
    site_run: SiteRun = run.site_runs[0]
    with pytest.raises(AbortError, match=why):
        SecAggSite(0, config, identity, roster, identity.public_key(), run=site_run)
    assert site_run.closed and site_run.mask_keys == {}  # the run is over for this site


def test_the_dropped_site_itself_refuses_to_go_on():
    run = site_run_after_one_round()
    config = SecAggConfig(session(2), 2, (0, 1, 2, 3, 4), 7, BOUND, run_session=b"run")
    identity = Ed25519PrivateKey.generate()
    roster = {u: identity.public_key() for u in config.site_ids}
    with pytest.raises(AbortError, match="still open"):  # it never finished round 1
        SecAggSite(4, config, identity, roster, identity.public_key(), run=run.site_runs[4])


def test_the_layer_keeps_its_run_and_refuses_a_returning_site():
    layer = SecAggSum(bound=10.0)
    vectors = {name: np.full(3, float(k)) for k, name in enumerate("ABCDE", start=1)}
    first = layer.aggregate(vectors, round_id=1, purpose="p")
    run = layer.runs._run
    np.testing.assert_allclose(first.total, np.full(3, 15.0), atol=1e-9)
    fewer = {n: v for n, v in vectors.items() if n != "E"}
    second = layer.aggregate(fewer, round_id=2, purpose="q")
    assert layer.runs._run is run and second.contributors == ("A", "B", "C", "D")
    np.testing.assert_allclose(second.total, np.full(3, 10.0), atol=1e-9)
    with pytest.raises(AbortError, match="never returns"):
        layer.aggregate(vectors, round_id=3, purpose="r")
    again = layer.aggregate(vectors, round_id=1, purpose="p")  # a new coordinator: a new run
    assert layer.runs._run is not run
    np.testing.assert_allclose(again.total, np.full(3, 15.0), atol=1e-9)


def test_per_round_keys_remain_available():
    layer = SecAggSum(bound=10.0, per_run=False)
    vectors = {name: np.full(2, 1.0) for name in "ABC"}
    layer.aggregate(vectors, round_id=1, purpose="p")
    run = layer.runs._run
    layer.aggregate(vectors, round_id=2, purpose="p")
    assert layer.runs._run is not run


def test_a_cached_signature_check_never_accepts_other_bytes():
    key = Ed25519PrivateKey.generate()
    signature = sign(key, b"payload")
    verify(key.public_key(), signature, b"payload", cache=True)
    verify(key.public_key(), signature, b"payload", cache=True)  # a hit
    with pytest.raises(InvalidMessage):
        verify(key.public_key(), signature, b"payloae", cache=True)
    with pytest.raises(InvalidMessage):
        verify(Ed25519PrivateKey.generate().public_key(), signature, b"payload", cache=True)
    forged = signature[:-1] + bytes([signature[-1] ^ 1])
    for _ in range(2):  # a failure is never cached
        with pytest.raises(InvalidMessage):
            verify(key.public_key(), forged, b"payload", cache=True)
