"""Thin wrappers over ``cryptography``: the only place secure aggregation touches crypto.

Every primitive used by :mod:`protocols.secagg_site` and
:mod:`protocols.secagg_server` lives here, so the protocol code never handles
raw library objects and a reviewer can audit the crypto in one screen:

* X25519 key agreement (RFC 7748) — :class:`AgreementKey`;
* HKDF-SHA256 (RFC 5869) with an ``info`` that binds session, round, purpose
  and the pair of sites — :func:`hkdf_sha256`, :func:`derive_key`;
* AES-256-CTR (NIST SP 800-38A) as the PRG that expands a 32-byte seed into
  uint64 mask words — :func:`prg_words`; :func:`chacha20_keystream` (RFC 8439)
  for the DP noise source;
* ChaCha20-Poly1305 AEAD for encrypted Shamir shares — :func:`seal`, :func:`open_sealed`;
* Ed25519 signatures (RFC 8032) — :func:`sign` (``cryptography``) and
  :func:`verify` (PyNaCl/libsodium).

Randomness comes from the operating system only (``secrets``).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import struct
from collections import OrderedDict
from functools import lru_cache

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from nacl.bindings import crypto_sign_open
from nacl.exceptions import BadSignatureError

from protocols.errors import InvalidMessage

__all__ = [
    "SEED_BYTES",
    "PUBLIC_KEY_BYTES",
    "SIGNATURE_BYTES",
    "AgreementKey",
    "random_seed",
    "hkdf_sha256",
    "hkdf_expand_sha256",
    "derive_key",
    "round_key",
    "prg_words",
    "chacha20_keystream",
    "seal",
    "open_sealed",
    "sign",
    "verify",
    "ed25519_public_bytes",
    "ed25519_public_from_bytes",
]

SEED_BYTES = 32
PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64
_AEAD_NONCE_BYTES = 12
_DOMAIN = b"securefed/secagg/v1"


def random_seed() -> bytes:
    """Return 32 bytes from the operating system's CSPRNG."""
    return secrets.token_bytes(SEED_BYTES)


class AgreementKey:
    """An ephemeral X25519 key pair for one round (RFC 7748).

    The private half is used (:meth:`exchange`) and never handed out, except by
    the deliberately named :meth:`private_bytes_for_sharing`, which the site
    calls exactly once to Shamir-share it for dropout recovery.
    """

    __slots__ = ("_private",)

    def __init__(self, private: X25519PrivateKey) -> None:
        self._private = private

    @classmethod
    def generate(cls) -> AgreementKey:
        """Draw a fresh key pair from OS randomness."""
        return cls(X25519PrivateKey.generate())

    @classmethod
    def from_private_bytes(cls, raw: bytes) -> AgreementKey:
        """Rebuild a key from its 32 raw bytes (used after Shamir reconstruction)."""
        if len(raw) != SEED_BYTES:
            raise InvalidMessage("an X25519 private key has 32 bytes")
        return cls(X25519PrivateKey.from_private_bytes(raw))

    @property
    def public_bytes(self) -> bytes:
        """The 32-byte public key (u-coordinate, little-endian)."""
        return self._private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    def exchange(self, peer_public: bytes) -> bytes:
        """X25519(k, u): the raw shared secret with a peer's 32-byte public key.

        Raises
        ------
        InvalidMessage
            The peer key has the wrong length or is a low-order point
            (all-zero shared secret).
        """
        if len(peer_public) != PUBLIC_KEY_BYTES:
            raise InvalidMessage("an X25519 public key has 32 bytes")
        try:
            return self._private.exchange(X25519PublicKey.from_public_bytes(peer_public))
        except ValueError as exc:
            raise InvalidMessage("key agreement failed on a peer public key") from exc

    def private_bytes_for_sharing(self) -> bytes:
        """The raw private scalar, for Shamir sharing only. Never log or send it."""
        return self._private.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )


def hkdf_sha256(ikm: bytes, *, length: int, salt: bytes | None, info: bytes) -> bytes:
    """HKDF-SHA256 (RFC 5869): ``OKM = Expand(Extract(salt, IKM), info, L)``."""
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(ikm)


