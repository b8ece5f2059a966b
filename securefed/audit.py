"""Audit trail of a protected run: what each site released, signed, chained, checkable.

The public API of the audit modules, and the site's side of it:

* :mod:`securefed.audit_log` – entries, the coordinator's log writer, commitments;
* :class:`SiteLog` (here) – a site's own log of its releases, with its salts kept
  in a separate site-private file;
* :mod:`securefed.audit_verify` – :func:`verify_log` and the failure reasons;
* :mod:`securefed.audit_report` – per-site summaries as a table, JSON or HTML;
* :func:`scan_for_secrets` (here) – look for private-key material in artefacts.

Salt file format (site-private, mode 0600, JSON Lines, one line per release)::

    {"digest":hex,"round":int,"run_id":str,"salt":hex(32 bytes),"vector_kind":str}
"""

from __future__ import annotations

import base64
import json
import os
import stat
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import numpy.typing as npt

from protocols.errors import InvalidMessage, ReplayError
from securefed.audit_log import (
    PAYLOAD_KEYS,
    PRIVACY_KEYS,
    AuditLog,
    CheckpointRequest,
    Commitment,
    Countersignature,
    Entry,
    EventKind,
    RefusalReason,
    ReleaseRecord,
    SignedRelease,
    commit_release,
    open_commitment,
    read_entries,
    utc_now,
)
from securefed.audit_report import AuditReport, SiteSummary, build_report, render_report
from securefed.audit_verify import FailureReason, VerifyReport, verify_log
from securefed.canonical import ZERO_HASH, canonical_bytes, encode_float, to_canonical
from securefed.errors import InputError
from securefed.keys import Identity, KeyFilePermissionError, Registry

__all__ = [
    "PAYLOAD_KEYS",
    "AuditLog",
    "AuditReport",
    "CheckpointRequest",
    "Commitment",
    "Countersignature",
    "Entry",
    "EventKind",
    "FailureReason",
    "RefusalReason",
    "ReleaseRecord",
    "SaltStore",
    "SignedRelease",
    "SiteLog",
    "SiteSummary",
    "VerifyReport",
    "build_report",
    "commit_release",
    "open_commitment",
    "read_entries",
    "render_report",
    "run_start_payload",
    "scan_for_secrets",
    "verify_log",
]


def run_start_payload(*, run_id: str, study_config_hash: str, model: str,
                      protection: Mapping[str, Any], registry: Registry,
                      sites: Sequence[str], budget: Mapping[str, float],
                      coordinator: str = "coordinator",
                      key_origin: str | None = None) -> dict[str, Any]:
    """Build a RUN_START payload; site and coordinator keys come from ``registry``.

    ``key_origin`` (optional): ``"consortium"`` (persistent keys of the consortium's
    registry) or ``"ephemeral"`` (keys made for this run, which nobody can pin).

    ``protection`` is ``{"layers": [{"name": ..., <parameters>}, ...]}``; ``budget``
    has per-site totals such as ``{"epsilon": 1.0, "delta": 1e-6}`` (floats are
    stored as ``repr`` strings).
    """
    payload = {"run_id": run_id, "study_config_hash": study_config_hash, "model": model,
               "protection": dict(protection),
               "sites": {name: registry.public_key_hex(name) for name in sites},
               "coordinator": coordinator,
               "coordinator_key": registry.public_key_hex(coordinator),
               "registry_fingerprint": registry.fingerprint, "budget": dict(budget)}
    if key_origin is not None:
        payload["key_origin"] = key_origin
    return payload


