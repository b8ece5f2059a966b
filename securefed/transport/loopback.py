"""In-process runs through the one site runtime: Flower's messages, delivered in memory.

``securefed fit``, ``bfi`` and ``run`` simulate every site in one process.
They run through the same code a deployment runs: the coordinator's
:class:`~securefed.transport.flower_server.FlowerEngine` sends each round's
messages (JSON calls, protocol bytes; the records Flower carries, see
:mod:`securefed.transport.messages`) and each simulated site answers with the
site runtime's handler (:func:`securefed.transport.site_runtime.handle`, the
one a SuperNode's ClientApp runs), its own identity key, its
own registry copy and its own policy (:mod:`securefed.policy`), so every
check a site makes over Flower it makes here. Only the network is missing.

Each site's rows stay in this module's store (:func:`held_site`); the
handler finds them through the node config key ``held-site`` instead of a
data file, and keeps the prepared :class:`~securefed.site.Site` between
messages (a SuperNode's fresh process per message rebuilds it instead; the
result is the same, warm starts aside).

:func:`policy_from_flags` is the policy the CLI writes for its simulated
sites: the layers and secure-aggregation floors the user asked for; the
disclosure rules of a real site's policy are off (whoever runs the CLI holds
every row already).
"""

from __future__ import annotations

import itertools
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from securefed.policy.model import SitePolicy, policy_text
from securefed.policy.record import MemoryReleaseRecord
from securefed.site import Site
from securefed.transport import site_runtime
from securefed.transport.messages import Node, NodeContext, SiteMessage

if TYPE_CHECKING:
    from securefed.audit_trail import AuditTrail

__all__ = ["HELD_KEY", "held_site", "loopback_rounds", "policy_from_flags", "LoopbackGrid"]

HELD_KEY = "held-site"
_HELD: dict[str, tuple[Site, list[str]]] = {}  # token -> (the site, setup calls applied)


def held_site(token: str, setup: list[str]) -> Site:
    """The held site of ``token`` with exactly the setup calls ``setup`` applied."""
    from securefed.transport.calls import apply_call, parsed_call

    site, applied = _HELD[token]
    start = len(applied) if applied == setup[:len(applied)] else 0  # a replaced setup call:
    for text in setup[start:]:  # apply them all again (each one rebuilds what it prepares)
        apply_call(site, parsed_call(text))
    _HELD[token] = (site, list(setup))
    return site


#: the stages a site simulated to drop out at a phase no longer answers (as
#: :func:`protocols.secagg.secure_sum` simulates them in the coordinator's process)
_SILENT_FROM = {
    "after-key-exchange": ("share_keys", "masked_input", "consistency", "unmask"),
    "after-key-sharing": ("masked_input", "consistency", "unmask"),
    "after-masked-input": ("consistency", "unmask"),
    "during-unmask": ("unmask",),
}


class LoopbackGrid:
    """The runtime's grid whose nodes are the simulated sites, served by the site handler."""

    def __init__(self, configs: Mapping[str, dict], drop: Any = None,
                 privacy: Any = None) -> None:
        # each simulated site keeps its parsed keys, its guard and an in-memory release
        # record between messages (the CLI wrote its policy; its record dies with the run);
        # under DP it draws its noise from its in-process privacy object's source
        self.contexts = {}
        for k, (name, config) in enumerate(configs.items()):
            resident: dict[str, Any] = {site_runtime.MEMORY_RECORD: MemoryReleaseRecord()}
            if privacy is not None and name in privacy.sites:
                resident[site_runtime.DP_NOISE] = privacy.sites[name].noise_source()
            self.contexts[1000 + k] = NodeContext(config, resident=resident)
        self.names = dict(zip(self.contexts, configs, strict=True))
        self.site_seconds = 0.0
        self.protection_seconds = 0.0
        self._ids = itertools.count()
        self._replies: dict[str, SiteMessage] = {}
        #: the protection's simulated dropouts (``protocols.stack.DropPlan``), and the round
        self.drop = drop
        self.round_id = 0

    def _silent(self, name: str, stage: str) -> bool:
        """True if ``name`` has left the round by ``stage`` (a simulated dropout)."""
        drop = self.drop
        if drop is None or drop.round_id != self.round_id or name not in drop.sites:
            return False
        return stage in _SILENT_FROM[drop.phase]

    def nodes(self) -> list[Node]:
        return [Node(n, name) for n, name in self.names.items()]

    def push(self, messages: Sequence[SiteMessage], ttl: float = 0.0) -> list[str]:
        ids = []
        for message in messages:
            message = replace(message, message_id=f"loopback-{next(self._ids)}")
            stage = str((message.record or {}).get("stage"))
            ids.append(message.message_id)
            if self._silent(self.names[message.node_id], stage):
                continue  # it never answers: the engine's dropout recovery takes over
            opening = stage == "open"
            started = time.perf_counter()
            self._replies[message.message_id] = site_runtime.handle(
                message, self.contexts[message.node_id])
            seconds = time.perf_counter() - started
            if opening:  # the site computes its vector (and advertises its keys)
                self.site_seconds += seconds
            else:  # the site's protocol steps
                self.protection_seconds += seconds
        return ids

    def pull(self, message_ids: Sequence[str]) -> list[SiteMessage]:
        return [self._replies.pop(i) for i in list(message_ids) if i in self._replies]


