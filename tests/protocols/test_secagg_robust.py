"""Attack 6: one site's malformed message is that site's dropout, never everyone's abort.

Each test runs a real round (:func:`protocols.secagg.secure_sum`) in which one
site's message is replaced on its way to the server: validly re-signed bodies
with a share of the wrong length or outside the field, a masked input of the
wrong length, a payload that is not bytes, and random bytes. The round must
finish with the others and release exactly the plaintext sum of its
contributors; with too few well-formed sites left it must abort (AbortError,
a ProtocolError) and release nothing.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from protocols.errors import AbortError, ProtocolError
from protocols.secagg import secure_sum
from protocols.secagg_messages import MaskedInput, Message, UnmaskShares
from protocols.shamir import PRIME, SHARE_BYTES

SITES = (1, 2, 3, 4, 5)
BAD = 2  # the site whose message is altered


def _vectors() -> dict[int, np.ndarray]:
    rng = np.random.default_rng(17)
    return {u: rng.normal(size=6) for u in SITES}


def _resigned(data: bytes, identity: Ed25519PrivateKey, change) -> bytes:
    """The same message with its body changed by ``change`` and signed again by the site."""
    message = Message.parse(data)
    header = message.header
    return Message.build(change(message.body), session_id=header.session_id,
                         round_id=header.round_id, sender=header.sender,
                         recipient=header.recipient, identity=identity)


def _short_share(body: UnmaskShares) -> UnmaskShares:
    (owner, value), *rest = body.self_mask_shares
    return dataclasses.replace(body, self_mask_shares=((owner, value[:-1]), *rest))


def _share_above_p(body: UnmaskShares) -> UnmaskShares:
    (owner, _), *rest = body.self_mask_shares
    return dataclasses.replace(body, self_mask_shares=(
        (owner, PRIME.to_bytes(SHARE_BYTES, "big")), *rest))


def _shifted_share(body: UnmaskShares) -> UnmaskShares:
    """A well-formed share value that is not the site's share: y + 1 (mod p)."""
    (owner, value), *rest = body.self_mask_shares
    wrong = (int.from_bytes(value, "big") + 1) % PRIME
    return dataclasses.replace(body, self_mask_shares=(
        (owner, wrong.to_bytes(SHARE_BYTES, "big")), *rest))


def _long_input(body: MaskedInput) -> MaskedInput:
    return MaskedInput(np.concatenate([body.words, np.zeros(1, dtype=np.uint64)]))


def _run(step: str, alter, bad_sites=(BAD,), threshold: int = 3):
    identities = {u: Ed25519PrivateKey.generate() for u in SITES}
    vectors = _vectors()

    def network(site: int, sent_at: str, data: bytes):
        if site in bad_sites and sent_at == step:
            return alter(data, identities[site])
        return data

    result = secure_sum(vectors, bounds=10.0, session_id=b"r" * 16, round_id=3,
                        identities=identities, threshold=threshold, min_contributors=3,
                        network=network)
    return result, vectors


CASES = {  # case: (step at which it is sent, how it is altered, what the reason says)
    "share of the wrong length": ("unmask", lambda d, k: _resigned(d, k, _short_share),
                                  "collect-unmask: a share value is not a field element"),
    "share >= p": ("unmask", lambda d, k: _resigned(d, k, _share_above_p),
                   "collect-unmask: a share value is not a field element"),
    "a wrong share in the field": ("unmask", lambda d, k: _resigned(d, k, _shifted_share),
                                   "collect-unmask: its share of site"),
    "masked input of the wrong length": ("masked_input",
                                         lambda d, k: _resigned(d, k, _long_input),
                                         "collect-inputs: masked input has the wrong length"),
    "payload that is not bytes": ("masked_input", lambda d, k: d.hex(),
                                  "masked_input: messages are bytes"),
    "garbage bytes": ("share_keys", lambda d, k: np.random.default_rng(1).bytes(len(d)),
                      "share_keys: "),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_malformed_message_is_that_sites_dropout_and_the_sum_is_exact(case):
    step, alter, reason = CASES[case]
    result, vectors = _run(step, alter)
    assert set(result.rejected) == {BAD} and result.rejected[BAD].startswith(reason)
    # a site rejected at unmask had its masked input counted: its mask is recovered
    expected = SITES if step == "unmask" else tuple(u for u in SITES if u != BAD)
    assert result.contributors == expected
    plaintext = sum(vectors[u] for u in expected)
    np.testing.assert_allclose(result.total, plaintext, atol=1e-9)


def test_the_reason_names_what_was_wrong_and_no_value():
    result, _ = _run("unmask", lambda d, k: _resigned(d, k, _share_above_p))
    assert "field element" in result.rejected[BAD]
    assert str(PRIME) not in result.rejected[BAD]


@pytest.mark.parametrize("case", sorted(CASES))
def test_too_few_well_formed_sites_abort_cleanly(case):
    step, alter, _ = CASES[case]
    with pytest.raises(AbortError) as aborted:  # 3 of 5 malformed, t = 3: 2 are left
        _run(step, alter, bad_sites=(1, 2, 3))
    assert isinstance(aborted.value, ProtocolError)


def test_the_stack_reports_the_rejected_site_as_dropped(monkeypatch):
    import functools

    import protocols.secagg as secagg
    from protocols.stack import SecAggSum

    garble = functools.partialmethod(secagg.SecureSumRun.round, network=lambda u, step, data: (
        b"\x00" * len(data) if u == 2 and step == "masked_input" else data))
    monkeypatch.setattr(secagg.SecureSumRun, "round", garble)
    vectors = {name: np.full(3, float(k)) for k, name in enumerate("ABCD", start=1)}
    result = SecAggSum(bound=10.0).aggregate(vectors, round_id=1, purpose="t")
    assert result.contributors == ("A", "C", "D") and result.dropped == ("B",)
    assert "masked_input" in result.details["dropout_reasons"]["B"]
    np.testing.assert_allclose(result.total, np.full(3, 1.0 + 3 + 4), atol=1e-9)
