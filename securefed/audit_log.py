"""The append-only, hash-chained, Ed25519-signed audit log: entries and the writer.

One log is a JSON Lines file; each line is one :class:`Entry` in canonical JSON
(:mod:`securefed.canonical`)::

    {"actor":..,"kind":..,"payload":{..},"prev_hash":..,"seq":..,"signature":..,"time":..}

* ``seq`` counts from 0; ``time`` is UTC ISO 8601 with microseconds and ``Z``.
* The **signed bytes** of an entry are the canonical JSON of the entry without
  ``signature``. ``signature`` is the actor's Ed25519 signature of them (hex), and
  the entry's **hash** is ``SHA-256(signed bytes)``. ``prev_hash`` is the previous
  entry's hash; the first entry's is 64 zeros.
* Floats never appear as JSON numbers: payload floats are written as their
  shortest round-trip ``repr`` strings (``"0.5"``), see :func:`canonical.encode_float`.

The coordinator's log starts with RUN_START and ends with a CHECKPOINT that every
surviving site countersigned. Each site keeps its own log
(:class:`securefed.audit.SiteLog`) of its RELEASE entries and the checkpoints it
countersigned. A RELEASE payload is the site's :class:`SignedRelease`: a record of what
it released, including a salted commitment to the plaintext vector, signed by the site.
Payload schemas: :data:`PAYLOAD_KEYS` and ``threat_model/audit.md``.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy.typing as npt

from protocols.errors import InvalidMessage
from securefed.canonical import (
    ZERO_HASH,
    canonical_bytes,
    parse_canonical,
    sha256_hex,
    to_canonical,
    vector_bytes,
)
from securefed.errors import InputError
from securefed.keys import Identity, Registry, verify_signature

__all__ = [
    "AuditLog",
    "CheckpointRequest",
    "Commitment",
    "Countersignature",
    "Entry",
    "EventKind",
    "PAYLOAD_KEYS",
    "RefusalReason",
    "ReleaseRecord",
    "SignedRelease",
    "commit_release",
    "open_commitment",
    "parse_entry",
    "read_entries",
    "utc_now",
]

CHECKPOINT_TYPE = "securefed.checkpoint/1"
RELEASE_TYPE = "securefed.release/1"
SALT_BYTES = 32
PRIVACY_KEYS = frozenset({"epsilon_spent", "epsilon_remaining", "delta_spent",
                          "delta_remaining", "rho_spent", "rho_remaining"})


class EventKind(enum.Enum):
    """What an entry records."""

    RUN_START = "RUN_START"
    ROUND_SPEC = "ROUND_SPEC"
    RELEASE = "RELEASE"
    AGGREGATION = "AGGREGATION"
    REFUSAL = "REFUSAL"
    RESULT = "RESULT"
    CHECKPOINT = "CHECKPOINT"


class RefusalReason(enum.Enum):
    """Why a release or a message was refused (the ``reason`` of a REFUSAL)."""

    BUDGET = "BUDGET"
    BAD_MESSAGE = "BAD_MESSAGE"
    REPLAY = "REPLAY"
    STAGE = "STAGE"
    ABORT = "ABORT"  # the protocol aborted (e.g. fewer than t survivors): nothing released
    IMPLAUSIBLE = "IMPLAUSIBLE"  # a decoded aggregate failed a plausibility check: refused
    SITE_REFUSAL = "SITE_REFUSAL"  # in a site's own log: it refused a request (detail: code)


#: Keys every payload of a kind must have (more keys are allowed).
PAYLOAD_KEYS: Mapping[EventKind, frozenset[str]] = MappingProxyType({
    EventKind.RUN_START: frozenset({"run_id", "study_config_hash", "model", "protection",
                                    "sites", "coordinator", "budget"}),
    EventKind.ROUND_SPEC: frozenset({"run_id", "round", "spec_hash", "vector_kind", "length",
                                     "layers"}),
    EventKind.RELEASE: frozenset({"release", "site_signature"}),
    EventKind.AGGREGATION: frozenset({"run_id", "round", "vector_kind", "contributors",
                                      "dropouts", "recovery"}),
    EventKind.REFUSAL: frozenset({"run_id", "round", "site", "reason", "detail"}),
    EventKind.RESULT: frozenset({"run_id", "result_kind", "result_hash"}),
    EventKind.CHECKPOINT: frozenset({"run_id", "entry_count", "head_hash",
                                     "countersignatures"}),
})

_ENTRY_KEYS = frozenset({"seq", "time", "kind", "actor", "prev_hash", "payload", "signature"})


def utc_now() -> str:
    """The current UTC time as ``YYYY-MM-DDTHH:MM:SS.ffffffZ``."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class Entry:
    """One signed, chained log entry. ``payload`` is canonical JSON data (no floats)."""

    seq: int
    time: str
    kind: EventKind
    actor: str
    prev_hash: str
    payload: Mapping[str, Any]
    signature: str

    def unsigned_json(self) -> dict[str, Any]:
        """The entry as JSON data without ``signature``."""
        return {"seq": self.seq, "time": self.time, "kind": self.kind.value,
                "actor": self.actor, "prev_hash": self.prev_hash,
                "payload": dict(self.payload)}

    def signed_bytes(self) -> bytes:
        """Canonical JSON of the entry without ``signature``: what is signed and hashed."""
        return canonical_bytes(self.unsigned_json())

    @property
    def hash(self) -> str:
        """``SHA-256(signed bytes)``: the next entry's ``prev_hash``."""
        return sha256_hex(self.signed_bytes())

    def line(self) -> bytes:
        """The entry's line in the log file (canonical JSON, no newline)."""
        return canonical_bytes({**self.unsigned_json(), "signature": self.signature})

    def signature_valid(self, public_key_hex: str) -> bool:
        """Whether ``signature`` is ``public_key_hex``'s signature of the signed bytes."""
        return verify_signature(public_key_hex, self.signature, self.signed_bytes())


