"""The pieces the audit verifier is made of: failure reasons, one checked chain.

:class:`Chain` walks one log file (the coordinator's or a site's) entry by entry;
:func:`registry_failure` tells a wrong or substituted registry apart from an
edited log before the walk, so that an intact log checked against the wrong keys
reads "signed by a key not in this registry", not "entry edited". How every
reason is detected: :mod:`securefed.audit_verify`.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from securefed.audit_log import Entry, EventKind, parse_entry, read_lines
from securefed.canonical import ZERO_HASH
from securefed.errors import InputError
from securefed.keys import Registry, verify_signature

__all__ = ["Chain", "Failure", "FailureReason", "first_failure", "load_chain",
           "registry_failure", "registry_from_run_start"]


class FailureReason(enum.Enum):
    """Why a log does not verify (:mod:`securefed.audit_verify` says how each is detected)."""

    MALFORMED = "MALFORMED"
    DELETED = "DELETED"
    REORDERED = "REORDERED"
    EDITED = "EDITED"
    BAD_SIGNATURE = "BAD_SIGNATURE"
    UNKNOWN_KEY = "UNKNOWN_KEY"
    REPLAYED = "REPLAYED"
    BAD_COUNTERSIGNATURE = "BAD_COUNTERSIGNATURE"
    MISSING_COUNTERSIGNATURE = "MISSING_COUNTERSIGNATURE"
    MISSING_CHECKPOINT = "MISSING_CHECKPOINT"
    TRUNCATED = "TRUNCATED"
    SITE_LOG_MISMATCH = "SITE_LOG_MISMATCH"
    WRONG_REGISTRY = "WRONG_REGISTRY"
    FINGERPRINT_MISMATCH = "FINGERPRINT_MISMATCH"

    @property
    def meaning(self) -> str:
        """What the reason means, in a reviewer's words."""
        return _MEANINGS[self]


_MEANINGS = {
    FailureReason.MALFORMED: "a line is not a well-formed entry",
    FailureReason.DELETED: "entry removed",
    FailureReason.REORDERED: "entries reordered",
    FailureReason.EDITED: "entry edited",
    FailureReason.BAD_SIGNATURE: "signature does not verify",
    FailureReason.UNKNOWN_KEY: "a party that is not in this registry",
    FailureReason.REPLAYED: "release replayed",
    FailureReason.BAD_COUNTERSIGNATURE: "checkpoint countersignature does not verify",
    FailureReason.MISSING_COUNTERSIGNATURE: "checkpoint countersignature missing",
    FailureReason.MISSING_CHECKPOINT: "never sealed by a checkpoint",
    FailureReason.TRUNCATED: "log truncated",
    FailureReason.SITE_LOG_MISMATCH: "coordinator's and site's logs disagree",
    FailureReason.WRONG_REGISTRY: "signed by a key not in this registry: wrong or "
                                  "substituted registry",
    FailureReason.FINGERPRINT_MISMATCH: "the registry is not the pinned one",
}



@dataclass(frozen=True)
class Failure:
    seq: int | None
    reason: FailureReason
    message: str
    log: str


