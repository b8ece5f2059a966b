"""The site runtime: one site's message handler, in-process and over Flower.

:func:`handle` serves one request (a :class:`~securefed.transport.messages.SiteMessage`)
with the site's own ``Site``, its half of the protection protocol, its policy,
its privacy budget and its audit log. The same function answers a real
SuperNode's messages (:mod:`securefed.transport.flower_client` converts
Flower's ``Message`` at the edge) and the simulated sites of an in-process
run (:mod:`securefed.transport.loopback`), so it needs no Flower.

A node's config (over Flower, the SuperNode's ``--node-config``) says who
the site is and where its files are::

    flower-supernode ... --node-config 'site-name="A" data-path="/data/a.csv"
        identity-key="/keys/A.key" registry="/keys/registry.json"'

* ``data-path``: the site's rows (CSV); they never leave this process.
* ``identity-key``: the site's Ed25519 signing key (``securefed keygen``, mode 0600).
* ``registry``: the consortium's public keys, the coordinator's included; the
  site trusts only these, never keys sent by the coordinator.
* ``audit-dir`` (needed when the coordinator keeps an audit trail): the folder
  of the site's own audit log and salts (:mod:`securefed.transport.site_audit`);
  a simulated site of an in-process run has ``audit-trail`` instead (its log
  beside the coordinator's, as an in-process trail lays them out).
* ``ckks-key-holder`` (optional, default ``"keyholder"``): the party whose
  signature a CKKS public context must carry (:mod:`~securefed.transport.flower_ckks`).
* ``policy`` (optional): the site's policy file (``securefed site init``,
  ``docs/site_policy.md``); every round is checked against it before the site
  computes, and every vector before it leaves (:mod:`securefed.policy.guard`).
  Without it the safe default applies, recording releases in ``record-dir``
  (default ``securefed-releases`` beside the data file).
* ``level-key`` (needed for several random-effects terms over a network): the
  consortium's level key, shared by the sites and never by the coordinator
  (:mod:`securefed.level_sketch`, ``python -m securefed.level_sketch PATH``).
* ``expect-fingerprint`` (optional): the registry fingerprint the consortium
  agreed on (64 hex, ``securefed keygen`` prints it); the site refuses to take
  part if its ``registry`` file differs, and refuses any audited run started under
  a registry other than its own (:func:`~securefed.transport.site_audit.check_registry`).

A node whose config has ``ckks-key`` (the path of a secret CKKS context) is
the CKKS key holder instead of a site: it holds no data and serves only the
key holder's stages (optional ``ckks-ledger``, ``ckks-min-contributors``).

Flower starts a fresh process for every message, so everything that must last
between messages is kept in :attr:`NodeContext.state` (over Flower, a record of
``Context.state``, held by the site's own SuperNode): the setup calls to replay
on the freshly loaded ``Site``, the secure-aggregation run (its pair keys, agreed
once per run) and the current round's state (:mod:`securefed.transport.secagg_state`).
Vectors are produced only by :func:`securefed.transport.release.release`.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from securefed.transport.flower_wire import RoundParams, Stage
from securefed.transport.messages import NodeContext, SiteMessage

__all__ = ["handle", "serve_record"]

Record = Mapping[str, Any]
T = TypeVar("T")
#: ``context.resident`` key of a simulated site's in-memory release record (the loopback's)
MEMORY_RECORD = "memory-release-record"
#: ``context.resident`` key of a simulated site's noise source (the in-process guard's site's)
DP_NOISE = "dp-noise-source"


def handle(message: SiteMessage, context: NodeContext) -> SiteMessage:
    """Serve one stage; a failure is answered with a refusal code (:mod:`.refusal`)."""
    return message.reply(serve_record(message.record or {}, context))


def serve_record(request: Record, context: NodeContext) -> dict:
    """The reply record to ``request``; a refusal (code and fixed message) if it fails."""
    try:
        return _serve(Stage(str(request["stage"])), request, context)
    except Exception as exc:  # a refusal travels back as a code and a fixed message only
        from securefed.transport.refusal import log_refusal, refusal_reply

        code, reply = refusal_reply(exc)
        log_refusal(code, request, _state(context), context.node_config)
        return reply


def _state(context: NodeContext) -> dict[str, Any]:
    """What lasts between messages; ``setup`` starts with "" (a Flower record holds no
    empty list)."""
    if "setup" not in context.state:
        context.state["setup"] = [""]
    return context.state


def _serve(stage: Stage, request: Record, context: NodeContext) -> dict:
    if "ckks-key" in context.node_config:
        from securefed.transport.flower_ckks import serve_key_holder

        return serve_key_holder(stage, request, _key_holder_node(context))
    if stage is Stage.OPEN:
        setup = [str(t) for t in request["setup"]] if "setup" in request else []
        audit = json.loads(str(request["audit"])) if "audit" in request else None
        return _open(RoundParams.from_json(str(request["round"])), str(request["call"]), setup,
                     context, audit, str(request["dp"]) if "dp" in request else "", request)
    if stage is Stage.COUNTERSIGN:
        return _countersign(json.loads(str(request["checkpoint"])), str(request["log"]),
                            context)
    if stage is Stage.REPORT:
        audit = json.loads(str(request["audit"])) if "audit" in request else None
        return _variable_report(str(request["formula"]), json.loads(str(request["sites"])),
                                context, audit)
    return _step(stage, str(request["round_key"]), bytes(request["payload"]), context)


def _kept(context: NodeContext, key: Any, build: Callable[[], T]) -> T:
    """``build()``, kept between messages where the process lasts (``context.resident``)."""
    if context.resident is None:
        return build()
    if key not in context.resident:
        context.resident[key] = build()
    return context.resident[key]


def _site_identity(context: NodeContext):
    from securefed.keys import Identity
    from securefed.transport.file_cache import load_cached

    return _kept(context, "identity", lambda: load_cached(
        _node(context, "identity-key"), Identity.load, _node(context, "site-name")))


def _countersign(checkpoint: dict, log_text: str, context: NodeContext) -> dict:
    from securefed.keys import Registry
    from securefed.transport.site_audit import audit_place, countersign

    signature = countersign(audit_place(context.node_config), _site_identity(context),
                            checkpoint,
                            log_text, Registry.load(_node(context, "registry")),
                            context.node_config)
    return {"countersignature": json.dumps(signature, sort_keys=True)}


def _variable_report(formula: str, roster: list, context: NodeContext,
                     audit: dict | None = None) -> dict:
    """The factor-levels round: this site's variable report, if its policy lets it leave."""
    if not isinstance(roster, list) or not all(isinstance(n, str) for n in roster):
        raise ValueError("the roster must be a list of site names")
    _check_registry(context, audit)
    report = _guard(context).report(_load_site(context), formula, roster)
    return {"report": json.dumps(report, sort_keys=True, allow_nan=False)}


