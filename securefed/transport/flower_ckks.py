"""The ``ckks`` layer over Flower: a remote key holder, a signed public context.

Three kinds of party take part in a round:

* the **key holder**, a SuperNode with no data whose node config names its
  secret context (``ckks-key``, written by :mod:`securefed.transport.ckks_keys`);
  the secret key is loaded from that file inside its ClientApp and never sent;
* the **sites**, which encrypt their released vector under the public context
  only after checking that the key holder *named in their own node config*
  (``ckks-key-holder``, default ``"keyholder"``) signed it with the identity
  key the consortium registry lists for it: a coordinator that substitutes a
  context whose secret it knows gets a refusal, not a ciphertext;
* the **coordinator** (:class:`CkksRounds`, driven by
  :class:`~securefed.transport.flower_server.FlowerEngine`), which holds only
  the public context, checks and adds ciphertexts, and asks the key holder to
  decrypt one aggregate per round.

One round, in message exchanges::

    (once)  coordinator -> key holder  ckks_context      <- signed public context
    open    coordinator -> sites       round, call, signed context
                                       <- ciphertext of the encoded vector + receipt
    decrypt coordinator -> key holder  round, aggregate, receipts   <- ring sum

A site encodes its vector into 64-bit ring words (:class:`FixedPointEncoder`
for the round's bound and number of sites, as :class:`~protocols.stack.CkksSum`
does), encrypts the words as 16-bit limbs (:func:`encrypt_ring_vector`) and
signs a **receipt**: round key, its name and the SHA-256 of its ciphertext.
The key holder decrypts an aggregate only if it comes with valid receipts of
at least ``max(min_contributors, its own floor)`` distinct sites of that
round, declares exactly that many summands, and is the first for that round
key (it keeps a ledger file of decrypted rounds). It cannot see the
ciphertexts, so it cannot check that the aggregate *is* the sum of the
receipted ones: ``threat_model/ckks_dp.md`` says what that leaves open.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import struct
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from protocols.ckks import (
    CkksAggregate,
    CkksCiphertext,
    CkksKeyHolder,
    PayloadKind,
    add_ciphertexts,
    check_ciphertext,
    context_fingerprint,
    encrypt_ring_vector,
    public_context_params,
)
from protocols.encoding import FixedPointEncoder
from protocols.errors import AbortError, InvalidMessage, ProtocolError
from protocols.stack import DEFAULT_BOUND, AggregateResult
from securefed.keys import COORDINATOR, Registry, verify_signature
from securefed.transport.flower_wire import RoundParams, Stage

__all__ = ["KEY_HOLDER", "RemoteCkksSum", "SignedContext", "UntrustedContext",
           "DecryptionRefused", "CkksRounds", "ckks_rounds", "KeyHolderNode", "sign_public_context",
           "verify_public_context", "trusted_context", "encrypt_for_round", "serve_key_holder",
           "ciphertext_digest"]

KEY_HOLDER = "keyholder"  # the key holder's default registry name
RING_BITS = 64
LIMB_BITS = 16
DEFAULT_FLOOR = 3  # the key holder's own minimum number of receipted sites
_CONTEXT_TAG = b"securefed/flower/ckks-public-context/v1\x00"
_RECEIPT_TAG = b"securefed/flower/ckks-receipt/v1\x00"
_DIGEST_TAG = b"securefed/flower/ckks-ciphertext/v1\x00"


class UntrustedContext(ProtocolError):
    """A public context not signed by the registered key holder (or not a valid one)."""


class DecryptionRefused(ProtocolError):
    """The key holder will not decrypt this aggregate."""


@dataclass(frozen=True)
class RemoteCkksSum:
    """The ``ckks`` layer's public parameters for a coordinator whose key holder is remote.

    Unlike :class:`~protocols.stack.CkksSum` it holds no key of any kind.
    """

    bound: float = DEFAULT_BOUND
    min_contributors: int = 3
    name: ClassVar[str] = "ckks"


# ------------------------------------------------------------ the context
@dataclass(frozen=True)
class SignedContext:
    """A public CKKS context and the key holder's Ed25519 signature over it."""

    key_holder: str
    public_context: bytes
    signature: bytes

    def to_record(self) -> dict[str, Any]:
        return {"ckks_key_holder": self.key_holder, "ckks_context": self.public_context,
                "ckks_signature": self.signature}

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> SignedContext:
        try:
            return cls(str(record["ckks_key_holder"]), bytes(record["ckks_context"]),
                       bytes(record["ckks_signature"]))
        except KeyError as exc:
            raise UntrustedContext(f"no signed CKKS context ({exc.args[0]} missing)") from None