class Chain:
    """One parsed log file and the keys its entries are checked against."""

    def __init__(self, path: Path, entries: list[Entry], registry: Registry) -> None:
        self.path, self.entries, self.registry = path, entries, registry

    def fail(self, seq: int | None, reason: FailureReason, message: str) -> Failure:
        return Failure(seq, reason, message, str(self.path))

    def signed(self, entry: Entry) -> bool:
        return entry.actor in self.registry and \
            entry.signature_valid(self.registry.public_key_hex(entry.actor))

    def walk(self, actor: str | None = None) -> Failure | None:
        """Check sequence numbers, links, actors and signatures; first failure or None."""
        entries = self.entries
        for i, entry in enumerate(entries):
            if entry.seq != i:
                elsewhere = any(other.seq == i for other in entries)
                reason = FailureReason.REORDERED if elsewhere or entry.seq < i \
                    else FailureReason.DELETED
                return self.fail(i, reason, f"position {i} holds seq {entry.seq}")
            if actor is not None and entry.actor != actor:
                return self.fail(i, FailureReason.UNKNOWN_KEY,
                                 f"entry by {entry.actor!r} in the log of {actor!r}")
            if entry.actor not in self.registry:
                return self.fail(i, FailureReason.UNKNOWN_KEY,
                                 f"actor {entry.actor!r} is not in the registry")
            expected = entries[i - 1].hash if i else ZERO_HASH
            if entry.prev_hash != expected:
                if not self.signed(entry):
                    return self.fail(i, FailureReason.EDITED, "prev_hash or seq was altered")
                if i == 0:
                    return self.fail(0, FailureReason.DELETED, "entries before seq 0 are gone")
                return self.fail(i - 1, FailureReason.EDITED,
                                 f"seq {i} was signed after a different seq {i - 1}")
            if not self.signed(entry):
                return self._bad_signature(i)
        return None

    def _bad_signature(self, i: int) -> Failure:
        entry = self.entries[i]
        other = [name for name, key in self.registry.parties.items()
                 if name != entry.actor and entry.signature_valid(key)]
        if other:
            return self.fail(i, FailureReason.BAD_SIGNATURE,
                             f"signed by {other[0]!r}, not by its actor {entry.actor!r}")
        key = self.registry.public_key_hex(entry.actor)
        moved = [e.seq for e in self.entries if e is not entry
                 and verify_signature(key, entry.signature, e.signed_bytes())]
        if moved:
            return self.fail(i, FailureReason.BAD_SIGNATURE,
                             f"carries the signature of seq {moved[0]}")
        if i + 1 < len(self.entries):
            successor = self.entries[i + 1]
            if successor.prev_hash != entry.hash or not self.signed(successor):
                return self.fail(i, FailureReason.EDITED,
                                 "content differs from what its actor signed")
        return self.fail(i, FailureReason.BAD_SIGNATURE,
                         f"signature of {entry.actor!r} does not verify")


def load_chain(path: Path) -> tuple[list[Entry], Failure | None]:
    """Parse a log; a first line that is not an entry is bad input, later ones MALFORMED."""
    lines = read_lines(path)
    entries: list[Entry] = []
    for i, line in enumerate(lines):
        try:
            entries.append(parse_entry(line))
        except ValueError as err:
            if i == 0:
                raise InputError(f"{path} is not a securefed audit log: {err}") from None
            return entries, Failure(i, FailureReason.MALFORMED, str(err), str(path))
    return entries, None


def registry_from_run_start(entry: Entry) -> Registry:
    """The keys RUN_START lists (for a check without ``--keys``: integrity only)."""
    payload = entry.payload
    parties = dict(payload.get("sites", {}))
    parties[payload["coordinator"]] = payload.get("coordinator_key", "")
    try:
        return Registry(MappingProxyType(parties))
    except InputError as err:
        raise InputError(f"RUN_START does not list usable keys: {err}") from None


def first_failure(failures: Sequence[Failure | None], primary: str = "") -> Failure | None:
    """The failure with the lowest seq, those in the ``primary`` log first."""
    found = [f for f in failures if f is not None]
    if not found:
        return None
    return min(found, key=lambda f: (f.log != primary, math.inf if f.seq is None else f.seq))


def registry_failure(chain: Chain, stated_fingerprint_counts: bool = True) -> Failure | None:
    """A wrong or substituted registry, told apart from an edited RUN_START.

    Only a RUN_START whose signature verifies under the coordinator key it lists
    itself is judged here (an edited one is left to :meth:`Chain.walk`). If that
    log names, for a party this registry holds, another key than the registry's,
    the log was signed by keys not in this registry; if every key agrees but the
    run was started under a registry with another fingerprint (and
    ``stated_fingerprint_counts``), this is not the run's registry either.
    """
    start = chain.entries[0]
    payload = start.payload
    if start.kind is not EventKind.RUN_START or not isinstance(payload.get("sites"), dict):
        return None
    listed = {**payload["sites"], str(payload.get("coordinator")): payload.get("coordinator_key")}
    if not all(isinstance(key, str) for key in listed.values()) or \
            not start.signature_valid(listed.get(start.actor) or ""):
        return None
    registry = chain.registry
    short = f"{registry.fingerprint[:16]}..."
    differ = sorted(n for n, key in listed.items() if n in registry
                    and registry.public_key_hex(n) != key)
    if differ:
        return chain.fail(0, FailureReason.WRONG_REGISTRY,
                          f"the log is signed with keys for {', '.join(differ)} that this "
                          f"registry ({short}) does not hold: check it against the run's own "
                          "registry, pinned with --expect-fingerprint")
    stated = payload.get("registry_fingerprint")
    if stated_fingerprint_counts and isinstance(stated, str) and \
            stated != registry.fingerprint and all(n in registry for n in listed):
        return chain.fail(0, FailureReason.WRONG_REGISTRY,
                          f"the run was started under registry {stated[:16]}..., not this "
                          f"one ({short})")
    return None
