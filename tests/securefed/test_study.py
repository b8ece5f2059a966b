"""`securefed run STUDY.toml`: same result as the Python API, a verifiable audit trail,
and every study-file mistake caught before any round with exit 2 and its line number."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from securefed.audit_verify import verify_log
from securefed.bfi_run import BFIOptions, run_bfi
from securefed.cli import main
from securefed.data import builtin_path
from securefed.glmm_run import GLMMOptions, run_glmm
from securefed.keys import Registry
from securefed.synthetic import make_hospitals

GLMM_FORMULA = "y ~ x2 + x6 + (1 | site)"
RUN_ONLY = ("data", "seconds", "timings", "model", "study")


def _write_sites(folder: Path, frame: pd.DataFrame, column: str, prefix: str) -> list[str]:
    names = []
    for key, part in frame.groupby(column, sort=True):
        name = f"{prefix}{key}"
        part.drop(columns=column).to_csv(folder / f"{name}.csv", index=False)
        names.append(name)
    return names


def _study(names: list[str], model: str, protection: str = "", out: str = "out") -> str:
    sites = "".join(f'\n[[sites]]\nname = "{n}"\ndata = "{n}.csv"\n' for n in names)
    return f"[model]\n{model}\n{protection}\n{sites}\n[output]\ndir = \"{out}\"\n"


@pytest.fixture
def hospitals(tmp_path: Path) -> list[str]:
    return _write_sites(tmp_path, make_hospitals(4, 80, seed=7), "hospital", "H")


@pytest.fixture
def trauma(tmp_path: Path) -> list[str]:
    return _write_sites(tmp_path, pd.read_csv(builtin_path("trauma")), "hospital", "T")


def _frame(folder: Path, names: list[str]) -> pd.DataFrame:
    return pd.concat([pd.read_csv(folder / f"{n}.csv").assign(site=n) for n in names],
                     ignore_index=True)


def _run(args: list[str], capsys) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def _without(result: dict, keys=RUN_ONLY) -> dict:
    return {k: v for k, v in result.items() if k not in keys}


def test_glmm_study_equals_run_glmm_and_writes_every_output(tmp_path, hospitals, capsys,
                                                            monkeypatch) -> None:
    monkeypatch.setenv("TTY_COMPATIBLE", "1")  # stderr counts as a terminal: progress shows
    study = tmp_path / "study.toml"
    study.write_text(_study(hospitals, f'kind = "glmm"\nformula = "{GLMM_FORMULA}"\n'
                                       'family = "binomial"\nnagq = 2'))
    code, out, err = _run(["run", str(study)], capsys)
    assert code == 0, err
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    direct = run_glmm(_frame(tmp_path, hospitals),
                      GLMMOptions(GLMM_FORMULA, "binomial", "site", nagq=2)).to_dict()
    assert _without(result) == _without(direct, ("seconds", "timings"))
    assert result["model"] == "glmm"
    assert {"loading", "fitting", "writing", "sites_statistics"} <= set(result["timings"])
    assert all(v >= 0 for v in result["timings"].values())
    assert [s["rows"] for s in result["study"]["sites"]] == [80] * 4
    summary = (tmp_path / "out" / "summary.txt").read_text()
    assert summary.strip() in out and "Fixed effects:" in summary
    assert "site H1: 80 rows" in err and "round" in err and "audit verify" in err
    for name in ["audit.jsonl", "audit.registry.json", *(f"audit.site-{n}.jsonl"
                                                        for n in hospitals)]:
        assert (tmp_path / "out" / name).is_file()


def test_bfi_study_under_secagg_matches_run_bfi_and_its_audit_trail_verifies(
        tmp_path, trauma, capsys) -> None:
    study = tmp_path / "bfi.toml"
    model = ('kind = "bfi"\nformula = "mortality ~ age + ISS + GCS"\nfamily = "binomial"\n'
             "lambda = 0.01\ncompare_pooled = true")
    study.write_text(_study(trauma, model, '[protection]\nlayers = ["secagg"]\nthreshold = 2',
                            out="results/bfi"))
    code, out, err = _run(["run", str(study), "--quiet"], capsys)
    assert code == 0, err
    assert err == ""  # --quiet: no progress
    assert "Bayesian Federated Inference" in out
    folder = tmp_path / "results" / "bfi"
    result = json.loads((folder / "result.json").read_text())
    direct = run_bfi(_frame(tmp_path, trauma), BFIOptions(
        "mortality ~ age + ISS + GCS", "binomial", "site", lam=0.01, compare_pooled=True))
    for got, want in zip(result["estimates"], direct.to_dict()["estimates"], strict=True):
        assert got["term"] == want["term"]
        assert got["estimate"] == pytest.approx(want["estimate"], abs=1e-8)
        assert got["sd"] == pytest.approx(want["sd"], abs=1e-8)
    assert result["protection"] == "secagg" and result["pooled"]["estimates"]
    assert result["study"]["protection"]["threshold"] == 2
    registry = Registry.load(folder / "audit.registry.json")
    report = verify_log(folder / "audit.jsonl", registry,
                        [folder / f"audit.site-{n}.jsonl" for n in trauma])
    assert report.ok, report.summary()


GOOD_MODEL = ['kind = "glmm"', f'formula = "{GLMM_FORMULA}"', 'family = "binomial"']


def _lines(model: list[str], protection: list[str], names: list[str],
           sites: list[tuple[str, str]] | None = None) -> str:
    """A study whose line numbers are easy to count: 1 [model], 2.. model keys, ..."""
    text = ["[model]", *model, "[protection]", *protection]
    for name, data in sites or [(n, f"{n}.csv") for n in names]:
        text += ["[[sites]]", f'name = "{name}"', f'data = "{data}"']
    return "\n".join([*text, "[output]", 'dir = "out"']) + "\n"


def _error_cases(names: list[str]) -> list[tuple[str, int, str]]:
    """(study text, expected line, fragment of the message)."""
    first = 1 + len(GOOD_MODEL) + 1 + 1  # line of the first [[sites]] header (empty protection)
    return [
        (_lines([*GOOD_MODEL, "nagc = 5"], [], names), 5,
         "unknown key 'nagc' in [model] (did you mean 'nagq'?)"),
        (_lines(GOOD_MODEL[:2] + ['family = "binomal"'], [], names), 4,
         "unknown family 'binomal'"),
        (_lines([GOOD_MODEL[0], GOOD_MODEL[2]], [], names), 1, "[model] has no formula"),
        (_lines([*GOOD_MODEL, 'stratify = ["x2"]'], [], names), 5, "a bfi option"),
        (_lines([*GOOD_MODEL, 'nagq = "5"'], [], names), 5, "must be a whole number"),
        (_lines(GOOD_MODEL[:1] + ['formula = "y ~ x2 + x99 + (1 | site)"'] + GOOD_MODEL[2:],
                [], names), 3, "column 'x99' (in formula) is not in H1.csv"),
        (_lines(GOOD_MODEL, ['layers = ["secagg"]', "threshold = 5"], names), 7,
         "threshold 5 is impossible with 4 sites"),
        (_lines(GOOD_MODEL, ['layers = ["secagg"]', "threshold = 1"], names), 7,
         "threshold 1 is impossible"),
        (_lines(GOOD_MODEL, ['layers = ["secgg"]'], names), 6, "(did you mean 'secagg'?)"),
        (_lines(GOOD_MODEL, [], names, [(n, f"{n}.csv") for n in names] + [("H1", "H2.csv")]),
         first + 3 * len(names) + 1, "site 'H1' is listed twice (first at line "
         f"{first + 1})"),
        (_lines(GOOD_MODEL, [], names, [(n, f"{n}.csv") for n in names] + [("H9", "nope.csv")]),
         first + 3 * len(names) + 2, "data file nope.csv of site 'H9' does not exist"),
        ('[model]\nkind = "glmm"\nformula = "y ~ x2\n', 3, "not valid TOML"),
        (_lines(GOOD_MODEL, ['layers = ["secagg", "dp"]'], names), 6,
         "the dp layer needs a budget: add [privacy]"),
        (_lines(GOOD_MODEL, ['layers = ["none", "secagg"]'], names), 6, "is not a stack"),
        (_lines(GOOD_MODEL, ['layers = ["secagg"]', "[privacy]", "epsilon = 1.0"], names), 7,
         "[privacy] applies to differential privacy"),
        (_lines(GOOD_MODEL, ['layers = ["secagg", "dp"]', "[privacy]", "epsilon = 1.0"],
                names), 7, "needs clip R"),
        (_lines(GOOD_MODEL, ['layers = ["secagg", "dp"]', "[privacy]", "epsilon = 1.0",
                             "clip = 2.0", "epsilonn = 2"], names), 10,
         "unknown key 'epsilonn' in [privacy]"),
    ]


def test_every_study_file_error_exits_2_with_one_line_naming_its_line(
        tmp_path, hospitals, capsys) -> None:
    study = tmp_path / "study.toml"
    for text, line, fragment in _error_cases(hospitals):
        study.write_text(text)
        code, out, err = _run(["run", str(study)], capsys)
        assert code == 2, (text, err)
        message = err.strip()
        assert "\n" not in message, message
        assert fragment in message, (fragment, message)
        assert f"line {line}" in message, (line, message)
        assert message.startswith(f"error: {study}"), message
        assert not (tmp_path / "out").exists()  # nothing ran, nothing written


def test_an_existing_audit_trail_is_refused_before_any_round(tmp_path, hospitals, capsys) -> None:
    study = tmp_path / "study.toml"
    study.write_text(_lines(GOOD_MODEL, [], hospitals))
    assert _run(["run", str(study), "--quiet"], capsys)[0] == 0
    before = (tmp_path / "out" / "audit.jsonl").read_bytes()
    code, _, err = _run(["run", str(study), "--quiet"], capsys)
    output_line = len(study.read_text().splitlines())
    assert code == 2 and f"line {output_line}: " in err and "never overwritten" in err
    assert (tmp_path / "out" / "audit.jsonl").read_bytes() == before


def test_a_site_file_with_its_own_site_column_is_refused(tmp_path, hospitals, capsys) -> None:
    frame = pd.read_csv(tmp_path / "H2.csv").assign(site="x")
    frame.to_csv(tmp_path / "H2.csv", index=False)
    study = tmp_path / "study.toml"
    study.write_text(_lines(GOOD_MODEL, [], hospitals))
    code, _, err = _run(["run", str(study)], capsys)
    assert code == 2 and "line 11: H2.csv already has a column 'site'" in err


def test_missing_study_file_and_missing_sections(tmp_path, capsys) -> None:
    code, _, err = _run(["run", str(tmp_path / "none.toml")], capsys)
    assert code == 2 and "no such file" in err
    study = tmp_path / "study.toml"
    study.write_text('title = "x"\n[model]\nkind = "bfi"\n')
    code, _, err = _run(["run", str(study)], capsys)
    assert code == 2 and "has no [[sites]] entries" in err
    study.write_text('title = "x"\n\n[modle]\nkind = "bfi"\n')
    code, _, err = _run(["run", str(study)], capsys)
    assert code == 2 and "line 3: unknown key 'modle' in the top level (did you mean 'model'?)" \
        in err


def test_a_secagg_dp_study_spends_its_budget_and_records_it(tmp_path, hospitals, capsys) -> None:
    study = tmp_path / "dp.toml"
    study.write_text(_study(hospitals, f'kind = "glmm"\nformula = "{GLMM_FORMULA}"\n'
                                       'family = "binomial"',
                            '[protection]\nlayers = ["secagg", "dp"]\n\n'
                            '[privacy]\nepsilon = 8.0\nclip = 3.0\nrounds = 2\n'))
    code, out, err = _run(["run", str(study), "--quiet"], capsys)
    assert code == 0, err
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert result["protection"] == "secagg,dp"
    assert result["privacy"]["epsilon_spent"] == pytest.approx(8.0, rel=1e-6)
    assert len(result["privacy"]["releases"]) == 3  # design summary + 2 Newton rounds
    assert result["study"]["protection"]["privacy"]["clip"] == 3.0
    folder = tmp_path / "out"
    report = verify_log(folder / "audit.jsonl", Registry.load(folder / "audit.registry.json"),
                        [folder / f"audit.site-{n}.jsonl" for n in hospitals])
    assert report.ok, report.summary()


@pytest.mark.parametrize(("csv", "model", "options"), [
    ("sleepstudy_gamma_log", 'formula = "Reaction ~ Days + (1 | Subject)"\nfamily = "Gamma"\n'
     'link = "log"', {"family": "Gamma", "link": "log"}),
    ("dyestuff2_reml", 'formula = "Yield ~ 1 + (1 | Batch)"\nfamily = "gaussian"\nreml = true',
     {"family": "gaussian", "reml": True})])
def test_a_study_takes_the_link_and_reml(tmp_path, capsys, csv, model, options) -> None:
    golden = Path(__file__).parents[1] / "golden" / "glmm_families" / "data" / f"{csv}.csv"
    names = _write_sites(tmp_path, pd.read_csv(golden), "centre", "C")
    study = tmp_path / "study.toml"
    study.write_text(_study(names, f'kind = "glmm"\n{model}'))
    code, _, err = _run(["run", str(study), "--quiet"], capsys)
    assert code == 0, err
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    formula = model.split('"')[1]
    direct = run_glmm(_frame(tmp_path, names), GLMMOptions(formula, site_column="site",
                                                           **options)).to_dict()
    assert result["theta"] == pytest.approx(direct["theta"], abs=1e-10)
    assert result["link"] == direct["link"] and result["reml"] == direct["reml"]
