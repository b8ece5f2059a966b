"""secagg,ckks: secure aggregation whose masked inputs travel only as CKKS ciphertexts."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from scipy.stats import chisquare

from protocols.ckks import (
    CkksAggregate,
    CkksCiphertext,
    CkksKeyHolder,
    CkksMismatch,
    CkksParameterError,
    CkksParams,
    add_ciphertexts,
    encrypt_ring_vector,
    encrypt_vector,
)
from protocols.encoding import FixedPointEncoder
from protocols.errors import AbortError, EncodingError, InvalidMessage, ReplayError, StageError
from protocols.secagg import DropPhase, secure_sum
from protocols.secagg_config import SERVER_ID, ConfigError, SecAggConfig
from protocols.secagg_messages import EncryptedMaskedInput, MaskedInput, Message
from protocols.secagg_server import AggregateOutcome, SecAggServer, ServerStage
from protocols.secagg_site import SecAggSite
from protocols.stack import DropPlan, SecAggSum
from protocols.stack_secagg_ckks import SecAggCkksSum

SESSION = b"secagg-ckks"


@pytest.fixture(scope="module")
def holder() -> CkksKeyHolder:
    return CkksKeyHolder.generate()


@pytest.fixture(scope="module")
def other_holder() -> CkksKeyHolder:
    return CkksKeyHolder.generate()


class CkksRound:
    """Sites, server and key holder of one round wired by hand, to intercept and forge."""

    def __init__(self, holder: CkksKeyHolder, n: int = 5, *, length: int = 4,
                 round_id: int = 1, tolerance: float = 1e-10,
                 identities: dict[int, Ed25519PrivateKey] | None = None,
                 server_identity: Ed25519PrivateKey | None = None,
                 decrypt_with: CkksKeyHolder | None = None, encrypted: bool = True) -> None:
        ids = tuple(range(n))
        self.holder = holder
        self.public = holder.public_context()
        self.config = SecAggConfig(SESSION, round_id, ids, length, 1.0, tolerance=tolerance,
                                   ckks_context=self.public if encrypted else None)
        self.identities = identities or {u: Ed25519PrivateKey.generate() for u in ids}
        roster = {u: k.public_key() for u, k in self.identities.items()}
        self.server_identity = server_identity or Ed25519PrivateKey.generate()
        self.decrypted: list[CkksAggregate] = []
        key_holder = decrypt_with or holder

        def decrypt(aggregate: CkksAggregate) -> np.ndarray:
            self.decrypted.append(aggregate)
            return key_holder.decrypt_ring_sum(aggregate, aggregate.n_values)

        self.server = SecAggServer(self.config, self.server_identity, roster,
                                   decrypt_masked_total=decrypt if encrypted else None)
        self.sites = {u: SecAggSite(u, self.config, self.identities[u], roster,
                                    self.server_identity.public_key()) for u in ids}
        rng = np.random.default_rng(n + round_id)
        self.values = {u: rng.uniform(-1, 1, length) for u in ids}

    def share_keys(self) -> dict[int, bytes]:
        """Rounds 0 and 1 at every site; returns each site's share bundle."""
        for site in self.sites.values():
            self.server.receive(site.advertise_keys())
        key_lists = self.server.advance()
        for u, site in self.sites.items():
            self.server.receive(site.share_keys(key_lists[u]))
        return self.server.advance()

    def masked_inputs(self, bundles: dict[int, bytes]) -> dict[int, bytes]:
        """Each site's signed EncryptedMaskedInput (not yet delivered)."""
        return {u: self.sites[u].masked_input(bundles[u], self.values[u]) for u in bundles}

    def as_site(self, u: int, body: object) -> bytes:
        """A message signed by site ``u`` (a malicious site or a replay)."""
        return Message.build(body, session_id=self.config.session_id,
                             round_id=self.config.round_id, sender=u, recipient=SERVER_ID,
                             identity=self.identities[u])

    def finish(self, inputs: dict[int, bytes]) -> AggregateOutcome:
        """Deliver ``inputs`` and run consistency and unmasking at the senders."""
        for data in inputs.values():
            self.server.receive(data)
        requests = self.server.advance()
        for u, request in requests.items():
            self.server.receive(self.sites[u].sign_consistency(request))
        unmask = self.server.advance()
        for u, request in unmask.items():
            self.server.receive(self.sites[u].unmask(request))
        self.server.advance()
        return self.server.outcome

    def exact_sum(self, sites: list[int]) -> np.ndarray:
        return np.array([math.fsum(self.values[u][j] for u in sites)
                         for j in range(self.config.vector_length)])


