"""Carry a site's secure-aggregation run and round between ClientApp processes.

Flower starts a fresh ClientApp process for every message, so a site's
state machine cannot stay in memory between protocol stages, nor its run's
keys between rounds. Both are kept in the ClientApp's ``Context.state``,
which the site's own SuperNode holds for the Flower run (they never leave the
site's machine): :func:`export_run` / :func:`restore_run` for the run
(:class:`~protocols.secagg_run.SiteRun`: its pair keys, last round, alive
list, whether it has ended) and :func:`export_site` / :func:`restore_site`
for the open round.

This module only moves state; every protocol step and every check (the run
id, the round order, the roster) still runs in ``protocols.secagg_site`` and
``protocols.secagg_run``. It reads the state machine's private attributes:
:data:`CARRIED` lists them and :func:`export_site` refuses a ``SecAggSite``
that has others, so a change to the protocol code cannot silently lose state.
"""

from __future__ import annotations

import dataclasses
import json
import struct
from collections.abc import Mapping

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from protocols.errors import ProtocolError
from protocols.primitives import AgreementKey
from protocols.secagg_config import SecAggConfig
from protocols.secagg_messages import AdvertiseKeys
from protocols.secagg_run import SiteRun
from protocols.secagg_site import SecAggSite, SiteStage
from protocols.shamir import PRIME, SHARE_BYTES, Share

__all__ = ["CARRIED", "StateError", "export_run", "restore_run", "export_site", "restore_site"]

#: Attributes rebuilt from public parameters, the site's own key files and its run.
REBUILT = frozenset({"site_id", "_config", "_identity", "_roster", "_server_key", "_holders",
                     "_run"})
#: Attributes carried between processes (the round's secrets and progress).
CARRIED = frozenset({"_stage", "_self_seed", "_held", "_share_keys_by_peer", "_alive",
                     "_revealed"})
_RUN_FIELDS = frozenset(f.name for f in dataclasses.fields(SiteRun))


class StateError(RuntimeError):
    """The saved state does not fit this version of the protocol code."""


def _hex(data: bytes | None) -> str | None:
    return None if data is None else data.hex()


def _unhex(text: str | None) -> bytes | None:
    return None if text is None else bytes.fromhex(text)


def _key(key: AgreementKey | None) -> str | None:
    return None if key is None else key.private_bytes_for_sharing().hex()


def _agreement_key(text: str | None) -> AgreementKey | None:
    return None if text is None else AgreementKey.from_private_bytes(bytes.fromhex(text))


_HEADER = struct.Struct(">I")


def _pack(state: dict, records: Mapping[int, bytes]) -> bytes:
    """``len ‖ JSON of the small fields ‖ (id ‖ fixed-size record)*``: per-peer keys and
    shares travel as raw bytes (a run holds several per neighbour; JSON of hex is slow)."""
    head = json.dumps(state, sort_keys=True).encode()
    body = b"".join(struct.pack(">q", v) + record for v, record in sorted(records.items()))
    return _HEADER.pack(len(head)) + head + body


def _unpack(data: bytes, width_of) -> tuple[dict, dict[int, memoryview]]:
    view = memoryview(data)
    (size,) = _HEADER.unpack_from(view, 0)
    state = json.loads(bytes(view[4 : 4 + size]))
    width = 8 + width_of(state)
    body = view[4 + size :]
    if width == 8 and len(body):
        raise ValueError("records without a layout")
    if width > 8 and len(body) % width:
        raise ValueError("truncated records")
    records = {}
    for start in range(0, len(body), width) if width > 8 else ():
        records[struct.unpack_from(">q", body, start)[0]] = body[start + 8 : start + width]
    return state, records


def export_run(run: SiteRun) -> bytes:
    """The site's run state as bytes (secret: store it only at the site).

    Small fields are JSON; each neighbour's advertised keys and the run's two
    pair keys follow as a 136-byte record (or 64 bytes before agreement).
    """
    if set(vars(run)) != _RUN_FIELDS:
        raise StateError("SiteRun changed shape; update securefed.transport.secagg_state")
    state = {
        "site_id": run.site_id, "run_session": run.run_session.hex(),
        "run_sites": list(run.run_sites), "cipher_key": _key(run.cipher_key),
        "mask_key": _key(run.mask_key), "advertisement": run.advertisement.hex(),
        "keyed": run.peer_keys is not None,
        "last_round": run.last_round,
        "alive": None if run.alive is None else list(run.alive),
        "active": run.active, "closed": run.closed,
    }
    records = {}
    for v, keys in (run.peer_keys or {}).items():
        pair = run.share_keys.get(v, bytes(32)) + run.mask_keys.get(v, bytes(32))
        records[v] = keys.cipher_public + keys.mask_public + pair
    return _pack(state, records)


