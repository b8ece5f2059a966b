"""`securefed fit` / `demo`: the JSON contract and one-line errors with exit code 2."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from securefed.cli import main

FORMULA = "y ~ x1 + (1 | hospital)"


@pytest.fixture
def data_csv(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    n = 240
    hospital = np.repeat(np.arange(6), 40)
    x1 = rng.normal(size=n)
    eta = -0.3 + 0.6 * x1 + rng.normal(0, 0.7, 6)[hospital]
    frame = pd.DataFrame({"y": rng.binomial(1, 1 / (1 + np.exp(-eta))), "x1": x1,
                          "hospital": hospital, "count": rng.poisson(2.0, n)})
    path = tmp_path / "data.csv"
    frame.to_csv(path, index=False)
    return path


def _run(args: list[str], capsys) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_fit_prints_a_summary_and_writes_the_json_contract(data_csv, tmp_path, capsys) -> None:
    out_json = tmp_path / "fit.json"
    code, out, _ = _run(["fit", str(data_csv), "--formula", FORMULA, "--family", "binomial",
                         "--site-column", "hospital", "--nagq", "2", "--json", str(out_json),
                         "--quiet"], capsys)
    assert code == 0
    assert "Fixed effects:" in out and "Random effects:" in out
    result = json.loads(out_json.read_text())
    for key in ("fixed_effects", "random_effects", "loglik", "aic", "bic", "converged",
                "singular", "rounds", "nagq", "n_obs", "n_groups", "n_sites", "protection",
                "bytes_sent_per_site", "seconds"):
        assert key in result, key
    assert [fe["term"] for fe in result["fixed_effects"]] == ["(Intercept)", "x1"]
    assert set(result["fixed_effects"][0]) >= {"term", "estimate", "std_error", "z_value",
                                               "p_value", "ci_low", "ci_high"}
    assert result["random_effects"][0]["group"] == "hospital"
    assert result["random_effects"][0]["term"] == "(Intercept)"
    assert result["nagq"] == 2 and result["n_sites"] == 6 and result["protection"] == "none"
    assert result["n_sites_counted"] == 6


def test_lambda_grid_from_the_command_line(data_csv, tmp_path, capsys) -> None:
    out_json = tmp_path / "fit.json"
    code, _, _ = _run(["fit", str(data_csv), "--formula", FORMULA, "--family", "binomial",
                       "--site-column", "hospital", "--lambda-grid", "0,1,5", "--select", "bic",
                       "--seed", "3", "--json", str(out_json), "--quiet"], capsys)
    assert code == 0
    result = json.loads(out_json.read_text())
    assert result["lambda_selection"]["criterion"] == "bic"
    assert result["lambda"] in (0.0, 1.0, 5.0)
    assert "auc_validation" in result


def _bad(tmp_path: Path, frame: pd.DataFrame) -> Path:
    path = tmp_path / "bad.csv"
    frame.to_csv(path, index=False)
    return path


BAD_CASES = {
    "missing file": (lambda d, t: t / "nope.csv", "binomial", "no such file"),
    "empty file": (lambda d, t: (t / "empty.csv").write_text("") and t / "empty.csv"
                   or t / "empty.csv", "binomial", "empty"),
    "missing column": (lambda d, t: _bad(t, pd.read_csv(d).drop(columns="x1")), "binomial",
                       "column 'x1'"),
    "infinite value": (lambda d, t: _bad(t, pd.read_csv(d).assign(
        x1=lambda f: f.x1.where(f.index != 2, np.inf))), "binomial", "'x1' is infinite"),
    "text in numeric": (lambda d, t: _bad(t, pd.read_csv(d).astype({"x1": object}).assign(
        x1=lambda f: f.x1.where(f.index != 9, "abc"))), "binomial", "'x1' holds numbers with"),
    "binomial outcome": (lambda d, t: _bad(t, pd.read_csv(d).assign(y=lambda f: f.y * 2)),
                         "binomial", "0 or 1"),
    "negative poisson": (lambda d, t: _bad(t, pd.read_csv(d).assign(y=lambda f: f.y - 1)),
                         "poisson", "non-negative"),
    "constant outcome": (lambda d, t: _bad(t, pd.read_csv(d).assign(y=1)), "binomial",
                         "constant"),
    "unknown family": (lambda d, t: d, "tweedie", "unknown family"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_input_exits_2_with_one_line(case, data_csv, tmp_path, capsys) -> None:
    make, family, fragment = BAD_CASES[case]
    path = make(data_csv, tmp_path)
    code, out, err = _run(["fit", str(path), "--formula", FORMULA, "--family", family,
                           "--site-column", "hospital", "--quiet"], capsys)
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert fragment in lines[0]
    assert "Traceback" not in err + out


def test_groups_must_be_nested_in_sites(data_csv, tmp_path, capsys) -> None:
    frame = pd.read_csv(data_csv).assign(site=lambda f: f.index % 2)
    path = _bad(tmp_path, frame)
    code, _, err = _run(["fit", str(path), "--formula", FORMULA, "--site-column", "site",
                         "--quiet"], capsys)
    assert code == 2 and "nested" in err


def test_bad_flags_exit_2(data_csv, capsys) -> None:
    code, _, err = _run(["fit", str(data_csv), "--formula", FORMULA, "--site-column",
                         "hospital", "--nagq", "0", "--quiet"], capsys)
    assert code == 2 and "--nagq" in err
    code, _, err = _run(["fit", str(data_csv), "--formula", FORMULA, "--site-column",
                         "hospital", "--protect", "magic", "--quiet"], capsys)
    assert code == 2 and "--protect" in err


def test_demo_runs_on_builtin_data(capsys) -> None:
    code, out, _ = _run(["demo", "--sites", "4", "--rows", "60", "--quiet"], capsys)
    assert code == 0 and "converged" in out


def test_usage_errors_exit_2(data_csv, capsys) -> None:
    code, _, err = _run(["fit", str(data_csv)], capsys)
    assert code == 2 and "--formula" in err
    code, _, err = _run(["fit", str(data_csv), "--formula", FORMULA, "--site-column",
                         "hospital", "--nagq", "abc"], capsys)
    assert code == 2 and "Traceback" not in err


def test_missing_values_are_omitted_as_r_does_or_refused(data_csv, tmp_path, capsys) -> None:
    frame = pd.read_csv(data_csv)
    frame.loc[[3, 5], "x1"] = np.nan
    path = _bad(tmp_path, frame)
    out_json = tmp_path / "fit.json"
    code, out, _ = _run(["fit", str(path), "--formula", FORMULA, "--site-column", "hospital",
                         "--json", str(out_json), "--quiet"], capsys)
    assert code == 0
    result = json.loads(out_json.read_text())
    assert result["n_obs"] == len(frame) - 2
    assert any("missing values omitted" in w for w in result["warnings"])
    code, _, err = _run(["fit", str(path), "--formula", FORMULA, "--site-column", "hospital",
                         "--na-action", "fail", "--quiet"], capsys)
    assert code == 2 and "missing values" in err and len(err.strip().splitlines()) == 1


def test_a_formula_cannot_run_code_at_a_site(data_csv, tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    formula = "y ~ x1 + I(open('pwned','w').write('x')) + (1 | hospital)"
    code, _, err = _run(["fit", str(data_csv), "--formula", formula, "--site-column",
                         "hospital", "--quiet"], capsys)
    assert code == 2 and "cannot read the formula" in err
    assert not (tmp_path / "pwned").exists()


def test_text_columns_are_factors_with_lme4_names(data_csv, tmp_path, capsys) -> None:
    frame = pd.read_csv(data_csv)
    frame["arm"] = np.where(frame.index % 3 == 0, "placebo", "drug")
    path = _bad(tmp_path, frame)
    out_json = tmp_path / "fit.json"
    code, _, _ = _run(["fit", str(path), "--formula", "y ~ x1 * arm + I(x1^2) + (1 | hospital)",
                       "--site-column", "hospital", "--json", str(out_json), "--quiet"], capsys)
    assert code == 0
    terms = [fe["term"] for fe in json.loads(out_json.read_text())["fixed_effects"]]
    assert terms == ["(Intercept)", "x1", "armplacebo", "I(x1^2)", "x1:armplacebo"]


def test_duplicated_column_names_are_refused(data_csv, tmp_path, capsys) -> None:
    text = data_csv.read_text().splitlines()
    header = text[0].split(",")
    header[header.index("x1")] = "y"
    path = tmp_path / "dup.csv"
    path.write_text("\n".join([",".join(header), *text[1:]]) + "\n")
    code, _, err = _run(["fit", str(path), "--formula", FORMULA, "--site-column", "hospital",
                         "--quiet"], capsys)
    assert code == 2 and "more than one column named 'y'" in err


def test_cbind_response_and_prior_weights(tmp_path, capsys) -> None:
    golden = Path(__file__).parents[1] / "golden" / "glmm_language" / "data" / "cbpp_cbind.csv"
    out_json = tmp_path / "fit.json"
    formula = "cbind(incidence, size - incidence) ~ factor(period) + (1 | herd)"
    code, _, _ = _run(["fit", str(golden), "--formula", formula, "--site-column", "site",
                       "--protect", "secagg", "--json", str(out_json), "--quiet"], capsys)
    assert code == 0
    cbind = json.loads(out_json.read_text())
    frame = pd.read_csv(golden).assign(prop=lambda f: f.incidence / f["size"])
    path = _bad(tmp_path, frame)
    code, _, _ = _run(["fit", str(path), "--formula", "prop ~ factor(period) + (1 | herd)",
                       "--weights", "size", "--site-column", "site", "--json", str(out_json),
                       "--quiet"], capsys)
    assert code == 0
    weighted = json.loads(out_json.read_text())
    assert weighted["loglik"] == pytest.approx(cbind["loglik"], abs=1e-8)
    assert cbind["n_obs"] == 56 and cbind["loglik"] == pytest.approx(-92.02628, abs=1e-3)
    code, _, err = _run(["fit", str(golden), "--formula", formula, "--family", "poisson",
                         "--site-column", "site", "--quiet"], capsys)
    assert code == 2 and "binomial" in err
