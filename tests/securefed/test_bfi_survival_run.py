"""securefed bfi --family survival: protected runs equal the plain combination and R BFI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core_stats import bfi
from core_stats.bfi_survival import fit_survival_map
from protocols.stack import CkksSum, SecAggSum
from securefed.bfi_survival_run import SurvivalBFIOptions, run_bfi_survival
from securefed.cli import main

GOLDEN = Path(__file__).parents[1] / "golden" / "bfi_survival"
CASES = json.loads((GOLDEN / "bfi_survival_golden.json").read_text())
GOMPERTZ = GOLDEN / "gompertz_bfi.csv"
FORMULA = "Surv(time, status) ~ x1 + x2"


def _reference(frame: pd.DataFrame, baseline: str) -> bfi.BFIFit:
    prior = 0.01 * np.eye(4 if baseline != "exponential" else 3)
    fits = [fit_survival_map(p["time"], p["status"] == 1, p[["x1", "x2"]].to_numpy(), baseline,
                             prior, names=["x1", "x2"]) for _, p in frame.groupby("centre")]
    layout = bfi.HomogeneousLayout(fits[0].names, fits[0].family)
    return layout.combine(bfi.sum_site_vectors([layout.site_vector(f) for f in fits]))


def _stack(name: str):
    from securefed.protection import ProtectionOptions, build_protection

    return build_protection(ProtectionOptions(protect=name), ["1", "2", "3"])


@pytest.mark.parametrize("protection", [None, SecAggSum, CkksSum, lambda: _stack("secagg,ckks")],
                         ids=["none", "secagg", "ckks", "secagg,ckks"])
@pytest.mark.parametrize("baseline", ["exponential", "weibull", "gompertz"])
def test_protected_run_equals_plain_combination(protection, baseline):
    frame = pd.read_csv(GOMPERTZ)
    report = run_bfi_survival(frame, SurvivalBFIOptions(FORMULA, "centre", baseline),
                              protection=None if protection is None else protection())
    reference = _reference(frame, baseline)
    np.testing.assert_allclose(report.fit.estimate, reference.estimate, atol=1e-8)
    np.testing.assert_allclose(report.fit.sd, reference.sd, atol=1e-8)
    assert [r["purpose"] for r in report.releases] == ["bfi-count", "bfi-terms"]


def test_cli_gompertz_matches_r_bfi(tmp_path):
    out = tmp_path / "bfi.json"
    code = main(["bfi", str(GOMPERTZ), "--formula", FORMULA, "--family", "survival",
                 "--baseline", "gompertz", "--site-column", "centre", "--lambda", "0.01",
                 "--protect", "secagg", "--json", str(out)])
    assert code == 0
    result = json.loads(out.read_text())
    case = CASES["gomp_tight"]
    assert [r["term"] for r in result["estimates"]] == case["names"]
    np.testing.assert_allclose([r["estimate"] for r in result["estimates"]], case["theta_bfi"],
                               atol=2e-3)
    np.testing.assert_allclose([r["sd"] for r in result["estimates"]], case["sd_bfi"],
                               atol=2e-3)
    assert result["baseline"] == "gompertz" and result["family"] == "survival"
    assert result["baseline_parameters"] == {"omega_1": "log a", "omega_2": "log b"}
    assert (result["n_sites"], result["n_obs"]) == (3, 450)


@pytest.mark.parametrize(("extra", "message"), [
    ([], "needs --baseline"),
    (["--baseline", "cubic"], "choose one of"),
    (["--baseline", "pwexp"], "needs --baseline-pieces"),
    (["--baseline", "pwexp", "--baseline-pieces", "3"], "go together"),
    (["--baseline", "poly", "--baseline-knots", "0,1"], "are for --baseline pwexp"),
    (["--baseline", "unspecified", "--stratify", "omega_1"], "no parameters"),
    (["--baseline", "poly", "--baseline-order", "3", "--stratify", "omega_3"], "chose order 2"),
    (["--baseline", "weibull", "--standardize", "x1"], "not available with --family survival"),
    (["--baseline", "weibull", "--protect", "secagg,dp", "--epsilon", "1"],
     "no differential-privacy mode"),
    (["--baseline", "pwexp", "--protect", "ckks,dp"], "no differential-privacy mode"),
])
def test_survival_bfi_errors_exit_2(extra, message, capsys):
    code = main(["bfi", str(GOMPERTZ), "--formula", FORMULA, "--family", "survival",
                 "--site-column", "centre", *extra])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_weibull_refuses_zero_times(tmp_path, capsys):
    path = tmp_path / "zero.csv"
    pd.read_csv(GOMPERTZ).assign(time=lambda f: f["time"].where(f.index != 5, 0.0)).to_csv(
        path, index=False)
    code = main(["bfi", str(path), "--formula", FORMULA, "--family", "survival",
                 "--baseline", "weibull", "--site-column", "centre"])
    assert code == 2 and "positive times" in capsys.readouterr().err


def test_cli_centre_specific_baseline_matches_r_bfi(tmp_path):
    out = tmp_path / "strat.json"
    assert main(["bfi", str(GOMPERTZ), "--formula", FORMULA, "--family", "survival",
                 "--baseline", "gompertz", "--site-column", "centre", "--stratify", "omega_1",
                 "--protect", "ckks", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    case = CASES["gomp_stratified"]["1"]
    ours = {r["term"]: r for r in result["estimates"]}
    r_names = [n if "_loc" not in n else n.replace("_loc", "[centre=") + "]"
               for n in case["names"]]
    np.testing.assert_allclose([ours[n]["estimate"] for n in r_names], case["theta_bfi"],
                               atol=2e-3)
    np.testing.assert_allclose([ours[n]["sd"] for n in r_names], case["sd_bfi"], atol=2e-3)
    assert result["stratify"] == ["omega_1"]


def test_stratify_takes_baseline_parameters_only(capsys):
    code = main(["bfi", str(GOMPERTZ), "--formula", FORMULA, "--family", "survival",
                 "--baseline", "exponential", "--site-column", "centre", "--stratify", "x1"])
    assert code == 2 and "baseline's (omega_1)" in capsys.readouterr().err
