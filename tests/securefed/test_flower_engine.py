"""The Flower engine and ClientApp handler wired through an in-memory grid.

The grid hands each message straight to the ClientApp's handler with that
node's own ``Context`` (as a SuperNode keeps it), so the engine's stage logic,
the sites' refusals and the ``none`` layer are checked in milliseconds; the
real processes, TLS and dropouts are in ``flower/test_flower_study.py``.
"""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.app import Context, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from core_stats.families import GAUSSIAN
from core_stats.formula import DesignSchema
from protocols.errors import AbortError
from protocols.stack import PlaintextSum, SecAggSum
from securefed.keys import Identity, Registry
from securefed.site import GLMMSiteDesign, Site
from securefed.transport.calls import record_call
from securefed.transport.flower_client import handle
from securefed.transport.flower_server import FlowerEngine, SiteRefused, StageTimeouts
from securefed.transport.flower_wire import Stage

SITES = ("A", "B", "C", "D")
DESIGN = GLMMSiteDesign(DesignSchema("y ~ x + (1 | g)"), GAUSSIAN, 1)


class LoopbackGrid:
    """Delivers every message to the named site's handler; ``silent`` sites never answer."""

    def __init__(self, configs: dict[str, dict]) -> None:
        self.contexts = {1000 + k: Context(run_id=1, node_id=1000 + k, node_config=config,
                                           state=RecordDict(), run_config={})
                         for k, config in enumerate(configs.values())}
        self.names = dict(zip(self.contexts, configs, strict=True))
        self.silent: dict[str, Stage] = {}
        self._ids = itertools.count()
        self._replies: dict[str, object] = {}

    def get_nodes(self):
        return [SimpleNamespace(node_id=n, name=name) for n, name in self.names.items()]

    def push_messages(self, messages):
        ids = []
        for message in messages:
            message_id = f"m{next(self._ids)}"
            message.metadata.__dict__["_message_id"] = message_id
            name = self.names[message.metadata.dst_node_id]
            stage = Stage(message.content["securefed"]["stage"])
            if self.silent.get(name) in (stage, "always"):
                self.silent[name] = "always"
            else:
                self._replies[message_id] = handle(message, self.contexts[
                    message.metadata.dst_node_id])
            ids.append(message_id)
        return ids

    def pull_messages(self, message_ids):
        return [self._replies.pop(i) for i in list(message_ids) if i in self._replies]


@pytest.fixture
def world(tmp_path, monkeypatch):
    for attr in ("_run_id", "_node_id", "_task_id"):  # Flower sets these in a ServerApp
        monkeypatch.setattr(TaskIdentity, attr, 1)
    rng = np.random.default_rng(5)
    parties = [Identity.generate("coordinator"), *(Identity.generate(s) for s in SITES)]
    for party in parties:
        party.save_private_key(tmp_path / f"{party.name}.key")
    registry = Registry.of(*parties)
    registry.save(tmp_path / "registry.json")
    frames, configs = {}, {}
    for name in SITES:
        frames[name] = pd.DataFrame({"y": rng.normal(size=12), "x": rng.normal(size=12),
                                     "g": np.repeat([1, 2, 3], 4)})
        frames[name].to_csv(tmp_path / f"{name}.csv", index=False)
        configs[name] = {"site-name": name, "data-path": str(tmp_path / f"{name}.csv"),
                         "identity-key": str(tmp_path / f"{name}.key"),
                         "registry": str(tmp_path / "registry.json")}
    key = Ed25519PrivateKey.from_private_bytes(parties[0].export_private_key_raw())
    return SimpleNamespace(grid=LoopbackGrid(configs), key=key, registry=registry,
                           frames=frames)


def expected_summary(frames, names) -> np.ndarray:
    total = 0
    for name in names:
        site = Site(name, frames[name])
        site.prepare_glmm(DESIGN)
        total = total + site.design_summary_vector()
    return total


def engine_for(world, protection) -> FlowerEngine:
    engine = FlowerEngine(world.grid, world.key, world.registry, protection,
                          StageTimeouts(stage=0.5, grace=0.2, poll=0.01))
    engine.setup(record_call(lambda s: s.prepare_glmm(DESIGN), SITES))
    return engine


