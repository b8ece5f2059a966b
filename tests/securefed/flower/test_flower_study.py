"""Whole studies over a real Flower federation equal the in-process fits, dropouts included.

One Flower run (TLS, SuperNode authentication, each site's own audit folder,
a CKKS key holder on its own SuperNode, and an unregistered "intruder"
SuperNode with a valid CA and site A's files) runs two study files with
securefed's study ServerApp code (``flower_study.run_study_over_flower``):

1. BFI under secure aggregation, with two real dropouts: site E's SuperNode
   is frozen (SIGSTOP) after key sharing in round 1 (the counts), misses the
   masked-input deadline and is resumed (SIGCONT) while round 2 runs, so its
   late masked input for round 1 reaches the SuperLink then and must be in no
   sum; site D's SuperNode is killed (SIGKILL) right after its masked input in
   round 2 (the terms), so its input is in that sum (its masks are recovered
   from the survivors' Shamir shares) and it takes no part afterwards;
2. a binomial GLMM (Laplace) under ``ckks`` over three of the sites:
   every site encrypts under the key holder's signed public context and the
   key holder decrypts one aggregate per round.

The in-process references are the same studies' options over the sites whose
data the answer holds. Both runs' audit trails verify with every site's log.
Each exchange costs seconds (a ClientApp process per message), so everything
is checked from this one run.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import BOUND, KEY_HOLDER, SITES

from protocols.stack import CkksSum, SecAggSum
from securefed.audit_verify import verify_log
from securefed.bfi_run import BFIOptions, run_bfi
from securefed.glmm_run import GLMMOptions, run_glmm
from securefed.keys import Registry
from securefed.transport.site_audit import site_log_paths

BFI_FORMULA, GLMM_FORMULA = "y ~ x1 + x2", "y ~ x1 + x2 + (1 | group)"
LATE, KILLED = "E", "D"
STUDY = """\
[model]
kind = "{kind}"
formula = "{formula}"
family = "binomial"

[protection]
layers = ["{layer}"]
bound = {bound}

{sites}
[output]
dir = "{out}"
"""


def study_file(root, kind: str, formula: str, layer: str, sites) -> str:
    entries = "".join(f'[[sites]]\nname = "{name}"\n\n' for name in sites)
    path = root / f"{kind}.toml"
    path.write_text(STUDY.format(kind=kind, formula=formula, layer=layer, bound=BOUND,
                                 sites=entries, out=f"out-{kind}"))
    return str(path)


def pooled(federation, names) -> pd.DataFrame:
    return pd.concat([pd.read_csv(federation.root / "data" / f"{name}.csv").assign(site=name)
                      for name in names], ignore_index=True)


@pytest.fixture(scope="module")
def flower_run(federation):
    live = federation.live_sites(at_least=len(SITES))
    root = federation.root
    after_bfi = [name for name in live if name not in (LATE, KILLED)]  # three: cheaper
    steps = [
        {"kind": "study", "study": study_file(root, "bfi", BFI_FORMULA, "secagg", live),
         "interrupts": [
             {"round": 1, "after": "share_keys", "signal": "SIGSTOP",
              "pgid": federation.pgid(LATE),
              "resume": {"round": 2, "after": "open", "log": str(federation.logs[LATE])}},
             {"round": 2, "after": "masked_input", "signal": "SIGKILL",
              "pgid": federation.pgid(KILLED)}]},
        {"kind": "study", "study": study_file(root, "glmm", GLMM_FORMULA, "ckks",
                                              sorted(after_bfi))},
    ]
    report = federation.run(steps, timeout=900.0, sites=live)
    for step in report["results"]:
        print(f"{step['kind']}: {step['seconds']:.1f} s")
    studies = [r for r in report["results"] if r["kind"] == "study"]
    return {"bfi": studies[0], "glmm": studies[1], "nodes": report["results"][0]["nodes"],
            "sites": {"bfi": live, "glmm": sorted(after_bfi)}}


def test_only_registered_supernodes_join(federation, flower_run):
    # the intruder (valid TLS, unregistered key) is not a node; the key holder is one
    assert flower_run["nodes"] == sorted([*SITES, KEY_HOLDER])
    log = federation.logs["intruder"].read_text(errors="replace")
    assert "SuperNode ID" not in log, log[-2000:]


def test_bfi_with_a_late_and_a_killed_site_equals_in_process_over_the_counted_sites(
        federation, flower_run):
    result = flower_run["bfi"]["result"]
    counted = [name for name in SITES if name != LATE]  # D's input counts: it died after it
    reference = run_bfi(pooled(federation, counted), BFIOptions(BFI_FORMULA, "binomial", "site"),
                        protection=SecAggSum(bound=BOUND))
    assert result["dropped_sites"] == [LATE, KILLED]  # in the order they dropped
    assert (result["n_sites"], result["n_sites_counted"]) == (len(SITES) - 2, len(counted))
    np.testing.assert_allclose([r["estimate"] for r in result["estimates"]],
                               reference.fit.estimate, rtol=0, atol=1e-10)
    np.testing.assert_allclose([r["sd"] for r in result["estimates"]], reference.fit.sd,
                               rtol=0, atol=1e-10)
    # E's late round-1 input, and E's data, are in no sum: the fit without D is far away
    without_d = run_bfi(pooled(federation, [n for n in counted if n != KILLED]),
                        BFIOptions(BFI_FORMULA, "binomial", "site"))
    assert np.max(np.abs(np.asarray([r["estimate"] for r in result["estimates"]])
                         - without_d.fit.estimate)) > 1e-3
    stages = flower_run["bfi"]["stages"]
    killed = {stage: answered for round_id, stage, answered, _ in stages if round_id == 2}
    assert KILLED in killed["masked_input"] and KILLED not in killed["consistency"]  # then gone
    assert "share_keys" not in killed  # a later round of the run: no key agreement


def test_glmm_under_ckks_over_flower_equals_in_process(federation, flower_run):
    result, names = flower_run["glmm"]["result"], flower_run["sites"]["glmm"]
    reference = run_glmm(pooled(federation, names), GLMMOptions(GLMM_FORMULA, "binomial", "site"),
                         protection=CkksSum(bound=BOUND))
    assert result["protection"] == "ckks" and result["dropped_sites"] == []
    np.testing.assert_allclose(list(result["theta"].values()), reference.theta, rtol=0,
                               atol=1e-10)
    assert result["loglik"] == pytest.approx(reference.loglik, abs=1e-9)
    assert (result["n_obs"], result["n_groups"], result["n_sites"]) == (
        reference.n_obs, reference.n_groups, len(names))
    # two exchanges a round (open, decrypt) and none of secagg's key rounds
    stages = {stage for _, stage, _, _ in flower_run["glmm"]["stages"]}
    assert "decrypt" in stages and "share_keys" not in stages


@pytest.mark.parametrize("kind", ["bfi", "glmm"])
def test_each_site_logged_its_own_releases_and_the_trail_verifies(federation, flower_run, kind):
    out = federation.root / f"out-{kind}"
    log = out / "audit.jsonl"
    run_id = json.loads(log.read_text().splitlines()[0])["payload"]["run_id"]
    names = flower_run["sites"][kind]
    site_logs = [site_log_paths(federation.root / "audit" / n, run_id, n)[0] for n in names]
    assert all(p.exists() for p in site_logs)
    registry = Registry.load(federation.root / "keys" / "registry.json")
    report = verify_log(log, registry, site_logs)
    assert report.ok, report.summary()
    assert (out / "summary.txt").exists() and (out / "result.json").exists()
