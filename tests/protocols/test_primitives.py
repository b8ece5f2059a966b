"""Published test vectors for the primitives under secure aggregation, plus misuse checks."""

from __future__ import annotations

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from protocols.errors import InvalidMessage
from protocols.primitives import (
    AgreementKey,
    chacha20_keystream,
    derive_key,
    hkdf_sha256,
    open_sealed,
    prg_words,
    seal,
    sign,
    verify,
)

# RFC 7748 §5.2: (scalar, u-coordinate, output)
X25519_VECTORS = [
    (
        "a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4",
        "e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c",
        "c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552",
    ),
    (
        "4b66e9d4d1b4673c5ad22691957d6af5c11b6421e0ea01d42ca4169e7918ba0d",
        "e5210f12786811d3f4b7959d0538ae2c31dbe7106fc03c3efc4cd549c715a493",
        "95cbde9476e8907d7aade45cb4b873f88b595a68799fa152e6f8f7647aac7957",
    ),
]

# RFC 7748 §5.2 iterated: k = X25519(k, u), u = old k, from k = u = 9.
X25519_ITERATED = [
    (1, "422c8e7a6227d7bca1350b3e2bb7279f7897b87bb6854b783c60e80311ae3079"),
    (1000, "684cf59ba83309552800ef566f2f4d3c1c3887c49360e3875f2eb94d99532c51"),
]

# RFC 7748 §6.1: Alice's and Bob's private keys, public keys and shared secret.
RFC7748_DH = {
    "alice_private": "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a",
    "alice_public": "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a",
    "bob_private": "5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb",
    "bob_public": "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f",
    "shared": "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742",
}

# RFC 5869 Appendix A, test cases 1-3: (IKM, salt, info, L, OKM)
HKDF_VECTORS = [
    pytest.param(
        bytes([0x0B]) * 22,
        bytes(range(0x0D)),
        bytes(range(0xF0, 0xFA)),
        42,
        "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865",
        id="rfc5869-case1",
    ),
    pytest.param(
        bytes(range(0x50)),
        bytes(range(0x60, 0xB0)),
        bytes(range(0xB0, 0x100)),
        82,
        "b11e398dc80327a1c8e7f78c596a49344f012eda2d4efad8a050cc4c19afa97c"
        "59045a99cac7827271cb41c65e590e09da3275600c2f09b8367793a9aca3db71"
        "cc30c58179ec3e87c14c01d5c1f3434f1d87",
        id="rfc5869-case2",
    ),
    pytest.param(
        bytes([0x0B]) * 22,
        b"",
        b"",
        42,
        "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8",
        id="rfc5869-case3",
    ),
]

SUNSCREEN = (
    b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for "
    b"the future, sunscreen would be it."
)

# RFC 8439: (key, 32-bit counter, 12-byte nonce, keystream or ciphertext, plaintext or None)
CHACHA20_VECTORS = [
    pytest.param(
        bytes(range(32)),
        1,
        "000000090000004a00000000",
        "10f1e7e4d13b5915500fdd1fa32071c4c7d1f4c733c068030422aa9ac3d46c4e"
        "d2826446079faa0914c2d705d98b02a2b5129cd1de164eb9cbd083e8a2503c4e",
        None,
        id="rfc8439-2.3.2-block",
    ),
    pytest.param(
        bytes(range(32)),
        1,
        "000000000000004a00000000",
        "6e2e359a2568f98041ba0728dd0d6981e97e7aec1d4360c20a27afccfd9fae0b"
        "f91b65c5524733ab8f593dabcd62b3571639d624e65152ab8f530c359f0861d8"
        "07ca0dbf500d6a6156a38e088a22b65e52bc514d16ccf806818ce91ab7793736"
        "5af90bbf74a35be6b40b8eedf2785e42874d",
        SUNSCREEN,
        id="rfc8439-2.4.2-encrypt",
    ),
    pytest.param(
        bytes(32),
        0,
        "000000000000000000000000",
        "76b8e0ada0f13d90405d6ae55386bd28bdd219b8a08ded1aa836efcc8b770dc7"
        "da41597c5157488d7724e03fb8d84a376a43b8f41518a11cc387b669b2ee6586",
        None,
        id="rfc8439-A.1-1",
    ),
    pytest.param(
        bytes(32),
        1,
        "000000000000000000000000",
        "9f07e7be5551387a98ba977c732d080dcb0f29a048e3656912c6533e32ee7aed"
        "29b721769ce64e43d57133b074d839d531ed1f28510afb45ace10a1f4b794d6f",
        None,
        id="rfc8439-A.1-2",
    ),
]


@pytest.mark.parametrize(("scalar", "u", "expected"), X25519_VECTORS)
def test_x25519_rfc7748_section_5_2(scalar: str, u: str, expected: str) -> None:
    key = AgreementKey.from_private_bytes(bytes.fromhex(scalar))
    assert key.exchange(bytes.fromhex(u)).hex() == expected


@pytest.mark.parametrize(("iterations", "expected"), X25519_ITERATED)
def test_x25519_rfc7748_iterated(iterations: int, expected: str) -> None:
    k = u = (9).to_bytes(32, "little")
    for _ in range(iterations):
        k, u = AgreementKey.from_private_bytes(k).exchange(u), k
    assert k.hex() == expected


