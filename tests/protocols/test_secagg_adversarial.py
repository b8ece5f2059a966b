"""An active server, forged or replayed messages, and every invalid stage transition."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from protocols.errors import (
    AbortError,
    EncodingError,
    InvalidMessage,
    ProtocolError,
    ReplayError,
    StageError,
)
from protocols.secagg_config import SERVER_ID, SecAggConfig
from protocols.secagg_messages import (
    AdvertiseKeys,
    Body,
    ConsistencyRequest,
    KeyList,
    MaskedInput,
    Message,
    ShareBundle,
    UnmaskRequest,
    UnmaskShares,
)
from protocols.secagg_server import SecAggServer, ServerStage
from protocols.secagg_site import SecAggSite, SiteStage

SESSION = b"adversarial"
STEPS = ["advertise_keys", "share_keys", "masked_input", "sign_consistency", "unmask"]
STAGE_AFTER = [
    SiteStage.READY,
    SiteStage.ADVERTISED,
    SiteStage.KEYS_SHARED,
    SiteStage.INPUT_SENT,
    SiteStage.CONSISTENCY_SIGNED,
    SiteStage.DONE,
]


class Round:
    """Sites and a server wired by hand, so tests can intercept and forge messages."""

    def __init__(
        self,
        n: int = 5,
        *,
        round_id: int = 1,
        session_id: bytes = SESSION,
        identities: dict[int, Ed25519PrivateKey] | None = None,
        server_identity: Ed25519PrivateKey | None = None,
        neighbours: int | None = None,
    ) -> None:
        ids = tuple(range(n))
        self.config = SecAggConfig(session_id, round_id, ids, 4, 1.0, neighbours=neighbours)
        self.identities = identities or {u: Ed25519PrivateKey.generate() for u in ids}
        self.roster = {u: k.public_key() for u, k in self.identities.items()}
        self.server_identity = server_identity or Ed25519PrivateKey.generate()
        self.server = SecAggServer(self.config, self.server_identity, self.roster)
        self.sites = {
            u: SecAggSite(
                u, self.config, self.identities[u], self.roster, self.server_identity.public_key()
            )
            for u in ids
        }
        self.values = {u: np.full(4, 0.25 * (u % 3)) for u in ids}
        self.pending: dict[int, bytes] = {}
        self.sent: list[dict[int, bytes]] = []
        self.steps_done = 0

    def step(self, skip: tuple[int, ...] = ()) -> dict[int, bytes]:
        """Run the next protocol step at every live site, then close the server stage."""
        name = STEPS[self.steps_done]
        outgoing = {}
        for u, site in self.sites.items():
            if u in skip or (self.steps_done and u not in self.pending):
                continue
            method = getattr(site, name)
            if name == "advertise_keys":
                outgoing[u] = method()
            elif name == "masked_input":
                outgoing[u] = method(self.pending[u], self.values[u])
            else:
                outgoing[u] = method(self.pending[u])
        for data in outgoing.values():
            self.server.receive(data)
        self.sent.append(outgoing)
        self.pending = self.server.advance()
        self.steps_done += 1
        return outgoing

    def run(self, steps: int) -> None:
        for _ in range(steps):
            self.step()

    def forge(self, body: Body, recipient: int, **header: object) -> bytes:
        """A message signed by the (malicious) server."""
        fields = dict(
            session_id=self.config.session_id,
            round_id=self.config.round_id,
            sender=SERVER_ID,
            recipient=recipient,
            identity=self.server_identity,
        )
        fields.update(header)
        return Message.build(body, **fields)

    def as_site(self, u: int, body: Body, **header: object) -> bytes:
        """A message signed by site ``u`` (a malicious site, or a replay)."""
        fields = dict(
            session_id=self.config.session_id,
            round_id=self.config.round_id,
            sender=u,
            recipient=SERVER_ID,
            identity=self.identities[u],
        )
        fields.update(header)
        return Message.build(body, **fields)


def body_of(data: bytes) -> Body:
    return Message.parse(data).body


# --------------------------------------------------------------- stage machine
def site_in_stage(stage: SiteStage) -> tuple[Round, SecAggSite]:
    r = Round()
    if stage is SiteStage.ABORTED:
        r.run(1)
        with pytest.raises(InvalidMessage):
            r.sites[0].share_keys(b"not a message")
    else:
        r.run(STAGE_AFTER.index(stage))
    assert r.sites[0].stage is stage
    return r, r.sites[0]


def call(site: SecAggSite, name: str, argument: bytes) -> bytes:
    method = getattr(site, name)
    if name == "advertise_keys":
        return method()
    if name == "masked_input":
        return method(argument, np.zeros(4))
    return method(argument)


INVALID_TRANSITIONS = [
    (stage, name)
    for stage, name in itertools.product(list(SiteStage), STEPS)
    if not (stage in STAGE_AFTER[:5] and STEPS[STAGE_AFTER.index(stage)] == name)
]


def test_invalid_transitions_are_all_enumerated() -> None:
    assert len(INVALID_TRANSITIONS) == len(SiteStage) * len(STEPS) - len(STEPS) == 30


@pytest.mark.parametrize(
    ("stage", "name"), INVALID_TRANSITIONS, ids=[f"{s.value}-{m}" for s, m in INVALID_TRANSITIONS]
)
def test_every_invalid_site_transition_is_rejected(stage: SiteStage, name: str) -> None:
    r, site = site_in_stage(stage)
    argument = r.pending.get(0, b"")
    with pytest.raises(StageError):
        call(site, name, argument)
    assert site.stage is stage  # a refused call changes nothing


@pytest.mark.parametrize("index", range(5))
def test_each_valid_transition_advances_one_stage(index: int) -> None:
    r = Round()
    r.run(index)
    r.step()
    assert all(site.stage is STAGE_AFTER[index + 1] for site in r.sites.values())


def test_aborted_site_never_answers_again() -> None:
    r, site = site_in_stage(SiteStage.ABORTED)
    for name in STEPS:
        with pytest.raises(StageError):
            call(site, name, r.pending.get(0, b""))


def test_server_rejects_messages_for_the_wrong_stage_and_after_the_end() -> None:
    r = Round()
    advertisement = r.step()[0]
    with pytest.raises(StageError):
        r.server.receive(advertisement)  # an AdvertiseKeys while collecting shares
    r.run(4)
    assert r.server.stage is ServerStage.DONE
    with pytest.raises(StageError):
        r.server.receive(advertisement)
    with pytest.raises(StageError):
        r.server.advance()


# -------------------------------------------------------------- active server
def test_server_listing_a_site_alive_and_dropped_is_refused() -> None:
    r = Round()
    r.run(4)
    real = body_of(r.pending[1])
    forged = dataclasses.replace(real, dropped=(2,))
    with pytest.raises(AbortError, match="both"):
        r.sites[1].unmask(r.forge(forged, 1))
    assert r.sites[1].stage is SiteStage.ABORTED and r.sites[1].revealed == {}


def test_server_asking_for_both_shares_of_one_site_gets_at_most_one() -> None:
    """Asking v's holders for b_v and (in a second request) for its pair seeds is refused."""
    r = Round()
    r.run(4)
    first = r.sites[1].unmask(r.pending[1])
    assert set(body_of(first).self_mask_shares[i][0] for i in range(5)) == set(range(5))
    assert body_of(first).pair_seeds == ()
    real = body_of(r.pending[1])
    again = r.forge(dataclasses.replace(real, alive=(0, 1, 3, 4), dropped=(2,)), 1)
    with pytest.raises(StageError):
        r.sites[1].unmask(again)
    assert set(r.sites[1].revealed.values()) == {"self-mask"}


