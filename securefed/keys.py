"""Party identities (Ed25519 signing keys) and the consortium key registry.

File formats
------------
Private key, ``NAME.key``
    PEM, PKCS#8, unencrypted (``-----BEGIN PRIVATE KEY-----``), file mode 0600.
    :meth:`Identity.load` refuses a file that its group or other users can read.
Public key, ``NAME.pub``
    The 32-byte raw Ed25519 public key as 64 lowercase hex characters and a newline.
Registry, ``registry.json``
    ``{"format": "securefed-registry/1", "parties": {name: public key hex, ...},
    "fingerprint": hex}``; a registry whose fingerprint does not match its parties is
    refused on load.

Fingerprints (64 lowercase hex characters each)
    *Registry fingerprint* = ``SHA-256(canonical_bytes(parties))``: the SHA-256 of the
    canonical JSON (:mod:`securefed.canonical`: keys sorted, no spaces, UTF-8) of the
    ``parties`` object alone, e.g. ``{"coordinator":"<64 hex>","site-a":"<64 hex>"}``
    (public keys lowercase). ``format`` and ``fingerprint`` are not hashed, so the same
    keys always give the same fingerprint. This is the value sites agree on out of
    band and pin (``audit verify --expect-fingerprint``, a study's ``[audit]
    expect_fingerprint``, a SuperNode's ``expect-fingerprint``): the stored field is
    only a check against accidental edits, since anyone can recompute it.
    *Key fingerprint* = ``SHA-256(raw 32-byte public key)`` (:func:`key_fingerprint`).

A party name is 1-64 characters from ``A-Z a-z 0-9 . _ -`` (it names files); the
coordinator's name is ``"coordinator"``.
"""

from __future__ import annotations

import json
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, NoReturn

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from protocols.secret_files import create_secret_file
from securefed.canonical import canonical_bytes, sha256_hex
from securefed.errors import InputError

__all__ = [
    "COORDINATOR",
    "Identity",
    "KeyFilePermissionError",
    "Registry",
    "UnknownPartyError",
    "check_party_name",
    "key_fingerprint",
    "parse_fingerprint",
    "public_key_from_hex",
    "verify_signature",
]

COORDINATOR = "coordinator"
REGISTRY_FORMAT = "securefed-registry/1"
_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")


class KeyFilePermissionError(InputError):
    """A private key file is readable or writable by group or other users."""


class UnknownPartyError(InputError):
    """A name is not in the consortium registry."""


def check_party_name(name: str) -> str:
    """Return ``name`` if it is a valid party name, else raise :class:`InputError`."""
    if not isinstance(name, str) or not _NAME.fullmatch(name) or name in {".", ".."}:
        raise InputError(f"bad party name {name!r}: use 1-64 characters from A-Z a-z 0-9 . _ -")
    return name


def public_key_from_hex(public_key_hex: str) -> Ed25519PublicKey:
    """Parse a 64-hex-character raw Ed25519 public key; :class:`InputError` if malformed."""
    try:
        raw = bytes.fromhex(public_key_hex)
        if len(raw) != 32:
            raise ValueError("not 32 bytes")
        return Ed25519PublicKey.from_public_bytes(raw)
    except (ValueError, TypeError):
        raise InputError(f"bad public key {public_key_hex!r}: expected 64 hex characters") from None


def key_fingerprint(public_key_hex: str) -> str:
    """SHA-256 of the raw 32-byte Ed25519 public key, as 64 lowercase hex characters."""
    public_key_from_hex(public_key_hex)
    return sha256_hex(bytes.fromhex(public_key_hex))


def parse_fingerprint(text: str, what: str = "fingerprint") -> str:
    """A pinned registry fingerprint: 64 hex characters (case and ``:``/spaces ignored).

    Raises :class:`InputError` for anything else, a 16-character prefix included:
    only the full SHA-256 pins a registry.
    """
    value = "".join(str(text).split()).replace(":", "").lower()
    if not re.fullmatch(r"[0-9a-f]{64}", value):
        raise InputError(f"{what} must be the registry's full fingerprint, 64 hex characters "
                         f"(securefed keygen prints it); got {len(value)} characters")
    return value


