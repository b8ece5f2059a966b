"""securefed bfi --family survival with the poly, pwexp and unspecified baselines: every
protection stack equals the plain run, and the CLI gives R BFI 3.1.0's numbers."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from protocols.stack import CkksSum, PlaintextSum, SecAggSum
from securefed.bfi_survival_run import SurvivalBFIOptions, run_bfi_survival
from securefed.cli import main

GOLDEN = Path(__file__).parents[1] / "golden" / "bfi_survival"
CASES = json.loads((GOLDEN / "bfi_survival_golden_more.json").read_text())
GOMPERTZ = GOLDEN / "gompertz_bfi.csv"
FORMULA = "Surv(time, status) ~ x1 + x2"
KNOTS = (0.0, 0.6, 1.3, 2.5)


def _stack(name: str):
    from securefed.protection import ProtectionOptions, build_protection

    return build_protection(ProtectionOptions(protect=name), ["1", "2", "3"])


@functools.cache
def _plain(baseline: str):
    return run_bfi_survival(pd.read_csv(GOMPERTZ), _options(baseline), protection=PlaintextSum())


def _options(baseline: str) -> SurvivalBFIOptions:
    return SurvivalBFIOptions(FORMULA, "centre", baseline,
                              knots=KNOTS if baseline == "pwexp" else ())


@pytest.mark.parametrize("protection", [SecAggSum, CkksSum, lambda: _stack("secagg,ckks")],
                         ids=["secagg", "ckks", "secagg,ckks"])
@pytest.mark.parametrize("baseline", ["poly", "pwexp", "unspecified"])
def test_protected_run_equals_plain(protection, baseline):
    plain = _plain(baseline)
    protected = run_bfi_survival(pd.read_csv(GOMPERTZ), _options(baseline),
                                 protection=protection())
    np.testing.assert_allclose(protected.fit.estimate, plain.fit.estimate, atol=1e-8)
    np.testing.assert_allclose(protected.fit.sd, plain.fit.sd, atol=1e-8)
    purposes = [r["purpose"] for r in protected.releases]
    middle = ["bfi-poly-order"] if baseline == "poly" else []
    assert purposes == ["bfi-count", *middle, "bfi-terms"]
    assert protected.order_counts == plain.order_counts


def _cli(tmp_path, *extra) -> dict:
    out = tmp_path / "bfi.json"
    data = GOMPERTZ if "unspecified" not in extra else GOLDEN / "colon_bfi.csv"
    formula = FORMULA if "unspecified" not in extra else "Surv(time, status) ~ sex + age + nodes"
    assert main(["bfi", str(data), "--formula", formula, "--family", "survival",
                 "--site-column", "centre", "--lambda", "0.01", "--protect", "secagg",
                 "--json", str(out), "--quiet", *extra]) == 0
    return json.loads(out.read_text())


def test_cli_pwexp_on_r_grid_matches_r_bfi(tmp_path):
    case = CASES["pwexp_tight"]
    result = _cli(tmp_path, "--baseline", "pwexp", "--baseline-pieces", "4",
                  "--baseline-max-time", repr(case["min_max_times"]))
    assert [r["term"] for r in result["estimates"]] == case["names"]
    np.testing.assert_allclose([r["estimate"] for r in result["estimates"]],
                               case["theta_bfi"], atol=1e-6)
    np.testing.assert_allclose([r["sd"] for r in result["estimates"]], case["sd_bfi"],
                               rtol=1e-5)
    assert result["r_basehaz"] == "pwexp" and len(result["baseline_knots"]) == 5


def test_cli_poly_matches_r_bfi_to_the_curvature_issue(tmp_path):
    """Order 2 (R's q_ls 1, 2, 1); estimates within 2.2e-3 of R, which over-counts the
    prior in A_hat (tests/core_stats/test_bfi_survival_more.py)."""
    case = CASES["poly_tight"]
    result = _cli(tmp_path, "--baseline", "poly", "--baseline-order", "2")
    assert [r["term"] for r in result["estimates"]] == case["names"]
    assert result["baseline_order"] == 2 and result["sites_per_order"] == [0, 2, 1]
    np.testing.assert_allclose([r["estimate"] for r in result["estimates"]],
                               case["theta_bfi"], atol=2.2e-3)
    np.testing.assert_allclose([r["sd"] for r in result["estimates"]], case["sd_bfi"],
                               rtol=8e-3)


def test_cli_unspecified_matches_r_bfi(tmp_path):
    case = CASES["unspecified_tight"]
    result = _cli(tmp_path, "--baseline", "unspecified")
    assert [r["term"] for r in result["estimates"]] == case["names"]
    np.testing.assert_allclose([r["estimate"] for r in result["estimates"]],
                               case["theta_bfi"], atol=1e-6)
    np.testing.assert_allclose([r["sd"] for r in result["estimates"]], case["sd_bfi"],
                               rtol=1e-5)
    assert result["baseline_parameters"] == {}


def test_centre_covariate_refused_for_survival(capsys):
    code = main(["bfi", str(GOMPERTZ), "--formula", FORMULA, "--family", "survival",
                 "--site-column", "centre", "--baseline", "exponential",
                 "--center-covariate", "x2"])
    err = capsys.readouterr().err
    assert code == 2 and "--center-covariate" in err and len(err.strip().splitlines()) == 1
