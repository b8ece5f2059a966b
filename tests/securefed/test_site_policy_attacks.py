"""Issue 15, attacks 2-5, played by a hostile coordinator against the real ClientApp handler.

Every message goes through the in-memory grid to ``flower_client.handle`` with
the node's own ``Context`` (as a SuperNode keeps it), so each site's refusal
here is what a deployed site does: the site's own policy (the safe default, or
its ``policy`` file) and its own registry decide, and the answer is a code and
a fixed message, never data. A restart is a new grid over the same files.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity
from test_flower_engine import LoopbackGrid

from core_stats.families import BINOMIAL
from core_stats.formula import DesignSchema
from core_stats.glmm import ParameterLayout
from protocols.stack import PlaintextSum, SecAggSum
from securefed.keys import Identity, Registry
from securefed.policy.record import ReleaseRecord
from securefed.site import GLMMSiteDesign
from securefed.transport.calls import record_call
from securefed.transport.flower_client import handle
from securefed.transport.flower_server import FlowerEngine, SiteRefused, StageTimeouts
from securefed.transport.flower_wire import MESSAGE_TYPE, RECORD, RoundParams

SITES = ("A", "B", "C", "D")
DESIGN = GLMMSiteDesign(DesignSchema("y ~ x + w + (1 | g)"), BINOMIAL, 1)
LAYOUT = ParameterLayout(("(Intercept)", "x", "w"), ("(Intercept)",), "g", False)
SAFE_THETA = np.array([-0.2, 0.5, 0.1, np.log(0.5)])


def _configs(root, frames) -> dict[str, dict]:
    configs = {}
    for name in SITES:
        frames[name].to_csv(root / f"{name}.csv", index=False)
        configs[name] = {"site-name": name, "data-path": str(root / f"{name}.csv"),
                         "identity-key": str(root / f"{name}.key"),
                         "registry": str(root / "registry.json"),
                         "record-dir": str(root / "records" / name)}
    return configs


@pytest.fixture
def world(tmp_path, monkeypatch):
    for attr in ("_run_id", "_node_id", "_task_id"):
        monkeypatch.setattr(TaskIdentity, attr, 1)
    rng = np.random.default_rng(15)
    parties = [Identity.generate("coordinator"), *(Identity.generate(s) for s in SITES)]
    for party in parties:
        party.save_private_key(tmp_path / f"{party.name}.key")
    registry = Registry.of(*parties)
    registry.save(tmp_path / "registry.json")
    frames = {}
    for name in SITES:
        x = rng.normal(size=40)
        frames[name] = pd.DataFrame({"y": (rng.random(40) < 0.4).astype(float), "x": x,
                                     "w": rng.normal(size=40), "g": np.repeat(range(8), 5)})
    key = Ed25519PrivateKey.from_private_bytes(parties[0].export_private_key_raw())
    configs = _configs(tmp_path, frames)
    return SimpleNamespace(root=tmp_path, grid=LoopbackGrid(configs), configs=configs, key=key,
                           registry=registry, frames=frames)


def restart(world) -> None:
    """Every site's SuperNode restarts: fresh process state, the same files on disk."""
    world.grid = LoopbackGrid(json.loads(json.dumps(world.configs)))


def engine(world, protection, fraction: float = 0.0) -> FlowerEngine:
    run = FlowerEngine(world.grid, world.key, world.registry, protection,
                       StageTimeouts(stage=0.5, grace=0.2, poll=0.01))
    run.setup(record_call(lambda s: s.prepare_glmm(DESIGN, None, fraction, 7), SITES))
    return run


def use_policy(world, text: str) -> None:
    """Every site's node config names a policy file with ``text``."""
    path = world.root / "policy.toml"
    path.write_text(text + '\n[record]\ndir = "rec"\n')
    for context in world.grid.contexts.values():
        context.node_config["policy"] = str(path)
    for config in world.configs.values():
        config["policy"] = str(path)


def refusals(world, name: str) -> list[str]:
    return [r["code"] for r in ReleaseRecord(world.root / "records" / name).refusals()]


def open_at(world, name: str, params: RoundParams, call, setup=()) -> dict:
    """A hand-made ``open`` message (a hostile coordinator needs no engine)."""
    node = next(n for n, s in world.grid.names.items() if s == name)
    content = {"stage": "open", "round": params.to_json(), "call": call.to_json()}
    if setup:
        content["setup"] = [c.to_json() for c in setup]
    message = Message(RecordDict({RECORD: ConfigRecord(content)}), dst_node_id=node,
                      message_type=MESSAGE_TYPE)
    message.metadata.__dict__["_message_id"] = f"attack-{name}"
    return dict(handle(message, world.grid.contexts[node]).content[RECORD])