def allow_layer_none(world, tmp_path) -> None:
    """Each site's own policy lets the coordinator see its vector (layer ``none``)."""
    for context in world.grid.contexts.values():
        name = context.node_config["site-name"]
        path = tmp_path / f"{name}.policy.toml"
        path.write_text(f'[protection]\nlayers = ["secagg", "none"]\n\n'
                        f'[record]\ndir = "releases-{name}"\n')
        context.node_config["policy"] = str(path)


@pytest.mark.parametrize("protection", [SecAggSum(), PlaintextSum()])
def test_engine_sum_equals_the_sites_sum(world, protection, tmp_path):
    if protection.name == "none":
        allow_layer_none(world, tmp_path)
    engine = engine_for(world, protection)
    call = record_call(lambda s: s.design_summary_vector(), SITES)
    result = engine.run_round(1, "summary", call, SITES)
    assert result.contributors == SITES and result.dropped == ()
    np.testing.assert_allclose(result.total, expected_summary(world.frames, SITES), atol=1e-10)
    again = engine.run_round(2, "summary", call, SITES)  # setup is kept at each site
    np.testing.assert_allclose(again.total, result.total, atol=1e-10)


def test_site_silent_after_key_sharing_drops_out(world):
    world.grid.silent["C"] = Stage.MASKED_INPUT
    engine = engine_for(world, SecAggSum())
    result = engine.run_round(1, "summary", record_call(lambda s: s.design_summary_vector(),
                                                        SITES), SITES)
    assert result.contributors == ("A", "B", "D") and result.dropped == ("C",)
    np.testing.assert_allclose(result.total, expected_summary(world.frames, "ABD"), atol=1e-10)


def test_too_few_sites_left_aborts(world):
    world.grid.silent.update({"C": Stage.MASKED_INPUT, "D": Stage.MASKED_INPUT})
    engine = engine_for(world, SecAggSum())
    with pytest.raises(AbortError):
        engine.run_round(1, "summary", record_call(lambda s: s.design_summary_vector(), SITES),
                         SITES)


def test_a_value_above_the_bound_is_refused_before_any_key_is_sent(world):
    engine = engine_for(world, SecAggSum(bound=1.0))
    with pytest.raises(SiteRefused, match="bound"):
        engine.run_round(1, "summary", record_call(lambda s: s.design_summary_vector(), SITES),
                         SITES)
    assert all("secagg" not in ctx.state.config_records["securefed"]
               for ctx in world.grid.contexts.values())


def test_sites_refuse_a_round_they_cannot_trust(world):
    engine = engine_for(world, SecAggSum())
    world.grid.names[1003] = "D"
    world.grid.contexts[1003].node_config["site-name"] = "C"  # D's node claims to be C
    with pytest.raises(SiteRefused, match="not registered|not in this round|identity"):
        engine.run_round(1, "summary", record_call(lambda s: s.design_summary_vector(), SITES),
                         SITES)


def test_a_stale_request_is_answered_with_an_error(world):
    from flwr.app import ConfigRecord, Message

    message = Message(RecordDict({"securefed": ConfigRecord(
        {"stage": "unmask", "round_key": "00:7", "payload": b"x"})}), dst_node_id=1000,
        message_type="query.securefed")
    message.metadata.__dict__["_message_id"] = "stale"
    reply = handle(message, world.grid.contexts[1000])
    assert reply.content["securefed"]["refusal"] == "bad-request"  # a code, never the text


def test_coordinator_closures_run_over_the_adapter(world):
    from securefed.transport.flower_rounds import FlowerRounds

    rounds = FlowerRounds(FlowerEngine(world.grid, world.key, world.registry, SecAggSum(),
                                       StageTimeouts(stage=0.5, grace=0.2, poll=0.01)))
    rounds.setup(lambda s: s.prepare_glmm(DESIGN), SITES)
    result = rounds.aggregate("design-summary", lambda s: s.design_summary_vector(), SITES, 1)
    np.testing.assert_allclose(result.total, expected_summary(world.frames, SITES), atol=1e-10)
