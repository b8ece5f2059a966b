"""Verify an audit log: hashes, links, signatures, countersignatures, site logs.

:func:`verify_log` walks the coordinator's log entry by entry and stops at the
first entry it cannot trust; it then cross-checks the site logs and the final
checkpoint, and reports the failure with the lowest ``seq`` (failures located in the
coordinator's log before those located in a site log). How each reason is
told apart (``e`` the entry, ``s`` its successor):

``MALFORMED``
    a line is not a canonical entry, or a payload lacks fields
``DELETED``
    ``seq`` jumps and the missing ``seq`` is nowhere in the file
``REORDERED``
    ``seq`` is out of place and the expected one is elsewhere
``EDITED``
    ``e`` no longer matches its signature and ``s`` does not vouch for it
    (``s.prev_hash`` differs, or ``s`` is no longer validly signed either); or ``e``
    is validly signed but chained to a different predecessor, i.e. that predecessor
    was rewritten
``BAD_SIGNATURE``
    the signature does not verify, yet ``s`` (validly signed) vouches for ``e``'s
    content; or a site's release record is not signed by that site
``UNKNOWN_KEY``
    an actor is not in the registry, or RUN_START names a key that differs from the
    registry's
``REPLAYED``
    a release from another run, or the same release twice
``BAD_COUNTERSIGNATURE``
    a checkpoint's countersignature does not verify
``MISSING_COUNTERSIGNATURE``
    a surviving site (or every site) did not countersign the final checkpoint
``MISSING_CHECKPOINT``
    the log has no checkpoint at all (never sealed)
``TRUNCATED``
    the log ends after its last checkpoint, or a site log witnesses entries beyond
    the end
``SITE_LOG_MISMATCH``
    a release in a site log is not in the coordinator's log (or the reverse), or a
    countersigned head is not where it should be

A log's hash is ``SHA-256`` of the entry without its signature, so a swapped
signature breaks only that entry, while a changed field also breaks the link.
"""

from __future__ import annotations

import enum
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from securefed.audit_log import (
    PAYLOAD_KEYS,
    CheckpointRequest,
    Countersignature,
    Entry,
    EventKind,
    RefusalReason,
    SignedRelease,
    parse_entry,
    read_lines,
)
from securefed.canonical import ZERO_HASH
from securefed.errors import InputError
from securefed.keys import Registry, verify_signature

__all__ = ["FailureReason", "VerifyReport", "verify_log"]


class FailureReason(enum.Enum):
    """Why a log does not verify (see the module docstring for how each is detected)."""

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


@dataclass(frozen=True)
class VerifyReport:
    """Outcome of :func:`verify_log`.

    ``first_bad_seq`` and ``reason`` are ``None`` when ``ok``; ``bad_log`` is the
    file ``first_bad_seq`` refers to (the coordinator's log or a site log).
    ``keys_from`` is ``"registry"`` or ``"log"`` (keys taken from RUN_START itself).
    """

    ok: bool
    entries: int
    first_bad_seq: int | None
    reason: FailureReason | None
    message: str
    bad_log: str | None = None
    keys_from: str = "registry"

    def summary(self) -> str:
        """One line for a terminal."""
        if self.ok:
            return f"OK: {self.message}"
        reason = self.reason.value if self.reason else "?"
        return f"FAIL at seq {self.first_bad_seq} of {self.bad_log}: {reason}: {self.message}"


@dataclass(frozen=True)
class _Failure:
    seq: int | None
    reason: FailureReason
    message: str
    log: str


class _Chain:
    """One parsed log file and the keys its entries are checked against."""

    def __init__(self, path: Path, entries: list[Entry], registry: Registry) -> None:
        self.path, self.entries, self.registry = path, entries, registry

    def fail(self, seq: int | None, reason: FailureReason, message: str) -> _Failure:
        return _Failure(seq, reason, message, str(self.path))

    def signed(self, entry: Entry) -> bool:
        return entry.actor in self.registry and \
            entry.signature_valid(self.registry.public_key_hex(entry.actor))

    def walk(self, actor: str | None = None) -> _Failure | None:
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

    def _bad_signature(self, i: int) -> _Failure:
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


def _load(path: Path) -> tuple[list[Entry], _Failure | None]:
    """Parse a log; a first line that is not an entry is bad input, later ones MALFORMED."""
    lines = read_lines(path)
    entries: list[Entry] = []
    for i, line in enumerate(lines):
        try:
            entries.append(parse_entry(line))
        except ValueError as err:
            if i == 0:
                raise InputError(f"{path} is not a securefed audit log: {err}") from None
            return entries, _Failure(i, FailureReason.MALFORMED, str(err), str(path))
    return entries, None


