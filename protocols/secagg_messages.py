"""Wire format of secure aggregation: signed, self-describing byte messages.

Every message is ``header ‖ body ‖ Ed25519 signature`` where the header is

    magic "SFSA" ‖ version ‖ kind ‖ len‖session_id ‖ round_id ‖ sender ‖ recipient

and the signature (by the sender's long-term identity key; the server's key
for server messages) covers header and body. Binding session, round, kind,
sender and recipient into the signed bytes is what turns replays from another
round or session, re-routed messages and substituted keys into detectable
errors. Parsing is strict: trailing bytes, truncation, unknown kinds, wrong
array sizes and unsorted or duplicate id lists raise :class:`InvalidMessage`.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from protocols.errors import InvalidMessage, ReplayError, StageError
from protocols.primitives import SIGNATURE_BYTES, sign, verify

if TYPE_CHECKING:  # protocols.ckks loads TenSEAL: imported only where ciphertexts are used
    from protocols.ckks import CkksCiphertext

__all__ = [
    "MessageKind",
    "Header",
    "Message",
    "AdvertiseKeys",
    "KeyList",
    "ShareKeys",
    "ShareBundle",
    "MaskedInput",
    "EncryptedMaskedInput",
    "ConsistencyRequest",
    "ConsistencySignature",
    "UnmaskRequest",
    "UnmaskShares",
]

_MAGIC = b"SFSA"
_VERSION = 1
_MAX_ITEMS = 1 << 24


class MessageKind(enum.Enum):
    """The messages of a round, in protocol order (ENCRYPTED_MASKED_INPUT replaces
    MASKED_INPUT when the round runs under CKKS)."""

    ADVERTISE_KEYS = 1
    KEY_LIST = 2
    SHARE_KEYS = 3
    SHARE_BUNDLE = 4
    MASKED_INPUT = 5
    CONSISTENCY_REQUEST = 6
    CONSISTENCY_SIGNATURE = 7
    UNMASK_REQUEST = 8
    UNMASK_SHARES = 9
    ENCRYPTED_MASKED_INPUT = 10


_U32 = struct.Struct(">I")
_I64 = struct.Struct(">q")
_PAIR_HEAD = struct.Struct(">qI")


class _Writer:
    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def u32(self, value: int) -> None:
        self.parts.append(struct.pack(">I", value))

    def i64(self, value: int) -> None:
        self.parts.append(struct.pack(">q", value))

    def blob(self, value: bytes) -> None:
        self.u32(len(value))
        self.parts.append(bytes(value))

    def ids(self, values: tuple[int, ...]) -> None:
        self.u32(len(values))
        self.parts.append(np.asarray(values, dtype=">i8").tobytes())

    def pairs(self, values: tuple[tuple[int, bytes], ...]) -> None:
        self.u32(len(values))
        parts = self.parts
        for site, payload in values:
            parts.append(_PAIR_HEAD.pack(site, len(payload)))
            parts.append(bytes(payload))

    def blobs(self, values: tuple[bytes, ...]) -> None:
        self.u32(len(values))
        for payload in values:
            self.blob(payload)


class _Reader:
    """Reads fields straight out of one buffer: integers and id lists without copies."""

    def __init__(self, data: bytes | memoryview) -> None:
        self.data = memoryview(data)
        self.pos = 0

    def _advance(self, n: int) -> int:
        start = self.pos
        if n < 0 or start + n > len(self.data):
            raise InvalidMessage("message truncated")
        self.pos = start + n
        return start

    def take(self, n: int) -> bytes:
        start = self._advance(n)
        return bytes(self.data[start : start + n])

    def view(self, n: int) -> memoryview:
        """The next ``n`` bytes as a view of the message (no copy)."""
        start = self._advance(n)
        return self.data[start : start + n]

    def u32(self) -> int:
        return _U32.unpack_from(self.data, self._advance(4))[0]

    def i64(self) -> int:
        return _I64.unpack_from(self.data, self._advance(8))[0]

    def count(self) -> int:
        n = self.u32()
        if n > _MAX_ITEMS:
            raise InvalidMessage("too many items")
        return n

    def blob(self) -> bytes:
        return self.take(self.u32())

    def ids(self) -> tuple[int, ...]:
        n = self.count()
        values = tuple(np.frombuffer(self.view(8 * n), dtype=">i8").tolist())
        if any(b <= a for a, b in zip(values, values[1:], strict=False)):
            raise InvalidMessage("id list must be strictly increasing")
        return values

    def pairs(self) -> tuple[tuple[int, bytes], ...]:
        n, data, out = self.count(), self.data, []
        pos, end = self.pos, len(self.data)
        for _ in range(n):  # (i64 site, u32 length, payload), read in place
            if pos + 12 > end:
                raise InvalidMessage("message truncated")
            site, size = _PAIR_HEAD.unpack_from(data, pos)
            pos += 12
            if pos + size > end:
                raise InvalidMessage("message truncated")
            out.append((site, bytes(data[pos : pos + size])))
            pos += size
        self.pos = pos
        values = tuple(out)
        sites = [site for site, _ in values]
        if any(b <= a for a, b in zip(sites, sites[1:], strict=False)):
            raise InvalidMessage("pair list must be strictly increasing in site id")
        return values

    def blobs(self) -> tuple[bytes, ...]:
        return tuple(self.blob() for _ in range(self.count()))


@dataclass(frozen=True)
class Header:
    """Routing and replay context of a message (all of it signed)."""

    kind: MessageKind
    session_id: bytes
    round_id: int
    sender: int
    recipient: int

    def write(self, writer: _Writer) -> None:
        writer.parts.append(_MAGIC + bytes([_VERSION, self.kind.value]))
        writer.blob(self.session_id)
        writer.i64(self.round_id)
        writer.i64(self.sender)
        writer.i64(self.recipient)

    @classmethod
    def read(cls, reader: _Reader) -> Header:
        prefix = reader.take(6)
        if prefix[:4] != _MAGIC or prefix[4] != _VERSION:
            raise InvalidMessage("not a secure-aggregation message")
        try:
            kind = MessageKind(prefix[5])
        except ValueError as exc:
            raise InvalidMessage("unknown message kind") from exc
        return cls(kind, reader.blob(), reader.i64(), reader.i64(), reader.i64())

    def expect(self, *, kind: MessageKind, session_id: bytes, round_id: int) -> None:
        """Reject other sessions or rounds (ReplayError) and out-of-order kinds (StageError)."""
        if self.session_id != session_id or self.round_id != round_id:
            raise ReplayError("message belongs to another session or round")
        if self.kind is not kind:
            raise StageError(f"expected {kind.name}, got {self.kind.name}")


@dataclass(frozen=True)
class AdvertiseKeys:
    """Round 0, site → server: X25519 public keys c_pk (encryption) and s_pk (masks)."""

    KIND: ClassVar[MessageKind] = MessageKind.ADVERTISE_KEYS
    cipher_public: bytes
    mask_public: bytes

    def write(self, writer: _Writer) -> None:
        writer.blob(self.cipher_public)
        writer.blob(self.mask_public)

    @classmethod
    def read(cls, reader: _Reader) -> AdvertiseKeys:
        body = cls(reader.blob(), reader.blob())
        if len(body.cipher_public) != 32 or len(body.mask_public) != 32:
            raise InvalidMessage("public keys have 32 bytes")
        return body


@dataclass(frozen=True)
class KeyList:
    """Server → site: the signed AdvertiseKeys messages of the site's live holders."""

    KIND: ClassVar[MessageKind] = MessageKind.KEY_LIST
    advertisements: tuple[bytes, ...]

    def write(self, writer: _Writer) -> None:
        writer.blobs(self.advertisements)

    @classmethod
    def read(cls, reader: _Reader) -> KeyList:
        return cls(reader.blobs())


