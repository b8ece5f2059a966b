"""Carry a :class:`~protocols.secagg_site.SecAggSite` between ClientApp processes.

Flower starts a fresh ClientApp process for every message, so a site's
one-round state machine cannot stay in memory between protocol stages. Its
round secrets are kept in the ClientApp's ``Context.state``, which the site's
own SuperNode holds in memory for the run (they never leave the site's
machine), and the state machine is rebuilt from them at the next stage.

This module only moves state; every protocol step still runs in
``protocols.secagg_site``. It reads the state machine's private attributes:
:data:`CARRIED` lists them and :func:`export_site` refuses a ``SecAggSite``
that has others, so a change to the protocol code cannot silently lose
state. (The clean fix is a ``SecAggSite.export_state`` / ``restore_state``
pair in ``protocols``; until then this adapter is the only reader.)
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from protocols.errors import ProtocolError
from protocols.primitives import AgreementKey
from protocols.secagg_config import SecAggConfig
from protocols.secagg_messages import AdvertiseKeys
from protocols.secagg_site import SecAggSite, SiteStage
from protocols.shamir import Share

__all__ = ["CARRIED", "StateError", "export_site", "restore_site"]

#: Attributes rebuilt from public parameters and the site's own key files.
REBUILT = frozenset({"site_id", "_config", "_identity", "_roster", "_server_key", "_holders"})
#: Attributes carried between processes (the round's secrets and progress).
CARRIED = frozenset({"_stage", "_cipher_key", "_mask_key", "_self_seed", "_peer_keys", "_held",
                     "_share_keys_by_peer", "_alive", "_advertisement", "_revealed"})


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


def export_site(site: SecAggSite) -> bytes:
    """The site's round state as JSON bytes (secret: store it only at the site)."""
    present = set(vars(site))
    if present != REBUILT | CARRIED:
        raise StateError("SecAggSite changed shape; update securefed.transport.secagg_state "
                         f"(unknown: {sorted(present - REBUILT - CARRIED)}, "
                         f"missing: {sorted(REBUILT | CARRIED - present)})")
    state = {
        "stage": site._stage.value,
        "cipher_key": _key(site._cipher_key),
        "mask_key": _key(site._mask_key),
        "self_seed": _hex(site._self_seed),
        "peer_keys": {str(v): [k.cipher_public.hex(), k.mask_public.hex()]
                      for v, k in site._peer_keys.items()},
        "held": {str(v): [a.x, a.value_bytes().hex(), b.x, b.value_bytes().hex()]
                 for v, (a, b) in site._held.items()},
        "share_keys_by_peer": {str(v): k.hex() for v, k in site._share_keys_by_peer.items()},
        "alive": None if site._alive is None else list(site._alive),
        "advertisement": site._advertisement.hex(),
        "revealed": {str(v): kind for v, kind in site._revealed.items()},
    }
    return json.dumps(state, sort_keys=True).encode()


def restore_site(data: bytes, site_id: int, config: SecAggConfig, identity: Ed25519PrivateKey,
                 roster: Mapping[int, Ed25519PublicKey],
                 server_key: Ed25519PublicKey) -> SecAggSite:
    """Rebuild the state machine saved by :func:`export_site` for the same round."""
    try:
        state = json.loads(data)
        site = SecAggSite(site_id, config, identity, roster, server_key)
        site._stage = SiteStage(state["stage"])
        site._cipher_key = _agreement_key(state["cipher_key"])
        site._mask_key = _agreement_key(state["mask_key"])
        site._self_seed = _unhex(state["self_seed"])
        site._peer_keys = {int(v): AdvertiseKeys(bytes.fromhex(c), bytes.fromhex(m))
                           for v, (c, m) in state["peer_keys"].items()}
        site._held = {int(v): (Share.from_value_bytes(xa, bytes.fromhex(ya)),
                               Share.from_value_bytes(xb, bytes.fromhex(yb)))
                      for v, (xa, ya, xb, yb) in state["held"].items()}
        site._share_keys_by_peer = {int(v): bytes.fromhex(k)
                                    for v, k in state["share_keys_by_peer"].items()}
        site._alive = None if state["alive"] is None else tuple(int(v) for v in state["alive"])
        site._advertisement = bytes.fromhex(state["advertisement"])
        site._revealed = {int(v): str(kind) for v, kind in state["revealed"].items()}
    except (KeyError, TypeError, ValueError, ProtocolError) as exc:
        raise StateError(f"saved secure-aggregation state is unreadable: {exc}") from None
    return site