def verify_signature(public_key_hex: str, signature_hex: str, message: bytes) -> bool:
    """Return whether ``signature_hex`` is a valid Ed25519 signature of ``message``.

    Malformed keys or signatures count as invalid; this never raises.
    """
    try:
        key = public_key_from_hex(public_key_hex)
        signature = bytes.fromhex(signature_hex)
    except (InputError, ValueError, TypeError):
        return False
    if len(signature) != 64:
        return False
    try:
        key.verify(signature, message)
    except InvalidSignature:
        return False
    return True


class Identity:
    """A party's Ed25519 signing key and its name.

    The private key is used (:meth:`sign`) and never handed out, except by the
    deliberately named :meth:`save_private_key`, :meth:`export_private_key_pem` and
    :meth:`export_private_key_raw`. It is not in ``repr`` and the object refuses to
    be pickled or copied.
    """

    __slots__ = ("_name", "_private_key", "_public_hex")

    def __init__(self, name: str, private_key: Ed25519PrivateKey) -> None:
        self._name = check_party_name(name)
        self._private_key = private_key
        raw = private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self._public_hex = raw.hex()

    @classmethod
    def generate(cls, name: str) -> Identity:
        """Create a new identity with a fresh key from the operating system's RNG."""
        return cls(name, Ed25519PrivateKey.generate())

    @classmethod
    def load(cls, path: str | os.PathLike[str], name: str | None = None) -> Identity:
        """Load a private key written by :meth:`save_private_key`.

        Parameters
        ----------
        path : path-like
            The PEM/PKCS#8 file. It must not be accessible by group or others.
        name : str, optional
            The party name; defaults to the file name without its suffix.

        Raises
        ------
        KeyFilePermissionError
            If the file mode allows group or other access (fix: ``chmod 600 FILE``).
        InputError
            If the file is missing or is not an Ed25519 private key.
        """
        path = Path(path)
        try:
            mode = stat.S_IMODE(path.stat().st_mode)
        except OSError as err:
            raise InputError(f"cannot read private key file {path}: {err.strerror}") from None
        if mode & 0o077:
            raise KeyFilePermissionError(
                f"private key file {path} has mode {mode:04o}, readable beyond its owner; "
                f"run: chmod 600 {path}"
            )
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except (ValueError, TypeError):
            raise InputError(f"{path} is not an unencrypted PEM private key") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise InputError(f"{path} holds a {type(key).__name__}, not an Ed25519 key")
        return cls(name if name is not None else path.stem, key)

    @property
    def name(self) -> str:
        """The party name (site name or ``"coordinator"``)."""
        return self._name

    @property
    def public_key_hex(self) -> str:
        """The raw 32-byte public key as 64 lowercase hex characters."""
        return self._public_hex

    @property
    def fingerprint(self) -> str:
        """The key's own fingerprint: SHA-256 of the raw public key (:func:`key_fingerprint`)."""
        return key_fingerprint(self._public_hex)

    def sign(self, message: bytes) -> bytes:
        """Return the 64-byte Ed25519 signature of ``message``."""
        return self._private_key.sign(message)

    def save_private_key(self, path: str | os.PathLike[str]) -> Path:
        """Write the private key as PEM/PKCS#8 to a new file with mode 0600.

        Refuses to overwrite an existing file (:class:`InputError`). The file is
        created with mode 0600 atomically (no moment with wider access) and fsynced.
        """
        path = Path(path)
        try:
            return create_secret_file(path, self.export_private_key_pem())
        except FileExistsError:
            raise InputError(f"{path} exists; refusing to overwrite a private key") from None
        except OSError as err:
            raise InputError(f"cannot create {path}: {err.strerror}") from None

    def save_public_key(self, path: str | os.PathLike[str]) -> Path:
        """Write the public key as 64 hex characters and a newline."""
        path = Path(path)
        path.write_text(self._public_hex + "\n", encoding="ascii")
        return path

    def export_private_key_pem(self) -> bytes:
        """Return the private key as unencrypted PEM/PKCS#8: handle as a secret."""
        return self._private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def export_private_key_raw(self) -> bytes:
        """Return the raw 32-byte private key: handle as a secret."""
        return self._private_key.private_bytes_raw()

    def __repr__(self) -> str:
        return f"Identity(name={self._name!r}, public_key={self._public_hex[:16]}...)"

    def __reduce__(self) -> NoReturn:
        raise TypeError("an Identity holds a private key and cannot be pickled or copied")

    def __copy__(self) -> NoReturn:
        self.__reduce__()

    def __deepcopy__(self, memo: dict[int, Any]) -> NoReturn:
        self.__reduce__()


