"""``import securefed as sf``: the public names, result methods, and the README snippet."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.special import expit

import securefed as sf
from securefed.bfi_run import BFIOptions, run_bfi
from securefed.glmm_run import GLMMOptions, run_glmm

ROOT = Path(__file__).resolve().parents[2]
TRAUMA_MODEL = "mortality ~ age + GCS + (1 | hospital)"
NURSES_MODEL = "stress ~ age + gender + experien + wardtype"


@pytest.fixture(scope="module")
def trauma() -> pd.DataFrame:
    return sf.load_data("trauma")


@pytest.fixture(scope="module")
def glmm(trauma):
    return sf.fit_glmm(trauma, TRAUMA_MODEL, site_column="hospital", nagq=2)


def test_every_public_name_loads_lazily() -> None:
    code = ("import sys, securefed as sf\nheavy = [m for m in ('pandas', 'scipy', 'numpy', "
            "'cryptography') if m in sys.modules]\nnames = [getattr(sf, n) for n in sf.__all__]"
            "\nprint(heavy, len(names))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, check=True)
    assert done.stdout.strip() == f"[] {len(sf.__all__)}"
    assert {"fit_glmm", "fit_bfi", "run_study", "SecAggSum", "CkksSum", "GLMMFit",
            "BFIReport"} <= set(sf.__all__) <= set(dir(sf))
    with pytest.raises(AttributeError):
        sf.no_such_name  # noqa: B018


def test_fit_glmm_equals_run_glmm(trauma, glmm) -> None:
    direct = run_glmm(trauma, GLMMOptions(TRAUMA_MODEL, "binomial", "hospital", nagq=2))
    assert isinstance(glmm, sf.GLMMFit)
    assert glmm.coef() == pytest.approx(direct.coef(), abs=1e-12)


def test_glmm_tables_and_confint(glmm) -> None:
    frame = glmm.to_frame()
    assert list(frame.index) == [fe.term for fe in glmm.fixed_effects]
    assert frame.loc["age", "estimate"] == glmm.coef()["age"]
    interval = glmm.confint()
    assert list(interval.columns) == ["2.5 %", "97.5 %"]
    np.testing.assert_allclose(interval["2.5 %"], frame["ci_low"], rtol=1e-12)
    narrow = glmm.confint(level=0.5)  # z = 0.6745 against 1.96
    np.testing.assert_allclose(narrow["75 %"] - frame["estimate"],
                               0.6744897501960817 * frame["std_error"], rtol=1e-12)
    with pytest.raises(ValueError, match="level"):
        glmm.confint(level=1.0)


def test_glmm_predict_population_level_is_the_inverse_link_of_x_beta(trauma, glmm) -> None:
    rows = trauma.iloc[[0, 10, 200]]
    beta = glmm.coef()
    eta = beta["(Intercept)"] + beta["age"] * rows.age + beta["GCS"] * rows.GCS
    np.testing.assert_allclose(glmm.predict(rows), expit(eta.to_numpy()), rtol=1e-12)
    np.testing.assert_allclose(glmm.predict(rows, response=False), eta, rtol=1e-12)


def test_glmm_predict_conditional_adds_the_sites_mode(trauma, glmm) -> None:
    rows = trauma.iloc[[0, 1, 2]].assign(hospital=[1, 2, 3])
    base = glmm.predict(rows, response=False)
    cond = glmm.predict(rows, response=False, modes={2: np.array([0.4])})
    np.testing.assert_allclose(cond - base, [0.0, 0.4, 0.0], atol=1e-12)


def test_glmm_predict_codes_a_factor_as_the_fit_did(trauma) -> None:
    coded = trauma.assign(sex=trauma.sex.map({0: "female", 1: "male"}))
    fit = sf.fit_glmm(coded, "mortality ~ age + sex + (1 | hospital)", site_column="hospital")
    beta = fit.coef()
    assert set(beta) == {"(Intercept)", "age", "sexmale"}
    rows = pd.DataFrame({"age": [30.0, 70.0], "sex": ["male", "female"]})  # one level each
    eta = beta["(Intercept)"] + beta["age"] * rows.age + beta["sexmale"] * (rows.sex == "male")
    np.testing.assert_allclose(fit.predict(rows), expit(eta.to_numpy()), rtol=1e-12)
    with pytest.raises(ValueError, match="did not agree on"):
        fit.predict(pd.DataFrame({"age": [30.0], "sex": ["other"]}))
    with pytest.raises(ValueError, match="column 'sex'"):
        fit.predict(pd.DataFrame({"age": [40.0]}))


def test_fit_bfi_equals_run_bfi_and_its_tables() -> None:
    nurses = sf.load_data("Nurses")
    report = sf.fit_bfi(nurses, NURSES_MODEL, site_column="hospital",
                        standardize=["age", "experien", "stress"])
    direct = run_bfi(nurses, BFIOptions(NURSES_MODEL, "gaussian", "hospital",
                                        standardize=("age", "experien", "stress")))
    assert isinstance(report, sf.BFIReport)
    np.testing.assert_allclose(report.fit.estimate, direct.fit.estimate, rtol=1e-12)
    frame = report.to_frame()
    assert frame.loc["age", "estimate"] == direct.estimates[1]["estimate"]
    np.testing.assert_allclose(report.confint()["97.5 %"], frame["ci_high"], rtol=1e-10)
    new = nurses.head(4)
    std = report.standardization
    scaled = new.assign(**{c: (new[c] - std["mean"][j]) / std["sd"][j]
                           for j, c in enumerate(std["columns"])})
    X = np.column_stack([np.ones(len(new)), scaled.age, scaled.gender, scaled.experien,
                         scaled.wardtype])
    np.testing.assert_allclose(report.predict(new), X @ report.fit.estimate[:5], rtol=1e-10)


def test_protect_text_and_layer_objects_give_the_same_fit(trauma, glmm) -> None:
    by_text = sf.fit_glmm(trauma, TRAUMA_MODEL, site_column="hospital", nagq=2,
                          protect="secagg")
    by_object = sf.fit_glmm(trauma, TRAUMA_MODEL, site_column="hospital", nagq=2,
                            protect=sf.SecAggSum())
    assert by_text.protection == by_object.protection == "secagg"
    assert by_text.coef() == pytest.approx(glmm.coef(), abs=1e-8)
    assert by_object.coef() == pytest.approx(glmm.coef(), abs=1e-8)


def test_api_input_errors_are_input_errors(trauma) -> None:
    with pytest.raises(sf.InputError, match=r"missing '\)' at the end"):
        sf.fit_glmm(trauma, "mortality ~ age + (1 | hospital", site_column="hospital")
    with pytest.raises(sf.InputError, match="random-effects"):
        sf.fit_bfi(trauma, TRAUMA_MODEL, site_column="hospital")


def _readme_snippet() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    snippets = [b for b in blocks if "import securefed as sf" in b]
    assert len(snippets) == 1
    return snippets[0]


def test_the_readme_snippet_runs_as_written(tmp_path) -> None:
    script = tmp_path / "snippet.py"
    script.write_text(_readme_snippet(), encoding="utf-8")
    env_path = f"{ROOT}"  # this checkout's packages, not another installed copy
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                          text=True, env={"PYTHONPATH": env_path, "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "federated over 3 sites; protection: secagg" in done.stdout
    assert "Bayesian Federated Inference (gaussian), 25 sites, protection: secagg" in done.stdout