def test_x25519_rfc7748_section_6_1_diffie_hellman() -> None:
    alice = AgreementKey.from_private_bytes(bytes.fromhex(RFC7748_DH["alice_private"]))
    bob = AgreementKey.from_private_bytes(bytes.fromhex(RFC7748_DH["bob_private"]))
    assert alice.public_bytes.hex() == RFC7748_DH["alice_public"]
    assert bob.public_bytes.hex() == RFC7748_DH["bob_public"]
    assert alice.exchange(bob.public_bytes).hex() == RFC7748_DH["shared"]
    assert bob.exchange(alice.public_bytes).hex() == RFC7748_DH["shared"]


def test_x25519_rejects_low_order_point_and_bad_length() -> None:
    key = AgreementKey.generate()
    with pytest.raises(InvalidMessage):
        key.exchange(bytes(32))  # u = 0 gives the all-zero shared secret
    with pytest.raises(InvalidMessage):
        key.exchange(bytes(31))


@pytest.mark.parametrize(("ikm", "salt", "info", "length", "okm"), HKDF_VECTORS)
def test_hkdf_sha256_rfc5869(ikm: bytes, salt: bytes, info: bytes, length: int, okm: str) -> None:
    assert hkdf_sha256(ikm, length=length, salt=salt, info=info).hex() == okm


@pytest.mark.parametrize(("key", "counter", "nonce", "expected", "plaintext"), CHACHA20_VECTORS)
def test_chacha20_rfc8439(
    key: bytes, counter: int, nonce: str, expected: str, plaintext: bytes | None
) -> None:
    # cryptography's 16-byte nonce = 32-bit little-endian block counter ‖ 96-bit RFC nonce.
    nonce16 = counter.to_bytes(4, "little") + bytes.fromhex(nonce)
    n_bytes = len(expected) // 2
    stream = chacha20_keystream(key, nonce16, n_bytes)
    if plaintext is None:
        assert stream.hex() == expected
    else:
        assert bytes(p ^ s for p, s in zip(plaintext, stream, strict=True)).hex() == expected


def test_prg_words_is_the_gcm_spec_aes256_ctr_keystream() -> None:
    # McGrew & Viega, "The Galois/Counter Mode of Operation", test case 14:
    # AES-256, K = 0, IV = 0^96, P = 0^128 -> C = cea7403d4d606b6e074ec5d3baf39d18.
    words = prg_words(bytes(32), 2)
    assert words.dtype == np.uint64
    assert words.tobytes().hex() == "cea7403d4d606b6e074ec5d3baf39d18"
    assert np.array_equal(prg_words(bytes(32), 1), words[:1])


@pytest.mark.parametrize("n_words", [1, 7, 2550, 10_001])
def test_prg_words_equals_aes256_ctr_from_counter_block_2(n_words: int) -> None:
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    seed = bytes(range(100, 132))
    counter_block = bytes(12) + (2).to_bytes(4, "big")
    stream = Cipher(algorithms.AES(seed), modes.CTR(counter_block)).encryptor().update(
        bytes(8 * n_words))
    assert prg_words(seed, n_words).tobytes() == stream
    assert prg_words(seed, n_words).tobytes() != prg_words(bytes(32), n_words).tobytes()


def test_derive_key_binds_session_round_purpose_and_pair() -> None:
    shared = bytes(range(32))
    base = {"session_id": b"s", "round_id": 1, "purpose": "pairwise-mask", "low": 1, "high": 2}
    reference = derive_key(shared, **base)
    variants = [
        {**base, "session_id": b"t"},
        {**base, "round_id": 2},
        {**base, "purpose": "share-encryption"},
        {**base, "low": 0},
        {**base, "high": 3},
    ]
    keys = {derive_key(shared, **v) for v in variants}
    assert reference not in keys and len(keys) == len(variants)
    with pytest.raises(ValueError):
        derive_key(shared, **{**base, "low": 2, "high": 1})


def test_aead_binds_associated_data_and_detects_tampering() -> None:
    key = bytes(range(32))
    sealed = seal(key, b"share", b"aad")
    assert open_sealed(key, sealed, b"aad") == b"share"
    with pytest.raises(InvalidMessage):
        open_sealed(key, sealed, b"other aad")
    tampered = sealed[:-1] + bytes([sealed[-1] ^ 1])
    with pytest.raises(InvalidMessage):
        open_sealed(key, tampered, b"aad")
    with pytest.raises(InvalidMessage):
        open_sealed(key, sealed[:10], b"aad")


def test_ed25519_signature_round_trip_and_tampering() -> None:
    identity = Ed25519PrivateKey.generate()
    signature = sign(identity, b"message")
    verify(identity.public_key(), signature, b"message")
    with pytest.raises(InvalidMessage):
        verify(identity.public_key(), signature, b"messagE")
    with pytest.raises(InvalidMessage):
        verify(identity.public_key(), bytes([signature[0] ^ 1]) + signature[1:], b"message")
    with pytest.raises(InvalidMessage):
        verify(Ed25519PrivateKey.generate().public_key(), signature, b"message")
    with pytest.raises(InvalidMessage):
        verify(identity.public_key(), signature[:-1], b"message")