def _node(context: NodeContext, key: str) -> str:
    try:
        return str(context.node_config[key])
    except KeyError:
        raise KeyError(f"node config has no {key!r}") from None


def _load_site(context: NodeContext):
    """This site's ``Site`` with every setup call so far applied again."""
    import pandas as pd

    from securefed.site import Site
    from securefed.transport.calls import SiteCall, apply_call
    from securefed.transport.loopback import HELD_KEY, held_site

    if HELD_KEY in context.node_config:  # an in-process run: the rows are in this process
        return held_site(str(context.node_config[HELD_KEY]),
                         [t for t in _state(context)["setup"] if t])
    site = Site(_node(context, "site-name"), pd.read_csv(Path(_node(context, "data-path"))))
    for text in _state(context)["setup"]:
        if text:
            apply_call(site, SiteCall.from_json(text))
    return site


def _keep_setup(texts: list[str], context: NodeContext) -> None:
    """Remember setup calls; each replaces an earlier call of the same method."""
    from securefed.transport.calls import RemoteCallError, parsed_call

    state = _state(context)
    kept = [t for t in state["setup"] if t]
    for text in texts:
        call = parsed_call(text)
        if call.releases:
            raise RemoteCallError(f"Site.{call.method} releases a vector; it is not setup")
        kept = [t for t in kept if parsed_call(t).method != call.method] + [text]
    state["setup"] = [""] + kept