class SaltStore:
    """The site-private file of commitment salts (JSON Lines, mode 0600, append-only)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._path = Path(path)
        if self._path.exists():
            mode = stat.S_IMODE(self._path.stat().st_mode)
            if mode & 0o077:
                raise KeyFilePermissionError(
                    f"salt file {self._path} has mode {mode:04o}; run: chmod 600 {self._path}")
        else:
            os.close(os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))

    @property
    def path(self) -> Path:
        """The salt file."""
        return self._path

    def add(self, run_id: str, round_id: int, vector_kind: str,
            commitment: Commitment) -> None:
        """Append one salt (flushed and fsynced)."""
        line = canonical_bytes({"run_id": run_id, "round": round_id,
                                "vector_kind": vector_kind, "digest": commitment.digest,
                                "salt": commitment.salt.hex()})
        with open(self._path, "ab") as handle:
            handle.write(line + b"\n")
            handle.flush()
            os.fsync(handle.fileno())

    def lookup(self, run_id: str, round_id: int, vector_kind: str) -> Commitment:
        """The commitment of one release; :class:`InputError` if the salt is not here."""
        for line in self._path.read_bytes().splitlines():
            item = json.loads(line)
            if (item["run_id"], item["round"], item["vector_kind"]) == \
                    (run_id, round_id, vector_kind):
                return Commitment(bytes.fromhex(item["salt"]), item["digest"])
        raise InputError(f"no salt for run {run_id} round {round_id} {vector_kind} "
                         f"in {self._path}")


class SiteLog:
    """A site's own signed log of its releases and countersigned checkpoints.

    The site owns it together with its :class:`Identity`: :meth:`record_release`
    commits to the plaintext vector, keeps the salt in the :class:`SaltStore`,
    signs the release record, logs it and returns it for the envelope sent to the
    coordinator (which logs it with :meth:`AuditLog.append_release`).
    """

    def __init__(self, identity: Identity, log: AuditLog, salts: SaltStore,
                 run_id: str) -> None:
        self._identity = identity
        self._log = log
        self._salts = salts
        self._run_id = run_id
        self._released: set[tuple[int, str]] = set()
        self._last_checkpoint = -1
        for entry in read_entries(log.path):
            if entry.kind is EventKind.RELEASE:
                release = entry.payload["release"]
                self._released.add((release["round"], release["vector_kind"]))
            elif entry.kind is EventKind.CHECKPOINT:
                self._last_checkpoint = entry.payload["entry_count"]

    @classmethod
    def create(cls, path: str | os.PathLike[str], identity: Identity,
               salt_path: str | os.PathLike[str], run_id: str, *,
               clock: Callable[[], str] = utc_now) -> SiteLog:
        """Start a new site log and salt file (neither may exist yet)."""
        if Path(salt_path).exists():
            raise InputError(f"{salt_path} exists; start a run with a new salt file")
        return cls(identity, AuditLog.create(path, clock=clock), SaltStore(salt_path), run_id)

    @classmethod
    def open(cls, path: str | os.PathLike[str], identity: Identity,
             salt_path: str | os.PathLike[str], run_id: str) -> SiteLog:
        """Reopen a site log to continue a run."""
        return cls(identity, AuditLog.open(path), SaltStore(salt_path), run_id)

    @property
    def path(self) -> Path:
        """The site log file."""
        return self._log.path

    @property
    def salt_path(self) -> Path:
        """The site-private salt file."""
        return self._salts.path

    def record_release(self, vector: npt.ArrayLike, *, round_id: int, vector_kind: str,
                       layers: Sequence[Mapping[str, Any]],
                       privacy: Mapping[str, float]) -> SignedRelease:
        """Commit to, sign and log one release; return it for the coordinator.

        Parameters
        ----------
        vector : array_like
            The plaintext vector before protection (what the commitment binds).
        round_id, vector_kind
            Which release this is; each pair is released at most once.
        layers : sequence of mappings
            The protection layers applied, in order, each with a ``"name"``.
        privacy : mapping
            Cumulative ``epsilon_spent``/``epsilon_remaining``/``delta_spent``/...

        Raises
        ------
        ReplayError
            If this site already released ``vector_kind`` in ``round_id``.
        """
        key = (int(round_id), str(vector_kind))
        if key in self._released:
            raise ReplayError(f"{self._identity.name} already released {vector_kind} "
                              f"in round {round_id}")
        if set(privacy) - PRIVACY_KEYS:
            raise ValueError(f"privacy keys must be among {sorted(PRIVACY_KEYS)}")
        if any("name" not in layer for layer in layers):
            raise ValueError("every layer needs a 'name'")
        array = np.asarray(vector, dtype=np.float64)
        commitment = commit_release(array)
        record = ReleaseRecord(
            run_id=self._run_id, site=self._identity.name, round=key[0], vector_kind=key[1],
            shape=tuple(int(n) for n in array.shape),
            layers=tuple(MappingProxyType(to_canonical(dict(layer))) for layer in layers),
            commitment=commitment.digest,
            privacy=MappingProxyType({k: encode_float(v) for k, v in privacy.items()}))
        release = SignedRelease(record, self._identity.sign(record.signed_bytes()).hex())
        self._salts.add(self._run_id, key[0], key[1], commitment)
        self._log.append(EventKind.RELEASE, self._identity, release.to_payload())
        self._released.add(key)
        return release

    def record_refusal(self, round_id: int, code: str) -> None:
        """Log that this site refused a request of ``round_id`` (``code``: a refusal code)."""
        self._log.append(EventKind.REFUSAL, self._identity, {
            "run_id": self._run_id, "round": int(round_id), "site": self._identity.name,
            "reason": RefusalReason.SITE_REFUSAL.name, "detail": str(code)})

    def countersign(self, request: CheckpointRequest,
                    coordinator_entries: Sequence[Entry] | None = None) -> Countersignature:
        """Countersign the coordinator's checkpoint and record it in this log.

        Parameters
        ----------
        request : CheckpointRequest
            The coordinator's log length and head hash.
        coordinator_entries : sequence of Entry, optional
            A copy of the coordinator's log up to the head (e.g. ``read_entries``).
            When given, the site first checks that these entries chain to the head
            and hold every release of this site exactly as its own log does.

        Raises
        ------
        InvalidMessage
            If the request is for another run, or the coordinator's entries do not
            chain to the head or misstate this site's releases.
        ReplayError
            If it does not extend the last checkpoint this site countersigned.
        """
        if request.run_id != self._run_id:
            raise InvalidMessage("checkpoint request is for another run")
        if coordinator_entries is not None:
            self._check_coordinator_entries(request, coordinator_entries)
        if request.entry_count <= self._last_checkpoint:
            raise ReplayError(f"checkpoint at {request.entry_count} does not extend the one "
                              f"countersigned at {self._last_checkpoint}")
        counter = Countersignature.sign(self._identity, request)
        self._log.append(EventKind.CHECKPOINT, self._identity, {
            "run_id": request.run_id, "entry_count": request.entry_count,
            "head_hash": request.head_hash,
            "countersignatures": {counter.site: counter.signature}})
        self._last_checkpoint = request.entry_count
        return counter

    def _check_coordinator_entries(self, request: CheckpointRequest,
                                   entries: Sequence[Entry]) -> None:
        head = ZERO_HASH
        for seq, entry in enumerate(entries):
            if entry.seq != seq or entry.prev_hash != head:
                raise InvalidMessage(f"coordinator's log breaks at seq {seq}")
            head = entry.hash
        if (len(entries), head) != (request.entry_count, request.head_hash):
            raise InvalidMessage("coordinator's log does not end at the requested head")
        theirs = [dict(e.payload) for e in entries if e.kind is EventKind.RELEASE
                  and e.payload["release"]["site"] == self._identity.name]
        mine = [dict(e.payload) for e in read_entries(self._log.path)
                if e.kind is EventKind.RELEASE]
        if theirs != mine:
            raise InvalidMessage("coordinator's log does not hold this site's releases "
                                 "exactly as released")

    def open_release(self, vector: npt.ArrayLike, round_id: int, vector_kind: str) -> bool:
        """For a dispute: whether ``vector`` is what this site committed to."""
        commitment = self._salts.lookup(self._run_id, round_id, vector_kind)
        return open_commitment(vector, commitment.salt, commitment.digest)


def _secret_forms(raw: bytes) -> list[tuple[str, bytes]]:
    """Byte patterns under which 32 secret bytes may appear in a file."""
    forms = [("raw bytes", raw), ("hex", raw.hex().encode()),
             ("HEX", raw.hex().upper().encode())]
    for offset in range(3):  # base64 of the bytes at each alignment inside a longer blob
        for name, encode in (("base64", base64.b64encode), ("base64url", base64.urlsafe_b64encode)):
            text = encode(b"\0" * offset + raw)
            start = 4 if offset else 0
            forms.append((name, text[start:4 * ((offset + len(raw)) // 3)]))
    return forms


def scan_for_secrets(paths: Iterable[str | os.PathLike[str]],
                     identities: Iterable[Identity], *,
                     salts: Iterable[bytes] = (),
                     salt_files: Iterable[str | os.PathLike[str]] = ()) -> list[str]:
    """Look for private keys (and salts outside salt files) in files and directories.

    Each private key is searched as raw bytes, hex (both cases), base64 and
    base64url at every byte alignment, and as its PEM body. Each salt is searched
    the same way in every file except those in ``salt_files``.

    Returns
    -------
    list of str
        One line per finding, ``"<path>: private key of 'site-a' as hex"``;
        empty when nothing was found.
    """
    patterns: list[tuple[str, bytes]] = []
    for identity in identities:
        what = f"private key of {identity.name!r}"
        patterns += [(f"{what} as {form}", data)
                     for form, data in _secret_forms(identity.export_private_key_raw())]
        pem_body = b"".join(identity.export_private_key_pem().splitlines()[1:-1])
        patterns.append((f"{what} as PEM", pem_body))
    salt_patterns = [(f"salt {salt.hex()[:8]}... as {form}", data)
                     for salt in salts for form, data in _secret_forms(salt)]
    allowed = {Path(p).resolve() for p in salt_files}
    findings = []
    for path in _files(paths):
        data = path.read_bytes()
        flat = data.replace(b"\n", b"").replace(b"\r", b"")
        checks = patterns + ([] if path.resolve() in allowed else salt_patterns)
        findings += [f"{path}: {what}" for what, pattern in checks
                     if pattern in data or pattern in flat]
    return findings


def _files(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    found = []
    for path in map(Path, paths):
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.is_file())
        elif path.is_file():
            found.append(path)
        else:
            raise InputError(f"cannot scan {path}: no such file or directory")
    return found