@dataclass(frozen=True)
class ShareKeys:
    """Round 1, site → server: (recipient, AEAD ciphertext of the two shares) pairs."""

    KIND: ClassVar[MessageKind] = MessageKind.SHARE_KEYS
    ciphertexts: tuple[tuple[int, bytes], ...]

    def write(self, writer: _Writer) -> None:
        writer.pairs(self.ciphertexts)

    @classmethod
    def read(cls, reader: _Reader) -> ShareKeys:
        return cls(reader.pairs())


@dataclass(frozen=True)
class ShareBundle:
    """Server → site: (sender, ciphertext) pairs addressed to this site."""

    KIND: ClassVar[MessageKind] = MessageKind.SHARE_BUNDLE
    ciphertexts: tuple[tuple[int, bytes], ...]

    def write(self, writer: _Writer) -> None:
        writer.pairs(self.ciphertexts)

    @classmethod
    def read(cls, reader: _Reader) -> ShareBundle:
        return cls(reader.pairs())


@dataclass(frozen=True, eq=False)
class MaskedInput:
    """Round 2, site → server: y_u ∈ Z_{2^64}^{w·d} as little-endian uint64 words."""

    KIND: ClassVar[MessageKind] = MessageKind.MASKED_INPUT
    words: np.ndarray

    def write(self, writer: _Writer) -> None:
        if self.words.dtype != np.uint64 or self.words.ndim != 1:
            raise InvalidMessage("masked input must be a 1-D uint64 array")
        writer.blob(self.words.astype("<u8", copy=False).tobytes())

    @classmethod
    def read(cls, reader: _Reader) -> MaskedInput:
        raw = reader.view(reader.u32())
        if len(raw) % 8:
            raise InvalidMessage("masked input is not a whole number of uint64 words")
        # a read-only view of the received bytes (no copy on a little-endian machine)
        return cls(np.frombuffer(raw, dtype="<u8").astype(np.uint64, copy=False))