def _fingerprint(parties: dict[str, str]) -> str:
    return sha256_hex(canonical_bytes(parties))


@dataclass(frozen=True)
class Registry:
    """The consortium's public keys: party name → raw Ed25519 public key hex.

    Frozen: :meth:`add` returns a new registry.
    """

    parties: MappingProxyType[str, str] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        checked = {}
        for name, key_hex in sorted(dict(self.parties).items()):
            public_key_from_hex(key_hex)
            checked[check_party_name(name)] = key_hex.lower()
        object.__setattr__(self, "parties", MappingProxyType(checked))

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the canonical JSON of ``parties`` (64 hex; see the module docstring)."""
        return _fingerprint(dict(self.parties))

    def add(self, name: str, public_key_hex: str) -> Registry:
        """Return a registry with ``name`` added.

        Adding the same key again is a no-op; a different key for a known name is
        refused (:class:`InputError`): replacing a key is a decision for a person.
        """
        public_key_from_hex(public_key_hex)
        known = self.parties.get(name)
        if known is not None and known != public_key_hex.lower():
            raise InputError(f"{name!r} is already registered with another key; "
                             "remove it from the registry by hand to replace it")
        return Registry(MappingProxyType({**self.parties, name: public_key_hex}))

    def public_key_hex(self, name: str) -> str:
        """Return the public key of ``name``; :class:`UnknownPartyError` if absent."""
        try:
            return self.parties[name]
        except KeyError:
            raise UnknownPartyError(
                f"{name!r} is not in the registry (fingerprint {self.fingerprint[:16]}); "
                f"known: {', '.join(self.parties) or 'none'}; add it with securefed keygen"
            ) from None

    def __contains__(self, name: object) -> bool:
        return name in self.parties

    def to_json(self) -> dict[str, Any]:
        """The registry file's content."""
        return {"format": REGISTRY_FORMAT, "parties": dict(self.parties),
                "fingerprint": self.fingerprint}

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the registry as pretty JSON (atomically: temp file, then rename)."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=2, sort_keys=True) + "\n",
                       encoding="utf-8")
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Registry:
        """Read a registry file; :class:`InputError` if missing, not JSON or tampered."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except OSError as err:
            raise InputError(f"cannot read registry {path}: {err.strerror}") from None
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise InputError(f"registry {path} is not JSON: {err}") from None
        if not isinstance(data, dict) or data.get("format") != REGISTRY_FORMAT \
                or not isinstance(data.get("parties"), dict):
            raise InputError(f"{path} is not a {REGISTRY_FORMAT} file")
        registry = cls(MappingProxyType(data["parties"]))
        if data.get("fingerprint") != registry.fingerprint:
            raise InputError(f"registry {path}: fingerprint does not match its keys "
                             "(edited by hand?); regenerate it with securefed keygen")
        return registry

    @classmethod
    def of(cls, *parties: Identity) -> Registry:
        """Build a registry holding the public keys of ``parties``."""
        return cls(MappingProxyType({party.name: party.public_key_hex for party in parties}))