def _context_message(key_holder: str, public_context: bytes) -> bytes:
    digest = bytes.fromhex(context_fingerprint(public_context))
    return _CONTEXT_TAG + key_holder.encode() + b"\x00" + digest


def sign_public_context(identity: Ed25519PrivateKey, key_holder: str,
                        public_context: bytes) -> SignedContext:
    """The key holder's signature over ``tag ‖ name ‖ fingerprint(public_context)``."""
    return SignedContext(key_holder, public_context,
                         identity.sign(_context_message(key_holder, public_context)))


def verify_public_context(signed: SignedContext, registry: Registry, key_holder: str) -> bytes:
    """The public context, if ``key_holder`` (the verifier's choice) signed it.

    The key holder's name comes from the verifier's own configuration, its key
    from the consortium registry; the coordinator's key never qualifies.

    Raises
    ------
    UntrustedContext
        Another signer, a bad signature, or a context that is not a vetted
        public context (secret key, Galois/relinearisation keys, weak parameters).
    """
    if key_holder == COORDINATOR or signed.key_holder != key_holder:
        raise UntrustedContext(f"the context is not from the key holder {key_holder!r}")
    if key_holder not in registry or not verify_signature(
            registry.public_key_hex(key_holder), signed.signature.hex(),
            _context_message(key_holder, signed.public_context)):
        raise UntrustedContext(f"the context's signature is not {key_holder!r}'s")
    try:
        public_context_params(signed.public_context)
    except ProtocolError as exc:
        raise UntrustedContext(f"not a valid public context: {exc}") from None
    return signed.public_context


# ----------------------------------------------------- ciphertexts on the wire
def ciphertext_digest(ciphertext: CkksCiphertext | CkksAggregate) -> bytes:
    """SHA-256 of a ciphertext's layout and chunks (what a receipt signs)."""
    digest = hashlib.sha256(_DIGEST_TAG + bytes.fromhex(ciphertext.fingerprint))
    digest.update(struct.pack(">QII", ciphertext.n_values, ciphertext.ring_bits,
                              ciphertext.limb_bits))
    for chunk in ciphertext.chunks:
        digest.update(struct.pack(">Q", len(chunk)) + chunk)
    return digest.digest()


def _ciphertext_fields(ciphertext: CkksCiphertext | CkksAggregate) -> dict[str, Any]:
    return {"fingerprint": ciphertext.fingerprint, "n_values": ciphertext.n_values,
            "chunks": list(ciphertext.chunks)}


def _layout(record: Mapping[str, Any]) -> tuple[str, int, tuple[bytes, ...]]:
    try:
        fingerprint, n_values = str(record["fingerprint"]), int(record["n_values"])
        chunks = tuple(record["chunks"])
    except (KeyError, TypeError, ValueError):
        raise InvalidMessage("not a ciphertext record") from None
    if not all(isinstance(c, bytes) for c in chunks):  # bytes(n) of an int n would allocate n
        raise InvalidMessage("ciphertext chunks must be bytes")
    if len(fingerprint) != 64 or n_values < 1 or not chunks:
        raise InvalidMessage("ciphertext record has an impossible layout")
    return fingerprint, n_values, chunks


