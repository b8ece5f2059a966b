"""Differential privacy at a Flower site, without Flower's processes.

The site-side step (:class:`securefed.transport.site_privacy.SiteDp`, which
calls the same :meth:`SitePrivacy.release` as the in-process guard) is
checked directly; then the engine and the real ClientApp handler run DP
rounds over the in-memory grid of ``test_flower_engine.py``. The real
federation is in ``flower/test_flower_dp.py``.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import test_flower_engine as loopback
from test_flower_engine import DESIGN, SITES, expected_summary, world  # noqa: F401

from core_stats.glmm import ParameterLayout
from protocols.errors import PrivacyBudgetExceeded, ProtocolError
from protocols.stack import SecAggSum
from securefed.dp_statistics import summary_query, terms_query
from securefed.privacy import DPOptions, DpQuery, PrivacyGuard, calibrate
from securefed.protection import ProtectionOptions, build_protection
from securefed.site import Site
from securefed.transport.calls import SiteCall, record_call
from securefed.transport.flower_server import FlowerEngine, SiteRefused, StageTimeouts
from securefed.transport.flower_wire import RoundParams
from securefed.transport.site_privacy import (
    DpRefused,
    SiteBudgetExceeded,
    SiteDp,
    query_to_json,
)

CLIP, BOUND_Y = 3.0, 3.0
SUMMARY = SiteCall("dp_summary_vector", {"clip": CLIP, "outcome_bound": BOUND_Y})
SUMMARY_LENGTH = 3 + 2 + 3 + 2  # [n, Σy, Σy², x'y, upper(x'x), clipped, groups], p = 2


def params(layer: str = "secagg", min_contributors: int = 3, round_id: int = 1) -> RoundParams:
    return RoundParams(layer, b"\x01" * 16, round_id, "test", {n: k + 1 for k, n in
                                                                enumerate(SITES)},
                       2.0**40, None, None, min_contributors)


def node(tmp_path, name: str = "A", epsilon: float = 2.0, **extra) -> dict:
    return {"site-name": name, "privacy-epsilon": epsilon, "privacy-delta": 1e-6,
            "privacy-ledger": str(tmp_path / f"{name}.privacy.json"), **extra}


def site_dp(config: dict, query: DpQuery | None, m: int = 3, **kw) -> SiteDp:
    text = "" if query is None else query_to_json(query, m)
    return SiteDp.for_round(config, config.get("site-name", "A"), text, params(**kw))


# ------------------------------------------------------------ the site step
def test_site_noise_has_the_in_process_sd(tmp_path) -> None:
    """Site-side draws and in-process draws of the same query both have the stated sd."""
    query = DpQuery("noise", 2.0, 0.5)  # the call's own Δ is √(3 + 4·0.1⁴) < 2
    length, m = 3000, 3
    at_site = site_dp(node(tmp_path, epsilon=1e9), query, m)
    at_site.admit(SiteCall("dp_summary_vector", {"clip": 0.1, "outcome_bound": 0.1}), length)
    remote = at_site.release(np.zeros(length))
    guard = PrivacyGuard.create(DPOptions(epsilon=1e9, clip=1.0), ["a"], m)
    local = guard.apply({"a": np.zeros(length)}, query, round_id=1)["a"]
    cal = calibrate(query, length, m)
    share_sd = cal.local_sigma * 2.0**cal.grid_bits
    assert share_sd == pytest.approx(float(guard.sum_noise_sd(1)[0]), rel=1e-12)
    for draws in (remote, local):
        # sample sd of 3000 draws: relative standard error 1.3%; 6% is > 4.5 of them
        assert float(np.std(draws)) == pytest.approx(share_sd, rel=0.06)
        assert abs(float(np.mean(draws))) < 5 * share_sd / math.sqrt(length)
        assert np.array_equal(draws / 2.0**cal.grid_bits, np.rint(draws / 2.0**cal.grid_bits))
    assert np.count_nonzero(remote) > 0.9 * length
    # m = 3 shares add up to the sd the guard reports for the sum
    assert share_sd * math.sqrt(m) == pytest.approx(float(guard.sum_noise_sd(m)[0]))


def test_site_ledger_is_charged_exactly_as_the_in_process_guard(tmp_path) -> None:
    query = summary_query("design summary", CLIP, BOUND_Y, 0.03)
    config = node(tmp_path, epsilon=2.0)
    for round_id in (1, 2):  # a fresh SiteDp per round: as a fresh ClientApp process
        dp = site_dp(config, query, round_id=round_id)
        dp.admit(SUMMARY, SUMMARY_LENGTH)
        assert json.loads(dp.receipt["dp"])["min_contributors"] == 3
        dp.release(np.ones(SUMMARY_LENGTH))
    (tmp_path / "ref").mkdir()
    guard = PrivacyGuard.create(DPOptions(epsilon=2.0, clip=CLIP, ledger_dir=tmp_path / "ref"),
                                ["A", "B"], 3)
    for round_id in (1, 2):
        guard.apply({n: np.ones(SUMMARY_LENGTH) for n in "AB"}, query, round_id)
    site = json.loads((tmp_path / "A.privacy.json").read_text())
    reference = json.loads((tmp_path / "ref" / "site-A.privacy.json").read_text())
    assert site == reference
    assert site["epsilon_spent"] > 0 and len(site["releases"]) == 2


def test_site_refuses_over_its_own_budget_and_its_ledger_is_unchanged(tmp_path) -> None:
    config = node(tmp_path, epsilon=1.0)
    dp = site_dp(config, summary_query("first", CLIP, BOUND_Y, 0.01))
    dp.admit(SUMMARY, SUMMARY_LENGTH)
    dp.release(np.zeros(SUMMARY_LENGTH))
    before = (tmp_path / "A.privacy.json").read_bytes()
    greedy = site_dp(config, summary_query("too much", CLIP, BOUND_Y, 5.0), round_id=2)
    with pytest.raises(PrivacyBudgetExceeded, match="Nothing was released"):
        greedy.admit(SUMMARY, SUMMARY_LENGTH)  # checked at open
    with pytest.raises(PrivacyBudgetExceeded):
        greedy.release(np.zeros(SUMMARY_LENGTH))  # and again when charging
    assert (tmp_path / "A.privacy.json").read_bytes() == before
    # admitted, then another run spends the budget before this release is charged
    late = site_dp(config, summary_query("late", CLIP, BOUND_Y, 0.008), round_id=3)
    late.admit(SUMMARY, SUMMARY_LENGTH)
    other = site_dp(config, summary_query("other run", CLIP, BOUND_Y, 0.008), round_id=9)
    other.admit(SUMMARY, SUMMARY_LENGTH)
    other.release(np.zeros(SUMMARY_LENGTH))
    spent = (tmp_path / "A.privacy.json").read_bytes()
    with pytest.raises(PrivacyBudgetExceeded):
        late.release(np.zeros(SUMMARY_LENGTH))
    assert (tmp_path / "A.privacy.json").read_bytes() == spent


def test_dp_required_site_refuses_a_round_without_a_query(tmp_path) -> None:
    with pytest.raises(DpRefused, match="only under differential privacy"):
        site_dp(node(tmp_path, **{"privacy-required": True}), None)
    with pytest.raises(DpRefused, match="only under differential privacy"):
        site_dp(node(tmp_path, **{"privacy-required": "true"}), None)
    assert site_dp(node(tmp_path), None).release(np.ones(3)).tolist() == [1, 1, 1]
    with pytest.raises(DpRefused, match="needs privacy-epsilon"):
        site_dp({"site-name": "A", "privacy-required": True}, None)
    with pytest.raises(DpRefused, match="needs privacy-ledger"):
        site_dp({"site-name": "A", "privacy-epsilon": 1.0}, None)


def test_site_refuses_dp_terms_it_cannot_verify(tmp_path) -> None:
    config = node(tmp_path)
    with pytest.raises(DpRefused, match="no privacy budget"):
        site_dp({"site-name": "A"}, summary_query("s", CLIP, BOUND_Y, 0.1))
    with pytest.raises(DpRefused, match="post-processing"):
        site_dp(config, DpQuery.derived("terms"))
    with pytest.raises(DpRefused, match="at most 3"):  # more than the protocol guarantees
        site_dp(config, summary_query("s", CLIP, BOUND_Y, 0.1), m=4)
    with pytest.raises(DpRefused, match="at most 1"):  # the coordinator sees single vectors
        site_dp(config, summary_query("s", CLIP, BOUND_Y, 0.1), m=3, layer="none")
    understated = site_dp(config, summary_query("s", CLIP / 2, BOUND_Y, 0.1))
    with pytest.raises(DpRefused, match="site derives"):
        understated.admit(SUMMARY, SUMMARY_LENGTH)
    plain_call = SiteCall("design_summary_vector", {})
    with pytest.raises(DpRefused, match="no sensitivity this site can derive"):
        site_dp(config, DpQuery("s", 1e6, 0.1)).admit(plain_call, SUMMARY_LENGTH)
    layout = ParameterLayout(("(Intercept)", "x"), ("(Intercept)",), "g", False)
    terms = SiteCall("dp_terms_vector", {"layout": layout, "theta": np.zeros(3),
                                         "units": (4, 6)})
    good = terms_query("t", layout, (4, 6), 0.01)
    site_dp(config, good).admit(terms, 9)
    other_units = terms_query("t", layout, (3, 6), 0.01)
    with pytest.raises(DpRefused, match="units"):
        site_dp(config, other_units).admit(terms, 9)
    assert not (tmp_path / "A.privacy.json").exists()  # nothing was charged by any of these


# ----------------------------------------------- engine + ClientApp handler
def dp_engine(world, epsilons: dict[str, float], tmp_path) -> FlowerEngine:  # noqa: F811
    for context in world.grid.contexts.values():
        name = context.node_config["site-name"]
        context.node_config.update(node(tmp_path, name, epsilons.get(name, 10.0)))
    options = DPOptions(epsilon=10.0, clip=CLIP, outcome_bound=BOUND_Y)
    protection = build_protection(ProtectionOptions("secagg,dp", dp=options), list(SITES),
                                  "gaussian")
    engine = FlowerEngine(world.grid, world.key, world.registry, protection,
                          StageTimeouts(stage=0.5, grace=0.2, poll=0.01))
    engine.setup(record_call(lambda s: s.prepare_glmm(DESIGN), SITES))
    return engine


def ledgers(tmp_path) -> dict[str, bytes | None]:
    files = {n: tmp_path / f"{n}.privacy.json" for n in SITES}
    return {n: f.read_bytes() if f.exists() else None for n, f in files.items()}


def test_dp_round_over_the_engine_adds_the_stated_noise_and_charges_like_the_guard(
        world, tmp_path) -> None:  # noqa: F811
    engine = dp_engine(world, {}, tmp_path)
    query = summary_query("design summary", CLIP, BOUND_Y, 0.2)
    call = record_call(lambda s: s.dp_summary_vector(CLIP, BOUND_Y), SITES)
    result = engine.run_round(1, "dp-design-summary", call, SITES, dp=query)
    assert result.contributors == SITES
    sites = {n: Site(n, world.frames[n]) for n in SITES}
    exact = 0
    for site in sites.values():
        site.prepare_glmm(DESIGN)
        exact = exact + site.dp_summary_vector(CLIP, BOUND_Y)
    z = (result.total - exact) / engine.privacy.sum_noise_sd(len(SITES))
    assert np.all(np.abs(z) < 6) and np.count_nonzero(np.abs(z) > 1e-3) >= len(z) - 1
    (tmp_path / "ref").mkdir()
    guard = PrivacyGuard.create(DPOptions(epsilon=10.0, clip=CLIP, ledger_dir=tmp_path / "ref"),
                                list(SITES), engine.privacy.min_contributors)
    guard.apply({n: np.zeros(len(exact)) for n in SITES}, query, 1)
    for name in SITES:
        stored = json.loads((tmp_path / f"{name}.privacy.json").read_text())
        assert stored == json.loads((tmp_path / "ref" / f"site-{name}.privacy.json").read_text())
    assert engine.privacy.report()["epsilon_spent"] == pytest.approx(stored["epsilon_spent"])


def test_a_site_over_its_budget_refuses_and_nobody_is_charged(world, tmp_path) -> None:  # noqa: F811
    engine = dp_engine(world, {"C": 0.05}, tmp_path)
    call = record_call(lambda s: s.dp_summary_vector(CLIP, BOUND_Y), SITES)
    with pytest.raises(SiteBudgetExceeded, match="C: budget-exceeded"):
        engine.run_round(1, "dp-design-summary", call, SITES,
                         dp=summary_query("design summary", CLIP, BOUND_Y, 0.2))
    assert ledgers(tmp_path) == dict.fromkeys(SITES)  # the refusal came at open: no charge
    assert engine.privacy.releases == []


def test_a_site_that_ignores_the_dp_query_stops_the_round_before_release(
        world, tmp_path, monkeypatch) -> None:  # noqa: F811
    engine = dp_engine(world, {}, tmp_path)
    real = loopback.handle

    def older_client(message, context):  # a ClientApp that does not know about "dp"
        if context.node_config["site-name"] == "B":
            del message.content["securefed"]["dp"]
        return real(message, context)

    monkeypatch.setattr(loopback, "handle", older_client)
    call = record_call(lambda s: s.dp_summary_vector(CLIP, BOUND_Y), SITES)
    with pytest.raises(DpRefused, match="site B did not confirm"):
        engine.run_round(1, "dp-design-summary", call, SITES,
                         dp=summary_query("design summary", CLIP, BOUND_Y, 0.2))
    assert ledgers(tmp_path) == dict.fromkeys(SITES)
    assert engine.stage_log[-1][0] == "open"  # no masked input was ever asked for


def test_engine_under_dp_needs_a_query_and_required_sites_refuse_plain_rounds(
        world, tmp_path) -> None:  # noqa: F811
    engine = dp_engine(world, {}, tmp_path)
    call = record_call(lambda s: s.dp_summary_vector(CLIP, BOUND_Y), SITES)
    with pytest.raises(ProtocolError, match="no stated sensitivity"):
        engine.run_round(1, "dp-design-summary", call, SITES)
    world.grid.contexts[1001].node_config["privacy-required"] = True
    plain = FlowerEngine(world.grid, world.key, world.registry, SecAggSum(),
                         StageTimeouts(stage=0.5, grace=0.2, poll=0.01))
    with pytest.raises(SiteRefused, match="B: dp-refused: the site does not accept"):
        plain.run_round(2, "summary", call, SITES)
    assert ledgers(tmp_path) == dict.fromkeys(SITES)


def test_under_dp_each_site_logs_the_release_with_its_own_spending(world, tmp_path) -> None:  # noqa: F811
    engine = dp_engine(world, {}, tmp_path)
    for context in world.grid.contexts.values():
        folder = tmp_path / f"audit-{context.node_config['site-name']}"
        folder.mkdir()
        context.node_config["audit-dir"] = str(folder)
    call = record_call(lambda s: s.dp_summary_vector(CLIP, BOUND_Y), SITES)
    result = engine.run_round(1, "dp-design-summary", call, SITES,
                              dp=summary_query("design summary", CLIP, BOUND_Y, 0.2),
                              audit={"run_id": "ab12", "layers": [{"name": "secagg,dp"}]})
    records = result.details["releases"]
    assert sorted(records) == list(SITES)  # logged at masked input, as the noisy vector left
    for name, payload in records.items():
        ledger = json.loads((tmp_path / f"{name}.privacy.json").read_text())
        privacy = payload["release"]["privacy"]
        assert float(privacy["epsilon_spent"]) == pytest.approx(ledger["epsilon_spent"])
        assert ledger["epsilon_spent"] > 0


def test_a_local_query_is_noised_for_the_site_alone_and_its_length_is_checked(tmp_path) -> None:
    """BFI under DP: the site noises its statistics for itself (m = 1) and keeps them."""
    from dataclasses import replace

    local = replace(summary_query("local stats", CLIP, BOUND_Y, 0.01),
                    local_length=SUMMARY_LENGTH)
    with pytest.raises(DpRefused, match="m = 1"):
        site_dp(node(tmp_path), local, m=3)
    dp = site_dp(node(tmp_path), local, m=1)
    with pytest.raises(DpRefused, match="noised at the site"):
        dp.admit(SUMMARY, SUMMARY_LENGTH + 1)
    dp.admit(SUMMARY, SUMMARY_LENGTH)
    assert json.loads(dp.receipt["dp"])["min_contributors"] == 1
    assert dp.noise_sd(SUMMARY_LENGTH) > 0
