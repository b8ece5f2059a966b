"""Federated stratified Cox: equals survival::coxph(... + strata(site)) and the pooled fit."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from protocols.stack import CkksSum, PlaintextSum, SecAggSum
from securefed.cli import main
from securefed.cox_run import CoxOptions, run_cox

GOLDEN = Path(__file__).parents[1] / "golden" / "cox"
CASES = json.loads((GOLDEN / "cox_golden.json").read_text())
KEYS = [k for k in CASES if isinstance(CASES[k], dict)]


def _frame(case: dict) -> pd.DataFrame:
    frame = pd.read_csv(GOLDEN / case["data"])
    frame.attrs["source"] = case["data"]
    return frame


def _fit(case: dict, protection=None, frame=None):
    frame = _frame(case) if frame is None else frame
    return run_cox(frame, CoxOptions(case["formula"], "site", ties=case["ties"]),
                   protection=protection)


@pytest.mark.parametrize("key", KEYS)
def test_matches_r_coxph(key):
    case = CASES[key]
    fit = _fit(case)
    assert [fe.term for fe in fit.fixed_effects] == case["terms"]
    np.testing.assert_allclose([fe.estimate for fe in fit.fixed_effects], case["coef"],
                               rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose([fe.std_error for fe in fit.fixed_effects], case["se"],
                               rtol=1e-6)
    assert fit.loglik == pytest.approx(case["loglik"][1], abs=1e-6)
    assert fit.loglik_null == pytest.approx(case["loglik"][0], abs=1e-6)
    assert (fit.n_obs, fit.n_events, fit.n_omitted) == (case["n"], case["nevent"],
                                                        case["n_omitted"])
    for name, r_key in (("likelihood_ratio", "lr_test"), ("wald", "wald_test"),
                        ("score", "score_test")):
        assert fit.tests[name].statistic == pytest.approx(case[r_key], rel=1e-6)
    c = fit.concordance
    counts = [c.concordant, c.discordant, c.tied_risk, c.tied_time, c.tied_both]
    assert counts == case["concordance"][:5]
    assert c.concordance == pytest.approx(case["concordance"][5], abs=1e-9)
    assert c.std_error == pytest.approx(case["concordance"][6], rel=1e-6)


@pytest.mark.parametrize("key", ["lung_efron", "colon_breslow"])
def test_summary_table_as_r_prints_it(key):
    case = CASES[key]
    ours = _fit(case).summary().splitlines()
    theirs = case["summary"]
    start = theirs.index(next(line for line in theirs if line.strip().startswith("coef")))
    k = len(case["terms"])
    for line in theirs[start + 1:start + 1 + k]:  # coefficient rows
        assert line.rstrip() in [o.rstrip() for o in ours]
    for line in theirs[-4:]:  # concordance and the three tests
        assert line.rstrip() in [o.rstrip() for o in ours]


def _stack(name: str):
    from securefed.protection import ProtectionOptions, build_protection

    return build_protection(ProtectionOptions(protect=name), ["s1", "s2", "s3", "s4"])


@pytest.mark.parametrize(("protection", "name"), [(SecAggSum, "secagg"), (CkksSum, "ckks"),
                                                  (lambda: _stack("secagg,ckks"), "secagg,ckks")],
                         ids=["secagg", "ckks", "secagg,ckks"])
def test_protected_equals_pooled(protection, name):
    case = CASES["veteran_efron"]
    plain, protected = _fit(case, PlaintextSum()), _fit(case, protection())
    np.testing.assert_allclose([f.estimate for f in protected.fixed_effects],
                               [f.estimate for f in plain.fixed_effects], atol=1e-8)
    np.testing.assert_allclose([f.std_error for f in protected.fixed_effects],
                               [f.std_error for f in plain.fixed_effects], atol=1e-8)
    assert protected.loglik == pytest.approx(plain.loglik, abs=1e-8)
    assert protected.concordance == plain.concordance
    assert protected.protection == name


def test_status_codings_and_logical_covariate_agree():
    case = CASES["veteran_breslow"]
    frame = _frame(case)
    base = _fit(case, frame=frame)
    for status in (frame["status"] + 1, frame["status"] == 1):
        other = _fit(case, frame=frame.assign(status=status))
        np.testing.assert_allclose([f.estimate for f in other.fixed_effects],
                                   [f.estimate for f in base.fixed_effects], atol=1e-12)
    flagged = frame.assign(treated=frame["trt"] == 2)
    fit = run_cox(flagged, CoxOptions(case["formula"].replace("trt", "treated"), "site",
                                      ties="breslow"))
    assert fit.fixed_effects[0].term == "treatedTRUE"
    assert fit.fixed_effects[0].estimate == pytest.approx(base.fixed_effects[0].estimate)


def test_json_and_audit_log(tmp_path):
    from securefed.audit_verify import verify_log

    out, log = tmp_path / "fit.json", tmp_path / "audit.jsonl"
    code = main(["cox", str(GOLDEN / "veteran.csv"), "--formula",
                 "Surv(time, status) ~ trt + karno + factor(prior)", "--site-column", "site",
                 "--protect", "secagg", "--ties", "breslow", "--json", str(out),
                 "--audit-log", str(log)])
    assert code == 0
    result = json.loads(out.read_text())
    row = result["fixed_effects"][0]
    assert set(row) == {"term", "estimate", "std_error", "z_value", "p_value", "ci_low",
                        "ci_high"}
    assert [r["term"] for r in result["fixed_effects"]] == ["trt", "karno", "factor(prior)10"]
    assert (result["n_obs"], result["n_events"], result["n_sites"]) == (137, 128, 4)
    assert result["ties"] == "breslow" and result["protection"] == "secagg"
    assert result["newton_rounds"] >= 3
    purposes = [r["purpose"] for r in result["releases"]]
    assert purposes[0] == "cox-summary" and purposes[-1] == "cox-concordance"
    assert len(purposes) == result["rounds"]
    assert verify_log(log).ok


BAD = [
    ("Surv(time, status) ~ weight", "column 'weight' is not in"),
    ("time ~ trt", "left-hand side must be Surv(time, status)"),
    ("Surv(time, status) ~ trt + strata(site)", "stratified by the sites"),
    ("Surv(time, status) ~ trt - 1", "no intercept to remove"),
    ("Surv(time, status) ~ trt + (1 | site)", "no random-effects term"),
    ("Surv(time, status) ~ trt + offset(age)", "offset() is not supported"),
    ("Surv(time, status) ~ time + trt", "cannot be a covariate"),
    ("Surv(time, status) ~ __import__('os')", "cannot read the formula"),
]


@pytest.mark.parametrize(("formula", "message"), BAD)
def test_formula_errors_exit_2_with_one_line(formula, message, capsys):
    code = main(["cox", str(GOLDEN / "veteran.csv"), "--formula", formula,
                 "--site-column", "site"])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(("change", "message"), [
    (lambda f: f.assign(time=f["time"] - 500), "negative times"),
    (lambda f: f.assign(status=f["status"] * 3), "status column"),
    (lambda f: f.assign(status=0), "no events"),
    (lambda f: f.assign(age=1.0), "constant within every site"),
])
def test_data_errors_exit_2_with_one_line(tmp_path, capsys, change, message):
    path = tmp_path / "bad.csv"
    change(pd.read_csv(GOLDEN / "veteran.csv")).to_csv(path, index=False)
    code = main(["cox", str(path), "--formula", "Surv(time, status) ~ karno + age",
                 "--site-column", "site"])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_missing_values_omitted_or_refused(tmp_path, capsys):
    path = tmp_path / "missing.csv"
    frame = pd.read_csv(GOLDEN / "veteran.csv")
    frame.assign(karno=frame["karno"].where(frame.index != 3)).to_csv(path, index=False)
    args = ["cox", str(path), "--formula", "Surv(time, status) ~ karno + age",
            "--site-column", "site", "--json", str(tmp_path / "out.json")]
    assert main(args) == 0
    assert "(1 observation deleted due to missingness)" in capsys.readouterr().out
    assert json.loads((tmp_path / "out.json").read_text())["n_omitted"] == 1
    assert main([*args, "--na-action", "fail"]) == 2
    assert "1 row(s) have missing values" in capsys.readouterr().err


def test_dp_is_refused(capsys):
    code = main(["cox", str(GOLDEN / "veteran.csv"), "--formula", "Surv(time, status) ~ age",
                 "--site-column", "site", "--protect", "secagg,dp"])
    err = capsys.readouterr().err
    assert code == 2 and "no differential-privacy mode" in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(("method", "poison", "check"), [
    ("cox_terms_vector", lambda v: np.r_[abs(v[0]) + 1e4, v[1:]], "partial-loglik"),
    ("cox_summary_vector", lambda v: np.r_[v[0], v[1] + 0.5, v[2:]], "cox-count"),
    ("cox_concordance_vector", lambda v: np.r_[v[:3] + 0.5, v[3:]], "pair-counts"),
])
def test_a_poisoned_site_vector_is_refused(monkeypatch, method, poison, check):
    from securefed.plausibility import ImplausibleAggregate
    from securefed.site import Site

    original = getattr(Site, method)

    def poisoned(self, *args, **kwargs):
        vector = original(self, *args, **kwargs)
        return poison(vector) if self.name == "s2" else vector

    monkeypatch.setattr(Site, method, poisoned)
    with pytest.raises(ImplausibleAggregate) as caught:
        _fit(CASES["veteran_efron"], SecAggSum())
    assert caught.value.check == check


def test_a_site_dropping_out_stops_the_fit(capsys):
    code = main(["cox", str(GOLDEN / "veteran.csv"), "--formula", "Surv(time, status) ~ trt",
                 "--site-column", "site", "--protect", "secagg", "--drop-sites", "s2",
                 "--drop-phase", "after-masked-input", "--drop-round", "3"])
    err = capsys.readouterr().err
    assert code == 1 and "s2 dropped out during the Cox fit" in err
