"""A site's Flower ClientApp: its ``Site`` and its half of secure aggregation.

The SuperNode's node config says who the site is and where its files are::

    flower-supernode ... --node-config 'site-name="A" data-path="/data/a.csv"
        identity-key="/keys/A.key" registry="/keys/registry.json"'

* ``data-path``: the site's rows (CSV); they never leave this process.
* ``identity-key``: the site's Ed25519 signing key (``securefed keygen``, mode 0600).
* ``registry``: the consortium's public keys, the coordinator's included; the
  site trusts only these, never keys sent by the coordinator.
* ``audit-dir`` (needed when the coordinator keeps an audit trail): the folder
  of the site's own audit log and salts (:mod:`securefed.transport.site_audit`).
* ``ckks-key-holder`` (optional, default ``"keyholder"``): the party whose
  signature a CKKS public context must carry (:mod:`~securefed.transport.flower_ckks`).
* ``policy`` (optional): the site's policy file (``securefed site init``,
  ``docs/site_policy.md``); every round is checked against it before the site
  computes, and every vector before it leaves (:mod:`securefed.policy.guard`).
  Without it the safe default applies, recording releases in ``record-dir``
  (default ``securefed-releases`` beside the data file).
* ``expect-fingerprint`` (optional): the registry fingerprint the consortium
  agreed on (64 hex, ``securefed keygen`` prints it); the site refuses to take
  part if its ``registry`` file differs, and refuses any audited run started under
  a registry other than its own (:func:`~securefed.transport.site_audit.check_registry`).

A node whose config has ``ckks-key`` (the path of a secret CKKS context) is
the CKKS key holder instead of a site: it holds no data and serves only the
key holder's stages (optional ``ckks-ledger``, ``ckks-min-contributors``).

Flower starts a fresh process for every message, so everything that must last
between messages is kept in ``Context.state`` (held by the site's own
SuperNode): the setup calls to replay on the freshly loaded ``Site``, and the
current round's secure-aggregation state (:mod:`securefed.transport.secagg_state`).
Vectors are produced only by :func:`securefed.transport.release.release`.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from securefed.transport.flower_wire import RECORD, RoundParams, Stage

__all__ = ["client_app", "handle"]

client_app = ClientApp()
_STATE = "securefed"


@client_app.query("securefed")
def handle(message: Message, context: Context) -> Message:
    """Serve one stage; a failure is answered with a refusal code (:mod:`.refusal`)."""
    request: ConfigRecord | dict = {}
    try:
        request = message.content[RECORD]
        reply = _serve(Stage(str(request["stage"])), request, context)
    except Exception as exc:  # a refusal travels back as a code and a fixed message only
        from securefed.transport.refusal import log_refusal, refusal_reply

        code, reply = refusal_reply(exc)
        log_refusal(code, request, _state(context), context.node_config)
    return Message(RecordDict({RECORD: ConfigRecord(reply)}), reply_to=message)


def _state(context: Context) -> ConfigRecord:
    if _STATE not in context.state.config_records:
        context.state.config_records[_STATE] = ConfigRecord({"setup": [""]})
    return context.state.config_records[_STATE]


def _serve(stage: Stage, request: ConfigRecord, context: Context) -> dict:
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


def _site_identity(context: Context):
    from securefed.keys import Identity
    from securefed.transport.file_cache import load_cached

    return load_cached(_node(context, "identity-key"), Identity.load, _node(context, "site-name"))


def _countersign(checkpoint: dict, log_text: str, context: Context) -> dict:
    from securefed.keys import Registry
    from securefed.transport.site_audit import countersign

    signature = countersign(_node(context, "audit-dir"), _site_identity(context), checkpoint,
                            log_text, Registry.load(_node(context, "registry")),
                            context.node_config)
    return {"countersignature": json.dumps(signature, sort_keys=True)}


def _variable_report(formula: str, roster: list, context: Context,
                     audit: dict | None = None) -> dict:
    """The factor-levels round: this site's variable report, if its policy lets it leave."""
    if not isinstance(roster, list) or not all(isinstance(n, str) for n in roster):
        raise ValueError("the roster must be a list of site names")
    _check_registry(context, audit)
    report = _guard(context).report(_load_site(context), formula, roster)
    return {"report": json.dumps(report, sort_keys=True, allow_nan=False)}


def _node(context: Context, key: str) -> str:
    try:
        return str(context.node_config[key])
    except KeyError:
        raise KeyError(f"node config has no {key!r}") from None


def _load_site(context: Context):
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