def _identity(context: NodeContext):
    return _kept(context, "signing", lambda: _load_identity(context))


def _load_identity(context: NodeContext):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from securefed.keys import Identity, Registry, public_key_from_hex
    from securefed.transport.file_cache import load_cached

    name = _node(context, "site-name")
    identity = load_cached(_node(context, "identity-key"), Identity.load, name)
    registry = load_cached(_node(context, "registry"), Registry.load)
    if registry.public_key_hex(name) != identity.public_key_hex:
        raise ValueError(f"the identity key is not the one registered for {name!r}")
    private = Ed25519PrivateKey.from_private_bytes(identity.export_private_key_raw())
    return private, registry, public_key_from_hex


def _keys(params: RoundParams, context: NodeContext):
    from securefed.keys import COORDINATOR

    private, registry, _ = _identity(context)
    roster = {uid: _public_key(registry.public_key_hex(name))
              for name, uid in params.sites.items()}
    return private, roster, _public_key(registry.public_key_hex(COORDINATOR))


@functools.lru_cache(maxsize=4096)
def _public_key(public_key_hex: str):
    """A registry entry as a key object (parsed once per process)."""
    from securefed.keys import public_key_from_hex

    return public_key_from_hex(public_key_hex)


def _key_holder_node(context: NodeContext):
    from securefed.transport.flower_ckks import DEFAULT_FLOOR, KeyHolderNode

    private, registry, _ = _identity(context)
    secret = Path(_node(context, "ckks-key"))
    ledger = Path(str(context.node_config.get("ckks-ledger", f"{secret}.rounds")))
    floor = int(context.node_config.get("ckks-min-contributors", DEFAULT_FLOOR))
    return KeyHolderNode(_node(context, "site-name"), private, registry, secret, ledger, floor)


def _guard(context: NodeContext):
    """This site's policy guard, from its node config and its own registry."""
    from securefed.keys import Registry
    from securefed.policy.guard import SiteGuard
    from securefed.transport.file_cache import load_cached

    def build() -> SiteGuard:
        registry = load_cached(_node(context, "registry"), Registry.load)
        record = None if context.resident is None else context.resident.get(MEMORY_RECORD)
        return SiteGuard.from_node_config(context.node_config, registry.parties, record)

    return _kept(context, "guard", build)


def _dp_query(dp_text: str):
    from securefed.transport.site_privacy import query_from_json

    return query_from_json(dp_text)[0] if dp_text else None


def _check_registry(context: NodeContext, audit: dict | None) -> None:
    """Before anything is computed: the site's registry is its pinned one, and the run's."""
    from securefed.keys import Registry
    from securefed.transport.file_cache import load_cached
    from securefed.transport.site_audit import check_registry

    fingerprint = None if audit is None else audit.get("registry_fingerprint")
    _kept(context, ("registry-checked", repr(fingerprint)), lambda: check_registry(
        load_cached(_node(context, "registry"), Registry.load), context.node_config,
        fingerprint) or True)


def _site_dp(context: NodeContext, dp_text: str, params: RoundParams):
    """This site's DP terms for the round (its own budget; see ``site_privacy``)."""
    from securefed.transport.site_privacy import SiteDp

    rng = None if context.resident is None else context.resident.get(DP_NOISE)
    return SiteDp.for_round(context.node_config, _node(context, "site-name"), dp_text, params,
                            rng)


