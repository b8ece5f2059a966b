"""Survival models in study files: `kind = "cox"` and BFI with `family = "survival"`, equal
to `securefed cox` / `bfi --family survival` on the same rows, with a verifiable trail; their
mistakes exit 2 with one line."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from test_study import _frame, _run, _study, _write_sites

from securefed.audit_verify import verify_log
from securefed.bfi_survival_run import SurvivalBFIOptions, run_bfi_survival
from securefed.cox_run import CoxOptions, run_cox
from securefed.keys import Registry

GOLDEN = Path(__file__).parents[1] / "golden"
COX_FORMULA = "Surv(time, status) ~ age + sex + ph.ecog"


@pytest.fixture
def lung(tmp_path: Path) -> list[str]:
    frame = pd.read_csv(GOLDEN / "cox" / "lung.csv").dropna()
    return _write_sites(tmp_path, frame, "site", "")


@pytest.fixture
def gompertz(tmp_path: Path) -> list[str]:
    return _write_sites(tmp_path, pd.read_csv(GOLDEN / "bfi_survival" / "gompertz_bfi.csv"),
                        "centre", "c")


def _verified(folder: Path, names: list[str]) -> None:
    registry = Registry.load(folder / "audit.registry.json")
    report = verify_log(folder / "audit.jsonl", registry,
                        [folder / f"audit.site-{n}.jsonl" for n in names])
    assert report.ok, report.summary()


def test_cox_study_under_secagg_equals_run_cox_and_its_trail_verifies(tmp_path, lung,
                                                                       capsys) -> None:
    study = tmp_path / "cox.toml"
    study.write_text(_study(lung, f'kind = "cox"\nformula = "{COX_FORMULA}"\nties = "breslow"',
                            '[protection]\nlayers = ["secagg"]'))
    code, out, err = _run(["run", str(study), "--quiet"], capsys)
    assert code == 0, err
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    direct = run_cox(_frame(tmp_path, lung), CoxOptions(COX_FORMULA, "site", "breslow"))
    want = direct.to_dict()
    assert result["model"] == "cox" and result["n_events"] == want["n_events"]
    for got, ref in zip(result["fixed_effects"], want["fixed_effects"], strict=True):
        assert got["term"] == ref["term"]
        assert got["estimate"] == pytest.approx(ref["estimate"], abs=1e-8)
        assert got["std_error"] == pytest.approx(ref["std_error"], abs=1e-8)
    assert result["loglik"] == pytest.approx(want["loglik"], abs=1e-8)
    _verified(tmp_path / "out", lung)


def test_survival_bfi_study_equals_run_bfi_survival(tmp_path, gompertz, capsys) -> None:
    formula = "Surv(time, status) ~ x1 + x2"
    study = tmp_path / "bfi.toml"
    study.write_text(_study(gompertz, f'kind = "bfi"\nformula = "{formula}"\n'
                            'family = "survival"\nbaseline = "gompertz"\nlambda = 0.01'))
    code, out, err = _run(["run", str(study), "--quiet"], capsys)
    assert code == 0, err
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    direct = run_bfi_survival(_frame(tmp_path, gompertz),
                              SurvivalBFIOptions(formula, "site", "gompertz", 0.01)).to_dict()
    for got, ref in zip(result["estimates"], direct["estimates"], strict=True):
        assert got["term"] == ref["term"]
        assert got["estimate"] == pytest.approx(ref["estimate"], abs=1e-8)
        assert got["sd"] == pytest.approx(ref["sd"], abs=1e-8)
    _verified(tmp_path / "out", gompertz)


@pytest.mark.parametrize(("model", "fragment"), [
    (f'kind = "cox"\nformula = "{COX_FORMULA}"\nties = "exact"', "ties 'exact'"),
    (f'kind = "cox"\nformula = "{COX_FORMULA}"\nfamily = "binomial"', "family"),
    ('kind = "cox"\nformula = "time ~ age"', "formula:"),
    (f'kind = "bfi"\nformula = "{COX_FORMULA}"\nfamily = "survival"', "needs baseline"),
    (f'kind = "glmm"\nformula = "{COX_FORMULA}"\nfamily = "survival"', 'kind = "cox"'),
])
def test_survival_study_mistakes_exit_2_with_one_line(tmp_path, lung, capsys, model,
                                                      fragment) -> None:
    study = tmp_path / "bad.toml"
    study.write_text(_study(lung, model))
    code, out, err = _run(["run", str(study)], capsys)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and fragment in err, err


def test_a_survival_study_refuses_differential_privacy(tmp_path, lung, capsys) -> None:
    study = tmp_path / "dp.toml"
    study.write_text(_study(lung, f'kind = "cox"\nformula = "{COX_FORMULA}"',
                            '[protection]\nlayers = ["secagg", "dp"]\n[privacy]\nepsilon = 1'))
    code, out, err = _run(["run", str(study)], capsys)
    assert code == 2 and "not available for survival" in err, err