def _keep_setup(texts: list[str], context: Context) -> None:
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


def _identity(context: Context):
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


def _keys(params: RoundParams, context: Context):
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


def _key_holder_node(context: Context):
    from securefed.transport.flower_ckks import DEFAULT_FLOOR, KeyHolderNode

    private, registry, _ = _identity(context)
    secret = Path(_node(context, "ckks-key"))
    ledger = Path(str(context.node_config.get("ckks-ledger", f"{secret}.rounds")))
    floor = int(context.node_config.get("ckks-min-contributors", DEFAULT_FLOOR))
    return KeyHolderNode(_node(context, "site-name"), private, registry, secret, ledger, floor)


def _guard(context: Context):
    """This site's policy guard, from its node config and its own registry."""
    from securefed.keys import Registry
    from securefed.policy.guard import SiteGuard
    from securefed.transport.file_cache import load_cached

    registry = load_cached(_node(context, "registry"), Registry.load)
    return SiteGuard.from_node_config(context.node_config, registry.parties)


def _dp_query(dp_text: str):
    from securefed.transport.site_privacy import query_from_json

    return query_from_json(dp_text)[0] if dp_text else None


def _check_registry(context: Context, audit: dict | None) -> None:
    """Before anything is computed: the site's registry is its pinned one, and the run's."""
    from securefed.keys import Registry
    from securefed.transport.file_cache import load_cached
    from securefed.transport.site_audit import check_registry

    check_registry(load_cached(_node(context, "registry"), Registry.load), context.node_config,
                   None if audit is None else audit.get("registry_fingerprint"))


def _site_dp(context: Context, dp_text: str, params: RoundParams):
    """This site's DP terms for the round (its own budget; see ``site_privacy``)."""
    from securefed.transport.site_privacy import SiteDp

    return SiteDp.for_round(context.node_config, _node(context, "site-name"), dp_text, params)


def _log_release(context: Context, vector: np.ndarray, params: RoundParams,
                 audit: dict | None, dp) -> dict:
    """Log the vector as it leaves the site in the site's own audit log; the reply field."""
    if audit is None:
        return {}
    from securefed.transport.site_audit import log_release

    return {"release": json.dumps(log_release(
        _node(context, "audit-dir"), _site_identity(context), vector, params.round_id,
        params.purpose, audit, dp.spent), sort_keys=True)}


def _open(params: RoundParams, call_text: str, setup: list[str], context: Context,
          audit: dict | None = None, dp_text: str = "",
          request: ConfigRecord | None = None) -> dict:
    from protocols.errors import EncodingError
    from protocols.secagg_site import SecAggSite
    from securefed.transport.calls import SiteCall
    from securefed.transport.release import local_release, protect, protect_local, release
    from securefed.transport.secagg_state import export_site

    name = _node(context, "site-name")
    _check_registry(context, audit)
    _keep_setup(setup, context)
    call = SiteCall.from_json(call_text)
    guard = _guard(context)  # the site's own policy decides before anything is computed
    admitted = guard.admit(params, call, call_text, list(_state(context)["setup"]),
                           _dp_query(dp_text))
    dp = _site_dp(context, dp_text, params)
    if params.layer == "ckks":  # trust the key before anything is computed or released
        from securefed.transport.flower_ckks import KEY_HOLDER, trusted_context

        private, registry, _ = _identity(context)
        public = trusted_context(params, request or {}, registry,
                                 str(context.node_config.get("ckks-key-holder", KEY_HOLDER)))
    site = _load_site(context)
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
    site = SecAggSite(params.sites[name], params.config(released_length), private, roster,
                      server_key)
    advert = site.advertise_keys()
    state = _state(context)
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


def _step(stage: Stage, key: str, payload: bytes, context: Context) -> dict:
    from protocols.secagg_site import SiteStage
    from securefed.transport.secagg_state import export_site, restore_site

    state = _state(context)
    if "round" not in state or RoundParams.from_json(str(state["round"])).key != key:
        raise ValueError(f"no open round {key} at this site")
    params = RoundParams.from_json(str(state["round"]))
    private, roster, server_key = _keys(params, context)
    site = restore_site(bytes(state["secagg"]), params.sites[_node(context, "site-name")],
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
        if site.stage in (SiteStage.DONE, SiteStage.ABORTED):
            for field in ("round", "length", "vector", "call", "secagg", "dp", "audit"):
                if field in state:
                    del state[field]
        else:
            state["secagg"] = export_site(site)
    return {"payload": out, **logged}