def test_server_moving_a_signed_alive_site_to_dropped_is_refused() -> None:
    r = Round()
    r.run(4)
    real = body_of(r.pending[1])
    forged = dataclasses.replace(real, alive=(0, 1, 3, 4), dropped=(2,))
    with pytest.raises(AbortError):
        r.sites[1].unmask(r.forge(forged, 1))


def test_alive_list_not_a_subset_of_the_key_sharers_is_refused() -> None:
    r = Round()
    r.run(1)
    r.step(skip=(4,))  # site 4 did not share keys
    r.step()
    forged = r.forge(ConsistencyRequest((0, 1, 2, 3, 4)), 0)
    with pytest.raises(AbortError, match="subset"):
        r.sites[0].sign_consistency(forged)


def test_dropped_list_hiding_a_dropout_is_refused() -> None:
    r = Round()
    r.run(2)
    r.step(skip=(4,))  # site 4 shared keys, then dropped before its masked input
    r.step()
    real = body_of(r.pending[0])
    assert real.alive == (0, 1, 2, 3) and real.dropped == (4,)
    with pytest.raises(AbortError, match="dropped"):
        r.sites[0].unmask(r.forge(dataclasses.replace(real, dropped=()), 0))


def test_consistency_list_without_the_site_itself_is_refused() -> None:
    r = Round()
    r.run(3)
    with pytest.raises(AbortError):
        r.sites[0].sign_consistency(r.forge(ConsistencyRequest((1, 2, 3, 4)), 0))