def _ciphertext_from(record: Mapping[str, Any]) -> CkksCiphertext:
    fingerprint, n_values, chunks = _layout(record)
    return CkksCiphertext(fingerprint, n_values, PayloadKind.RING_LIMBS, chunks, RING_BITS,
                          LIMB_BITS)


def _receipt_message(round_key: str, site: str, digest: bytes) -> bytes:
    return _RECEIPT_TAG + round_key.encode() + b"\x00" + site.encode() + b"\x00" + digest


def _encoder(params: RoundParams, length: int) -> FixedPointEncoder:
    return FixedPointEncoder.for_sum(params.bound, len(params.sites), length)


# ------------------------------------------------------------ site side
def trusted_context(params: RoundParams, request: Mapping[str, Any], registry: Registry,
                    key_holder: str) -> bytes:
    """The public context of an ``open`` request, if the site can trust it.

    A site calls this *before* it computes (and, under DP, pays for) its vector.

    Raises
    ------
    UntrustedContext
        The context is not signed by ``key_holder`` (the site's own choice), or
        the key holder is one of the round's sites.
    """
    if key_holder in params.sites:
        raise UntrustedContext(f"the key holder {key_holder!r} is a site of this round")
    return verify_public_context(SignedContext.from_record(request), registry, key_holder)


def encrypt_for_round(params: RoundParams, public_context: bytes, vector: np.ndarray,
                      name: str, identity: Ed25519PrivateKey) -> dict[str, Any]:
    """A site's ``open`` reply: its encoded vector encrypted, and its signed receipt.

    ``public_context`` comes from :func:`trusted_context`; the caller has
    checked the bound.
    """
    words = _encoder(params, len(vector)).encode(vector)
    ciphertext = encrypt_ring_vector(public_context, words, ring_bits=RING_BITS,
                                     limb_bits=LIMB_BITS)
    receipt = identity.sign(_receipt_message(params.key, name, ciphertext_digest(ciphertext)))
    return {"length": len(vector), **_ciphertext_fields(ciphertext), "receipt": receipt}


# ----------------------------------------------------- key holder side
@dataclass(frozen=True)
class KeyHolderNode:
    """What a key holder's ClientApp knows: from its node config and its own disk."""

    name: str
    identity: Ed25519PrivateKey
    registry: Registry
    secret_path: Path
    ledger_path: Path
    floor: int = DEFAULT_FLOOR


def serve_key_holder(stage: Stage, request: Mapping[str, Any],
                     node: KeyHolderNode) -> dict[str, Any]:
    """The key holder's answer to ``ckks_context`` or ``decrypt``; refuses anything else."""
    if stage is Stage.CKKS_CONTEXT:
        holder = CkksKeyHolder.load(node.secret_path)
        return sign_public_context(node.identity, node.name, holder.public_context()).to_record()
    if stage is Stage.DECRYPT:
        return {"ring_sum": _decrypt(request, node).astype("<u8").tobytes()}
    raise DecryptionRefused(f"{node.name} is the CKKS key holder; it holds no data and "
                            f"serves only ckks_context and decrypt, not {stage.value}")