def _bits_look_uniform(words: np.ndarray) -> bool:
    """χ² on each of the 64 bit positions and on the 256 byte values (as test_secagg.py)."""
    bits = np.unpackbits(words.view(np.uint8)).reshape(-1, 64)
    ones = bits.sum(axis=0)
    bit_p = chisquare(np.concatenate([ones, len(bits) - ones])).pvalue
    byte_p = chisquare(np.bincount(words.view(np.uint8), minlength=256)).pvalue
    return bool(bit_p > 1e-6 and byte_p > 1e-6)


# -------------------------------------------------------------------- sums
@pytest.mark.parametrize("n", [3, 5, 10])
def test_sum_equals_plaintext_and_secagg(holder: CkksKeyHolder, n: int) -> None:
    rng = np.random.default_rng(n)
    bound = 1e3
    vectors = {f"site-{i}": rng.uniform(-bound, bound, 12) for i in range(n)}
    got = SecAggCkksSum(bound=bound, key_holder=holder).aggregate(vectors, round_id=1,
                                                                    purpose="t")
    reference = SecAggSum(bound=bound).aggregate(vectors, round_id=1, purpose="t")
    assert got.contributors == reference.contributors == tuple(sorted(vectors))
    np.testing.assert_array_equal(got.total, reference.total)  # the same quantised sum
    exact = np.array([math.fsum(v[j] for v in vectors.values()) for j in range(12)])
    stated = FixedPointEncoder.for_sum(bound, n, 12).error_bound
    assert np.all(np.abs(got.total - exact) <= stated + np.spacing(np.abs(exact)))
    assert got.details["key_holder_summands"] == (n,)  # one decryption, of the whole sum


@pytest.mark.parametrize("phase", list(DropPhase), ids=[p.value for p in DropPhase])
def test_dropouts_at_each_phase_give_what_secagg_gives(holder: CkksKeyHolder,
                                                        phase: DropPhase) -> None:
    n = 7  # t = 5: two dropouts leave exactly t, three abort
    rng = np.random.default_rng(7)
    vectors = {f"s{i}": rng.uniform(-1, 1, 5) for i in range(n)}
    two = DropPlan(("s1", "s4"), phase.value)
    got = SecAggCkksSum(bound=1.0, drop=two, key_holder=holder).aggregate(
        vectors, round_id=1, purpose="drop")
    reference = SecAggSum(bound=1.0, drop=two).aggregate(vectors, round_id=1, purpose="drop")
    assert got.contributors == reference.contributors
    assert got.dropped == reference.dropped == ("s1", "s4")
    np.testing.assert_array_equal(got.total, reference.total)
    counted = sum(vectors[s] for s in got.contributors)
    np.testing.assert_allclose(got.total, counted, rtol=0, atol=1e-12)
    early = phase in (DropPhase.AFTER_KEY_EXCHANGE, DropPhase.AFTER_KEY_SHARING)
    assert len(got.contributors) == (n - 2 if early else n)
    assert got.details["key_holder_summands"] == (len(got.contributors),)
    three = DropPlan(("s1", "s4", "s5"), phase.value)
    for layer in (SecAggCkksSum(bound=1.0, drop=three, key_holder=holder),
                  SecAggSum(bound=1.0, drop=three)):
        with pytest.raises(AbortError):
            layer.aggregate(vectors, round_id=1, purpose="drop")


def test_secagg_plus_neighbourhoods_with_ckks(holder: CkksKeyHolder) -> None:
    rng = np.random.default_rng(10)
    vectors = {f"s{i:02d}": rng.uniform(-5, 5, 3) for i in range(10)}
    drop = DropPlan(("s03",), DropPhase.AFTER_KEY_SHARING.value, round_id=2)
    got = SecAggCkksSum(bound=5.0, neighbours=4, drop=drop, key_holder=holder).aggregate(
        vectors, round_id=2, purpose="plus")
    reference = SecAggSum(bound=5.0, neighbours=4, drop=drop).aggregate(
        vectors, round_id=2, purpose="plus")
    assert got.contributors == reference.contributors and "s03" not in got.contributors
    np.testing.assert_array_equal(got.total, reference.total)


