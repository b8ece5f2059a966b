"""`securefed bfi` and `bfi-holdout` on the bundled Nurses and trauma data."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from securefed.cli import main
from securefed.data import builtin_path

NURSES = str(builtin_path("Nurses"))
TRAUMA = str(builtin_path("trauma"))
NURSES_MODEL = ["--formula", "stress ~ age + gender + experien + wardtype", "--family",
                "gaussian", "--site-column", "hospital", "--lambda", "0.01",
                "--standardize", "age,experien,stress"]


def _json(args: list[str], tmp_path: Path, capsys) -> dict:
    out = tmp_path / "bfi.json"
    assert main(["bfi", *args, "--json", str(out), "--quiet"]) == 0
    capsys.readouterr()
    return json.loads(out.read_text())


def test_homogeneous_bfi_json_contract_and_paper_pooled_column(tmp_path, capsys) -> None:
    result = _json([NURSES, *NURSES_MODEL, "--compare-pooled"], tmp_path, capsys)
    for key in ("estimates", "dispersion", "family", "lambda", "n_sites", "pooled"):
        assert key in result
    assert result["n_sites"] == 25 and result["family"] == "gaussian"
    assert result["n_sites_counted"] == 25
    row = result["estimates"][0]
    assert set(row) == {"term", "estimate", "sd", "ci_low", "ci_high"}
    pooled = {r["term"]: r for r in result["pooled"]["estimates"]}
    # the paper's Table 1, "combined" column
    for term, est, sd in [("(Intercept)", 0.332, 0.066), ("age", 0.233, 0.052),
                          ("gender", -0.503, 0.068), ("experien", -0.352, 0.052),
                          ("wardtype", 0.075, 0.060)]:
        assert round(pooled[term]["estimate"], 3) == est
        assert round(pooled[term]["sd"], 3) == sd
    assert round(result["pooled"]["dispersion"], 3) == 0.907
    bfi = {r["term"]: r["estimate"] for r in result["estimates"]}
    assert bfi["wardtype"] == pytest.approx(-0.0104, abs=5e-4)
    assert bfi["(Intercept)"] == pytest.approx(0.5215, abs=5e-4)


def test_stratified_and_categorical_terms_name_their_centre(tmp_path, capsys) -> None:
    strat = _json([NURSES, *NURSES_MODEL, "--stratify", "(Intercept)"], tmp_path, capsys)
    terms = [r["term"] for r in strat["estimates"]]
    assert "(Intercept)[hospital=1]" in terms and "(Intercept)[hospital=25]" in terms
    assert "(Intercept)" not in terms
    cat = _json([NURSES, *NURSES_MODEL, "--center-covariate", "hospsize", "--compare-pooled"],
                tmp_path, capsys)
    terms = [r["term"] for r in cat["estimates"]]
    assert {"(Intercept):hospsize=0", "(Intercept):hospsize=1", "(Intercept):hospsize=2"} \
        <= set(terms)
    pooled = {r["term"]: r["estimate"] for r in cat["pooled"]["estimates"]}
    # the paper's Table 2 (pooled with hospital size)
    assert round(pooled["(Intercept):hospsize=1"], 2) == pytest.approx(0.45, abs=0.01)


def test_continuous_centre_covariate_regresses_centre_intercepts(tmp_path, capsys) -> None:
    frame = pd.read_csv(NURSES)
    frame["beds"] = frame.hospsize * 100.0 + frame.hospital
    path = tmp_path / "nurses_beds.csv"
    frame.to_csv(path, index=False)
    result = _json([str(path), *NURSES_MODEL, "--center-covariate", "beds",
                    "--center-covariate-kind", "continuous"], tmp_path, capsys)
    reg = result["centre_regression"]
    assert reg["covariate"] == "beds" and len(reg["estimate"]) == 2
    assert reg["estimate"][1] > 0  # larger hospitals, more stress (as hospsize shows)


def test_heterogeneity_table_and_prediction(tmp_path, capsys) -> None:
    result = _json([NURSES, *NURSES_MODEL, "--heterogeneity", "(Intercept)"], tmp_path, capsys)
    table = result["heterogeneity"]["(Intercept)"]
    assert len(table["leave_one_out"]) == 25 and len(table["pairwise"]) == 300
    new = pd.read_csv(NURSES).head(20)
    new_path = tmp_path / "new.csv"
    new.to_csv(new_path, index=False)
    preds = tmp_path / "pred.csv"
    assert main(["bfi", NURSES, *NURSES_MODEL, "--stratify", "(Intercept)", "--predict",
                 str(new_path), "--predictions-out", str(preds), "--quiet"]) == 0
    out = pd.read_csv(preds)
    assert len(out) == 20 and out.prediction.notna().all()


def test_logistic_bfi_on_trauma_close_to_pooled(tmp_path, capsys) -> None:
    result = _json([TRAUMA, "--formula", "mortality ~ age + sex + ISS + GCS", "--family",
                    "binomial", "--site-column", "hospital", "--standardize", "age,ISS,GCS",
                    "--compare-pooled"], tmp_path, capsys)
    pooled = {r["term"]: r for r in result["pooled"]["estimates"]}
    for row in result["estimates"]:
        ref = pooled[row["term"]]
        assert abs(row["estimate"] - ref["estimate"]) < 1.2 * ref["sd"]


def test_bfi_holdout_writes_the_scatter(tmp_path, capsys) -> None:
    png = tmp_path / "fig2.png"
    code = main(["bfi-holdout", TRAUMA, "--formula", "mortality ~ age + ISS + GCS", "--family",
                 "binomial", "--site-column", "hospital", "--repeats", "2", "--png", str(png)])
    out = capsys.readouterr().out
    assert code == 0 and png.stat().st_size > 10_000
    assert "homogeneous" in out and "correlation" in out


@pytest.mark.parametrize(("extra", "fragment"), [
    (["--formula", "stress ~ age + (1 | ward)"], "random-effects"),
    (["--lambda", "0"], "positive"),
    (["--stratify", "nonsense"], "not a parameter"),
    (["--center-covariate", "age"], "constant within each site"),
])
def test_bfi_bad_input_exits_2(extra, fragment, capsys) -> None:
    args = ["bfi", NURSES, *NURSES_MODEL, *extra, "--quiet"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert fragment in err and len(err.strip().splitlines()) == 1


def test_combined_prior_is_settable_and_used_exactly(tmp_path, capsys) -> None:
    """--combined-lambda L: theta = (sum A_l + L - sum L_l)^{-1} sum A_l theta_l (eq. 3),
    checked against local MAP fits computed here independently."""
    import numpy as np

    from core_stats import bfi as core_bfi
    from core_stats.families import GAUSSIAN
    from securefed.bfi_run import BFIOptions, run_bfi

    frame = pd.read_csv(NURSES)
    strong = run_bfi(frame, BFIOptions("stress ~ age + gender", "gaussian", "hospital",
                                       lam=0.01, combined_lam=50.0))
    site_prior = core_bfi.prior_precision(3, GAUSSIAN, lam=0.01)
    combined = core_bfi.prior_precision(3, GAUSSIAN, lam=50.0)
    A_sum, b_sum, L_sum = 0.0, 0.0, 0.0
    for _, part in frame.groupby("hospital"):
        X = np.column_stack([np.ones(len(part)), part.age, part.gender])
        local = core_bfi.fit_map(X, part.stress.to_numpy(float), GAUSSIAN, site_prior)
        A = np.linalg.inv(local.covariance)
        A_sum, b_sum, L_sum = A_sum + A, b_sum + A @ local.theta, L_sum + site_prior
    expected = np.linalg.solve(A_sum + combined - L_sum, b_sum)
    np.testing.assert_allclose(strong.fit.estimate, expected, rtol=1e-8, atol=1e-10)
    cli = _json([NURSES, "--formula", "stress ~ age + gender", "--site-column", "hospital",
                 "--combined-lambda", "50"], tmp_path, capsys)
    np.testing.assert_allclose([r["estimate"] for r in cli["estimates"]], expected,
                               rtol=1e-8, atol=1e-10)


def test_bfi_reads_factors_as_glmm_does(tmp_path, capsys) -> None:
    """The same formula language: a text column is a factor with lme4's names, and BFI on it
    equals BFI on the 0/1 column it stands for."""
    frame = pd.read_csv(NURSES)
    frame["ward"] = frame.wardtype.map({0: "general", 1: "special"})
    frame["sex"] = frame.gender.map({0: "female", 1: "male"})
    path = tmp_path / "nurses_text.csv"
    frame.to_csv(path, index=False)
    coded = _json([NURSES, *NURSES_MODEL], tmp_path, capsys)
    text = _json([str(path), "--formula", "stress ~ age + sex + experien + ward", "--family",
                  "gaussian", "--site-column", "hospital", "--lambda", "0.01",
                  "--standardize", "age,experien,stress"], tmp_path, capsys)
    names = [r["term"] for r in text["estimates"]]
    assert names[:5] == ["(Intercept)", "age", "sexmale", "experien", "wardspecial"]
    for a, b in zip(coded["estimates"], text["estimates"], strict=True):
        assert a["estimate"] == pytest.approx(b["estimate"], abs=1e-10)
    assert text["factor_levels"] == {"sex": ["female", "male"], "ward": ["general", "special"]}
