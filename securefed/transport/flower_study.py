"""The coordinator's ServerApp for a real study: a GLMM or BFI fit over Flower.

``flwr run APP FEDERATION --run-config 'study="/c/study.toml" ...'`` with this
app's ``serverapp = "securefed.transport.flower_study:server_app"`` runs the
study file's model over the SuperNodes registered under its ``[[sites]]``
names (which list names only: each site's data path is in its own node
config), with the study's protection, and writes to its ``[output] dir``::

    result.json   the fit's JSON (as ``securefed run``), plus "model", "study", "transport"
    summary.txt   the text summary
    audit.jsonl   the coordinator's signed log (and audit.registry.json)
    error.txt     instead, if the run stopped: one line saying why

Each site's own audit log is in its node config's ``audit-dir``. Run config:
``study``, ``registry``, ``coordinator-key``; optionally ``wait-seconds``
(for every site to connect, default 120), ``stage-seconds`` (300) and
``grace-seconds`` (60) (:class:`~securefed.transport.flower_server.StageTimeouts`),
and, under ``ckks``, ``ckks-key-holder`` (the key holder's registry name,
default ``keyholder``; it is not a site and must not be listed as one).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

__all__ = ["server_app", "run_study_over_flower"]

server_app = ServerApp()


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    run_study_over_flower(grid, context.run_config)


def run_study_over_flower(grid: Grid, config: Mapping[str, Any], observer=None) -> dict:
    """Run the study named in ``config`` over ``grid``; the result dict (also written).

    ``observer(engine, stage, answered)`` is called after every message
    exchange (the tests use it to stop or kill a site mid-protocol).
    """
    from securefed.errors import InputError
    from securefed.study import load_study

    study = load_study(str(config["study"]), remote=True)
    out = study.output_dir
    out.mkdir(parents=True, exist_ok=True)
    try:
        result = _run(grid, config, study, observer)
    except Exception as exc:
        kind = "" if isinstance(exc, InputError) else f"{type(exc).__name__}: "
        (out / "error.txt").write_text(f"{kind}{exc}\n", encoding="utf-8")
        print(f"securefed: {kind}{exc}", file=sys.stderr)
        raise
    (out / "result.json").write_text(json.dumps(result, indent=2, allow_nan=False) + "\n",
                                     encoding="utf-8")
    return result


def _run(grid: Grid, config: Mapping[str, Any], study, observer) -> dict:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from securefed.audit_keys import check_pinned
    from securefed.audit_trail import AuditTrail, describe_protection
    from securefed.errors import InputError
    from securefed.keys import COORDINATOR, Identity, Registry
    from securefed.protection import build_protection
    from securefed.study import study_protection_json
    from securefed.transport.flower_rounds import FlowerRounds
    from securefed.transport.flower_server import FlowerEngine, StageTimeouts

    started = time.perf_counter()
    names = sorted(s.name for s in study.sites)
    if study.protection.drop_sites:
        study.fail(study.protection_line, "drop_sites simulates dropouts in-process; over "
                   "Flower real sites drop out: remove it")
    protection = build_protection(study.protection, names,
                                  getattr(study.options, "family", None), remote=True)
    key_holder = None
    if protection.name == "ckks":
        from securefed.transport.flower_ckks import KEY_HOLDER

        key_holder = str(config.get("ckks-key-holder", KEY_HOLDER))
        if key_holder in names:
            study.fail(study.protection_line, f"{key_holder!r} is the CKKS key holder; it "
                       "holds no data and is not a site: remove it from [[sites]]")
    identity = Identity.load(str(config["coordinator-key"]), COORDINATOR)
    registry = Registry.load(str(config["registry"]))
    try:  # the study pins the registry its sites agreed on
        check_pinned(registry, study.audit.expect_fingerprint, str(config["registry"]))
    except InputError as err:
        study.fail(study.audit.line, str(err))
    missing = [n for n in (*names, *([key_holder] if key_holder else [])) if n not in registry]
    if missing:
        raise InputError(f"not in the registry {config['registry']}: {missing}")
    timeouts = StageTimeouts(float(config.get("stage-seconds", 300.0)),
                             float(config.get("grace-seconds", 60.0)),
                             float(config.get("poll-seconds", 0.1)))
    try:
        engine = FlowerEngine(grid, Ed25519PrivateKey.from_private_bytes(
            identity.export_private_key_raw()), registry, protection, timeouts,
            key_holder=key_holder)
    except ValueError as exc:  # a stack the Flower engine does not carry
        raise InputError(f"[protection] {exc}") from None
    engine.study_text = study.path.read_text(encoding="utf-8")  # sites may pin its hash
    if observer is not None:
        engine.observer = lambda stage, answered: observer(engine, stage, answered)
    engine.wait_for_sites(names, float(config.get("wait-seconds", 120.0)))
    rounds = FlowerRounds(engine)
    audit = AuditTrail.start_remote(
        study.output_dir / "audit.jsonl", coordinator=identity, registry=registry,
        site_names=names, model=study.kind, config=asdict(study.options),
        protection=describe_protection(protection), countersign=rounds.countersign)
    if study.kind == "cox":
        from securefed.survival_remote import run_cox_remote

        fit = run_cox_remote(study.options, rounds, names, protection=protection, audit=audit,
                             coding=study.status_coding)
    elif getattr(study.options, "baseline", None) is not None:  # BFI, family = "survival"
        from securefed.survival_remote import run_bfi_survival_remote

        fit = run_bfi_survival_remote(study.options, rounds, names, protection=protection,
                                      audit=audit, coding=study.status_coding)
    elif study.kind == "glmm":
        from securefed.glmm_run import run_glmm_remote

        fit = run_glmm_remote(study.options, rounds, names, protection=protection, audit=audit)
    else:
        from securefed.bfi_run import run_bfi_remote

        fit = run_bfi_remote(study.options, rounds, names, protection=protection, audit=audit)
    result = fit.to_dict()
    result["model"] = study.kind
    result["study"] = {"file": str(study.path), "title": study.title,
                       "sites": [{"name": n} for n in names],
                       "protection": study_protection_json(study),
                       "audit_log": "audit.jsonl", "registry": "audit.registry.json",
                       "registry_fingerprint": registry.fingerprint,
                       "key_origin": "consortium"}
    result["transport"] = {"engine": "flower", "exchanges": len(engine.stage_log),
                           "seconds": round(time.perf_counter() - started, 3)}
    (study.output_dir / "summary.txt").write_text(fit.summary() + "\n", encoding="utf-8")
    return result