def _decrypt(request: Mapping[str, Any], node: KeyHolderNode) -> np.ndarray:
    params = RoundParams.from_json(str(request["round"]))
    if params.layer != "ckks":
        raise DecryptionRefused(f"round {params.key} is not a ckks round")
    if node.name in params.sites or COORDINATOR in params.sites:
        raise DecryptionRefused("the key holder and the coordinator are not sites")
    sites = [str(s) for s in request["receipt_sites"]]
    digests = [bytes(d) for d in request["receipt_digests"]]
    signatures = [bytes(s) for s in request["receipts"]]
    need = max(params.min_contributors, node.floor)
    if len(set(sites)) != len(sites) or not len(sites) == len(digests) == len(signatures):
        raise DecryptionRefused("receipts are duplicated or incomplete")
    if len(sites) < need:
        raise DecryptionRefused(f"{len(sites)} receipted sites; at least {need} are needed")
    for site, digest, signature in zip(sites, digests, signatures, strict=True):
        if site not in params.sites or not verify_signature(
                node.registry.public_key_hex(site), signature.hex(),
                _receipt_message(params.key, site, digest)):
            raise DecryptionRefused(f"no valid receipt of {site!r} for round {params.key}")
    fingerprint, n_values, chunks = _layout(request)
    n_summands = int(request["n_summands"])
    if n_summands != len(sites):
        raise DecryptionRefused(f"the aggregate declares {n_summands} summands for "
                                f"{len(sites)} receipts")
    aggregate = CkksAggregate(fingerprint, n_values, PayloadKind.RING_LIMBS, chunks, n_summands,
                              RING_BITS, LIMB_BITS)
    holder = CkksKeyHolder.load(node.secret_path)
    _burn_round(node.ledger_path, f"{holder.fingerprint}:{params.key}")
    return holder.decrypt_ring_sum(aggregate, n_values)


def _burn_round(ledger: Path, entry: str) -> None:
    """Record ``entry`` as decrypted, refusing if it already was (before decrypting).

    Check and record are one step: under an exclusive lock on the ledger file,
    so of two concurrent requests for one round exactly one is recorded.
    """
    fd = os.open(ledger, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "a+b") as handle:  # closing it releases the lock
        fcntl.flock(handle, fcntl.LOCK_EX)
        handle.seek(0)
        if entry.encode() in handle.read().split():
            raise DecryptionRefused(f"round {entry.split(':', 1)[1]} was decrypted already")
        handle.write((entry + "\n").encode())
        handle.flush()
        os.fsync(handle.fileno())


# ----------------------------------------------------- coordinator side
Exchange = Callable[[Stage, Mapping[str, dict]], Any]