def summary_call():
    return record_call(lambda s: s.design_summary_vector(), SITES)


def assert_refused(reply: dict, code: str) -> None:
    assert set(reply) == {"error", "refusal"}, "a refusal carries no vector, advert or receipt"
    assert f"refused[{code}]" in reply["error"] and reply["refusal"] == code


# -------------------------------------------------------------- attack 2
def test_attack2_a_downgrade_to_layer_none_is_refused_by_every_site(world):
    run = engine(world, PlaintextSum())
    with pytest.raises(SiteRefused, match=r"refused\[layer-below-floor\]") as refused:
        run.run_round(1, "design-summary", summary_call(), SITES)
    assert str(refused.value).count("layer-below-floor") == len(SITES)
    assert all(refusals(world, n) == ["layer-below-floor"] for n in SITES)
    # nothing about the data is in the refusal: no number of the site's summary appears
    assert not any(ch.isdigit() for ch in str(refused.value).split("refused")[1])


# -------------------------------------------------------------- attack 3
def sybil_params(sites: dict[str, int], threshold=2, minimum=2) -> RoundParams:
    return RoundParams("secagg", bytes(16), 1, "design-summary", sites, 2.0**40,
                       threshold, None, minimum)


def test_attack3_a_sybil_roster_with_the_coordinator_as_a_site_is_refused(world):
    """Roster {D, "coordinator", A}, t = 2, min contributors 2: D sends nothing it could unmask."""
    setup = [record_call(lambda s: s.prepare_glmm(DESIGN), SITES)]
    params = sybil_params({"A": 1, "coordinator": 2, "D": 4})
    for name in ("D", "A"):
        assert_refused(open_at(world, name, params, summary_call(), setup), "roster-not-a-site")
    assert refusals(world, "D") == ["roster-not-a-site"]


@pytest.mark.parametrize(("sites", "threshold", "minimum", "code"), [
    ({"A": 1, "Z": 2, "D": 4}, 2, 3, "roster-unknown"),  # Z is not in D's own registry
    ({"A": 1, "D": 4}, 2, 2, "roster-too-small"),
    ({"A": 1, "B": 2, "D": 4}, 2, 2, "contributors-below-floor"),
    ({"B": 1, "C": 2, "E": 3}, 2, 3, "not-in-roster"),
])
def test_attack3_rosters_and_floors_the_site_does_not_accept(world, sites, threshold, minimum,
                                                             code):
    setup = [record_call(lambda s: s.prepare_glmm(DESIGN), SITES)]
    reply = open_at(world, "D", sybil_params(sites, threshold, minimum), summary_call(), setup)
    assert_refused(reply, code)


def test_attack3_a_threshold_below_the_sites_floor_is_refused(world):
    use_policy(world, '[secure_aggregation]\nmin_threshold = 4')
    run = engine(world, SecAggSum(threshold=3))
    with pytest.raises(SiteRefused, match=r"refused\[threshold-below-floor\]"):
        run.run_round(1, "design-summary", summary_call(), SITES)


# -------------------------------------------------------------- attack 4
@pytest.mark.parametrize("call", [
    record_call(lambda s: s.design_summary_vector(), SITES),
    record_call(lambda s: s.count_vector(), SITES),  # BFI's set-up round has a key too
    record_call(lambda s: s.glmm_terms_vector(LAYOUT, SAFE_THETA, True), SITES),
], ids=["design-summary", "bfi-count", "glmm-terms"])
def test_attack4_differencing_across_two_runs_and_a_restart_is_refused(world, call):
    first = engine(world, SecAggSum())
    total = first.run_round(1, "q", call, SITES).total
    again = first.run_round(2, "q", call, SITES).total  # the same roster may ask again
    np.testing.assert_allclose(again, total, atol=1e-9)
    restart(world)  # a new run, new SuperNode processes, the same records on disk
    second = engine(world, SecAggSum())
    with pytest.raises(SiteRefused, match=r"refused\[differencing\]") as refused:
        second.run_round(1, "q", call, ("A", "B", "C"))
    assert str(refused.value).count("differencing") == 3
    assert all(refusals(world, n) == ["differencing"] for n in ("A", "B", "C"))


