"""HTML reports of survival results: Cox hazard ratios, BFI survival curves for profiles."""

from __future__ import annotations

from pathlib import Path

import pytest

from securefed.cli import main

GOLDEN = Path(__file__).parents[1] / "golden"


def test_cox_report_has_hazard_ratios_and_no_curves(tmp_path, capsys):
    result = tmp_path / "cox.json"
    assert main(["cox", str(GOLDEN / "cox" / "lung.csv"), "--formula",
                 "Surv(time, status) ~ age + sex", "--site-column", "site",
                 "--json", str(result)]) == 0
    assert main(["report", str(result), "--out", str(tmp_path / "cox.html")]) == 0
    page = (tmp_path / "cox.html").read_text()
    assert "Stratified Cox model" in page and 'id="hazard-ratios"' in page
    assert 'id="tests"' in page and "No survival curves" in page
    assert not (tmp_path / "cox_survival.png").exists()


def test_bfi_survival_report_draws_curves_for_profiles(tmp_path, capsys):
    result = tmp_path / "bfi.json"
    assert main(["bfi", str(GOLDEN / "bfi_survival" / "gompertz_bfi.csv"), "--formula",
                 "Surv(time, status) ~ x1 + x2", "--family", "survival", "--baseline",
                 "weibull", "--site-column", "centre", "--json", str(result)]) == 0
    out = tmp_path / "bfi.html"
    assert main(["report", str(result), "--out", str(out), "--profile", "x1=1",
                 "--profile", "x1=-1,x2=1"]) == 0
    page = out.read_text()
    assert 'id="survival"' in page and "x1=-1,x2=1" in page
    assert (tmp_path / "bfi_survival.png").stat().st_size > 1000


def test_bad_profile_exits_2_with_one_line(tmp_path, capsys):
    result = tmp_path / "bfi.json"
    assert main(["bfi", str(GOLDEN / "bfi_survival" / "gompertz_bfi.csv"), "--formula",
                 "Surv(time, status) ~ x1 + x2", "--family", "survival", "--baseline",
                 "exponential", "--site-column", "centre", "--json", str(result)]) == 0
    capsys.readouterr()
    code = main(["report", str(result), "--out", str(tmp_path / "r.html"), "--profile", "age=3"])
    err = capsys.readouterr().err
    assert code == 2 and "a term of the fit" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("extra", [["pwexp", "--baseline-knots", "0,1,2"], ["poly"]])
def test_pwexp_and_poly_reports_draw_curves(tmp_path, capsys, extra):
    result = tmp_path / "fit.json"
    assert main(["bfi", str(GOLDEN / "bfi_survival" / "gompertz_bfi.csv"), "--formula",
                 "Surv(time, status) ~ x1 + x2", "--family", "survival", "--baseline",
                 *extra, "--site-column", "centre", "--json", str(result)]) == 0
    assert main(["report", str(result), "--out", str(tmp_path / "fit.html"),
                 "--profile", "x1=1"]) == 0
    assert 'id="survival"' in (tmp_path / "fit.html").read_text()
    assert (tmp_path / "fit_survival.png").stat().st_size > 1000


def test_unspecified_report_says_no_curves(tmp_path, capsys):
    result = tmp_path / "un.json"
    assert main(["bfi", str(GOLDEN / "bfi_survival" / "gompertz_bfi.csv"), "--formula",
                 "Surv(time, status) ~ x1 + x2", "--family", "survival", "--baseline",
                 "unspecified", "--site-column", "centre", "--json", str(result)]) == 0
    assert main(["report", str(result), "--out", str(tmp_path / "un.html")]) == 0
    assert "No survival curves" in (tmp_path / "un.html").read_text()
    assert main(["report", str(result), "--out", str(tmp_path / "un2.html"),
                 "--profile", "x1=1"]) == 2
