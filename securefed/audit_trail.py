"""The audit side of an in-process run: one coordinator log, one log per site.

For ``--audit-log run.jsonl`` a run writes, next to it:

* ``run.jsonl`` — the coordinator's signed, hash-chained log;
* ``run.site-NAME.jsonl`` — each site's log of its own releases;
* ``run.site-NAME.salts.jsonl`` — each site's private commitment salts (0600);
* ``run.registry.json`` — the public keys of every party of this run.

In-process, the parties sign with the consortium keys of ``securefed keygen``
when given (:class:`~securefed.audit_keys.TrailKeys`, ``--site-keys DIR``), so a
reviewer can pin the registry's fingerprint; otherwise every party gets a fresh
Ed25519 identity for the run (its private key is never written), and the trail
is only self-consistent: RUN_START records which (``key_origin``). Over a
transport (:meth:`AuditTrail.start_remote`) the parties use their consortium
identities: each site writes its own log and salts on its own disk and sends the
coordinator only its signed release records and its checkpoint countersignature.
Check the whole trail, pinned to the registry fingerprint the sites agreed on, with::

    securefed audit verify run.jsonl --keys run.registry.json --expect-fingerprint HEX \
        --site-log run.site-A.jsonl ...
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from securefed.audit import (
    AuditLog,
    EventKind,
    SiteLog,
    read_entries,
    run_start_payload,
)
from securefed.audit_keys import TrailKeys
from securefed.audit_log import CheckpointRequest, Countersignature, SignedRelease
from securefed.canonical import canonical_bytes
from securefed.errors import InputError
from securefed.keys import Identity, Registry, check_party_name

__all__ = ["AuditTrail", "trail_paths"]

COORDINATOR = "coordinator"
#: ``countersign(request, coordinator_log_lines, site_names)`` → the sites' countersignatures
Countersigner = Callable[[CheckpointRequest, list[str], Sequence[str]], list[Countersignature]]


def trail_paths(log_path: Path, site: str) -> tuple[Path, Path]:
    """A site's log and salt file next to the coordinator's log."""
    stem = log_path.with_suffix("")
    return (stem.parent / f"{stem.name}.site-{site}.jsonl",
            stem.parent / f"{stem.name}.site-{site}.salts.jsonl")


class AuditTrail:
    """Writes RUN_START, ROUND_SPEC, RELEASE, AGGREGATION, RESULT and CHECKPOINT."""

    def __init__(self, path: Path, coordinator: Identity, sites: dict[str, SiteLog],
                 registry: Registry, log: AuditLog, run_id: str, layers: list[dict],
                 site_identities: dict[str, Identity],
                 countersign: Countersigner | None = None) -> None:
        self.path = path
        self.registry = registry
        self._countersign = countersign
        self._coordinator = coordinator
        self._sites = sites
        self._registry = registry
        self._log = log
        self.run_id = run_id
        self._layers = layers
        self._site_identities = site_identities

    @classmethod
    def start(cls, path: str | Path, *, site_names: Sequence[str], model: str,
              config: Mapping[str, Any], protection: Mapping[str, Any],
              keys: TrailKeys | None = None) -> AuditTrail:
        """Create every file of the trail and log RUN_START (refuses to overwrite).

        ``keys``: the consortium identities to sign with (the registry is copied next
        to the log); without them every party gets a key made for this run.
        """
        path = Path(path)
        if not path.parent.exists():
            raise InputError(f"cannot write the audit log: folder {path.parent} does not exist")
        for name in site_names:
            check_party_name(name)
        registry_path = path.with_suffix(".registry.json")
        targets = [path, registry_path] + [p for n in site_names for p in trail_paths(path, n)]
        existing = [str(p) for p in targets if p.exists()]
        if existing:
            raise InputError(f"{existing[0]} exists; audit logs are never overwritten")
        if keys is None:
            coordinator = Identity.generate(COORDINATOR)
            identities = {n: Identity.generate(n) for n in site_names}
            registry, origin = Registry.of(coordinator, *identities.values()), "ephemeral"
        else:
            coordinator, identities = keys.coordinator, keys.for_sites(site_names)
            registry, origin = keys.registry, "consortium"
        registry.save(registry_path)
        log, run_id, layers = _run_start(path, coordinator, registry, site_names, model, config,
                                         protection, origin)
        sites = {}
        for name in site_names:
            log_path, salt_path = trail_paths(path, name)
            sites[name] = SiteLog.create(log_path, identities[name], salt_path, run_id)
        return cls(path, coordinator, sites, registry, log, run_id, layers, identities)

    @classmethod
    def start_remote(cls, path: str | Path, *, coordinator: Identity, registry: Registry,
                     site_names: Sequence[str], model: str, config: Mapping[str, Any],
                     protection: Mapping[str, Any], countersign: Countersigner) -> AuditTrail:
        """The coordinator's log of a run whose sites keep their own logs remotely.

        ``registry`` holds the consortium's keys (the coordinator's and every
        site's); it is copied next to the log for ``securefed audit verify``.
        ``countersign`` asks the surviving sites to countersign a checkpoint.
        """
        path = Path(path)
        if not path.parent.exists():
            raise InputError(f"cannot write the audit log: folder {path.parent} does not exist")
        registry_path = path.with_suffix(".registry.json")
        for target in (path, registry_path):
            if target.exists():
                raise InputError(f"{target} exists; audit logs are never overwritten")
        if registry.public_key_hex(COORDINATOR) != coordinator.public_key_hex:
            raise InputError("the coordinator key is not the one in the registry")
        registry.save(registry_path)
        log, run_id, layers = _run_start(path, coordinator, registry, site_names, model, config,
                                         protection)
        return cls(path, coordinator, {}, registry, log, run_id, layers, {}, countersign)

    def countersign_through(self, countersign: Countersigner) -> None:
        """Have the sites countersign checkpoints through ``countersign`` (an in-process
        run whose simulated sites keep their own logs through the site runtime)."""
        self._countersign = countersign

    def site_identity(self, name: str) -> Identity:
        """The identity site ``name`` signs this trail with (to hand to its simulation)."""
        return self._site_identities[name]

    @property
    def coordinator(self) -> Identity:
        return self._coordinator

    def remote_context(self) -> dict:
        """What a remote site needs to log its release in this run (and the registry
        fingerprint the run was started under, which a site checks against its own)."""
        return {"run_id": self.run_id, "layers": self._layers,
                "registry_fingerprint": self._registry.fingerprint}

    def remote_release(self, payload: Mapping[str, Any]) -> None:
        """Log a remote site's signed release record (InvalidMessage if it does not verify)."""
        self._log.append_release(self._coordinator, SignedRelease.from_payload(payload),
                                 self._registry)

    def round_spec(self, round_id: int, purpose: str, length: int) -> None:
        spec = {"run_id": self.run_id, "round": round_id, "vector_kind": purpose,
                "length": length, "layers": self._layers}
        spec_hash = hashlib.sha256(canonical_bytes(spec)).hexdigest()
        self._log.append(EventKind.ROUND_SPEC, self._coordinator, {**spec, "spec_hash": spec_hash})

    def release(self, site: str, vector: np.ndarray, round_id: int, purpose: str,
                privacy: Mapping[str, float] | None = None) -> None:
        """The site commits to and signs its release; the coordinator logs it."""
        signed = self._sites[site].record_release(vector, round_id=round_id, vector_kind=purpose,
                                                  layers=self._layers, privacy=privacy or {})
        self._log.append_release(self._coordinator, signed, self._registry)

    def aggregation(self, round_id: int, purpose: str, contributors: Sequence[str],
                    dropped: Sequence[str], reasons: Mapping[str, str] | None = None) -> None:
        """Log who is in a round's sum; ``reasons``: site → why its message was set aside."""
        payload = {
            "run_id": self.run_id, "round": round_id, "vector_kind": purpose,
            "contributors": list(contributors), "dropouts": list(dropped),
            "recovery": "dropped sites' masks reconstructed from Shamir shares" if dropped
            else "none needed"}
        if reasons:
            payload["dropout_reasons"] = {str(k): str(v)[:200] for k, v in sorted(reasons.items())}
        self._log.append(EventKind.AGGREGATION, self._coordinator, payload)

    def refusal(self, round_id: int, reason: str, detail: str) -> None:
        """Log a refused or aborted round (``reason``: a RefusalReason name)."""
        self._log.append(EventKind.REFUSAL, self._coordinator, {
            "run_id": self.run_id, "round": round_id, "site": COORDINATOR, "reason": reason,
            "detail": detail[:500]})

    def close(self, survivors: Sequence[str]) -> None:
        """End the log with a checkpoint countersigned by ``survivors``."""
        request = self._log.checkpoint_request()
        if self._countersign is not None:
            lines = self.path.read_text(encoding="utf-8").splitlines()
            signatures = self._countersign(request, lines, list(survivors))
        else:
            entries = read_entries(self.path)
            signatures = [self._sites[n].countersign(request, entries) for n in survivors]
        self._log.append_checkpoint(self._coordinator, request, signatures, self._registry)

    def finish(self, result: Mapping[str, Any], kind: str, survivors: Sequence[str]) -> None:
        """RESULT (hash of the result), then a checkpoint countersigned by survivors."""
        digest = hashlib.sha256(canonical_bytes(_plain(dict(result)))).hexdigest()
        self._log.append(EventKind.RESULT, self._coordinator, {
            "run_id": self.run_id, "result_kind": kind, "result_hash": digest})
        self.close(survivors)

    def parties(self) -> list[Identity]:
        """Every identity of the run (to scan artefacts for their key material)."""
        return [self._coordinator, *self._site_identities.values()]

    def site_log_paths(self) -> list[Path]:
        return [trail_paths(self.path, n)[0] for n in self._sites]


