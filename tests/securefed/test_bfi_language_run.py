"""`securefed bfi` with R's formula language, against R BFI (tests/golden/bfi_language).

Factors, an interaction and I() on guImmun, cbind() and --weights on cbpp, an
offset on Mmmec; under differential privacy offsets, weights, cbind() and
non-canonical links are refused in one line (exit 2), never fitted otherwise.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from securefed.bfi_predict import predict_rows
from securefed.bfi_run import BFIOptions, run_bfi
from securefed.cli import main

GOLDEN = Path(__file__).parents[1] / "golden" / "bfi_language"
CASES = json.loads((GOLDEN / "bfi_language_golden.json").read_text())


def _cli(args: list[str], tmp_path: Path, capsys) -> dict:
    out = tmp_path / "bfi.json"
    assert main(["bfi", *args, "--json", str(out), "--quiet"]) == 0
    capsys.readouterr()
    return json.loads(out.read_text())


@pytest.mark.parametrize("key, extra, atol", [
    ("guimmun_tight", [], 2e-6),
    ("cbpp_tight", [], 5e-7),
    ("mmmec_offset", ["--protect", "secagg"], 1e-8),
    ("owls_offset", ["--protect", "secagg"], 1e-8)])
def test_cli_equals_r(key, extra, atol, tmp_path, capsys) -> None:
    case = CASES[key]
    result = _cli([str(GOLDEN / case["data"]), "--formula", case["formula"], "--family",
                   case["family"], "--site-column", case["site_column"], *extra],
                  tmp_path, capsys)
    assert [r["term"] for r in result["estimates"]] == case["names"]
    np.testing.assert_allclose([r["estimate"] for r in result["estimates"]],
                               case["theta_bfi"], atol=atol)
    np.testing.assert_allclose([r["sd"] for r in result["estimates"]], case["sd_bfi"],
                               atol=1e-7)


def test_weights_column_equals_cbind(tmp_path, capsys) -> None:
    frame = pd.read_csv(GOLDEN / "data" / "cbpp.csv").assign(
        p=lambda d: d.incidence / d["size"])
    path = tmp_path / "cbpp_p.csv"
    frame.to_csv(path, index=False)
    weighted = _cli([str(path), "--formula", "p ~ factor(period)", "--family", "binomial",
                     "--site-column", "site", "--weights", "size", "--compare-pooled"],
                    tmp_path, capsys)
    case = CASES["cbpp_tight"]
    assert [r["term"] for r in weighted["estimates"]] == [
        "(Intercept)", "factor(period)2", "factor(period)3", "factor(period)4"]
    np.testing.assert_allclose([r["estimate"] for r in weighted["estimates"]],
                               case["theta_bfi"], atol=5e-7)
    assert len(weighted["pooled"]["estimates"]) == 4
    assert weighted["weights"] == "size" and weighted["link"] == "logit"


def test_predictions_carry_the_offset() -> None:
    case = CASES["mmmec_offset"]
    frame = pd.read_csv(GOLDEN / case["data"])
    report = run_bfi(frame, BFIOptions(case["formula"], "poisson", "site"))
    beta = np.array(case["theta_bfi"])
    expected = frame.expected * np.exp(beta[0] + beta[1] * frame.uvb)
    np.testing.assert_allclose(predict_rows(report, frame), expected, rtol=1e-7)


@pytest.mark.parametrize("model, extra, fragment", [
    ("deaths ~ uvb + offset(log(expected))", [], "offset(), --weights and cbind()"),
    ("deaths ~ uvb", ["--weights", "expected"], "offset(), --weights and cbind()"),
])
def test_dp_refuses_offsets_and_weights_in_one_line(model, extra, fragment, capsys) -> None:
    args = ["bfi", str(GOLDEN / "data" / "mmmec.csv"), "--formula", model, "--family",
            "gaussian", "--site-column", "site", "--protect", "dp", "--epsilon", "4",
            "--dp-clip", "5", "--dp-outcome-bound", "500", *extra]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert fragment in err and len(err.splitlines()) == 1 and "Traceback" not in err


@pytest.mark.parametrize("data, model, extra, fragment", [
    ("cbpp.csv", "cbind(incidence, size - incidence) ~ period", [],
     "offset(), --weights and cbind()"),
    ("guimmun.csv", "immun ~ kid2p + ord", ["--link", "probit"], "--link probit"),
])
def test_dp_refuses_cbind_and_other_links(data, model, extra, fragment, capsys) -> None:
    args = ["bfi", str(GOLDEN / "data" / data), "--formula", model, "--family",
            "binomial", "--site-column", "site", "--protect", "dp", "--epsilon", "4",
            "--dp-clip", "5", *extra]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert fragment in err and len(err.splitlines()) == 1 and "Traceback" not in err


GLMM = Path(__file__).parents[1] / "golden" / "glmm_language" / "data"


@pytest.mark.parametrize("data, model, extra", [
    (GOLDEN / "data" / "mmmec.csv", "deaths ~ uvb + offset(log(expected)) + (1 | region)",
     ["--family", "poisson", "--dp-outcome-bound", "500"]),
    (GOLDEN / "data" / "mmmec.csv", "deaths ~ uvb + (1 | region)",
     ["--family", "poisson", "--dp-outcome-bound", "500", "--weights", "expected"]),
    (GLMM / "cbpp_cbind.csv", "cbind(incidence, size - incidence) ~ factor(period) + (1 | herd)",
     ["--family", "binomial"]),
    (GLMM / "guimmun_text.csv", "immun ~ kid2p + (1 | comm)",
     ["--family", "binomial", "--link", "probit"]),
])
def test_glmm_under_dp_refuses_offsets_weights_cbind_and_links(data, model, extra,
                                                                capsys) -> None:
    args = ["fit", str(data), "--formula", model, "--site-column", "site", "--protect", "dp",
            "--epsilon", "4", "--dp-clip", "5", *extra]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "under differential privacy are not supported" in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