def _registry_from_run_start(entry: Entry) -> Registry:
    payload = entry.payload
    parties = dict(payload.get("sites", {}))
    parties[payload["coordinator"]] = payload.get("coordinator_key", "")
    try:
        return Registry(MappingProxyType(parties))
    except InputError as err:
        raise InputError(f"RUN_START does not list usable keys: {err}") from None


def verify_log(path: str | os.PathLike[str], registry: Registry | None = None,
               site_logs: Iterable[str | os.PathLike[str]] = ()) -> VerifyReport:
    """Verify a coordinator's audit log and, optionally, the sites' own logs.

    Parameters
    ----------
    path : path-like
        The coordinator's JSON Lines log.
    registry : Registry, optional
        The consortium's public keys. Without it the keys listed in RUN_START are
        used, which shows integrity but not who the parties are.
    site_logs : iterable of path-like
        Site logs to cross-check release by release and checkpoint by checkpoint.

    Returns
    -------
    VerifyReport
        ``ok`` when every hash, link, signature and countersignature holds, the log
        ends with a checkpoint countersigned by every surviving site, and every
        site log agrees with it.

    Raises
    ------
    InputError
        If a file is missing or is not an audit log at all.
    """
    path = Path(path)
    entries, malformed = _load(path)
    keys_from = "registry"
    if not entries:
        return _report([], _Failure(0, FailureReason.TRUNCATED, "the log is empty", str(path)),
                       keys_from)
    start = entries[0]
    if registry is None:
        if start.kind is not EventKind.RUN_START or "coordinator" not in start.payload:
            raise InputError(f"{path} does not start with RUN_START; pass the registry "
                             "(--keys) to find out what happened to it")
        registry, keys_from = _registry_from_run_start(start), "log"
    chain = _Chain(path, entries, registry)
    failure = _first([chain.walk(), malformed, _check_run_start(chain)])
    if failure is None:
        failure = _check_payloads(chain)
    if failure is not None:
        return _report(entries, failure, keys_from)
    others = [_check_site_log(chain, Path(site_log)) for site_log in site_logs]
    others.append(_check_end(chain))
    return _report(entries, _first(others, str(path)), keys_from, len(others) - 1)


def _first(failures: Sequence[_Failure | None], primary: str = "") -> _Failure | None:
    """The failure with the lowest seq, those in the ``primary`` log first."""
    found = [f for f in failures if f is not None]
    if not found:
        return None
    return min(found, key=lambda f: (f.log != primary, math.inf if f.seq is None else f.seq))


def _report(entries: list[Entry], failure: _Failure | None, keys_from: str,
            site_logs: int = 0) -> VerifyReport:
    if failure is None:
        final = entries[-1].payload["countersignatures"]
        message = (f"{len(entries)} entries, {site_logs} site log(s); every hash, link and "
                   f"signature holds; final checkpoint countersigned by "
                   f"{', '.join(sorted(final)) or 'no site'}")
        return VerifyReport(True, len(entries), None, None, message, None, keys_from)
    return VerifyReport(False, len(entries), failure.seq, failure.reason, failure.message,
                        failure.log, keys_from)


def _check_run_start(chain: _Chain) -> _Failure | None:
    if chain.entries[0].kind is not EventKind.RUN_START:
        return chain.fail(0, FailureReason.DELETED, "the log does not start with RUN_START")
    payload = chain.entries[0].payload
    missing = PAYLOAD_KEYS[EventKind.RUN_START] - set(payload)
    if missing:
        return chain.fail(0, FailureReason.MALFORMED, f"RUN_START lacks {sorted(missing)}")
    if chain.entries[0].actor != payload["coordinator"]:
        return chain.fail(0, FailureReason.UNKNOWN_KEY, "RUN_START not by its coordinator")
    listed = {**payload["sites"], payload["coordinator"]: payload.get("coordinator_key")}
    for name, key in listed.items():
        if name not in chain.registry or chain.registry.public_key_hex(name) != key:
            return chain.fail(0, FailureReason.UNKNOWN_KEY,
                              f"RUN_START lists a key for {name!r} that the registry lacks")
    return None