class CkksRounds:
    """The coordinator's half: fetch and cache the context, add, ask for one decryption.

    Parameters
    ----------
    exchange : callable
        ``exchange(stage, {party: record})`` → an object with ``replies`` and
        ``errors`` (the engine's message exchange).
    registry : Registry
    key_holder : str
        The key holder's registry name.
    protection : RemoteCkksSum
    """

    def __init__(self, exchange: Exchange, registry: Registry, key_holder: str,
                 protection: RemoteCkksSum) -> None:
        self._exchange = exchange
        self._registry = registry
        self.key_holder = key_holder
        self.protection = protection
        self._signed: SignedContext | None = None
        #: what the coordinator received in the last round: site → ciphertext
        self.received: dict[str, CkksCiphertext] = {}

    def signed_context(self) -> SignedContext:
        """The key holder's signed public context (fetched once, verified, cached)."""
        if self._signed is None:
            exchange = self._exchange(Stage.CKKS_CONTEXT, {self.key_holder: {}})
            if self.key_holder not in exchange.replies:
                why = exchange.errors.get(self.key_holder, "no reply")
                raise AbortError(f"the key holder {self.key_holder!r} gave no context: {why}")
            signed = SignedContext.from_record(exchange.replies[self.key_holder])
            verify_public_context(signed, self._registry, self.key_holder)
            self._signed = signed
        return self._signed

    def open_fields(self) -> dict[str, Any]:
        """What ``open`` carries besides the round and the call."""
        return self.signed_context().to_record()

    def finish(self, params: RoundParams, names: list[str], replies: Mapping[str, Any]
               ) -> AggregateResult:
        """Check and add the sites' ciphertexts, have the key holder decrypt, decode.

        Raises
        ------
        AbortError
            Fewer than ``min_contributors`` valid ciphertexts, or the key holder
            refused or did not answer: nothing is released.
        """
        from securefed.transport.replies import byte_field, screen_lengths

        length, screened = screen_lengths(replies)
        rejected = dict(screened.rejected)
        started = time.perf_counter()
        public = self.signed_context().public_context
        encoder = _encoder(params, length or 1)
        accepted: dict[str, tuple[CkksCiphertext, bytes, bytes]] = {}
        for name, reply in sorted(screened.replies.items()):
            receipt = byte_field(reply, "receipt")
            try:
                ciphertext = _ciphertext_from(reply)
                check_ciphertext(public, ciphertext, n_values=encoder.n_words,
                                 kind=PayloadKind.RING_LIMBS, ring_bits=RING_BITS,
                                 limb_bits=LIMB_BITS)
            except ProtocolError as exc:  # an invalid ciphertext counts as no message
                rejected[name] = f"ciphertext rejected: {exc}"
                continue
            digest = ciphertext_digest(ciphertext)
            if receipt is not None and verify_signature(
                    self._registry.public_key_hex(name), receipt.hex(),
                    _receipt_message(params.key, name, digest)):
                accepted[name] = (ciphertext, digest, receipt)
            else:
                rejected[name] = "no valid receipt for its ciphertext"
        self.received = {n: c for n, (c, _, _) in accepted.items()}
        if len(accepted) < params.min_contributors:
            raise AbortError(f"{len(accepted)} valid ciphertexts; at least "
                             f"{params.min_contributors} are needed: nothing is decrypted")
        contributors = sorted(accepted)
        aggregate = add_ciphertexts(public, [accepted[n][0] for n in contributors])
        seconds = time.perf_counter() - started
        ring_sum = self._decrypt(params, aggregate, contributors, accepted, encoder.n_words)
        return AggregateResult(
            encoder.decode(ring_sum), tuple(contributors),
            tuple(n for n in names if n not in accepted),
            {n: c.nbytes for n, (c, _, _) in accepted.items()},
            {"seconds_server": seconds, "words": encoder.words,
             "fingerprint": aggregate.fingerprint,
             **({"dropout_reasons": rejected} if rejected else {})})

    def _decrypt(self, params: RoundParams, aggregate: CkksAggregate, contributors: list[str],
                 accepted: Mapping[str, tuple[CkksCiphertext, bytes, bytes]],
                 n_words: int) -> np.ndarray:
        request = {"round": params.to_json(), **_ciphertext_fields(aggregate),
                   "n_summands": aggregate.n_summands, "receipt_sites": contributors,
                   "receipt_digests": [accepted[n][1] for n in contributors],
                   "receipts": [accepted[n][2] for n in contributors]}
        exchange = self._exchange(Stage.DECRYPT, {self.key_holder: request})
        reply = exchange.replies.get(self.key_holder)
        if reply is None:
            why = exchange.errors.get(self.key_holder, "no reply")
            raise AbortError(f"the key holder did not decrypt round {params.key}: {why}")
        ring_sum = np.frombuffer(bytes(reply["ring_sum"]), dtype="<u8").astype(np.uint64)
        if ring_sum.shape != (n_words,):
            raise AbortError(f"the key holder returned {ring_sum.size} words, not {n_words}")
        return ring_sum


def ckks_rounds(exchange: Exchange, registry: Registry, key_holder: str | None,
                protection: object) -> CkksRounds:
    """The engine's ``ckks`` half, refusing any set-up that puts the secret key here.

    Raises
    ------
    ValueError
        No key holder named, the key holder is the coordinator or unregistered,
        or ``protection`` is not a :class:`RemoteCkksSum` (an in-process
        ``CkksSum`` holds the secret key in the coordinator's process).
    """
    if key_holder is None:
        raise ValueError("a ckks engine needs key_holder=NAME: the secret key lives only at "
                         "the key holder's SuperNode, never in the coordinator's process")
    if key_holder == COORDINATOR or key_holder not in registry:
        raise ValueError(f"the key holder {key_holder!r} must be a registered party other "
                         "than the coordinator")
    if not isinstance(protection, RemoteCkksSum):
        raise ValueError(f"{type(protection).__name__} cannot run over Flower: use "
                         "RemoteCkksSum (CkksSum holds a secret key in this process)")
    return CkksRounds(exchange, registry, key_holder, protection)