def test_too_few_sites_in_any_list_aborts() -> None:
    r = Round()
    r.run(3)
    with pytest.raises(AbortError):  # t = 4 of 5
        r.sites[0].sign_consistency(r.forge(ConsistencyRequest((0, 1, 2)), 0))
    r = Round()
    r.run(1)
    adverts = body_of(r.pending[0]).advertisements[:3]
    with pytest.raises(AbortError):
        r.sites[0].share_keys(r.forge(KeyList(adverts), 0))
    r = Round()
    r.run(2)
    few = body_of(r.pending[0]).ciphertexts[:2]  # own share + 2 received = 3 < t
    with pytest.raises(AbortError):
        r.sites[0].masked_input(r.forge(ShareBundle(few), 0), np.zeros(4))


def test_too_few_consistency_signatures_abort() -> None:
    r = Round()
    r.run(4)
    real = body_of(r.pending[0])
    forged = dataclasses.replace(real, signatures=real.signatures[:3])
    with pytest.raises(AbortError):
        r.sites[0].unmask(r.forge(forged, 0))


def test_forged_consistency_signature_rejected() -> None:
    r = Round()
    r.run(4)
    real = body_of(r.pending[0])
    v, signature = real.signatures[1]
    bad = ((v, signature[:-1] + bytes([signature[-1] ^ 1])),)
    forged = dataclasses.replace(real, signatures=real.signatures[:1] + bad + real.signatures[2:])
    with pytest.raises(InvalidMessage):
        r.sites[0].unmask(r.forge(forged, 0))


def test_substituted_key_in_key_list_rejected() -> None:
    """The server swaps in its own keys for site 2 (it cannot sign as site 2)."""
    r = Round()
    r.run(1)
    adverts = list(body_of(r.pending[0]).advertisements)
    fake = Message.build(
        AdvertiseKeys(bytes(range(32)), bytes(range(1, 33))),
        session_id=SESSION,
        round_id=1,
        sender=2,
        recipient=SERVER_ID,
        identity=r.server_identity,
    )
    adverts[2] = fake
    with pytest.raises(InvalidMessage):
        r.sites[0].share_keys(r.forge(KeyList(tuple(adverts)), 0))


def test_duplicate_keys_and_duplicate_sites_in_key_list_abort() -> None:
    r = Round()
    r.run(1)
    adverts = list(body_of(r.pending[0]).advertisements)
    keys_of_1 = body_of(adverts[1])
    copycat = r.as_site(3, keys_of_1)  # site 3 (malicious) re-advertises site 1's keys
    with pytest.raises(AbortError, match="duplicate"):
        r.sites[0].share_keys(r.forge(KeyList(tuple(adverts[:3] + [copycat] + adverts[4:])), 0))
    r = Round()
    r.run(1)
    adverts = list(body_of(r.pending[0]).advertisements)
    with pytest.raises(AbortError):
        r.sites[0].share_keys(r.forge(KeyList(tuple(adverts + [adverts[2]])), 0))


def test_key_list_without_own_keys_aborts() -> None:
    r = Round()
    r.run(1)
    other = Round(identities=r.identities, server_identity=r.server_identity)
    other.run(1)
    adverts = list(body_of(r.pending[0]).advertisements)
    adverts[0] = body_of(other.pending[0]).advertisements[0]  # an old key of site 0
    with pytest.raises(AbortError):
        r.sites[0].share_keys(r.forge(KeyList(tuple(adverts)), 0))