def _check_payloads(chain: _Chain) -> _Failure | None:
    """Kind by kind: fields, embedded site signatures, countersignatures, replays."""
    run = chain.entries[0].payload
    run_id, sites = run["run_id"], set(run["sites"])
    seen: set[tuple[str, int, str]] = set()
    for entry in chain.entries:
        missing = PAYLOAD_KEYS[entry.kind] - set(entry.payload)
        if missing or (entry.kind is EventKind.RUN_START and entry.seq):
            return chain.fail(entry.seq, FailureReason.MALFORMED,
                              f"{entry.kind.value} lacks {sorted(missing)}" if missing
                              else "a second RUN_START")
        if entry.kind is EventKind.AGGREGATION and not all(
                isinstance(entry.payload[name], list)
                and all(isinstance(site, str) for site in entry.payload[name])
                for name in ("contributors", "dropouts")):
            return chain.fail(entry.seq, FailureReason.MALFORMED,
                              "contributors and dropouts must be lists of site names")
        if entry.kind is EventKind.REFUSAL and \
                entry.payload["reason"] not in RefusalReason.__members__:
            return chain.fail(entry.seq, FailureReason.MALFORMED,
                              f"refusal reason {entry.payload['reason']!r} is not one of "
                              f"{', '.join(RefusalReason.__members__)}")
        if entry.kind is EventKind.RELEASE:
            failure = _check_release(chain, entry, run_id, sites, seen)
        elif entry.kind is EventKind.CHECKPOINT:
            failure = _check_checkpoint(chain, entry, run_id, sites)
        else:
            failure = None
        if failure is not None:
            return failure
    return None


def _check_release(chain: _Chain, entry: Entry, run_id: str, sites: set[str],
                   seen: set[tuple[str, int, str]]) -> _Failure | None:
    try:
        release = SignedRelease.from_payload(entry.payload)
    except ValueError as err:
        return chain.fail(entry.seq, FailureReason.MALFORMED, str(err))
    record = release.record
    if record.site not in sites:
        return chain.fail(entry.seq, FailureReason.UNKNOWN_KEY,
                          f"release by {record.site!r}, not a site of this run")
    if not release.valid(chain.registry):
        return chain.fail(entry.seq, FailureReason.BAD_SIGNATURE,
                          f"release record is not signed by {record.site!r}")
    key = (record.site, record.round, record.vector_kind)
    if record.run_id != run_id or key in seen:
        return chain.fail(entry.seq, FailureReason.REPLAYED,
                          f"release {key} is from run {record.run_id} or seen before")
    seen.add(key)
    return None


def _check_checkpoint(chain: _Chain, entry: Entry, run_id: str,
                      sites: set[str]) -> _Failure | None:
    payload = entry.payload
    if (payload["entry_count"], payload["head_hash"], payload["run_id"]) != \
            (entry.seq, entry.prev_hash, run_id):
        return chain.fail(entry.seq, FailureReason.EDITED,
                          "checkpoint does not state the log's own length and head")
    request = CheckpointRequest(run_id, entry.seq, entry.prev_hash)
    counters = payload["countersignatures"]
    if not isinstance(counters, Mapping):
        return chain.fail(entry.seq, FailureReason.MALFORMED, "countersignatures not an object")
    for site, signature in sorted(counters.items()):
        if site not in sites or not Countersignature(site, signature).valid(request,
                                                                            chain.registry):
            return chain.fail(entry.seq, FailureReason.BAD_COUNTERSIGNATURE,
                              f"countersignature of {site!r} does not verify")
    return None


def _surviving_sites(entries: list[Entry]) -> set[str]:
    """Sites of the run not left as dropouts by the last AGGREGATION naming them."""
    alive = dict.fromkeys(entries[0].payload["sites"], True)
    for entry in entries:
        if entry.kind is EventKind.AGGREGATION:
            alive.update(dict.fromkeys(entry.payload["contributors"], True))
            alive.update(dict.fromkeys(entry.payload["dropouts"], False))
    return {site for site, up in alive.items() if up}


def _check_end(chain: _Chain) -> _Failure | None:
    entries = chain.entries
    last = entries[-1]
    if last.kind is not EventKind.CHECKPOINT:
        sealed = any(e.kind is EventKind.CHECKPOINT for e in entries)
        reason = FailureReason.TRUNCATED if sealed else FailureReason.MISSING_CHECKPOINT
        return chain.fail(len(entries), reason,
                          f"the log ends at seq {last.seq} ({last.kind.value}) without a "
                          "final countersigned checkpoint")
    signed = set(last.payload["countersignatures"])
    if not signed:
        return chain.fail(last.seq, FailureReason.MISSING_COUNTERSIGNATURE,
                          "no site countersigned the final checkpoint")
    missing = _surviving_sites(entries) - signed
    if missing:
        return chain.fail(last.seq, FailureReason.MISSING_COUNTERSIGNATURE,
                          f"final checkpoint lacks {', '.join(sorted(missing))}")
    return None


