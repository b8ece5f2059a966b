"""Secure sums over a real Flower federation equal the in-process Coordinator's.

One Flower run (five sites, TLS, SuperNode authentication) does what a GLMM
fit's first rounds do, with real dropouts in both rounds:

1. round 1: every site prepares its random-intercept design (a setup call
   riding on the round's first message), then the design summary is summed;
   site E's SuperNode is frozen (SIGSTOP) right after key sharing, misses the
   masked-input deadline, and is resumed after the round: it then sends its
   masked input, late;
2. round 2: the GLMM terms at θ over the four live sites; site D's SuperNode
   is killed (SIGKILL) right after its masked input.

The in-process reference runs the same closures through ``Coordinator`` and
``SecAggSum`` with the same dropouts simulated (``DropPlan``). Each Flower
stage costs seconds (Flower 1.41 starts a ClientApp process per message and a
SuperNode polls every 3 s), so everything is checked from this one run.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import BOUND, KEY_HOLDER, SITES
from formulaic import model_matrix

from core_stats.families import get_family
from core_stats.glmm import ParameterLayout
from protocols.stack import DropPlan, SecAggSum
from securefed.coordinator import Coordinator
from securefed.site import GLMMSiteDesign, Site
from securefed.transport.calls import record_call

LAYOUT = ParameterLayout(("(Intercept)", "x1", "x2"), ("(Intercept)",), "group", False)
THETA = np.array([-0.2, 0.6, -0.3, -0.4])


def design(frames: dict[str, pd.DataFrame]) -> GLMMSiteDesign:
    pooled = pd.concat(frames.values())
    spec = model_matrix("x1 + x2", pooled).model_spec
    return GLMMSiteDesign("y", spec, "1", "group", get_family("binomial"), 3)


def closures(frames):
    glmm_design = design(frames)
    return {
        "prepare": lambda s: s.prepare_glmm(glmm_design),
        "summary": lambda s: s.design_summary_vector(),
        "terms": lambda s: s.glmm_terms_vector(LAYOUT, THETA, True),
    }


def in_process(frames) -> list[tuple[np.ndarray, tuple[str, ...], tuple[str, ...]]]:
    compute = closures(frames)
    sites = [Site(name, frames[name]) for name in SITES]
    for site in sites:
        compute["prepare"](site)
    protection = SecAggSum(bound=BOUND)
    coordinator = Coordinator(sites, protection)
    out = []
    for key, drop in (("summary", DropPlan(("E",), "after-key-sharing", 1)),
                      ("terms", DropPlan(("D",), "after-masked-input", 2))):
        protection.drop = drop
        total = coordinator.secure_sum(key, compute[key])
        record = coordinator.rounds[-1]
        out.append((total, record.contributors, record.dropped))
    return out


@pytest.fixture(scope="module")
def frames(federation):
    return {name: pd.read_csv(federation.root / "data" / f"{name}.csv") for name in SITES}


@pytest.fixture(scope="module")
def flower_run(federation, frames):
    compute = closures(frames)
    call = {key: record_call(fn, SITES).to_json() for key, fn in compute.items()}
    steps = [
        {"kind": "sum", "round_id": 1, "purpose": "summary", "call": call["summary"],
         "setup": [call["prepare"]],
         "interrupt": {"after": "share_keys", "signal": "SIGSTOP",
                       "pgid": federation.pgid("E")}},
        {"kind": "resume", "pgid": federation.pgid("E"), "log": str(federation.logs["E"]),
         "timeout": 60.0},
        {"kind": "sum", "round_id": 2, "purpose": "terms", "call": call["terms"],
         "interrupt": {"after": "masked_input", "signal": "SIGKILL",
                       "pgid": federation.pgid("D")}},
    ]
    report = federation.run(steps)
    for step in report["results"]:
        print(f"{step['kind']}: {step['seconds']:.1f} s", step.get("stages", ""))
    return [r for r in report["results"] if r["kind"] == "sum"], report["results"][0]["nodes"]


@pytest.fixture(scope="module")
def reference(frames):
    return in_process(frames)


def test_only_registered_supernodes_join(federation, flower_run):
    _, nodes = flower_run
    # the intruder (valid TLS, unregistered key) is not a node; the key holder is one
    assert nodes == sorted([*SITES, KEY_HOLDER])
    log = federation.logs["intruder"].read_text(errors="replace")
    assert "SuperNode ID" not in log, log[-2000:]


def test_design_summary_with_a_site_frozen_after_key_sharing(flower_run, reference):
    flower_run, _ = flower_run
    total, contributors, dropped = reference[0]
    assert flower_run[0]["contributors"] == list(contributors) == ["A", "B", "C", "D"]
    assert flower_run[0]["dropped"] == list(dropped) == ["E"]
    np.testing.assert_allclose(flower_run[0]["total"], total, rtol=0, atol=1e-10)
    assert flower_run[0]["total"][0] == 4 * 48  # n: every prepared site but E


def test_glmm_terms_with_a_site_killed_after_masked_input(flower_run, reference, frames):
    flower_run, _ = flower_run
    total, contributors, dropped = reference[1]
    # D's input counts (it died after sending it); E, dropped in round 1, is not
    # asked again, and its late masked input for round 1 is in no sum.
    assert flower_run[1]["contributors"] == list(contributors) == ["A", "B", "C", "D"]
    assert flower_run[1]["dropped"] == list(dropped) == ["D"]
    np.testing.assert_allclose(flower_run[1]["total"], total, rtol=0, atol=1e-10)
    site_e = Site("E", frames["E"])
    closures(frames)["prepare"](site_e)
    with_e = total + site_e.glmm_terms_vector(LAYOUT, THETA, True)
    assert np.max(np.abs(np.asarray(flower_run[1]["total"]) - with_e)) > 1e-3