def hkdf_expand_sha256(prk: bytes, info: bytes, length: int = 32) -> bytes:
    """HKDF-Expand (RFC 5869 §2.3) with SHA-256: ``T(i) = HMAC(PRK, T(i−1) ‖ info ‖ i)``.

    ``prk`` must already be a uniformly random key (an HKDF output); one
    32-byte block is one HMAC-SHA256 call (about 1 µs), which is why per-round
    keys are expanded this way from the run's pair keys (:func:`round_key`).
    """
    if not 1 <= length <= 255 * 32:
        raise ValueError("HKDF-Expand length out of range")
    blocks, previous = [], b""
    for i in range(-(-length // 32)):
        previous = hmac.digest(prk, previous + info + bytes([i + 1]), "sha256")
        blocks.append(previous)
    return b"".join(blocks)[:length]


def round_key(
    pair_key: bytes, *, session_id: bytes, round_id: int, purpose: str, low: int, high: int
) -> bytes:
    """The 32-byte key of one round for one purpose, from a run's pair key.

    ``HKDF-Expand(pair_key, "securefed/secagg/v1/round" ‖ len‖session ‖ round ‖
    len‖purpose ‖ low ‖ high)``: a fresh, independent key for every round
    (session and round id are bound), so revealing it (a dropped neighbour's
    pairwise seed) reveals nothing about any other round's.
    """
    if low >= high:
        raise ValueError("round_key needs low < high")
    info = _round_info(session_id, round_id, purpose) + struct.pack(">qq", low, high)
    return hmac.digest(pair_key, info + b"\x01", "sha256")  # HKDF-Expand, one block


@lru_cache(maxsize=256)
def _round_info(session_id: bytes, round_id: int, purpose: str) -> bytes:
    return (
        _DOMAIN
        + b"/round"
        + _field(session_id)
        + struct.pack(">Q", round_id)
        + _field(purpose.encode())
    )


def _field(value: bytes) -> bytes:
    return struct.pack(">I", len(value)) + value


def derive_key(
    shared: bytes, *, session_id: bytes, round_id: int, purpose: str, low: int, high: int
) -> bytes:
    """Derive a 32-byte key for one purpose between sites ``low < high`` in one round.

    ``info = "securefed/secagg/v1" ‖ len‖session ‖ round ‖ len‖purpose ‖ low ‖ high``
    (length-prefixed, so no two distinct contexts share an ``info``). The salt
    is the session id, so keys from different sessions are independent even if
    a site reused an agreement key by mistake.
    """
    if low >= high:
        raise ValueError("derive_key needs low < high")
    info = (
        _DOMAIN
        + _field(session_id)
        + struct.pack(">Q", round_id)
        + _field(purpose.encode())
        + struct.pack(">qq", low, high)
    )
    return hkdf_sha256(shared, length=SEED_BYTES, salt=session_id, info=info)


def chacha20_keystream(key: bytes, nonce16: bytes, n_bytes: int) -> bytes:
    """Raw ChaCha20 keystream of ``n_bytes`` bytes.

    ``cryptography`` takes a 16-byte nonce: the first 4 bytes are the
    little-endian initial block counter, the last 12 the RFC 8439 nonce.
    """
    encryptor = Cipher(algorithms.ChaCha20(key, nonce16), mode=None).encryptor()
    return encryptor.update(_zeros(n_bytes))


_ZERO_BUFFER = bytes(1 << 16)


def _zeros(n_bytes: int) -> memoryview:
    """A read-only view of ``n_bytes`` zero bytes, reusing one shared buffer."""
    global _ZERO_BUFFER
    if len(_ZERO_BUFFER) < n_bytes:
        _ZERO_BUFFER = bytes(n_bytes)
    return memoryview(_ZERO_BUFFER)[:n_bytes]


_PRG_NONCE = bytes(12)


def prg_words(seed: bytes, n_words: int) -> np.ndarray:
    """Expand a 32-byte seed into ``n_words`` uniform uint64 words.

    PRG(seed) = the AES-256-CTR keystream for key = seed and initial counter
    block 0^96 ‖ 2, read as little-endian uint64 words. It is computed as the
    AES-256-GCM encryption of zero bytes under nonce 0^96 (GCM encrypts with
    exactly that counter stream, NIST SP 800-38D §7.1), the tag discarded:
    ``cryptography`` sets up an AEAD key in about 2 µs against about 9 µs for
    a raw ``Cipher`` context, and with one fresh key per ~20 KB mask the key
    setup would otherwise dominate (``benchmarks/secagg_bench.py``). Seeds
    are single-use (each is derived for one session, round, purpose and
    pair), so the fixed nonce is safe. The array is a read-only view.
    """
    if len(seed) != SEED_BYTES:
        raise ValueError("a PRG seed has 32 bytes")
    sealed = AESGCM(seed).encrypt(_PRG_NONCE, _zeros(8 * n_words), None)
    return np.frombuffer(sealed, dtype="<u8", count=n_words)


def seal(key: bytes, plaintext: bytes, associated_data: bytes) -> bytes:
    """ChaCha20-Poly1305 encrypt; returns ``nonce ‖ ciphertext ‖ tag`` (random nonce)."""
    nonce = secrets.token_bytes(_AEAD_NONCE_BYTES)
    return nonce + ChaCha20Poly1305(key).encrypt(nonce, plaintext, associated_data)


def open_sealed(key: bytes, sealed: bytes, associated_data: bytes) -> bytes:
    """Inverse of :func:`seal`; any tampering raises :class:`InvalidMessage`."""
    if len(sealed) < _AEAD_NONCE_BYTES + 16:
        raise InvalidMessage("sealed share too short")
    nonce, body = sealed[:_AEAD_NONCE_BYTES], sealed[_AEAD_NONCE_BYTES:]
    try:
        return ChaCha20Poly1305(key).decrypt(nonce, body, associated_data)
    except InvalidTag as exc:
        raise InvalidMessage("encrypted share failed authentication") from exc


def sign(identity: Ed25519PrivateKey, data: bytes) -> bytes:
    """Ed25519 signature (64 bytes) of ``data``."""
    return identity.sign(data)


_VERIFIED: OrderedDict[bytes, None] = OrderedDict()
_VERIFIED_MAX = 1 << 16


def verify(
    public: Ed25519PublicKey, signature: bytes, data: bytes, *, cache: bool = False
) -> None:
    """Check an Ed25519 signature; raise :class:`InvalidMessage` if it is wrong.

    Verification runs in libsodium (PyNaCl), which is about 1.5× faster than
    OpenSSL here and also rejects non-canonical encodings and small-order keys.

    With ``cache=True`` a signature that verified before in this process is
    not checked again: the cache holds SHA-256(public key ‖ signature ‖ data)
    of the last 65,536 successes only (never a failure), so a hit means these
    exact bytes verified under this exact key. In-process simulations verify
    the same advertisement or consistency signature once for every site.
    """
    if len(signature) != SIGNATURE_BYTES:
        raise InvalidMessage("bad signature")
    raw = ed25519_public_bytes(public)
    digest = b""
    if cache:
        digest = hashlib.sha256(raw + signature + data).digest()
        if digest in _VERIFIED:
            return
    try:
        crypto_sign_open(signature + data, raw)
    except (BadSignatureError, ValueError, TypeError) as exc:
        raise InvalidMessage("bad signature") from exc
    if cache:
        _VERIFIED[digest] = None
        if len(_VERIFIED) > _VERIFIED_MAX:
            _VERIFIED.popitem(last=False)


def ed25519_public_bytes(public: Ed25519PublicKey) -> bytes:
    """Raw 32-byte encoding of an Ed25519 public key."""
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def ed25519_public_from_bytes(raw: bytes) -> Ed25519PublicKey:
    """Parse a raw 32-byte Ed25519 public key."""
    if len(raw) != PUBLIC_KEY_BYTES:
        raise InvalidMessage("an Ed25519 public key has 32 bytes")
    return Ed25519PublicKey.from_public_bytes(raw)