def _check_site_log(chain: _Chain, path: Path) -> _Failure | None:
    """A site log must be intact and agree with the coordinator's, both ways."""
    entries, malformed = _load(path)
    if not entries:
        return _Failure(0, FailureReason.TRUNCATED, "the site log is empty", str(path))
    site = entries[0].actor
    run = chain.entries[0].payload
    own = _Chain(path, entries, chain.registry)
    if site not in run["sites"]:
        return own.fail(0, FailureReason.UNKNOWN_KEY, f"{site!r} is not a site of this run")
    failure = _first([own.walk(actor=site), malformed])
    if failure is not None:
        return failure
    logged = {}
    for entry in chain.entries:
        if entry.kind is EventKind.RELEASE and entry.payload["release"]["site"] == site:
            release = entry.payload["release"]
            logged[(release["round"], release["vector_kind"])] = entry
    kept: set[tuple[int, str]] = set()
    failures = [_compare_site_entry(chain, own, entry, logged, kept) for entry in entries]
    failures += [chain.fail(entry.seq, FailureReason.SITE_LOG_MISMATCH,
                            f"release {key} of {site!r} is not in its site log {path}")
                 for key, entry in logged.items() if key not in kept]
    return _first(failures, str(chain.path))


def _compare_site_entry(chain: _Chain, own: _Chain, entry: Entry,
                        logged: dict[tuple[int, str], Entry],
                        kept: set[tuple[int, str]]) -> _Failure | None:
    site, run_id = entry.actor, chain.entries[0].payload["run_id"]
    if entry.kind is EventKind.RELEASE:
        try:
            release = SignedRelease.from_payload(entry.payload)
        except ValueError as err:
            return own.fail(entry.seq, FailureReason.MALFORMED, str(err))
        key = (release.record.round, release.record.vector_kind)
        if release.record.run_id != run_id:
            return own.fail(entry.seq, FailureReason.SITE_LOG_MISMATCH,
                            f"site log release is from run {release.record.run_id}")
        theirs = logged.get(key)
        if theirs is None:
            return own.fail(entry.seq, FailureReason.SITE_LOG_MISMATCH,
                            f"release {key} of {site!r} is missing from the coordinator's log")
        if dict(theirs.payload) != dict(entry.payload):
            return chain.fail(theirs.seq, FailureReason.SITE_LOG_MISMATCH,
                              f"release {key} differs from {site!r}'s own log")
        kept.add(key)
        return None
    if entry.kind is EventKind.CHECKPOINT:
        count, head = entry.payload.get("entry_count"), entry.payload.get("head_hash")
        counters = entry.payload.get("countersignatures")
        if not isinstance(count, int) or not isinstance(head, str) \
                or not isinstance(counters, Mapping):
            return own.fail(entry.seq, FailureReason.MALFORMED, "checkpoint record mistyped")
        signature = counters.get(site, "")
        request = CheckpointRequest(run_id, count, head)
        if not verify_signature(chain.registry.public_key_hex(site), signature,
                                request.statement_bytes()):
            return own.fail(entry.seq, FailureReason.BAD_COUNTERSIGNATURE,
                            "the site's record of its countersignature does not verify")
        if count >= len(chain.entries):
            return chain.fail(len(chain.entries), FailureReason.TRUNCATED,
                              f"{site!r} countersigned a checkpoint at seq {count}, but the "
                              f"log ends at seq {len(chain.entries) - 1}: its tail was cut "
                              "(or the log rewritten)")
        there = chain.entries[count]
        if there.kind is not EventKind.CHECKPOINT or there.prev_hash != head:
            return chain.fail(count, FailureReason.SITE_LOG_MISMATCH,
                              f"{site!r} countersigned another head at seq {count}: "
                              "the log was rewritten")
        return None
    if entry.kind is EventKind.REFUSAL:  # the site's record of a request it refused
        if entry.payload.get("run_id") != run_id or entry.payload.get("site") != site \
                or entry.payload.get("reason") != RefusalReason.SITE_REFUSAL.name:
            return own.fail(entry.seq, FailureReason.MALFORMED,
                            "a site's refusal must be its own, in this run, a SITE_REFUSAL")
        return None
    return own.fail(entry.seq, FailureReason.MALFORMED,
                    f"a site log holds only RELEASE, REFUSAL and CHECKPOINT, not "
                    f"{entry.kind.value}")