def _run_start(path: Path, coordinator: Identity, registry: Registry,
               site_names: Sequence[str], model: str, config: Mapping[str, Any],
               protection: Mapping[str, Any],
               key_origin: str = "consortium") -> tuple[AuditLog, str, list[dict]]:
    """Create the coordinator's log with its RUN_START entry; the log, run id and layers."""
    run_id = secrets.token_hex(16)
    log = AuditLog.create(path)
    layers = [_plain(dict(protection))]
    config_hash = hashlib.sha256(canonical_bytes(_plain(dict(config)))).hexdigest()
    log.append(EventKind.RUN_START, coordinator, run_start_payload(
        run_id=run_id, study_config_hash=config_hash, model=model,
        protection={"layers": layers}, registry=registry, sites=list(site_names), budget={},
        key_origin=key_origin))
    return log, run_id, layers


def _plain(value: Any) -> Any:
    """JSON-like structure with floats as repr strings (canonical hashing)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, float | np.floating):
        return repr(float(value))
    if isinstance(value, np.integer):
        return int(value)
    if value is None or isinstance(value, bool | int | str):
        return value
    return str(value)


def describe_protection(protection) -> dict:
    """The public parameters of a protection layer, for RUN_START."""
    out: dict = {"name": protection.name}
    for attr in ("bound", "neighbours", "threshold", "min_contributors"):
        value = getattr(protection, attr, None)
        if value is not None:
            out[attr] = value
    return out