def policy_from_flags(protection: Any, key_holder: str = "keyholder") -> SitePolicy:
    """The simulated sites' policy: the user's layer and floors, disclosure rules off
    (under ``...,dp`` every round must carry its DP terms)."""
    layer = getattr(getattr(protection, "inner", protection), "name", "none")
    secagg = layer == "secagg"
    return SitePolicy(
        layers=(layer,), min_sites=1, key_holder=key_holder,
        dp_required=getattr(protection, "privacy", None) is not None,
        min_threshold=int(getattr(protection, "threshold", None) or 2) if secagg else 2,
        min_contributors=int(getattr(protection, "min_contributors", 1)) if secagg else 1,
        max_abs_beta=1e300, log_sd_min=-700.0, log_sd_max=700.0, max_rounds=10**12,
        max_bins=10**9, min_cell_count=1, min_records=1, min_effective_records=0.0)


def _key_holder_name(sites: Mapping[str, Any]) -> str:
    name = "keyholder"
    while name in sites:
        name += "-k"
    return name


def _privacy_config(root: Path, name: str, privacy: Any) -> dict:
    """A simulated site's own budget and ledger: the run's options; its ledger starts as the
    in-process ledger of ``--privacy-ledger`` (its earlier runs count), copied."""
    options = privacy.options
    ledger = root / "privacy" / f"site-{name}.privacy.json"
    ledger.parent.mkdir(mode=0o700, exist_ok=True)
    if options.ledger_dir is not None:
        earlier = Path(options.ledger_dir) / ledger.name
        if earlier.exists():
            shutil.copyfile(earlier, ledger)
    return {"privacy-epsilon": repr(float(options.epsilon)),
            "privacy-delta": repr(float(options.delta)), "privacy-ledger": str(ledger),
            "privacy-required": "true"}


def _key_holder_config(root: Path, name: str, protection: Any) -> dict:
    """The simulated CKKS key holder's node: a fresh key pair in the run's folder."""
    from securefed.transport.ckks_keys import generate

    secret, _ = generate(root / "ckks")
    return {"site-name": name, "identity-key": str(root / f"{name}.key"),
            "registry": str(root / "registry.json"), "ckks-key": str(secret),
            "ckks-ledger": str(root / "ckks" / "decrypted-rounds"),
            "ckks-min-contributors": str(int(protection.min_contributors))}


def _engine_layer(protection: Any) -> Any:
    """The layer's public parameters for the engine: ``ckks`` holds no key there."""
    if getattr(protection, "name", None) != "ckks":
        return protection
    from securefed.transport.flower_ckks import RemoteCkksSum

    return RemoteCkksSum(bound=float(protection.bound),
                         min_contributors=int(protection.min_contributors))


class _Rounds:
    """:class:`~securefed.transport.flower_rounds.FlowerRounds` that reports the sites' time."""

    def __init__(self, engine, grid: LoopbackGrid) -> None:
        from securefed.transport.flower_rounds import FlowerRounds

        self._rounds = FlowerRounds(engine)
        self._grid = grid

    def setup(self, compute, site_names) -> None:
        self._rounds.setup(compute, site_names)

    def variable_reports(self, formula, site_names, *, audit=None) -> dict:
        return self._rounds.variable_reports(formula, site_names, audit=audit)
    def countersign(self, request, log_lines, site_names) -> list:
        return self._rounds.countersign(request, log_lines, site_names)

    def aggregate(self, purpose, compute, site_names, round_id, *, dp=None, audit=None):
        self._grid.round_id = round_id
        before = (self._grid.site_seconds, self._grid.protection_seconds)
        result = self._rounds.aggregate(purpose, compute, site_names, round_id, dp=dp,
                                        audit=audit)
        result.details["seconds_sites"] = self._grid.site_seconds - before[0]
        result.details["seconds_site"] = self._grid.protection_seconds - before[1]
        return result


