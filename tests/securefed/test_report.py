"""`securefed report`: an HTML page whose images are real PNG files beside it.

No browser is needed: the page is parsed with ``html.parser``; every ``<img src>``
must be a relative path to a valid PNG, and the coefficient table has one row
per term. ``docs/check_report_renders.sh`` takes a headless-Chromium screenshot.
"""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest

from securefed.bfi_run import BFIOptions, run_bfi
from securefed.cli import main
from securefed.data import builtin_path
from securefed.glmm_run import GLMMOptions, run_glmm
from securefed.report import forest_panels
from securefed.synthetic import make_hospitals

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class _Page(HTMLParser):
    """Collects image sources and the body rows of each table by id."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.rows: dict[str, list[list[str]]] = {}
        self._table: str | None = None
        self._in_body = False
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs) -> None:
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs["src"])
        elif tag == "table":
            self._table = attrs.get("id", "")
            self.rows.setdefault(self._table, [])
        elif tag == "tbody":
            self._in_body = True
        elif tag == "tr" and self._in_body:
            self.rows[self._table].append([])
        elif tag == "td" and self._in_body:
            self._cell = []

    def handle_endtag(self, tag) -> None:
        if tag == "tbody":
            self._in_body = False
        elif tag == "td" and self._cell is not None:
            self.rows[self._table][-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data) -> None:
        if self._cell is not None:
            self._cell.append(data)


def _check_page(html_path: Path, n_figures: int) -> _Page:
    page = _Page()
    page.feed(html_path.read_text(encoding="utf-8"))
    assert len(page.images) == n_figures
    for src in page.images:
        assert not src.startswith(("/", "http", "data:")), src
        image = html_path.parent / src
        data = image.read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 5000, src
    return page


def _report(result: dict, tmp_path: Path, capsys, name: str) -> Path:
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(result))
    out = tmp_path / "report" / f"{name}.html"
    assert main(["report", str(path), "--out", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    return out


def test_glmm_report_has_table_forest_and_trace(tmp_path, capsys) -> None:
    fit = run_glmm(make_hospitals(4, 80, seed=3), GLMMOptions(
        "y ~ x2 + x6 + x7 + (1 | hospital)", "binomial", "hospital"))
    out = _report(fit.to_dict(), tmp_path, capsys, "glmm")
    page = _check_page(out, 2)  # forest + convergence trace
    terms = [row[0] for row in page.rows["coefficients"]]
    assert terms == ["(Intercept)", "x2", "x6", "x7"]
    assert (out.parent / "glmm_trace.png").is_file()
    assert len(page.rows["random-effects"]) == 1
    protection = dict(r[:2] for r in page.rows["protection"])
    assert protection["layers"] == "none" and protection["rounds"] == str(fit.rounds)
    first = page.rows["coefficients"][0]  # term, estimate, SE, z, p, CI
    fe = fit.fixed_effects[0]
    assert float(first[3]) == pytest.approx(fe.z_value, abs=1e-4)
    assert first[4] == f"{fe.p_value:.3g}" or first[4] == "< 2e-16"
    assert page.rows["fit"][0][3:] == ["yes" if fit.converged else "no",
                                       "yes" if fit.singular else "no"]
    text = out.read_text(encoding="utf-8")
    assert "Laplace approximation (nAGQ = 1)" in text and "no penalty" in text


def test_glmm_report_names_nagq_the_chosen_lambda_and_dp_releases(tmp_path, capsys) -> None:
    fit = run_glmm(make_hospitals(4, 80, seed=3), GLMMOptions(
        "y ~ x2 + x6 + (1 | hospital)", "binomial", "hospital", nagq=3,
        lambda_grid=(0.0, 2.0), select="bic")).to_dict()
    fit["privacy"] = {"epsilon_spent": 1.5, "releases": [
        {"round": 2, "purpose": "GLMM terms", "mechanism": "distributed discrete Gaussian",
         "rho": 0.01}, {"round": 3, "purpose": "GLMM terms", "rho": 0.02}]}
    out = _report(fit, tmp_path, capsys, "grid")
    page = _check_page(out, 2)
    text = out.read_text(encoding="utf-8")
    chosen = fit["lambda_selection"]["chosen"]
    assert "adaptive Gauss-Hermite quadrature, nAGQ = 3" in text
    assert f"λ = {chosen:.4f} chosen by bic from 0.0000, 2.0000" in text
    assert page.rows["privacy-releases"] == [
        ["2", "GLMM terms", "distributed discrete Gaussian", "0.0100"],
        ["3", "GLMM terms", "—", "0.0200"]]
    assert ["epsilon_spent", "1.5000"] in page.rows["privacy"]


def test_bfi_report_with_pooled_comparison_from_a_study(tmp_path, capsys) -> None:
    trauma = pd.read_csv(builtin_path("trauma"))
    lines = ['[model]', 'kind = "bfi"', 'formula = "mortality ~ age + ISS"',
             'family = "binomial"', "compare_pooled = true"]
    for key, part in trauma.groupby("hospital"):
        part.to_csv(tmp_path / f"h{key}.csv", index=False)
        lines += ["[[sites]]", f'name = "h{key}"', f'data = "h{key}.csv"']
    (tmp_path / "study.toml").write_text("\n".join(lines) + "\n")
    assert main(["run", str(tmp_path / "study.toml"), "--quiet"]) == 0
    result = tmp_path / "out" / "result.json"
    out = tmp_path / "bfi.html"
    assert main(["report", str(result), "--out", str(out)]) == 0
    page = _check_page(out, 2)  # forest + BFI vs pooled scatter
    assert [r[0] for r in page.rows["coefficients"]] == ["(Intercept)", "age", "ISS"]
    assert [r[0] for r in page.rows["pooled"]] == ["(Intercept)", "age", "ISS"]
    saved = json.loads(result.read_text())
    pooled_sd = [r["sd"] for r in saved["pooled"]["estimates"]]
    assert [float(r[4]) for r in page.rows["pooled"]] == pytest.approx(pooled_sd, abs=1e-4)
    assert [float(r[2]) for r in page.rows["pooled"]] == pytest.approx(
        [r["sd"] for r in saved["estimates"]], abs=1e-4)
    seconds = {r[0]: float(r[1]) for r in page.rows["timings"]}
    assert {"loading the sites' files", "federated rounds (part of fitting)", "sites' statistics",
            "writing the results", "whole run"} <= set(seconds)
    timings = json.loads(result.read_text())["timings"]  # the table adds up, as printed
    assert seconds["whole run"] == pytest.approx(
        timings["loading"] + timings["fitting"] + timings["writing"], abs=1e-4)
    assert seconds["federated rounds (part of fitting)"] <= seconds[
        "fitting: rounds, audit checkpoint and checks"]


def test_bfi_report_without_pooled_has_only_the_forest_plot(tmp_path, capsys) -> None:
    nurses = pd.read_csv(builtin_path("Nurses"))
    report = run_bfi(nurses, BFIOptions("stress ~ age + gender", "gaussian", "hospital"))
    out = _report(report.to_dict(), tmp_path, capsys, "nurses")
    page = _check_page(out, 1)
    terms = [r[0] for r in page.rows["coefficients"]]
    assert terms == [row["term"] for row in report.estimates] and "pooled" not in page.rows


@pytest.mark.parametrize(("content", "fragment"), [
    (None, "no such file"),
    ("{not json", "is not JSON"),
    ('{"formula": "y ~ x"}', "is not a securefed result"),
    ('{"estimates": [{"estimate": 1.0}]}', "need 'term' and 'estimate'"),
])
def test_bad_result_files_exit_2_with_one_line(tmp_path, capsys, content, fragment) -> None:
    path = tmp_path / "result.json"
    if content is not None:
        path.write_text(content)
    code = main(["report", str(path), "--out", str(tmp_path / "r.html")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and fragment in err and "\n" not in err
    assert not (tmp_path / "r.html").exists()


def test_a_dp_fit_whose_noise_dominates_gets_a_banner_and_noisy_counts(tmp_path, capsys) -> None:
    from securefed.privacy import DPOptions
    from securefed.protection import ProtectionOptions, build_protection

    frame = make_hospitals(4, 80, seed=3)
    opts = GLMMOptions("y ~ x2 + x6 + x7 + (1 | hospital)", "binomial", "hospital")
    sites = sorted(str(s) for s in frame.hospital.unique())
    dp = DPOptions(epsilon=2.0, clip=4.0, max_se_ratio=1e6)
    fit = run_glmm(frame, opts, protection=build_protection(
        ProtectionOptions(protect="secagg,dp", dp=dp), sites, "binomial")).to_dict()
    assert fit["privacy"]["inference"]["noise_share_of_variance"] > 0.5
    text = _report(fit, tmp_path, capsys, "dp").read_text(encoding="utf-8")
    assert 'class="banner"' in text and "Privacy noise dominates" in text
    assert "rows (noisy count)" in text
    plain = _report(run_glmm(frame, opts).to_dict(), tmp_path, capsys, "plain")
    assert 'class="banner"' not in plain.read_text(encoding="utf-8")


def test_forest_panels_separate_fixed_site_and_scale_terms(tmp_path, capsys) -> None:
    nurses = pd.read_csv(builtin_path("Nurses"))
    report = run_bfi(nurses, BFIOptions("stress ~ age + gender", "gaussian", "hospital",
                                        stratify=("(Intercept)",)))
    rows = [{"term": r["term"]} for r in report.estimates]
    panels = dict(forest_panels(rows))
    assert [r["term"] for r in panels["fixed effects"]] == ["age", "gender"]
    assert len(panels["site-specific terms"]) == 25
    assert [r["term"] for r in panels["scale parameters"]] == ["log_sigma"]
    out = _report(report.to_dict(), tmp_path, capsys, "stratified")
    _check_page(out, 1)


def test_glmm_report_shows_a_dispersion_and_the_reml_criterion(tmp_path, capsys) -> None:
    golden = Path(__file__).parents[1] / "golden" / "glmm_families" / "data"
    nb = run_glmm(pd.read_csv(golden / "salamanders_nbinom2.csv"), GLMMOptions(
        "count ~ mined + (1 | site)", "negative_binomial", "centre"))
    page = _check_page(_report(nb.to_dict(), tmp_path, capsys, "glmm"), 2)
    (row,) = page.rows["dispersion"]
    assert row[0] == "log_theta_nbinom2"
    assert float(row[1]) == pytest.approx(nb.extra["dispersion"]["estimate"], rel=1e-3)
    reml = run_glmm(pd.read_csv(golden / "dyestuff2_reml.csv"), GLMMOptions(
        "Yield ~ 1 + (1 | Batch)", "gaussian", "centre", reml=True))
    page = _check_page(_report(reml.to_dict(), tmp_path, capsys, "glmm_reml"), 2)
    assert float(page.rows["reml"][0][0]) == pytest.approx(reml.extra["reml_criterion"], rel=1e-4)
