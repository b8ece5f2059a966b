"""Study fits over a real Flower federation equal the in-process fits, a late site included.

One Flower run (TLS, SuperNode authentication, each site's own audit folder,
a CKKS key holder on its own SuperNode) runs two study files with
securefed's study ServerApp code (``flower_study.run_study_over_flower``)
over the sites still running (``test_flower_deployment`` kills D):

1. BFI under secure aggregation; the last site's SuperNode is frozen
   (SIGSTOP) after key sharing in the first round, misses the masked-input
   deadline, and is resumed (SIGCONT) while round 2 runs: its late masked
   input for round 1 reaches the SuperLink then, and is in no sum;
2. a binomial GLMM (Laplace) under ``ckks``: every site encrypts under the
   key holder's signed public context, the key holder decrypts one aggregate
   per round.

The in-process references run the same studies' options with the same
dropout simulated (``DropPlan``) and with the in-process ``CkksSum``. Both
runs' audit trails verify with every site's own log.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import BOUND, SITES
from test_flower_ckks import _running

from protocols.stack import CkksSum, DropPlan, SecAggSum
from securefed.audit_verify import verify_log
from securefed.bfi_run import BFIOptions, run_bfi
from securefed.glmm_run import GLMMOptions, run_glmm
from securefed.keys import Registry
from securefed.transport.site_audit import site_log_paths

BFI_FORMULA, GLMM_FORMULA = "y ~ x1 + x2", "y ~ x1 + x2 + (1 | group)"
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


def study_file(root, kind: str, formula: str, layer: str, sites: list[str]) -> str:
    entries = "".join(f'[[sites]]\nname = "{name}"\n\n' for name in sites)
    path = root / f"{kind}.toml"
    path.write_text(STUDY.format(kind=kind, formula=formula, layer=layer, bound=BOUND,
                                 sites=entries, out=f"out-{kind}"))
    return str(path)


@pytest.fixture(scope="module")
def live(federation) -> list[str]:
    names = [name for name in SITES if _running(federation, name)]
    assert len(names) >= 4, f"too few live sites for a study with a dropout: {names}"
    return names


@pytest.fixture(scope="module")
def pooled(federation, live) -> pd.DataFrame:
    return pd.concat([pd.read_csv(federation.root / "data" / f"{name}.csv").assign(site=name)
                      for name in live], ignore_index=True)


@pytest.fixture(scope="module")
def flower_run(federation, live):
    root, late = federation.root, live[-1]
    steps = [
        {"kind": "study", "study": study_file(root, "bfi", BFI_FORMULA, "secagg", live),
         "interrupt": {"round": 1, "after": "share_keys", "signal": "SIGSTOP",
                       "pgid": federation.pgid(late),
                       "resume": {"round": 2, "after": "open",
                                  "log": str(federation.logs[late])}}},
        {"kind": "study", "study": study_file(root, "glmm", GLMM_FORMULA, "ckks", live)},
    ]
    report = federation.run(steps, timeout=900.0, sites=live)
    for step in report["results"]:
        print(f"{step['kind']}: {step['seconds']:.1f} s")
    studies = [r for r in report["results"] if r["kind"] == "study"]
    return {"bfi": studies[0], "glmm": studies[1], "late": late}


def test_bfi_over_flower_with_a_late_site_equals_in_process(flower_run, pooled, live):
    result, late = flower_run["bfi"]["result"], flower_run["late"]
    reference = run_bfi(pooled, BFIOptions(BFI_FORMULA, "binomial", "site"),
                        protection=SecAggSum(bound=BOUND,
                                             drop=DropPlan((late,), "after-key-sharing", 1)))
    assert result["dropped_sites"] == list(reference.dropped_sites) == [late]
    got = np.array([r["estimate"] for r in result["estimates"]])
    np.testing.assert_allclose(got, reference.fit.estimate, rtol=0, atol=1e-10)
    np.testing.assert_allclose([r["sd"] for r in result["estimates"]], reference.fit.sd,
                               rtol=0, atol=1e-10)
    assert result["n_sites"] == len(live) - 1  # the late reply counted nowhere


def test_glmm_under_ckks_over_flower_equals_in_process(flower_run, pooled, live):
    result = flower_run["glmm"]["result"]
    reference = run_glmm(pooled, GLMMOptions(GLMM_FORMULA, "binomial", "site"),
                         protection=CkksSum(bound=BOUND))
    assert result["protection"] == "ckks" and result["dropped_sites"] == []
    np.testing.assert_allclose(list(result["theta"].values()), reference.theta, rtol=0,
                               atol=1e-10)
    assert result["loglik"] == pytest.approx(reference.loglik, abs=1e-9)
    assert (result["n_obs"], result["n_groups"], result["n_sites"]) == (
        reference.n_obs, reference.n_groups, len(live))
    # two exchanges a round (open, decrypt) and none of secagg's key rounds
    stages = {stage for _, stage, _, _ in flower_run["glmm"]["stages"]}
    assert "decrypt" in stages and "share_keys" not in stages


@pytest.mark.parametrize("kind", ["bfi", "glmm"])
def test_each_site_logged_its_own_releases_and_the_trail_verifies(federation, flower_run, live,
                                                                 kind):
    out = federation.root / f"out-{kind}"
    log = out / "audit.jsonl"
    run_id = json.loads(log.read_text().splitlines()[0])["payload"]["run_id"]
    site_logs = [site_log_paths(federation.root / "audit" / n, run_id, n)[0] for n in live]
    assert all(p.exists() for p in site_logs)
    registry = Registry.load(federation.root / "keys" / "registry.json")
    report = verify_log(log, registry, site_logs)
    assert report.ok, report.summary()
    assert (out / "summary.txt").exists() and (out / "result.json").exists()