@contextmanager
def loopback_rounds(sites: Mapping[str, Site], protection: Any,
                    policy: SitePolicy | None = None,
                    trail: AuditTrail | None = None) -> Iterator[_Rounds]:
    """Rounds over simulated sites, each served by the ClientApp handler.

    ``sites``: each site (its rows never leave the object); ``protection``:
    ``none``, ``secagg`` or ``ckks`` (the engine's layer; under ``ckks`` a simulated key
    holder node with a fresh key pair decrypts, as its SuperNode would); ``policy``:
    every site's policy (default :func:`policy_from_flags`). Keys, registry and
    policy live in a temporary folder removed on exit. ``trail``: the run's audit trail; the
    parties then sign with its identities, each site logs its releases in its own
    log beside the trail's (node config ``audit-trail``) and countersigns the
    checkpoints through its runtime, exactly as a SuperNode does.
    """
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from securefed.keys import COORDINATOR, Identity, Registry
    from securefed.transport.flower_server import FlowerEngine, StageTimeouts

    ckks = getattr(protection, "name", None) == "ckks"
    privacy = getattr(protection, "privacy", None)
    holder = _key_holder_name(sites)
    policy = policy or policy_from_flags(protection, holder)
    tokens = []
    shm = Path("/dev/shm")  # keys and records of a simulation: memory, not disk, if we can
    where = str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None
    with tempfile.TemporaryDirectory(prefix="securefed-loopback-", dir=where) as folder:
        root = Path(folder)
        if trail is None:
            parties = [Identity.generate(COORDINATOR), *(Identity.generate(n) for n in sites)]
            extra = [Identity.generate(holder)] if ckks else []
            registry = Registry.of(*parties, *extra)
        elif ckks:  # its RUN_START names a registry without the key holder a site would need
            raise ValueError("an audited in-process ckks run does not go through the site "
                             "runtime yet")
        else:
            parties = [trail.coordinator, *(trail.site_identity(n) for n in sites)]
            registry, extra = trail.registry, []
        registry.save(root / "registry.json")
        for party in extra:
            party.save_private_key(root / f"{party.name}.key")
        from securefed.level_sketch import LEVEL_KEY, new_level_key

        level_key = new_level_key(root / "level.key")  # the sites' key, not the engine's
        configs = {}
        # one file for the one policy the CLI writes for all its simulated sites (parsed once);
        # each site's record is its own, in memory (LoopbackGrid)
        (root / "policy.toml").write_text(policy_text(policy.with_record_dir(
            root / "releases")), encoding="utf-8")
        for party in parties[1:]:
            name = party.name
            party.save_private_key(root / f"{name}.key")
            token = secrets.token_hex(8)
            _HELD[token] = (sites[name], [])
            tokens.append(token)
            configs[name] = {"site-name": name, HELD_KEY: token,
                             "identity-key": str(root / f"{name}.key"),
                             "registry": str(root / "registry.json"),
                             "policy": str(root / "policy.toml"), LEVEL_KEY: str(level_key),
                             **({} if trail is None else {"audit-trail": str(trail.path)}),
                             **({"ckks-key-holder": holder} if ckks else {}),
                             **({} if privacy is None else _privacy_config(root, name, privacy))}
        if ckks:
            configs[holder] = _key_holder_config(root, holder, protection)
        grid = LoopbackGrid(configs, getattr(protection, "drop", None), privacy)
        key = Ed25519PrivateKey.from_private_bytes(parties[0].export_private_key_raw())
        # every reply is there when push returns: a stage closes at once, a silent
        # (dropped) site is noticed without waiting
        engine = FlowerEngine(grid, key, registry, _engine_layer(protection),
                              StageTimeouts(0.0, 0.0, 0.0), key_holder=holder if ckks else None)
        rounds = _Rounds(engine, grid)
        if trail is not None:
            trail.countersign_through(rounds.countersign)
        try:
            yield rounds
        finally:
            for token in tokens:
                _HELD.pop(token, None)
