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
    an actor is not in the registry, or RUN_START names a party the registry lacks
``WRONG_REGISTRY``
    RUN_START verifies under the coordinator key it lists itself, but the log names
    keys this registry does not hold, or was started under a registry with another
    fingerprint: an intact log checked against a wrong or substituted registry (not
    an edit; :func:`securefed.audit_chain.registry_failure`)
``FINGERPRINT_MISMATCH``
    a fingerprint was expected and the registry does not have it
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

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from securefed.audit_chain import Chain as _Chain
from securefed.audit_chain import Failure as _Failure
from securefed.audit_chain import FailureReason, registry_failure, registry_from_run_start
from securefed.audit_chain import first_failure as _first
from securefed.audit_chain import load_chain as _load
from securefed.audit_log import (
    PAYLOAD_KEYS,
    CheckpointRequest,
    Countersignature,
    Entry,
    EventKind,
    RefusalReason,
    SignedRelease,
)
from securefed.errors import InputError
from securefed.keys import Registry, parse_fingerprint, verify_signature

__all__ = ["FailureReason", "VerifyReport", "verify_log"]


@dataclass(frozen=True)
class VerifyReport:
    """Outcome of :func:`verify_log`.

    ``first_bad_seq`` and ``reason`` are ``None`` when ``ok``; ``bad_log`` is the
    file ``first_bad_seq`` refers to (the coordinator's log or a site log).
    ``keys_from`` is ``"registry"`` or ``"log"`` (keys taken from RUN_START itself).
    ``pinned`` is the registry fingerprint the log was checked against when one was
    expected (``None``: nothing pinned, the trail is only shown self-consistent);
    ``key_origin`` is RUN_START's ``key_origin`` (``"consortium"``, ``"ephemeral"``,
    or ``"unstated"`` in logs that predate it).
    """

    ok: bool
    entries: int
    first_bad_seq: int | None
    reason: FailureReason | None
    message: str
    bad_log: str | None = None
    keys_from: str = "registry"
    pinned: str | None = None
    key_origin: str = "unstated"

    def summary(self) -> str:
        """One line for a terminal."""
        if self.ok:
            return f"OK: {self.message}"
        reason = f"{self.reason.value} ({self.reason.meaning})" if self.reason else "?"
        return f"FAIL at seq {self.first_bad_seq} of {self.bad_log}: {reason}: {self.message}"

    def trust_warning(self) -> str | None:
        """The warning line an intact but unpinned trail carries (``None`` when pinned)."""
        if self.pinned is not None:
            return None
        if self.key_origin == "ephemeral":
            return ("warning: nothing was pinned: this trail was signed with keys made for "
                    "the run (no --site-keys), so it is only self-consistent; anyone able to "
                    "rewrite the log and its registry could have re-signed it")
        return ("warning: nothing was pinned: the trail is only self-consistent; pass "
                "--expect-fingerprint HEX (the registry fingerprint the sites agreed on, "
                "obtained out of band) to check who signed it")


def verify_log(path: str | os.PathLike[str], registry: Registry | None = None,
               site_logs: Iterable[str | os.PathLike[str]] = (), *,
               expect_fingerprint: str | None = None) -> VerifyReport:
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
    expect_fingerprint : str, optional
        The registry fingerprint obtained out of band (64 hex). The log verifies
        only if ``registry`` has this fingerprint, RUN_START names it, and every
        signature verifies under its keys (``FINGERPRINT_MISMATCH`` otherwise).

    Returns
    -------
    VerifyReport
        ``ok`` when every hash, link, signature and countersignature holds, the log
        ends with a checkpoint countersigned by every surviving site, and every
        site log agrees with it.

    Raises
    ------
    InputError
        If a file is missing or is not an audit log at all, or a fingerprint is
        expected without a registry or is not 64 hex characters.
    """
    path = Path(path)
    pinned = None
    if expect_fingerprint is not None:
        pinned = parse_fingerprint(expect_fingerprint, "--expect-fingerprint")
        if registry is None:
            raise InputError("--expect-fingerprint pins a registry: pass it with --keys")
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
        registry, keys_from = registry_from_run_start(start), "log"
    chain = _Chain(path, entries, registry)
    if pinned is not None and registry.fingerprint != pinned:
        return _report(entries, chain.fail(
            0, FailureReason.FINGERPRINT_MISMATCH,
            f"the registry's fingerprint is {registry.fingerprint[:16]}..., not the expected "
            f"{pinned[:16]}...: nothing in this trail chains to the registry the sites agreed "
            "on"), keys_from)
    failure = _first([registry_failure(chain, keys_from == "registry"), chain.walk(),
                      malformed, _check_run_start(chain)])
    if failure is None:
        failure = _check_payloads(chain)
    if failure is not None:
        return _report(entries, failure, keys_from)
    others = [_check_site_log(chain, Path(site_log)) for site_log in site_logs]
    others.append(_check_end(chain))
    return _report(entries, _first(others, str(path)), keys_from, len(others) - 1, pinned)


def _report(entries: list[Entry], failure: _Failure | None, keys_from: str,
            site_logs: int = 0, pinned: str | None = None) -> VerifyReport:
    origin = "unstated"
    if entries and entries[0].kind is EventKind.RUN_START:
        origin = str(entries[0].payload.get("key_origin", "unstated"))
    if failure is None:
        final = entries[-1].payload["countersignatures"]
        trust = f"pinned to registry {pinned}" if pinned else \
            "nothing pinned: only self-consistent"
        message = (f"{len(entries)} entries, {site_logs} site log(s); every hash, link and "
                   f"signature holds; final checkpoint countersigned by "
                   f"{', '.join(sorted(final)) or 'no site'}; {trust}")
        return VerifyReport(True, len(entries), None, None, message, None, keys_from, pinned,
                            origin)
    return VerifyReport(False, len(entries), failure.seq, failure.reason, failure.message,
                        failure.log, keys_from, None, origin)


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
