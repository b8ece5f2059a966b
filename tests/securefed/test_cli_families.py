"""`securefed fit --family Gamma|negative_binomial|nbinom2` and `--reml` from the command line,
and the one-line refusals (exit 2) where a family or REML is not supported."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from securefed.cli import main

GOLDEN = Path(__file__).parents[1] / "golden" / "glmm_families"
SALAMANDERS = GOLDEN / "data" / "salamanders_nbinom2.csv"
SLEEP = GOLDEN / "data" / "sleepstudy_gamma_log.csv"


def _run(args: list[str], capsys) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("family", ["negative_binomial", "nbinom2"])
def test_fit_negative_binomial_writes_the_dispersion(family, tmp_path, capsys):
    out_json = tmp_path / "fit.json"
    code, out, _ = _run(["fit", str(SALAMANDERS), "--formula", "count ~ mined + (1 | site)",
                         "--family", family, "--site-column", "centre", "--protect", "secagg",
                         "--json", str(out_json), "--quiet"], capsys)
    assert code == 0
    golden = json.loads((GOLDEN / "salamanders_nbinom2.json").read_text())["glmmtmb"]
    result = json.loads(out_json.read_text())
    assert result["family"] == "negative_binomial"
    assert result["dispersion"]["estimate"] == pytest.approx(golden["dispersion"], rel=1e-4)
    assert result["theta"]["log_theta_nbinom2"] == pytest.approx(golden["betad"], abs=1e-4)
    assert "Dispersion parameter for nbinom2 family ()" in out


def test_fit_gamma_with_the_log_link(capsys):
    code, out, _ = _run(["fit", str(SLEEP), "--formula", "Reaction ~ Days + (1 | Subject)",
                         "--family", "Gamma", "--link", "log", "--site-column", "centre",
                         "--quiet"], capsys)
    assert code == 0 and " Family: Gamma  ( log )" in out


def test_fit_reml(capsys):
    code, out, _ = _run(["fit", str(GOLDEN / "data" / "exam_reml.csv"), "--formula",
                         "normexam ~ standLRT + (1 | school)", "--family", "gaussian",
                         "--reml", "--site-column", "centre", "--quiet"], capsys)
    assert code == 0 and "REML criterion at convergence: 9368.8" in out


REFUSALS = [
    (["fit", str(SLEEP), "--formula", "Reaction ~ Days + (1 | Subject)", "--family", "poisson",
      "--reml", "--site-column", "centre"], "--reml is defined for Gaussian"),
    (["fit", str(SALAMANDERS), "--formula", "count ~ mined + (1 | site)", "--family", "nbinom2",
      "--site-column", "centre", "--protect", "secagg,dp", "--epsilon", "1", "--dp-clip", "2",
      "--dp-outcome-bound", "50"], "differential privacy is not available for the nbinom2"),
    (["fit", str(SALAMANDERS), "--formula", "count ~ mined + (1 | site) + (1 | spp)",
      "--family", "nbinom2", "--site-column", "centre"], "takes one random-effects term"),
    (["fit", str(SALAMANDERS), "--formula", "count ~ mined + (1 | site)", "--family", "nbinom2",
      "--weights", "count", "--site-column", "centre"], "prior weights are not supported"),
    (["fit", str(SLEEP), "--formula", "Reaction ~ Days + (1 | Subject)", "--family", "Gamma",
      "--link", "logit", "--site-column", "centre"], "link 'logit' is not available"),
    (["bfi", str(SLEEP), "--formula", "Reaction ~ Days", "--family", "Gamma",
      "--site-column", "centre"], "BFI does not support the Gamma family"),
]


@pytest.mark.parametrize(("args", "message"), REFUSALS)
def test_unsupported_combinations_exit_2_with_one_line(args, message, capsys):
    code, _, err = _run(args, capsys)
    assert code == 2
    lines = [line for line in err.strip().splitlines() if line]
    assert len(lines) == 1 and message in lines[0], err


def test_reml_under_secagg_equals_plaintext(tmp_path, capsys):
    outs = []
    for protect in ("none", "secagg"):
        out_json = tmp_path / f"{protect}.json"
        code, _, _ = _run(["fit", str(GOLDEN / "data" / "exam_reml.csv"), "--formula",
                           "normexam ~ standLRT + (1 | school)", "--family", "gaussian", "--reml",
                           "--site-column", "centre", "--protect", protect, "--json",
                           str(out_json), "--quiet"], capsys)
        assert code == 0
        outs.append(json.loads(out_json.read_text()))
    assert outs[1]["reml"] and outs[1]["reml_criterion"] == pytest.approx(
        outs[0]["reml_criterion"], abs=1e-6)


def test_a_shifted_reml_term_is_refused():
    import numpy as np

    from core_stats.design import grouped_rows
    from core_stats.families import GAUSSIAN
    from core_stats.glmm import ParameterLayout, site_terms
    from core_stats.glmm_reml import pack_reml, reml_site_terms
    from core_stats.optimize import SummedTerms
    from securefed.plausibility import ImplausibleAggregate
    from securefed.plausibility_reml import check_reml_terms

    rng = np.random.default_rng(3)
    groups = np.repeat(np.arange(8), 6)
    X = np.column_stack([np.ones(48), rng.normal(size=48)])
    rows = grouped_rows(X @ [1.0, 0.5] + rng.normal(size=48), X, X[:, :1], groups)
    layout = ParameterLayout.for_family(("(Intercept)", "x"), ("(Intercept)",), "g", GAUSSIAN)
    theta = np.array([1.0, 0.5, np.log(0.5), 0.0])
    terms = site_terms(rows, GAUSSIAN, layout, theta)
    ml = SummedTerms(terms.loglik, terms.gradient, terms.hessian)
    honest = pack_reml(reml_site_terms(rows, layout, theta))
    check_reml_terms(honest, layout, ml)
    shifted = honest.copy()
    shifted[0] *= 1.5  # a site inflating X'V^-1 X to move the variance estimates
    with pytest.raises(ImplausibleAggregate, match="reml-information"):
        check_reml_terms(shifted, layout, ml)
    with pytest.raises(ImplausibleAggregate, match="length"):
        check_reml_terms(honest[:-1], layout, ml)