_FINGERPRINT_BYTES = 32


@dataclass(frozen=True, eq=False)
class EncryptedMaskedInput:
    """Round 2 under CKKS, site → server: y_u as a CKKS ciphertext of its ring limbs.

    ``ciphertext`` is a :class:`~protocols.ckks.CkksCiphertext` of kind
    RING_LIMBS (:func:`~protocols.ckks.encrypt_ring_vector` of the masked
    words). On the wire: context fingerprint (32 bytes) ‖ number of words ‖
    ring bits ‖ limb bits ‖ the serialised chunks; the site's signature over
    the whole message is what makes the (malleable) ciphertext tamper-evident.
    """

    KIND: ClassVar[MessageKind] = MessageKind.ENCRYPTED_MASKED_INPUT
    ciphertext: CkksCiphertext

    def write(self, writer: _Writer) -> None:
        from protocols.ckks import PayloadKind

        ct = self.ciphertext
        if ct.kind is not PayloadKind.RING_LIMBS:
            raise InvalidMessage("an encrypted masked input holds ring limbs")
        writer.blob(bytes.fromhex(ct.fingerprint))
        writer.i64(ct.n_values)
        writer.u32(ct.ring_bits)
        writer.u32(ct.limb_bits)
        writer.blobs(ct.chunks)

    @classmethod
    def read(cls, reader: _Reader) -> EncryptedMaskedInput:
        from protocols.ckks import CkksCiphertext, PayloadKind

        fingerprint, n_values = reader.blob(), reader.i64()
        ring_bits, limb_bits, chunks = reader.u32(), reader.u32(), reader.blobs()
        if len(fingerprint) != _FINGERPRINT_BYTES:
            raise InvalidMessage("a context fingerprint has 32 bytes")
        if n_values < 1 or not 1 <= ring_bits <= 64 or not 1 <= limb_bits <= 24 or not chunks:
            raise InvalidMessage("encrypted masked input has an impossible layout")
        return cls(
            CkksCiphertext(
                fingerprint.hex(), n_values, PayloadKind.RING_LIMBS, chunks, ring_bits, limb_bits
            )
        )


@dataclass(frozen=True)
class ConsistencyRequest:
    """Round 3, server → site: the set U3 of sites whose masked inputs arrived."""

    KIND: ClassVar[MessageKind] = MessageKind.CONSISTENCY_REQUEST
    alive: tuple[int, ...]

    def write(self, writer: _Writer) -> None:
        writer.ids(self.alive)

    @classmethod
    def read(cls, reader: _Reader) -> ConsistencyRequest:
        return cls(reader.ids())