def _log_release(context: NodeContext, vector: np.ndarray, params: RoundParams,
                 audit: dict | None, dp) -> dict:
    """Log the vector as it leaves the site in the site's own audit log; the reply field."""
    if audit is None:
        return {}
    from securefed.transport.site_audit import audit_place, log_release

    return {"release": json.dumps(log_release(
        audit_place(context.node_config), _site_identity(context), vector, params.round_id,
        params.purpose, audit, dp.spent), sort_keys=True)}


def _open(params: RoundParams, call_text: str, setup: list[str], context: NodeContext,
          audit: dict | None = None, dp_text: str = "",
          request: Record | None = None) -> dict:
    from protocols.errors import EncodingError
    from protocols.secagg_site import SecAggSite
    from securefed.transport.calls import SiteCall
    from securefed.transport.release import local_release, protect, protect_local, release
    from securefed.transport.secagg_state import export_run, export_site

    name = _node(context, "site-name")
    _check_registry(context, audit)
    _keep_setup(setup, context)
    call = SiteCall.from_json(call_text)
    guard = _guard(context)  # the site's own policy decides before anything is computed
    admitted = guard.admit(params, call, call_text, list(_state(context)["setup"]),
                           _dp_query(dp_text),
                           None if request is None or "study" not in request
                           else str(request["study"]))
    dp = _site_dp(context, dp_text, params)
    if params.layer == "ckks":  # trust the key before anything is computed or released
        from securefed.transport.flower_ckks import KEY_HOLDER, trusted_context

        private, registry, _ = _identity(context)
        public = trusted_context(params, request or {}, registry,
                                 str(context.node_config.get("ckks-key-holder", KEY_HOLDER)))
    site = _load_site(context)
    from securefed.transport.calls_multi import attach_level_key

    attach_level_key(site, context.node_config)  # the sites' shared key: never from a call
    vector = release(site, call, params.round_id, params.purpose, dp)
    guard.release(admitted, site, call, vector)  # the policy's last word before it leaves
    # a local DP query: the site noises this vector for itself, keeps it, releases a function
    local = dp.query is not None and dp.query.local_length is not None
    if params.layer == "none":
        vector = protect_local(call, vector, dp) if local else protect(vector, dp)
        return {"vector": vector.astype("<f8").tobytes(), **dp.receipt,
                **_log_release(context, vector, params, audit, dp)}
    released_length = local_release(call)[0] if local else len(vector)
    if not local and len(vector) and float(np.max(np.abs(vector))) > params.bound:
        raise EncodingError(f"a value is above the declared bound {params.bound:.3g}: "
                            "standardise the covariates or raise the bound")
    if params.layer == "ckks":
        from securefed.transport.flower_ckks import encrypt_for_round

        if dp.query is not None:
            raise ValueError("ckks,dp does not run over Flower yet: use secagg,dp")
        return {**encrypt_for_round(params, public, vector, name, private),
                **_log_release(context, vector, params, audit, dp)}
    private, roster, server_key = _keys(params, context)
    run = _secagg_run(params, context)
    site = SecAggSite(params.sites[name], params.config(released_length), private, roster,
                      server_key, run=run)
    # a run's first round advertises its keys; a later one shares this round's b_u at once
    advert = site.advertise_keys() if params.setup else site.share_keys()
    state = _state(context)
    state["secagg_run"] = export_run(site.run)
    state["round"] = params.to_json()
    state["length"] = released_length
    state["vector"] = vector.astype("<f8").tobytes()  # under a local query: what is noised
    state["call"] = call_text
    state["secagg"] = export_site(site)
    state["dp"] = dp_text
    state["audit"] = "" if audit is None else json.dumps(audit, sort_keys=True)
    # under DP the vector that leaves is the noisy one: it is logged when masked
    logged = {} if dp.query is not None else _log_release(context, vector, params, audit, dp)
    return {"length": released_length, "payload": advert, **dp.receipt, **logged}


