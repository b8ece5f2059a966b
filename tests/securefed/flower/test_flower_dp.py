"""``--protect secagg,dp`` over a real Flower federation: each site noises and budgets itself.

Every SuperNode's node config carries its own budget and ledger file
(``privacy-epsilon``, ``privacy-delta``, ``privacy-ledger``; site E's budget
is the smallest). One Flower run, on the sites still running (the deployment
test may have killed D):

1. round 1: the sites prepare their GLMM design (setup riding on the round)
   and release the clipped design summary under a DP query: each site checks
   the query at ``open``, and charges its ledger and adds its share of the
   distributed discrete Gaussian just before masking;
2. round 2: the GLMM gradient and Hessian under a query E's budget cannot
   pay: E refuses at ``open``, the engine raises ``SiteBudgetExceeded`` after
   that one exchange, and no site — E or any other — is charged.

The ledgers are compared entry for entry with what the in-process
``PrivacyGuard`` writes for the same queries.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import LAYOUT, SITE_DELTA, SITE_EPSILON, THETA, design

from securefed.dp_statistics import group_clip_units, summary_query, terms_query
from securefed.privacy import DPOptions, PrivacyGuard
from securefed.site import Site
from securefed.transport.calls import record_call

CLIP, GROUP_CLIP = 3.0, 8.0  # binomial: outcome bound 1
RHO = 0.2  # each round: epsilon 3.13 alone at delta 1e-6; two rounds exceed E's 4


@pytest.fixture(scope="module")
def dp_run(federation):
    live = federation.live_sites()
    frames = {n: pd.read_csv(federation.root / "data" / f"{n}.csv") for n in live}
    glmm_design = design(frames)
    units = group_clip_units(LAYOUT, CLIP, 1.0, GROUP_CLIP)
    summary_q = summary_query("design summary", CLIP, 1.0, RHO)
    terms_q = terms_query("glmm gradient and Hessian", LAYOUT, units, RHO)
    call = {
        "prepare": record_call(lambda s: s.prepare_glmm(glmm_design), live).to_json(),
        "summary": record_call(lambda s: s.dp_summary_vector(CLIP, 1.0), live).to_json(),
        "terms": record_call(lambda s: s.dp_terms_vector(LAYOUT, THETA, units), live).to_json(),
    }
    before = {n: federation.ledger(n).read_bytes() if federation.ledger(n).exists() else None
              for n in live}
    steps = [
        {"kind": "sum", "round_id": 1, "purpose": "dp-design-summary", "call": call["summary"],
         "setup": [call["prepare"]], "dp": {"purpose": summary_q.purpose,
                                            "sensitivity": summary_q.sensitivity, "rho": RHO}},
        {"kind": "sum", "round_id": 2, "purpose": "dp-glmm-terms", "call": call["terms"],
         "expect_error": True,
         "dp": {"purpose": terms_q.purpose, "sensitivity": terms_q.sensitivity, "rho": RHO,
                "log2_units": terms_q.log2_units.tolist()}},
    ]
    # The coordinator plans one round's worth (run_epsilon 3.2 >= 3.13) and then asks for a
    # second: understating the plan loses the sites' refusal at round 1 (each query states
    # what the run still plans), but E's per-release check still refuses round 2.
    report = federation.run(steps, sites=live, family="binomial",
                            dp={"epsilon": 10.0, "run_epsilon": 3.2, "delta": SITE_DELTA,
                                "clip": CLIP})
    for step in report["results"]:
        print(f"{step['kind']}: {step['seconds']:.1f} s", step.get("stages", ""))
    exact = 0
    for name in live:
        site = Site(name, frames[name])
        site.prepare_glmm(glmm_design)
        exact = exact + site.dp_summary_vector(CLIP, 1.0)
    return {"live": live, "summary": report["results"][1], "terms": report["results"][2],
            "exact": exact, "query": summary_q, "before": before}


def test_noise_is_added_at_the_sites_with_the_stated_sd(dp_run):
    summary = dp_run["summary"]
    assert summary["contributors"] == dp_run["live"] and summary["dropped"] == []
    z = (np.asarray(summary["total"]) - dp_run["exact"]) / np.asarray(summary["noise_sd"])
    assert np.all(np.abs(z) < 6), z
    assert np.count_nonzero(np.abs(z) > 1e-3) >= len(z) - 1, z  # noise, not rounding only
    # the noisy count n is near the real one, which here is 48 rows per site
    assert abs(summary["total"][0] - 48 * len(dp_run["live"])) < 6 * summary["noise_sd"][0]


def test_each_sites_ledger_is_charged_exactly_as_in_process(federation, dp_run, tmp_path):
    live, summary = dp_run["live"], dp_run["summary"]
    for name in live:
        assert dp_run["before"][name] is None  # only this test spends the sites' budgets
        stored = json.loads(federation.ledger(name).read_text())
        folder = tmp_path / name
        folder.mkdir()
        options = DPOptions(epsilon=SITE_EPSILON[name], delta=SITE_DELTA, clip=CLIP,
                            ledger_dir=folder)
        guard = PrivacyGuard.create(options, [name], summary["min_contributors"])
        guard.apply({name: np.zeros(len(dp_run["exact"]))}, dp_run["query"], 1)
        reference = json.loads((folder / f"site-{name}.privacy.json").read_text())
        assert stored == reference
        assert stored["epsilon_spent"] == pytest.approx(3.13, abs=0.01)
        assert len(stored["releases"]) == 1  # round 2 charged nobody


def test_a_round_over_a_sites_budget_is_refused_before_anything_is_released(
        federation, dp_run):
    terms = dp_run["terms"]
    assert "SiteBudgetExceeded" in terms["error"] and "PrivacyBudgetExceeded" in terms["error"]
    assert terms["message"].startswith("E: budget-exceeded: "), terms["message"]
    assert terms["message"].count("budget-exceeded") == 1  # the others could pay
    assert [stage for stage, *_ in terms["stages"]] == ["open"]  # no masked input asked for
    e = json.loads(federation.ledger("E").read_text())
    assert e["epsilon"] == SITE_EPSILON["E"] and len(e["releases"]) == 1
