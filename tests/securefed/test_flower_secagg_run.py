"""Secure aggregation per run over the in-memory Flower grid: one key agreement per run.

The sites run the real ClientApp handler and keep their run (pair keys, last
round, alive list) in their own ``Context.state`` between messages, as a
SuperNode does; they refuse any round of a run they did not agree to.
"""

from __future__ import annotations

import numpy as np
import pytest
import test_flower_engine as loopback
from test_flower_engine import SITES, engine_for, expected_summary

from protocols.stack import SecAggSum
from securefed.site import Site
from securefed.transport.calls import record_call
from securefed.transport.flower_server import SiteRefused
from securefed.transport.flower_wire import RoundParams, Stage
from securefed.transport.messages import NodeContext
from securefed.transport.site_runtime import _secagg_run

world = loopback.world  # the four sites A-D and the coordinator, over a loopback grid
CALL = record_call(lambda s: s.design_summary_vector(), SITES)


def test_keys_are_agreed_in_the_first_round_only(world):
    engine = engine_for(world, SecAggSum())
    for round_id in (1, 2, 3):
        result = engine.run_round(round_id, f"summary-{round_id}", CALL, SITES)
        assert result.contributors == SITES
        np.testing.assert_allclose(result.total, expected_summary(world.frames, SITES),
                                   atol=1e-10)
    stages = [stage for stage, _, _ in engine.stage_log]
    assert stages.count(Stage.SHARE_KEYS.value) == 1  # one key list for the whole run
    assert stages.count(Stage.UNMASK.value) == 3
    assert len(stages) == 5 + 4 + 4  # later rounds open with this round's shares


def test_a_site_that_dropped_is_not_asked_again_and_the_sums_stay_exact(world):
    world.grid.silent["C"] = Stage.MASKED_INPUT
    engine = engine_for(world, SecAggSum())
    first = engine.run_round(1, "summary", CALL, SITES)
    assert first.dropped == ("C",)
    del world.grid.silent["C"]  # C is back online: the run still does not take it
    counts = record_call(lambda s: s.count_vector(), SITES)  # another statistic (no differencing)
    second = engine.run_round(2, "counts", counts, SITES)
    assert second.contributors == ("A", "B", "D") and second.dropped == ("C",)
    expected = sum(Site(n, world.frames[n]).count_vector() for n in "ABD")
    np.testing.assert_allclose(second.total, expected, atol=1e-10)


def test_a_site_without_the_run_refuses_its_later_rounds(world):
    engine = engine_for(world, SecAggSum())
    engine.run_round(1, "summary", CALL, SITES)
    context = next(c for c in world.grid.contexts.values()
                   if c.node_config["site-name"] == "B")
    del context.state.config_records["securefed"]["secagg_run"]  # B lost (or never had) it
    with pytest.raises(SiteRefused, match="B"):
        engine.run_round(2, "summary-2", CALL, SITES)


def _params(**change) -> RoundParams:
    fields = dict(layer="secagg", session_id=b"s" * 16, round_id=1, purpose="p",
                  sites={n: k for k, n in enumerate(SITES, start=1)}, bound=10.0,
                  run_session=b"r" * 16, run_sites={n: k for k, n in enumerate(SITES, 1)},
                  setup=True)
    return RoundParams(**(fields | change))


def test_a_site_refuses_to_set_up_a_run_twice_or_to_join_an_unknown_one(world):
    config = next(iter(world.grid.contexts.values())).node_config
    context = NodeContext(config, {"setup": [""]})
    _secagg_run(_params(), context)
    with pytest.raises(ValueError, match="set up"):
        _secagg_run(_params(), context)
    with pytest.raises(ValueError, match="no secure-aggregation run"):
        _secagg_run(_params(run_session=b"x" * 16, setup=False), context)


def test_round_parameters_carry_the_run_and_refuse_a_site_outside_it():
    params = _params(setup=False)
    again = RoundParams.from_json(params.to_json())
    assert again == params and again.config(3).run_session == b"r" * 16
    bad = params.to_json().replace('"run_sites": {"A": 1', '"run_sites": {"A": 9')
    with pytest.raises(ValueError, match="sites of its run"):
        RoundParams.from_json(bad)
