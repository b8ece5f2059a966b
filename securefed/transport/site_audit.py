"""A remote site's own audit log: what it released, on its own disk.

Over Flower each site keeps, in the folder its node config names
(``audit-dir``), the same two files an in-process run writes for it::

    run-RUN_ID.site-NAME.jsonl          its signed log of releases and checkpoints
    run-RUN_ID.site-NAME.salts.jsonl    its private commitment salts (0600)

:func:`log_release` commits to a released vector, logs the signed record and
returns it (the record holds a commitment, never the values) for the
coordinator's log; :func:`countersign` checks the coordinator's log against
the site's own (chain, and this site's releases exactly as it logged them)
before countersigning its head. The site signs with its consortium identity.
Flower starts a fresh process per message, so both reopen the log each time.

:func:`check_registry` is the site's pin: a node config may carry
``expect-fingerprint`` (the registry fingerprint the consortium agreed on, 64
hex); the site then refuses a registry file of its own that differs, and always
refuses a run started under a registry other than its own copy (the
fingerprint the coordinator states in each round, and the one its RUN_START
names when the site countersigns).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from protocols.errors import InvalidMessage
from securefed.audit import SiteLog
from securefed.audit_log import CheckpointRequest, EventKind, parse_entry
from securefed.audit_trail import trail_paths
from securefed.keys import Identity, Registry, check_party_name, parse_fingerprint

__all__ = ["BesideTrail", "audit_place", "RegistryMismatch", "check_registry", "countersign",
           "log_release", "log_site_refusal", "site_log_paths"]


class RegistryMismatch(InvalidMessage):
    """The run's registry is not this site's own (pinned) copy: the site refuses."""


def check_registry(registry: Registry, node_config: Mapping,
                   run_fingerprint: object = None) -> None:
    """Refuse (InvalidMessage) a registry other than the pinned one, or a run under another.

    ``registry`` is this site's own copy; ``node_config`` may pin its fingerprint
    (``expect-fingerprint``); ``run_fingerprint`` is the one the run states, if any.
    A pinning site refuses a run that states none.
    """
    own = registry.fingerprint
    if "expect-fingerprint" in node_config:
        pinned = parse_fingerprint(str(node_config["expect-fingerprint"]), "expect-fingerprint")
        if own != pinned:
            raise RegistryMismatch(f"this site's registry has fingerprint {own[:16]}..., not the "
                                 f"pinned {pinned[:16]}... (expect-fingerprint): refusing")
        if run_fingerprint is None:
            raise RegistryMismatch("the run does not state its registry fingerprint; this site "
                                 "pins one: refusing")
    if run_fingerprint is not None and run_fingerprint != own:
        raise RegistryMismatch(f"the run's registry {str(run_fingerprint)[:16]}... is not this "
                             f"site's own copy ({own[:16]}...): refusing")


def site_log_paths(audit_dir: str | Path, run_id: str, site: str) -> tuple[Path, Path]:
    """The site's log and salt file for run ``run_id``."""
    if not run_id.isalnum():
        raise ValueError("a run id is hexadecimal")
    check_party_name(site)
    return trail_paths(Path(audit_dir) / f"run-{run_id}.jsonl", site)


@dataclass(frozen=True)
class BesideTrail:
    """Where a simulated site of an in-process run keeps its log: beside the coordinator's
    log ``log_path``, as ``STEM.site-NAME.jsonl`` (the layout of
    :func:`~securefed.audit_trail.trail_paths`); node config ``audit-trail``."""

    log_path: Path


AuditPlace = str | Path | BesideTrail


def audit_place(node_config: Mapping) -> AuditPlace:
    """The site's audit folder (``audit-dir``) or its in-process place (``audit-trail``)."""
    if "audit-trail" in node_config:
        return BesideTrail(Path(str(node_config["audit-trail"])))
    try:
        return str(node_config["audit-dir"])
    except KeyError:
        raise KeyError("node config has no 'audit-dir'") from None


def _site_log(where: AuditPlace, identity: Identity, run_id: str) -> SiteLog:
    if isinstance(where, BesideTrail):
        log, salts = trail_paths(where.log_path, identity.name)
    else:
        folder = Path(where)
        if not folder.is_dir():
            raise ValueError(f"audit-dir {folder} is not a folder")
        log, salts = site_log_paths(folder, run_id, identity.name)
    if log.exists():
        return SiteLog.open(log, identity, salts, run_id)
    return SiteLog.create(log, identity, salts, run_id)


def log_release(audit_dir: AuditPlace, identity: Identity, vector: np.ndarray, round_id: int,
                purpose: str, context: Mapping, privacy: Mapping | None = None) -> dict:
    """Log this site's release in its own log; the signed record for the coordinator.

    ``context`` is the coordinator's ``{"run_id", "layers"}``. A second
    release of ``purpose`` in ``round_id`` is refused (ReplayError). ``privacy``:
    the site's spending after a DP release (``SitePrivacy.fields``).
    """
    log = _site_log(audit_dir, identity, str(context["run_id"]))
    signed = log.record_release(vector, round_id=round_id, vector_kind=purpose,
                                layers=list(context["layers"]), privacy=dict(privacy or {}))
    return signed.to_payload()


def log_site_refusal(audit_dir: AuditPlace, identity: Identity, run_id: str, round_id: int,
                     code: str) -> None:
    """Log in this site's own log that it refused a request of the run (its refusal code)."""
    _site_log(audit_dir, identity, run_id).record_refusal(round_id, code)


def countersign(audit_dir: AuditPlace, identity: Identity, checkpoint: Mapping,
                log_text: str, registry: Registry | None = None,
                node_config: Mapping | None = None) -> dict:
    """Check the coordinator's log lines and countersign ``checkpoint`` (InvalidMessage if not).

    With ``registry`` (the site's own copy) the RUN_START the site countersigns must
    name that registry's fingerprint (:func:`check_registry`, pinned by ``node_config``).
    """
    request = CheckpointRequest(str(checkpoint["run_id"]), int(checkpoint["entry_count"]),
                                str(checkpoint["head_hash"]))
    entries = [parse_entry(line.encode()) for line in log_text.splitlines() if line]
    if registry is not None:
        if not entries or entries[0].kind is not EventKind.RUN_START:
            raise InvalidMessage("the coordinator's log does not start with RUN_START")
        check_registry(registry, node_config or {},
                       entries[0].payload.get("registry_fingerprint"))
    signature = _site_log(audit_dir, identity, request.run_id).countersign(request, entries)
    return {"site": signature.site, "signature": signature.signature}