def test_layer_checks_and_accounting(holder: CkksKeyHolder) -> None:
    layer = SecAggCkksSum(bound=1.0, key_holder=holder)
    assert layer.name == "secagg,ckks" and layer.public_context == holder.public_context()
    vectors = {s: np.full(3, 0.5) for s in "abcd"}
    with pytest.raises(EncodingError):
        layer.aggregate({**vectors, "b": np.array([0.0, 2.0, 0.0])}, round_id=1, purpose="x")
    result = layer.aggregate(vectors, round_id=1, purpose="x")
    np.testing.assert_array_equal(result.total, np.full(3, 2.0))
    plain = SecAggSum(bound=1.0).aggregate(vectors, round_id=1, purpose="x")
    ciphertext_bytes = result.details["bytes_to_key_holder"]  # the one encrypted sum
    for site, sent in result.bytes_sent_per_site.items():  # each site: one ciphertext more
        extra = sent - plain.bytes_sent_per_site[site]
        assert 0.95 * ciphertext_bytes < extra < 1.05 * ciphertext_bytes
    assert result.details["seconds_key_holder"] <= result.details["seconds_server"]
    few = SecAggCkksSum(bound=1.0, key_holder=holder, min_contributors=4,
                        drop=DropPlan(("a",), DropPhase.AFTER_KEY_SHARING.value))
    with pytest.raises(AbortError):
        few.aggregate(vectors, round_id=1, purpose="x")


# ------------------------------------------ what a colluding key holder sees
@pytest.mark.parametrize("value", [0.0, 1.0])
def test_key_holder_decrypting_one_site_gets_a_uniformly_masked_vector(
        holder: CkksKeyHolder, value: float) -> None:
    """Key holder + coordinator decrypt site 0's ciphertext alone: y_0 looks uniform.

    Control: the same decryption of an unmasked encoding (plain ``ckks``)
    returns q(x_0) exactly, and the same χ² test rejects it.
    """
    r = CkksRound(holder, 3, length=4096, tolerance=1.0)
    r.values = {u: np.full(4096, value) for u in r.values}
    inputs = r.masked_inputs(r.share_keys())
    single = Message.parse(inputs[0]).body.ciphertext
    y0 = holder.decrypt_ring_sum(add_ciphertexts(r.public, [single]), 4096)
    assert _bits_look_uniform(y0)
    encoded = r.config.encoder.encode(r.values[0])
    plain = encrypt_ring_vector(r.public, encoded, ring_bits=64)
    revealed = holder.decrypt_ring_sum(add_ciphertexts(r.public, [plain]), 4096)
    np.testing.assert_array_equal(revealed, encoded)
    assert not _bits_look_uniform(revealed)
    # the protocol still releases the right sum, and the key holder saw only Σ y_u
    singles = [Message.parse(inputs[u]).body.ciphertext for u in range(3)]
    outcome = r.finish(inputs)
    np.testing.assert_allclose(outcome.total, 3 * value, atol=1e-9)
    assert [a.n_summands for a in r.decrypted] == [3]
    masked_total = holder.decrypt_ring_sum(r.decrypted[0], 4096)
    y_sum = sum((holder.decrypt_ring_sum(add_ciphertexts(r.public, [c]), 4096) for c in singles),
                np.zeros(4096, dtype=np.uint64))
    np.testing.assert_array_equal(masked_total, y_sum)
    assert _bits_look_uniform(masked_total)  # Σ y_u is masked by Σ PRG(b_u) as well


def test_coordinator_never_holds_a_plaintext_masked_input(holder: CkksKeyHolder) -> None:
    r = CkksRound(holder)
    inputs = r.masked_inputs(r.share_keys())
    for data in inputs.values():
        message = Message.parse(data)
        assert message.header.kind is EncryptedMaskedInput.KIND
        assert message.body.ciphertext.fingerprint == holder.fingerprint
    outcome = r.finish(inputs)
    np.testing.assert_allclose(outcome.total, r.exact_sum(list(range(5))), atol=1e-9)


# ------------------------------------------------- parameters and sizes
def _forged_input(r: CkksRound, ciphertext: CkksCiphertext, sender: int = 4) -> bytes:
    return r.as_site(sender, EncryptedMaskedInput(ciphertext))


def _words(r: CkksRound, count: int | None = None) -> np.ndarray:
    return np.arange(count or r.config.encoder.n_words, dtype=np.uint64)