def _secagg_run(params: RoundParams, context: NodeContext):
    """The run this round belongs to: a new one in a run's first round, else the one
    this site agreed to (refused if it has none of that id: a site never joins late)."""
    from protocols.secagg_run import SiteRun
    from securefed.transport.secagg_state import restore_run

    state = _state(context)
    name = _node(context, "site-name")
    session = (params.run_session or params.session_id).hex()
    used = [str(t) for t in state["secagg_runs"]] if "secagg_runs" in state else []
    if params.setup or params.run_session is None:
        if session in used:
            raise ValueError("this secure-aggregation run was set up at this site before")
        state["secagg_runs"] = [*used[-63:], session]
        return SiteRun.for_config(params.sites[name], params.config(1))
    if "secagg_run" not in state:
        raise ValueError("no secure-aggregation run of this id at this site")
    run = restore_run(bytes(state["secagg_run"]))
    if run.run_session.hex() != session:
        raise ValueError("no secure-aggregation run of this id at this site")
    return run


def _noisy_release(vector: np.ndarray, dp, call_text: str, params: RoundParams) -> np.ndarray:
    """The vector a site masks: noised under its DP query, or (a local query) the function
    of its own noisy copy the call names; refused above the round's bound."""
    from protocols.errors import EncodingError
    from securefed.transport.calls import SiteCall
    from securefed.transport.release import protect, protect_local

    if dp.query is None or dp.query.local_length is None:
        return protect(vector, dp)
    released = protect_local(SiteCall.from_json(call_text), vector, dp)
    if len(released) and float(np.max(np.abs(released))) > params.bound:
        raise EncodingError(f"a value is above the declared bound {params.bound:.3g}")
    return released


def _step(stage: Stage, key: str, payload: bytes, context: NodeContext) -> dict:
    from protocols.secagg_site import SiteStage
    from securefed.transport.secagg_state import export_run, export_site, restore_run, restore_site

    state = _state(context)
    if "round" not in state or RoundParams.from_json(str(state["round"])).key != key:
        raise ValueError(f"no open round {key} at this site")
    params = RoundParams.from_json(str(state["round"]))
    private, roster, server_key = _keys(params, context)
    site = restore_site(bytes(state["secagg"]), restore_run(bytes(state["secagg_run"])),
                        params.sites[_node(context, "site-name")],
                        params.config(int(state["length"])), private, roster, server_key)
    logged: dict = {}
    try:
        if stage is Stage.SHARE_KEYS:
            out = site.share_keys(payload)
        elif stage is Stage.MASKED_INPUT:
            vector = np.frombuffer(bytes(state["vector"]), dtype="<f8")
            if not vector.size or site.stage is not SiteStage.KEYS_SHARED:
                raise ValueError("this round's vector was already released or never computed")
            state["vector"] = b""  # one release per round, even if what follows fails
            dp = _site_dp(context, str(state["dp"]) if "dp" in state else "", params)
            noisy = _noisy_release(vector, dp, str(state["call"]), params)
            out = site.masked_input(payload, noisy)
            if dp.query is not None and str(state["audit"]):
                logged = _log_release(context, noisy, params, json.loads(str(state["audit"])),
                                      dp)
        elif stage is Stage.CONSISTENCY:
            out = site.sign_consistency(payload)
        elif stage is Stage.UNMASK:
            out = site.unmask(payload)
        else:
            raise ValueError(f"stage {stage.value} is not a protocol step")
    finally:
        if stage in (Stage.SHARE_KEYS, Stage.UNMASK) or site.stage is SiteStage.ABORTED:
            state["secagg_run"] = export_run(site.run)  # its keys, last round, or its end
        if site.stage in (SiteStage.DONE, SiteStage.ABORTED):
            for field in ("round", "length", "vector", "call", "secagg", "dp", "audit"):
                if field in state:
                    del state[field]
        else:
            state["secagg"] = export_site(site)
    return {"payload": out, **logged}