def test_attack4_a_new_seed_does_not_make_the_same_sum_a_new_query(world):
    engine(world, SecAggSum()).run_round(1, "q", summary_call(), SITES)
    restart(world)
    run = FlowerEngine(world.grid, world.key, world.registry, SecAggSum(),
                       StageTimeouts(stage=0.5, grace=0.2, poll=0.01))
    run.setup(record_call(lambda s: s.prepare_glmm(DESIGN, None, 0.0, 12345), SITES))
    with pytest.raises(SiteRefused, match=r"refused\[differencing\]"):
        run.run_round(1, "q", summary_call(), ("A", "B", "C"))


# -------------------------------------------------------------- attack 5
def test_attack5_a_crafted_beta_is_refused_by_the_theta_bound(world):
    theta = np.array([-1e4, 3e4, 0.0, np.log(0.5)])  # beta = (-M, K, 0)
    run = engine(world, SecAggSum())
    call = record_call(lambda s: s.glmm_terms_vector(LAYOUT, theta, True), SITES)
    with pytest.raises(SiteRefused, match=r"refused\[theta-out-of-bounds\]"):
        run.run_round(1, "glmm-terms", call, SITES)


def test_attack5_an_isolating_beta_inside_the_bound_is_refused_by_effective_records(world):
    x = world.frames["A"]["x"].to_numpy()
    target = x[np.argmin(np.abs(x - 0.8))]
    theta = np.array([-100.0 * target, 100.0, 0.0, np.log(0.5)])  # |beta| <= 100
    run = engine(world, SecAggSum())
    call = record_call(lambda s: s.glmm_terms_vector(LAYOUT, theta, True), SITES)
    with pytest.raises(SiteRefused, match=r"A: .*refused\[too-few-records\]"):
        run.run_round(1, "glmm-terms", call, SITES)


def test_attack5_a_200000_bin_validation_histogram_is_refused(world):
    run = engine(world, SecAggSum(), fraction=0.5)
    call = record_call(lambda s: s.validation_histograms(LAYOUT, SAFE_THETA, 200_000), SITES)
    with pytest.raises(SiteRefused, match=r"refused\[too-many-bins\]"):
        run.run_round(1, "validation-auc", call, SITES)


def test_attack5_small_cells_are_refused_even_with_few_bins(world):
    run = engine(world, SecAggSum(), fraction=0.5)
    call = record_call(lambda s: s.validation_histograms(LAYOUT, SAFE_THETA, 100), SITES)
    with pytest.raises(SiteRefused, match=r"refused\[small-cell\]"):
        run.run_round(1, "validation-auc", call, SITES)


def test_attack5_a_cap_on_releases_per_model_holds_across_restarts(world):
    use_policy(world, '[parameters]\nmax_rounds = 2')
    restart(world)
    for k in range(2):
        theta = SAFE_THETA + 0.01 * k
        engine(world, SecAggSum()).run_round(1, "t", record_call(
            lambda s, t=theta: s.glmm_terms_vector(LAYOUT, t, True), SITES), SITES)
        restart(world)
    with pytest.raises(SiteRefused, match=r"refused\[too-many-rounds\]"):
        engine(world, SecAggSum()).run_round(1, "t", record_call(
            lambda s: s.glmm_terms_vector(LAYOUT, SAFE_THETA + 0.5, True), SITES), SITES)


def test_too_few_records_behind_a_sum_is_refused(world):
    use_policy(world, '[disclosure]\nmin_records = 41')
    with pytest.raises(SiteRefused, match=r"refused\[too-few-records\]"):
        engine(world, SecAggSum()).run_round(1, "design-summary", summary_call(), SITES)


def test_a_model_the_site_did_not_approve_is_refused(world):
    use_policy(world, '[models]\nformulas = ["y ~ x + (1 | g)"]')
    with pytest.raises(SiteRefused, match=r"refused\[model-not-approved\]"):
        engine(world, SecAggSum()).run_round(1, "design-summary", summary_call(), SITES)
    use_policy(world, '[models]\nformulas = ["y ~ x + w + (1 | g)"]\n'
               'columns = ["y", "x", "w", "g"]')
    result = engine(world, SecAggSum()).run_round(1, "design-summary", summary_call(), SITES)
    assert result.contributors == SITES


def test_a_broken_policy_file_refuses_everything(world):
    use_policy(world, '[protection]\nlayer = ["none"]')  # misspelt: never the default
    with pytest.raises(SiteRefused, match=r"refused\[policy-unreadable\]"):
        engine(world, SecAggSum()).run_round(1, "design-summary", summary_call(), SITES)
