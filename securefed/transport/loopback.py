"""In-process runs through the one site runtime: Flower's messages, delivered in memory.

``securefed fit``, ``bfi`` and ``run`` simulate every site in one process.
They run through the same code a deployment runs: the coordinator's
:class:`~securefed.transport.flower_server.FlowerEngine` sends each round's
messages (JSON calls, protocol bytes in Flower ``ConfigRecord`` s) and each
simulated site answers with the real ClientApp handler
(:func:`securefed.transport.flower_client.handle`), its own identity key, its
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
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from securefed.policy.model import SitePolicy, policy_text
from securefed.site import Site

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


class LoopbackGrid:
    """A Flower ``Grid`` whose nodes are the simulated sites' ClientApp handlers."""

    def __init__(self, configs: Mapping[str, dict]) -> None:
        from flwr.app import Context, RecordDict

        self.contexts = {1000 + k: Context(run_id=1, node_id=1000 + k, node_config=config,
                                           state=RecordDict(), run_config={})
                         for k, config in enumerate(configs.values())}
        self.names = dict(zip(self.contexts, configs, strict=True))
        self.site_seconds = 0.0
        self.protection_seconds = 0.0
        self._ids = itertools.count()
        self._replies: dict[str, Any] = {}

    def get_nodes(self) -> list[SimpleNamespace]:
        return [SimpleNamespace(node_id=n, name=name) for n, name in self.names.items()]

    def push_messages(self, messages) -> list[str]:
        from securefed.transport.flower_client import handle

        ids = []
        for message in messages:
            message_id = f"loopback-{next(self._ids)}"
            message.metadata.__dict__["_message_id"] = message_id
            opening = message.content["securefed"]["stage"] == "open"
            started = time.perf_counter()
            self._replies[message_id] = handle(message, self.contexts[
                message.metadata.dst_node_id])
            seconds = time.perf_counter() - started
            if opening:  # the site computes its vector (and advertises its keys)
                self.site_seconds += seconds
            else:  # the site's protocol steps
                self.protection_seconds += seconds
            ids.append(message_id)
        return ids

    def pull_messages(self, message_ids) -> list:
        return [self._replies.pop(i) for i in list(message_ids) if i in self._replies]


def policy_from_flags(protection: Any) -> SitePolicy:
    """The simulated sites' policy: the user's layer and floors, disclosure rules off."""
    layer = getattr(protection, "name", "none")
    secagg = layer == "secagg"
    return SitePolicy(
        layers=(layer,), min_sites=1, key_holder="keyholder",
        min_threshold=int(getattr(protection, "threshold", None) or 2) if secagg else 2,
        min_contributors=int(getattr(protection, "min_contributors", 1)) if secagg else 1,
        max_abs_beta=1e300, log_sd_min=-700.0, log_sd_max=700.0, max_rounds=10**12,
        max_bins=10**9, min_cell_count=1, min_records=1, min_effective_records=0.0)


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

    def aggregate(self, purpose, compute, site_names, round_id, *, dp=None, audit=None):
        before = (self._grid.site_seconds, self._grid.protection_seconds)
        result = self._rounds.aggregate(purpose, compute, site_names, round_id, dp=dp,
                                        audit=audit)
        result.details["seconds_sites"] = self._grid.site_seconds - before[0]
        result.details["seconds_site"] = self._grid.protection_seconds - before[1]
        return result


@contextmanager
def loopback_rounds(sites: Mapping[str, Site], protection: Any,
                    policy: SitePolicy | None = None) -> Iterator[_Rounds]:
    """Rounds over simulated sites, each served by the ClientApp handler.

    ``sites``: each site (its rows never leave the object); ``protection``:
    ``secagg`` or ``none`` (the engine's layer); ``policy``: every site's policy (default
    :func:`policy_from_flags`). Keys, registry, policy and release records live
    in a temporary folder removed on exit.
    """
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from securefed.keys import COORDINATOR, Identity, Registry
    from securefed.transport.flower_server import FlowerEngine, StageTimeouts

    policy = policy or policy_from_flags(protection)
    tokens = []
    shm = Path("/dev/shm")  # keys and records of a simulation: memory, not disk, if we can
    where = str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None
    with tempfile.TemporaryDirectory(prefix="securefed-loopback-", dir=where) as folder, \
            _task_identity():
        root = Path(folder)
        parties = [Identity.generate(COORDINATOR), *(Identity.generate(n) for n in sites)]
        registry = Registry.of(*parties)
        registry.save(root / "registry.json")
        configs = {}
        for party in parties[1:]:
            name = party.name
            party.save_private_key(root / f"{name}.key")
            (root / name).mkdir()
            (root / name / "policy.toml").write_text(policy_text(
                policy.with_record_dir(root / name / "releases")), encoding="utf-8")
            token = secrets.token_hex(8)
            _HELD[token] = (sites[name], [])
            tokens.append(token)
            configs[name] = {"site-name": name, HELD_KEY: token,
                             "identity-key": str(root / f"{name}.key"),
                             "registry": str(root / "registry.json"),
                             "policy": str(root / name / "policy.toml"),
                             "record-durable": "false"}
        grid = LoopbackGrid(configs)
        key = Ed25519PrivateKey.from_private_bytes(parties[0].export_private_key_raw())
        engine = FlowerEngine(grid, key, registry, protection, StageTimeouts(60.0, 60.0, 0.0))
        try:
            yield _Rounds(engine, grid)
        finally:
            for token in tokens:
                _HELD.pop(token, None)


@contextmanager
def _task_identity() -> Iterator[None]:
    """Flower's message constructor needs a task identity; a ServerApp sets it, we do here."""
    from flwr.supercore.task_identity import TaskIdentity

    saved = {a: getattr(TaskIdentity, a) for a in ("_run_id", "_node_id", "_task_id")}
    for attr, value in saved.items():
        if value is None:
            setattr(TaskIdentity, attr, 1)
    try:
        yield
    finally:
        for attr, value in saved.items():
            setattr(TaskIdentity, attr, value)