def test_ciphertext_under_another_key_is_rejected(holder: CkksKeyHolder,
                                                  other_holder: CkksKeyHolder) -> None:
    r = CkksRound(holder)
    r.share_keys()
    foreign = encrypt_ring_vector(other_holder.public_context(), _words(r), ring_bits=64)
    with pytest.raises(CkksMismatch):
        r.server.receive(_forged_input(r, foreign))


def test_ciphertext_of_other_parameters_relabelled_is_rejected(holder: CkksKeyHolder) -> None:
    small = CkksKeyHolder.generate(CkksParams(8192, (60, 30, 30, 60), scale_bits=30))
    r = CkksRound(holder)
    r.share_keys()
    foreign = encrypt_ring_vector(small.public_context(), _words(r), ring_bits=64)
    relabelled = dataclasses.replace(foreign, fingerprint=holder.fingerprint)
    with pytest.raises(CkksMismatch):
        r.server.receive(_forged_input(r, relabelled))


@pytest.mark.parametrize(
    "change",
    ["one-word-more", "one-word-less", "8-bit-limbs", "32-bit-ring", "chunk-missing"],
)
def test_ciphertext_of_the_wrong_size_or_layout_is_rejected(holder: CkksKeyHolder,
                                                           change: str) -> None:
    r = CkksRound(holder)
    r.share_keys()
    n_words = r.config.encoder.n_words
    public = r.public
    ciphertext = {
        "one-word-more": lambda: encrypt_ring_vector(public, _words(r, n_words + 1), 64),
        "one-word-less": lambda: encrypt_ring_vector(public, _words(r, n_words - 1), 64),
        "8-bit-limbs": lambda: encrypt_ring_vector(public, _words(r), 64, limb_bits=8),
        "32-bit-ring": lambda: encrypt_ring_vector(public, _words(r), 32),
        "chunk-missing": lambda: dataclasses.replace(
            encrypt_ring_vector(public, _words(r), 64), chunks=()),
    }[change]()
    with pytest.raises(InvalidMessage):  # CkksMismatch, or a layout the parser refuses
        r.server.receive(_forged_input(r, ciphertext))


def test_rejected_ciphertext_counts_as_a_dropout(holder: CkksKeyHolder,
                                                other_holder: CkksKeyHolder) -> None:
    """A site whose ciphertext fails the checks is not in U3; the others' sum is released."""
    r = CkksRound(holder)
    bundles = r.share_keys()
    inputs = r.masked_inputs({u: b for u, b in bundles.items() if u != 4})
    bad = encrypt_ring_vector(other_holder.public_context(), _words(r), ring_bits=64)
    with pytest.raises(CkksMismatch):
        r.server.receive(_forged_input(r, bad))
    outcome = r.finish(inputs)
    assert outcome.contributors == (0, 1, 2, 3) and outcome.dropped == (4,)
    np.testing.assert_allclose(outcome.total, r.exact_sum([0, 1, 2, 3]), atol=1e-9)


def test_plain_and_encrypted_inputs_are_not_interchangeable(holder: CkksKeyHolder) -> None:
    r = CkksRound(holder)
    r.share_keys()
    with pytest.raises(StageError):  # a plain masked input to a CKKS round
        r.server.receive(r.as_site(0, MaskedInput(_words(r))))
    plain = CkksRound(holder, encrypted=False)
    plain.share_keys()
    encrypted = EncryptedMaskedInput(encrypt_ring_vector(r.public, _words(r), 64))
    with pytest.raises(StageError):  # and an encrypted one to a plain round
        plain.server.receive(plain.as_site(0, encrypted))
    assert plain.server.stage is ServerStage.COLLECT_INPUTS


def test_real_valued_ciphertext_cannot_be_sent_as_masked_input(holder: CkksKeyHolder) -> None:
    r = CkksRound(holder)
    real = encrypt_vector(r.public, [0.5] * r.config.encoder.n_words)
    with pytest.raises(InvalidMessage):
        r.as_site(0, EncryptedMaskedInput(real))


@pytest.mark.parametrize(
    "change",
    [{"fingerprint": "ab" * 31}, {"ring_bits": 0}, {"limb_bits": 25}, {"n_values": 0},
     {"chunks": ()}],
    ids=["short-fingerprint", "ring-bits-0", "limb-bits-25", "no-values", "no-chunks"],
)
def test_encrypted_input_wire_format_is_strict(holder: CkksKeyHolder, change: dict) -> None:
    r = CkksRound(holder)
    good = encrypt_ring_vector(r.public, _words(r), 64)
    Message.parse(r.as_site(0, EncryptedMaskedInput(good)))  # the unchanged one parses
    with pytest.raises(InvalidMessage):
        Message.parse(r.as_site(0, EncryptedMaskedInput(dataclasses.replace(good, **change))))