def test_server_rejects_duplicate_keys_from_a_malicious_site() -> None:
    r = Round()
    data = r.sites[1].advertise_keys()
    r.server.receive(data)
    with pytest.raises(InvalidMessage):
        r.server.receive(r.as_site(2, body_of(data)))  # site 2 copies site 1's keys


def test_share_bundle_from_unknown_sender_or_tampered_share_aborts() -> None:
    r = Round()
    r.run(2)
    real = body_of(r.pending[0])
    (sender, sealed), *rest = real.ciphertexts
    tampered = ((sender, sealed[:-1] + bytes([sealed[-1] ^ 1])), *rest)
    with pytest.raises(InvalidMessage):
        r.sites[0].masked_input(r.forge(ShareBundle(tampered), 0), np.zeros(4))
    r = Round()
    r.run(2)
    real = body_of(r.pending[0])
    rerouted = body_of(r.pending[1]).ciphertexts  # addressed to site 1, not 0
    with pytest.raises(ProtocolError):
        r.sites[0].masked_input(r.forge(ShareBundle(rerouted), 0), np.zeros(4))


# ------------------------------------------------------ replays and tampering
def test_message_from_an_earlier_round_is_rejected_by_the_site() -> None:
    old = Round(round_id=1)
    old.run(1)
    new = Round(round_id=2, identities=old.identities, server_identity=old.server_identity)
    new.sites[0].advertise_keys()
    with pytest.raises(ReplayError):
        new.sites[0].share_keys(old.pending[0])
    assert new.sites[0].stage is SiteStage.ABORTED


def test_message_from_another_session_is_rejected_by_the_site() -> None:
    old = Round(session_id=b"other-session")
    old.run(1)
    new = Round(identities=old.identities, server_identity=old.server_identity)
    new.sites[0].advertise_keys()
    with pytest.raises(ReplayError):
        new.sites[0].share_keys(old.pending[0])


def test_replayed_site_messages_rejected_by_the_server() -> None:
    old = Round(round_id=1)
    old_adverts = old.step()
    new = Round(round_id=2, identities=old.identities, server_identity=old.server_identity)
    with pytest.raises(ReplayError):
        new.server.receive(old_adverts[0])
    data = new.sites[0].advertise_keys()
    new.server.receive(data)
    with pytest.raises(ReplayError):
        new.server.receive(data)  # the same message twice


def test_replayed_advertisement_inside_key_list_rejected() -> None:
    old = Round(round_id=1)
    old.run(1)
    new = Round(round_id=2, identities=old.identities, server_identity=old.server_identity)
    new.run(1)
    adverts = list(body_of(new.pending[0]).advertisements)
    adverts[3] = body_of(old.pending[0]).advertisements[3]
    with pytest.raises(ReplayError):
        new.sites[0].share_keys(new.forge(KeyList(tuple(adverts)), 0))


def test_out_of_order_message_rejected() -> None:
    r = Round()
    r.run(1)
    with pytest.raises(StageError):
        r.sites[0].share_keys(r.forge(ShareBundle(()), 0))
    assert r.sites[0].stage is SiteStage.ABORTED


def test_message_for_another_recipient_rejected() -> None:
    r = Round()
    r.run(1)
    with pytest.raises(InvalidMessage):
        r.sites[0].share_keys(r.pending[1])


MUTATIONS: list[tuple[str, Callable[[bytes], bytes]]] = [
    ("flip-signature", lambda d: d[:-1] + bytes([d[-1] ^ 1])),
    ("flip-body", lambda d: d[:-70] + bytes([d[-70] ^ 1]) + d[-69:]),
    ("flip-header", lambda d: d[:8] + bytes([d[8] ^ 1]) + d[9:]),
    ("truncate", lambda d: d[:-1]),
    ("extend", lambda d: d + b"\x00"),
    ("empty", lambda d: b""),
]


@pytest.mark.parametrize("mutate", [m for _, m in MUTATIONS], ids=[n for n, _ in MUTATIONS])
def test_tampered_server_message_rejected(mutate: Callable[[bytes], bytes]) -> None:
    r = Round()
    r.run(1)
    with pytest.raises(InvalidMessage):
        r.sites[0].share_keys(mutate(r.pending[0]))