def parse_entry(line: bytes) -> Entry:
    """Parse one log line; ``ValueError`` says what is malformed."""
    data = parse_canonical(line)
    if not isinstance(data, dict) or set(data) != _ENTRY_KEYS:
        raise ValueError(f"an entry has exactly the fields {sorted(_ENTRY_KEYS)}")
    seq, kind, payload = data["seq"], data["kind"], data["payload"]
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
        raise ValueError("seq is not a non-negative integer")
    if kind not in EventKind.__members__:
        raise ValueError(f"unknown kind {kind!r}")
    if not isinstance(payload, dict):
        raise ValueError("payload is not an object")
    for name in ("time", "actor", "prev_hash", "signature"):
        if not isinstance(data[name], str):
            raise ValueError(f"{name} is not a string")
    return Entry(seq=seq, time=data["time"], kind=EventKind[kind], actor=data["actor"],
                 prev_hash=data["prev_hash"], payload=MappingProxyType(payload),
                 signature=data["signature"])


def read_lines(path: str | os.PathLike[str]) -> list[bytes]:
    """The lines of a log file without line ends; :class:`InputError` if unreadable."""
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise InputError(f"cannot read audit log {path}: {err.strerror}") from None
    return data.splitlines()


def read_entries(path: str | os.PathLike[str]) -> list[Entry]:
    """Parse every line of a log; :class:`InputError` naming the first bad line."""
    entries = []
    for number, line in enumerate(read_lines(path), start=1):
        try:
            entries.append(parse_entry(line))
        except ValueError as err:
            raise InputError(f"{path} line {number} is not an audit entry: {err}") from None
    return entries


@dataclass(frozen=True)
class CheckpointRequest:
    """What the coordinator asks sites to countersign: the log's length and head."""

    run_id: str
    entry_count: int
    head_hash: str

    def statement_bytes(self) -> bytes:
        """Canonical bytes a countersignature signs."""
        return canonical_bytes({"type": CHECKPOINT_TYPE, "run_id": self.run_id,
                                "entry_count": self.entry_count, "head_hash": self.head_hash})


@dataclass(frozen=True)
class Countersignature:
    """A site's Ed25519 signature (hex) of a :class:`CheckpointRequest` statement."""

    site: str
    signature: str

    @classmethod
    def sign(cls, site: Identity, request: CheckpointRequest) -> Countersignature:
        """Countersign ``request`` as ``site``."""
        return cls(site.name, site.sign(request.statement_bytes()).hex())

    def valid(self, request: CheckpointRequest, registry: Registry) -> bool:
        """Whether this is the registered key's signature of ``request``."""
        if self.site not in registry:
            return False
        return verify_signature(registry.public_key_hex(self.site), self.signature,
                                request.statement_bytes())


@dataclass(frozen=True)
class Commitment:
    """A salted commitment ``digest = SHA-256(salt || float64 LE bytes of the vector)``.

    The 32-byte ``salt`` is the site's secret until a dispute: it is kept in the
    site-private salt file, never in a log, and not shown in ``repr``.
    """

    salt: bytes
    digest: str

    def __repr__(self) -> str:
        return f"Commitment(digest={self.digest!r})"