def restore_run(data: bytes) -> SiteRun:
    """Rebuild the run saved by :func:`export_run`."""
    try:
        state, records = _unpack(data, lambda st: 128 if st["keyed"] else 0)
        site_id = int(state["site_id"])
        peers = {v: AdvertiseKeys(bytes(r[:32]), bytes(r[32:64])) for v, r in records.items()}
        others = [v for v in records if v != site_id]
        return SiteRun(
            site_id=site_id, run_session=bytes.fromhex(state["run_session"]),
            run_sites=tuple(int(v) for v in state["run_sites"]),
            cipher_key=_agreement_key(state["cipher_key"]),
            mask_key=_agreement_key(state["mask_key"]),
            advertisement=bytes.fromhex(state["advertisement"]),
            peer_keys=peers if state["keyed"] else None,
            share_keys={v: bytes(records[v][64:96]) for v in others},
            mask_keys={v: bytes(records[v][96:128]) for v in others},
            last_round=None if state["last_round"] is None else int(state["last_round"]),
            alive=None if state["alive"] is None else tuple(int(v) for v in state["alive"]),
            active=None if state["active"] is None else int(state["active"]),
            closed=bool(state["closed"]))
    except (KeyError, TypeError, ValueError, struct.error, ProtocolError) as exc:
        raise StateError(f"saved secure-aggregation run is unreadable: {exc}") from None


def export_site(site: SecAggSite) -> bytes:
    """The site's round state as bytes (its run goes through :func:`export_run`).

    Per holder: its Shamir share of this round's self-mask (x, 33-byte value)
    and, until the masked input is sent, the round's share-encryption key.
    """
    present = set(vars(site))
    if present != REBUILT | CARRIED:
        raise StateError("SecAggSite changed shape; update securefed.transport.secagg_state "
                         f"(unknown: {sorted(present - REBUILT - CARRIED)}, "
                         f"missing: {sorted(REBUILT | CARRIED - present)})")
    keyed = bool(site._share_keys_by_peer)
    state = {
        "stage": site._stage.value,
        "self_seed": _hex(site._self_seed),
        "keys": keyed,
        "alive": None if site._alive is None else list(site._alive),
        "revealed": {str(v): kind for v, kind in site._revealed.items()},
    }
    records = {}
    for v, share in site._held.items():
        key = site._share_keys_by_peer.get(v, bytes(32)) if keyed else b""
        records[v] = struct.pack(">q", share.x) + share.value_bytes() + key
    for v, key in site._share_keys_by_peer.items():
        if v not in site._held:
            records[v] = struct.pack(">q", 0) + bytes(SHARE_BYTES) + key
    return _pack(state, records)


def restore_site(data: bytes, run: SiteRun, site_id: int, config: SecAggConfig,
                 identity: Ed25519PrivateKey, roster: Mapping[int, Ed25519PublicKey],
                 server_key: Ed25519PublicKey) -> SecAggSite:
    """Rebuild the open round saved by :func:`export_site`, inside its restored run."""
    if run.active != config.round_id or run.closed:
        raise StateError("no open secure-aggregation round of this id at this site")
    try:
        state, records = _unpack(data, lambda st: 8 + SHARE_BYTES + (32 if st["keys"] else 0))
        run.active = None  # re-admitted by the constructor: the same checks as at the start
        site = SecAggSite(site_id, config, identity, roster, server_key, run=run)
        site._stage = SiteStage(state["stage"])
        site._self_seed = _unhex(state["self_seed"])
        held, keys = {}, {}
        for v, record in records.items():
            x = struct.unpack_from(">q", record, 0)[0]
            if x:  # checked to be a field element when it arrived; checked again here
                y = int.from_bytes(record[8 : 8 + SHARE_BYTES], "big")
                if y >= PRIME:
                    raise ValueError("a saved share is not a field element")
                held[v] = Share(x, y)
            if state["keys"]:
                keys[v] = bytes(record[8 + SHARE_BYTES :])
        site._held = held
        site._share_keys_by_peer = {v: k for v, k in keys.items() if v != site_id}
        site._alive = None if state["alive"] is None else tuple(int(v) for v in state["alive"])
        site._revealed = {int(v): str(kind) for v, kind in state["revealed"].items()}
    except (KeyError, TypeError, ValueError, struct.error, ProtocolError) as exc:
        raise StateError(f"saved secure-aggregation state is unreadable: {exc}") from None
    return site