@pytest.mark.parametrize("mutate", [m for _, m in MUTATIONS], ids=[n for n, _ in MUTATIONS])
def test_tampered_site_message_rejected(mutate: Callable[[bytes], bytes]) -> None:
    r = Round()
    r.run(2)
    data = r.sites[0].masked_input(r.pending[0], r.values[0])
    with pytest.raises(InvalidMessage):
        r.server.receive(mutate(data))


def test_message_signed_by_the_wrong_key_rejected() -> None:
    r = Round()
    r.run(1)
    impostor = Message.build(
        body_of(r.pending[0]),
        session_id=SESSION,
        round_id=1,
        sender=SERVER_ID,
        recipient=0,
        identity=Ed25519PrivateKey.generate(),
    )
    with pytest.raises(InvalidMessage):
        r.sites[0].share_keys(impostor)
    forged = Message.build(
        AdvertiseKeys(bytes(32), bytes(range(32))),
        session_id=SESSION,
        round_id=1,
        sender=3,
        recipient=SERVER_ID,
        identity=r.identities[2],
    )
    with pytest.raises(InvalidMessage):
        Round().server.receive(forged)


# ------------------------------------------------------- lengths and dtypes
def test_masked_input_of_wrong_length_rejected() -> None:
    r = Round()
    r.run(2)
    short = r.as_site(0, MaskedInput(np.zeros(3, dtype=np.uint64)))
    with pytest.raises(InvalidMessage, match="length"):
        r.server.receive(short)
    raw = bytearray(r.as_site(0, MaskedInput(np.zeros(4, dtype=np.uint64))))
    with pytest.raises(InvalidMessage):
        r.server.receive(bytes(raw[:-65]) + bytes(raw[-64:]))  # 31 payload bytes


def test_masked_input_wire_type_must_be_uint64() -> None:
    with pytest.raises(InvalidMessage):
        Message.build(
            MaskedInput(np.zeros(4, dtype=np.int64)),
            session_id=SESSION,
            round_id=1,
            sender=0,
            recipient=SERVER_ID,
            identity=Ed25519PrivateKey.generate(),
        )


@pytest.mark.parametrize(
    "values",
    [
        np.zeros(5),
        np.zeros(3),
        np.zeros((2, 2)),
        np.zeros(4, dtype=complex),
        np.array(["a"] * 4),
        np.array([np.nan, 0, 0, 0]),
        np.array([1.5, 0, 0, 0]),
    ],
    ids=["long", "short", "2-d", "complex", "str", "nan", "out-of-bound"],
)
def test_site_rejects_bad_input_before_masking(values: np.ndarray) -> None:
    r = Round()
    r.run(2)
    with pytest.raises(EncodingError):
        r.sites[0].masked_input(r.pending[0], values)
    assert r.sites[0].stage is SiteStage.ABORTED


def test_unmask_response_revealing_both_shares_rejected_by_server() -> None:
    r = Round()
    r.run(3)
    r.step(skip=(4,))  # site 4 drops after masked input
    response = body_of(r.sites[0].unmask(r.pending[0]))
    share = response.self_mask_shares[0][1]
    greedy = UnmaskShares(response.self_mask_shares, ((0, share),))
    with pytest.raises(InvalidMessage):
        r.server.receive(r.as_site(0, greedy))


def test_unsorted_or_duplicate_id_lists_rejected() -> None:
    r = Round()
    for alive in ((1, 0, 2), (0, 0, 1)):
        forged = r.forge(UnmaskRequest(alive, (), ()), 0)
        with pytest.raises(InvalidMessage):
            Message.parse(forged)


def test_abort_releases_nothing() -> None:
    r = Round()
    r.run(4)
    for u in (0, 1):  # only 2 < t = 4 sites answer the unmask request
        r.server.receive(r.sites[u].unmask(r.pending[u]))
    with pytest.raises(AbortError):
        r.server.advance()
    assert r.server.stage is ServerStage.ABORTED
    with pytest.raises(StageError):
        _ = r.server.outcome