def test_round_configuration_refuses_bad_contexts() -> None:
    import tenseal as ts

    context = ts.context(ts.SCHEME_TYPE.CKKS, 8192, coeff_mod_bit_sizes=[60, 40, 40, 60])
    context.global_scale = 2.0**40
    private = context.serialize(save_secret_key=True)
    with pytest.raises(CkksMismatch):
        SecAggConfig(SESSION, 1, (0, 1, 2), 4, 1.0, ckks_context=private)
    thin = ts.context(ts.SCHEME_TYPE.CKKS, 4096, coeff_mod_bit_sizes=[30, 30, 30])
    thin.global_scale = 2.0**25
    with pytest.raises(CkksParameterError):
        SecAggConfig(SESSION, 1, (0, 1, 2), 4, 1.0, ckks_context=thin.serialize(
            save_secret_key=False, save_galois_keys=False, save_relin_keys=False))


def test_server_needs_the_key_holder_exactly_under_ckks(holder: CkksKeyHolder) -> None:
    vectors = {u: np.zeros(2) for u in range(3)}
    common = dict(bounds=1.0, session_id=SESSION, round_id=1)
    with pytest.raises(ConfigError):
        secure_sum(vectors, ckks_context=holder.public_context(), **common)
    with pytest.raises(ConfigError):
        secure_sum(vectors, decrypt_masked_total=lambda a: np.zeros(2, np.uint64), **common)


def test_wrong_key_holder_aborts_and_releases_nothing(holder: CkksKeyHolder,
                                                      other_holder: CkksKeyHolder) -> None:
    r = CkksRound(holder, decrypt_with=other_holder)
    with pytest.raises(AbortError, match="key holder"):
        r.finish(r.masked_inputs(r.share_keys()))
    assert r.server.stage is ServerStage.ABORTED
    with pytest.raises(StageError):
        _ = r.server.outcome


def test_key_holder_answer_of_the_wrong_size_aborts(holder: CkksKeyHolder) -> None:
    vectors = {u: np.zeros(2) for u in range(3)}
    with pytest.raises(AbortError, match="wrong size"):
        secure_sum(vectors, bounds=1.0, session_id=SESSION, round_id=1,
                   ckks_context=holder.public_context(),
                   decrypt_masked_total=lambda a: np.zeros(a.n_values + 1, np.uint64))


# ------------------------------------------------- replays and stage order
def test_encrypted_input_replayed_into_a_later_round_is_rejected(holder: CkksKeyHolder) -> None:
    old = CkksRound(holder, round_id=1)
    old_inputs = old.masked_inputs(old.share_keys())
    new = CkksRound(holder, round_id=2, identities=old.identities,
                    server_identity=old.server_identity)
    new.share_keys()
    with pytest.raises(ReplayError):
        new.server.receive(old_inputs[0])


def test_encrypted_input_sent_twice_is_rejected(holder: CkksKeyHolder) -> None:
    r = CkksRound(holder)
    inputs = r.masked_inputs(r.share_keys())
    r.server.receive(inputs[0])
    with pytest.raises(ReplayError):
        r.server.receive(inputs[0])


def test_encrypted_input_out_of_order_is_rejected(holder: CkksKeyHolder) -> None:
    r = CkksRound(holder)
    early = r.as_site(0, EncryptedMaskedInput(encrypt_ring_vector(r.public, _words(r), 64)))
    with pytest.raises(StageError):
        r.server.receive(early)  # while collecting keys
    inputs = r.masked_inputs(r.share_keys())
    r.finish(inputs)
    assert r.server.stage is ServerStage.DONE
    with pytest.raises(StageError):
        r.server.receive(inputs[0])  # after the end


def test_tampered_ciphertext_fails_the_site_signature(holder: CkksKeyHolder) -> None:
    r = CkksRound(holder)
    data = r.masked_inputs(r.share_keys())[0]
    middle = len(data) // 2  # inside the ciphertext chunk
    with pytest.raises(InvalidMessage):
        r.server.receive(data[:middle] + bytes([data[middle] ^ 1]) + data[middle + 1:])
    r.server.receive(data)  # the untouched message is still accepted
