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
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from securefed.audit import SiteLog
from securefed.audit_log import CheckpointRequest, parse_entry
from securefed.audit_trail import trail_paths
from securefed.keys import Identity, check_party_name

__all__ = ["log_release", "log_site_refusal", "countersign", "site_log_paths"]


def site_log_paths(audit_dir: str | Path, run_id: str, site: str) -> tuple[Path, Path]:
    """The site's log and salt file for run ``run_id``."""
    if not run_id.isalnum():
        raise ValueError("a run id is hexadecimal")
    check_party_name(site)
    return trail_paths(Path(audit_dir) / f"run-{run_id}.jsonl", site)


def _site_log(audit_dir: str | Path, identity: Identity, run_id: str) -> SiteLog:
    folder = Path(audit_dir)
    if not folder.is_dir():
        raise ValueError(f"audit-dir {folder} is not a folder")
    log, salts = site_log_paths(folder, run_id, identity.name)
    if log.exists():
        return SiteLog.open(log, identity, salts, run_id)
    return SiteLog.create(log, identity, salts, run_id)


def log_release(audit_dir: str | Path, identity: Identity, vector: np.ndarray, round_id: int,
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


def log_site_refusal(audit_dir: str | Path, identity: Identity, run_id: str, round_id: int,
                     code: str) -> None:
    """Log in this site's own log that it refused a request of the run (its refusal code)."""
    _site_log(audit_dir, identity, run_id).record_refusal(round_id, code)


def countersign(audit_dir: str | Path, identity: Identity, checkpoint: Mapping,
                log_text: str) -> dict:
    """Check the coordinator's log lines and countersign ``checkpoint`` (InvalidMessage if not)."""
    request = CheckpointRequest(str(checkpoint["run_id"]), int(checkpoint["entry_count"]),
                                str(checkpoint["head_hash"]))
    entries = [parse_entry(line.encode()) for line in log_text.splitlines() if line]
    signature = _site_log(audit_dir, identity, request.run_id).countersign(request, entries)
    return {"site": signature.site, "signature": signature.signature}