def commit_release(vector: npt.ArrayLike) -> Commitment:
    """Commit to a vector with a fresh 32-byte salt from the OS.

    ``digest = SHA-256(salt || vector_bytes(vector))``: hiding (the salt is random)
    and binding (SHA-256 collision resistance). See :func:`canonical.vector_bytes`.
    """
    salt = os.urandom(SALT_BYTES)
    return Commitment(salt, hashlib.sha256(salt + vector_bytes(vector)).hexdigest())


def open_commitment(vector: npt.ArrayLike, salt: bytes, digest: str) -> bool:
    """Whether ``vector`` and ``salt`` open the commitment ``digest`` (constant time)."""
    if len(salt) != SALT_BYTES or not isinstance(digest, str):
        return False
    expected = hashlib.sha256(salt + vector_bytes(vector)).hexdigest()
    return hmac.compare_digest(expected, digest.lower())


@dataclass(frozen=True)
class ReleaseRecord:
    """What one site released in one round, as the site signs it.

    ``layers`` is the protection stack as applied, in order: one mapping per layer
    with at least ``"name"`` (e.g. ``{"name": "dp_gaussian", "sigma": "1.2"}``).
    ``privacy`` holds encoded floats for keys among ``epsilon_spent``,
    ``epsilon_remaining``, ``delta_spent``, ``delta_remaining``, ``rho_spent``,
    ``rho_remaining`` (cumulative for the site after this release).
    """

    run_id: str
    site: str
    round: int
    vector_kind: str
    shape: tuple[int, ...]
    layers: tuple[Mapping[str, Any], ...]
    commitment: str
    privacy: Mapping[str, str]

    @property
    def n_values(self) -> int:
        """Number of values released: the product of ``shape``."""
        return math.prod(self.shape)

    def to_json(self) -> dict[str, Any]:
        """Canonical JSON data of the record (with its ``type`` tag)."""
        return {"type": RELEASE_TYPE, "run_id": self.run_id, "site": self.site,
                "round": self.round, "vector_kind": self.vector_kind,
                "shape": list(self.shape), "n_values": self.n_values,
                "layers": [dict(layer) for layer in self.layers],
                "commitment": self.commitment, "privacy": dict(self.privacy)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ReleaseRecord:
        """Rebuild a record; ``ValueError`` if a field is missing or mistyped."""
        try:
            record = cls(run_id=data["run_id"], site=data["site"], round=data["round"],
                         vector_kind=data["vector_kind"], shape=tuple(data["shape"]),
                         layers=tuple(data["layers"]), commitment=data["commitment"],
                         privacy=MappingProxyType(dict(data["privacy"])))
        except (KeyError, TypeError) as err:
            raise ValueError(f"release record lacks or mistypes {err}") from None
        if data.get("type") != RELEASE_TYPE or record.to_json() != dict(data):
            raise ValueError("release record has unexpected fields or values")
        if set(record.privacy) - PRIVACY_KEYS:
            raise ValueError(f"privacy keys must be among {sorted(PRIVACY_KEYS)}")
        return record

    def signed_bytes(self) -> bytes:
        """Canonical bytes the site signs."""
        return canonical_bytes(self.to_json())


@dataclass(frozen=True)
class SignedRelease:
    """A release record and the releasing site's Ed25519 signature of it (hex)."""

    record: ReleaseRecord
    signature: str

    def valid(self, registry: Registry) -> bool:
        """Whether the record is signed by the registered key of ``record.site``."""
        if self.record.site not in registry:
            return False
        return verify_signature(registry.public_key_hex(self.record.site), self.signature,
                                self.record.signed_bytes())

    def to_payload(self) -> dict[str, Any]:
        """The RELEASE payload: ``{"release": record, "site_signature": hex}``."""
        return {"release": self.record.to_json(), "site_signature": self.signature}

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> SignedRelease:
        """Rebuild from a RELEASE payload; ``ValueError`` if malformed."""
        if set(payload) != {"release", "site_signature"} \
                or not isinstance(payload["site_signature"], str) \
                or not isinstance(payload["release"], Mapping):
            raise ValueError("RELEASE payload must be exactly {release, site_signature}")
        return cls(ReleaseRecord.from_json(payload["release"]), payload["site_signature"])


class AuditLog:
    """Writer of one append-only log file; entries are flushed and fsynced.

    One process writes a log; readers use :func:`read_entries` or the verifier.
    """

    def __init__(self, path: Path, entries: list[Entry],
                 clock: Callable[[], str] = utc_now) -> None:
        self._path = path
        self._clock = clock
        self._count = len(entries)
        self._head = entries[-1].hash if entries else ZERO_HASH
        self._run_id = _run_id_of(entries)

    @classmethod
    def create(cls, path: str | os.PathLike[str], *,
               clock: Callable[[], str] = utc_now) -> AuditLog:
        """Create a new, empty log file (refuses to overwrite one)."""
        path = Path(path)
        try:
            with open(path, "xb"):
                pass
        except FileExistsError:
            raise InputError(f"{path} exists; an audit log is never overwritten") from None
        except OSError as err:
            raise InputError(f"cannot create audit log {path}: {err.strerror}") from None
        _fsync_dir(path.parent)
        return cls(path, [], clock)

    @classmethod
    def open(cls, path: str | os.PathLike[str], *,
             clock: Callable[[], str] = utc_now) -> AuditLog:
        """Open an existing log to append to it (its entries are parsed, not verified)."""
        return cls(Path(path), read_entries(path), clock)

    @property
    def path(self) -> Path:
        """The log file."""
        return self._path

    @property
    def entry_count(self) -> int:
        """Number of entries written so far (the next entry's ``seq``)."""
        return self._count

    @property
    def head_hash(self) -> str:
        """Hash of the last entry (64 zeros when empty)."""
        return self._head

    @property
    def run_id(self) -> str | None:
        """The ``run_id`` of the first entry that names one."""
        return self._run_id

    def append(self, kind: EventKind, actor: Identity, payload: Mapping[str, Any]) -> Entry:
        """Sign and append one entry; return it.

        Floats in ``payload`` are stored as ``repr`` strings. Raises ``ValueError``
        if required payload keys (:data:`PAYLOAD_KEYS`) are missing.
        """
        kind = EventKind(kind)
        body = to_canonical(payload)
        missing = PAYLOAD_KEYS[kind] - set(body)
        if missing:
            raise ValueError(f"{kind.value} payload lacks {sorted(missing)}")
        if self._count == 0 and kind is EventKind.RUN_START and actor.name != body["coordinator"]:
            raise ValueError("RUN_START must be written by the coordinator it names")
        unsigned = Entry(seq=self._count, time=self._clock(), kind=kind, actor=actor.name,
                         prev_hash=self._head, payload=MappingProxyType(body), signature="")
        entry = replace(unsigned, signature=actor.sign(unsigned.signed_bytes()).hex())
        with open(self._path, "ab") as handle:
            handle.write(entry.line() + b"\n")
            handle.flush()
            os.fsync(handle.fileno())
        self._count += 1
        self._head = entry.hash
        if self._run_id is None:
            self._run_id = body.get("run_id")
        return entry

    def append_release(self, coordinator: Identity, release: SignedRelease,
                       registry: Registry) -> Entry:
        """Log a site's signed release as received (entry signed by the coordinator).

        Raises
        ------
        InvalidMessage
            If the site signature does not verify against ``registry`` or the
            record belongs to another run (log a REFUSAL instead).
        """
        if not release.valid(registry):
            raise InvalidMessage(f"release of {release.record.site!r}: signature does not verify")
        if self._run_id is not None and release.record.run_id != self._run_id:
            raise InvalidMessage(f"release of {release.record.site!r} is from another run")
        return self.append(EventKind.RELEASE, coordinator, release.to_payload())

    def checkpoint_request(self) -> CheckpointRequest:
        """The statement sites countersign before :meth:`append_checkpoint`."""
        if self._run_id is None:
            raise ValueError("a checkpoint needs a run: append RUN_START first")
        return CheckpointRequest(self._run_id, self._count, self._head)

    def append_checkpoint(self, coordinator: Identity, request: CheckpointRequest,
                          countersignatures: list[Countersignature],
                          registry: Registry) -> Entry:
        """Append a CHECKPOINT carrying the sites' countersignatures of ``request``.

        Raises
        ------
        InvalidMessage
            If the log moved on since ``request`` or a countersignature is not
            the registered site's signature (log a REFUSAL and ask again).
        """
        if request != self.checkpoint_request():
            raise InvalidMessage("checkpoint request is stale: entries were appended since")
        signatures: dict[str, str] = {}
        for counter in countersignatures:
            if not counter.valid(request, registry):
                raise InvalidMessage(f"countersignature of {counter.site!r} does not verify")
            signatures[counter.site] = counter.signature
        return self.append(EventKind.CHECKPOINT, coordinator, {
            "run_id": request.run_id, "entry_count": request.entry_count,
            "head_hash": request.head_hash, "countersignatures": signatures})


def _run_id_of(entries: list[Entry]) -> str | None:
    for entry in entries:
        run_id = entry.payload.get("run_id")
        if isinstance(run_id, str):
            return run_id
        release = entry.payload.get("release")
        if isinstance(release, Mapping) and isinstance(release.get("run_id"), str):
            return release["run_id"]
    return None


def _fsync_dir(directory: Path) -> None:
    """Make a new file's directory entry durable (no-op where unsupported)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