@dataclass(frozen=True)
class ConsistencySignature:
    """Round 3, site → server: the site's Ed25519 signature on U3."""

    KIND: ClassVar[MessageKind] = MessageKind.CONSISTENCY_SIGNATURE
    signature: bytes

    def write(self, writer: _Writer) -> None:
        writer.blob(self.signature)

    @classmethod
    def read(cls, reader: _Reader) -> ConsistencySignature:
        return cls(reader.blob())


@dataclass(frozen=True)
class UnmaskRequest:
    """Round 4, server → site: U3 ("alive"), U2 \\ U3 ("dropped") and holders' U3 signatures."""

    KIND: ClassVar[MessageKind] = MessageKind.UNMASK_REQUEST
    alive: tuple[int, ...]
    dropped: tuple[int, ...]
    signatures: tuple[tuple[int, bytes], ...]

    def write(self, writer: _Writer) -> None:
        writer.ids(self.alive)
        writer.ids(self.dropped)
        writer.pairs(self.signatures)

    @classmethod
    def read(cls, reader: _Reader) -> UnmaskRequest:
        return cls(reader.ids(), reader.ids(), reader.pairs())


@dataclass(frozen=True)
class UnmaskShares:
    """Round 4, site → server: shares of b_v for alive v; for each dropped neighbour v,
    this round's pairwise seed s_uv^(r) (32 bytes; see :mod:`protocols.secagg_run`)."""

    KIND: ClassVar[MessageKind] = MessageKind.UNMASK_SHARES
    self_mask_shares: tuple[tuple[int, bytes], ...]
    pair_seeds: tuple[tuple[int, bytes], ...]

    def write(self, writer: _Writer) -> None:
        writer.pairs(self.self_mask_shares)
        writer.pairs(self.pair_seeds)

    @classmethod
    def read(cls, reader: _Reader) -> UnmaskShares:
        return cls(reader.pairs(), reader.pairs())


Body = (
    AdvertiseKeys
    | KeyList
    | ShareKeys
    | ShareBundle
    | MaskedInput
    | EncryptedMaskedInput
    | ConsistencyRequest
    | ConsistencySignature
    | UnmaskRequest
    | UnmaskShares
)
_BODIES: dict[MessageKind, type] = {
    cls.KIND: cls
    for cls in (
        AdvertiseKeys,
        KeyList,
        ShareKeys,
        ShareBundle,
        MaskedInput,
        EncryptedMaskedInput,
        ConsistencyRequest,
        ConsistencySignature,
        UnmaskRequest,
        UnmaskShares,
    )
}


@dataclass(frozen=True, eq=False)
class Message:
    """A parsed message: header, body, signature and the exact signed bytes."""

    header: Header
    body: Body
    signature: bytes
    signed_bytes: bytes

    @classmethod
    def build(
        cls,
        body: Body,
        *,
        session_id: bytes,
        round_id: int,
        sender: int,
        recipient: int,
        identity: Ed25519PrivateKey,
    ) -> bytes:
        """Serialise and sign ``body``; returns the bytes to put on the wire."""
        writer = _Writer()
        Header(body.KIND, session_id, round_id, sender, recipient).write(writer)
        body.write(writer)
        signed = b"".join(writer.parts)
        return signed + sign(identity, signed)

    @classmethod
    def parse(cls, data: bytes) -> Message:
        """Parse strictly (signature not yet checked; call :meth:`verify`)."""
        if not isinstance(data, bytes | bytearray):
            raise InvalidMessage("messages are bytes")
        if len(data) < SIGNATURE_BYTES:
            raise InvalidMessage("message truncated")
        data = bytes(data)  # one immutable copy (none for bytes); fields are read from views
        signed, signature = data[:-SIGNATURE_BYTES], data[-SIGNATURE_BYTES:]
        reader = _Reader(signed)
        header = Header.read(reader)
        body = _BODIES[header.kind].read(reader)
        if reader.pos != len(signed):
            raise InvalidMessage("trailing bytes after message body")
        return cls(header, body, signature, signed)

    def verify(self, public: Ed25519PublicKey, *, cache: bool = False) -> None:
        """Check the sender's signature over header and body (``cache``: see
        :func:`protocols.primitives.verify`)."""
        verify(public, self.signature, self.signed_bytes, cache=cache)
