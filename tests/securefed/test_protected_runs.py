"""Protected GLMM and BFI runs equal the plaintext runs (on the contributing sites)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from protocols.stack import CkksSum, DropPlan, SecAggSum
from securefed.bfi_run import BFIOptions, run_bfi
from securefed.cli import main
from securefed.data import builtin_path
from securefed.glmm_run import GLMMOptions, run_glmm
from securefed.synthetic import make_hospitals

NURSES = BFIOptions("stress ~ age + gender + experien + wardtype", "gaussian", "hospital",
                    lam=0.01, standardize=("age", "experien", "stress"))


@pytest.fixture(scope="module")
def nurses() -> pd.DataFrame:
    return pd.read_csv(builtin_path("Nurses"))


@pytest.fixture(scope="module")
def hospitals() -> pd.DataFrame:
    return make_hospitals(n_sites=8, rows_per_site=120, seed=3)


GLMM = GLMMOptions("y ~ x2 + x3 + x6 + x7 + (1 | hospital)", "binomial", "hospital", nagq=2)


@pytest.mark.parametrize("layer", [SecAggSum, lambda: SecAggSum(neighbours=4), CkksSum])
def test_protected_glmm_equals_plaintext(layer, hospitals) -> None:
    plain = run_glmm(hospitals, GLMM)
    protected = run_glmm(hospitals, GLMM, protection=layer())
    np.testing.assert_allclose(protected.theta, plain.theta, atol=1e-8, rtol=0)
    assert protected.loglik == pytest.approx(plain.loglik, abs=1e-8)
    assert protected.rounds == plain.rounds
    assert protected.bytes_sent_per_site > plain.bytes_sent_per_site


@pytest.mark.parametrize("layer", [SecAggSum, CkksSum])
def test_protected_bfi_equals_plaintext(layer, nurses) -> None:
    plain = run_bfi(nurses, NURSES)
    protected = run_bfi(nurses, NURSES, protection=layer())
    np.testing.assert_allclose([r["estimate"] for r in protected.estimates],
                               [r["estimate"] for r in plain.estimates], atol=1e-8, rtol=0)


@pytest.mark.parametrize("phase", ["after-key-exchange", "after-key-sharing",
                                   "after-masked-input", "during-unmask"])
def test_bfi_dropouts_give_the_survivors_answer(phase, nurses) -> None:
    opts = BFIOptions(NURSES.formula, "gaussian", "hospital", lam=0.01)
    survivors = nurses[~nurses.hospital.isin([3, 17])]
    expected = run_bfi(survivors, opts)
    got = run_bfi(nurses, opts, protection=SecAggSum(drop=DropPlan(("3", "17"), phase)))
    assert got.dropped_sites == ("3", "17") or set(got.dropped_sites) == {"3", "17"}
    assert got.n_sites == 23 and got.n_sites_counted == 23
    np.testing.assert_allclose([r["estimate"] for r in got.estimates],
                               [r["estimate"] for r in expected.estimates], atol=1e-8, rtol=0)


def test_glmm_dropout_mid_fit_continues_with_survivors(hospitals) -> None:
    survivors = hospitals[hospitals.hospital != 5]
    expected = run_glmm(survivors, GLMM)
    got = run_glmm(hospitals, GLMM, protection=SecAggSum(
        drop=DropPlan(("5",), "after-masked-input", round_id=3)))
    assert got.dropped_sites == ("5",) and got.n_sites == 7 and got.converged
    assert got.n_sites_counted == 7 and got.to_dict()["n_sites_counted"] == 7
    np.testing.assert_allclose(got.theta, expected.theta, atol=1e-7, rtol=0)
    assert any("dropped" in w for w in got.warnings)


def test_a_site_lost_after_its_input_is_counted_though_not_live(nurses) -> None:
    # round 2 is the BFI terms (round 1 counts rows): site 3's masked terms arrived, so the
    # sum holds them although site 3 dropped during unmasking
    opts = BFIOptions(NURSES.formula, "gaussian", "hospital", lam=0.01)
    everyone = run_bfi(nurses, opts)
    got = run_bfi(nurses, opts, protection=SecAggSum(drop=DropPlan(("3",), "during-unmask",
                                                                   round_id=2)))
    assert got.dropped_sites == ("3",)
    assert (got.n_sites, got.n_sites_counted) == (24, 25)
    assert (got.to_dict()["n_sites"], got.to_dict()["n_sites_counted"]) == (24, 25)
    np.testing.assert_allclose([r["estimate"] for r in got.estimates],
                               [r["estimate"] for r in everyone.estimates], atol=1e-8, rtol=0)


def test_cli_secagg_with_dropouts_matches_plaintext_without_them(tmp_path, nurses, capsys):
    import json

    base = ["bfi", str(builtin_path("Nurses")), "--formula",
            "stress ~ age + gender + experien + wardtype", "--site-column", "hospital", "--quiet"]
    out = tmp_path / "secagg.json"
    assert main([*base, "--protect", "secagg", "--drop-sites", "3,17", "--drop-phase",
                 "after-masked-input", "--json", str(out)]) == 0
    kept = tmp_path / "kept.csv"
    nurses[~nurses.hospital.isin([3, 17])].to_csv(kept, index=False)
    ref = tmp_path / "plain.json"
    base[1] = str(kept)
    assert main([*base, "--json", str(ref)]) == 0
    got, want = json.loads(out.read_text()), json.loads(ref.read_text())
    assert sorted(got["dropped_sites"]) == ["17", "3"]
    np.testing.assert_allclose([r["estimate"] for r in got["estimates"]],
                               [r["estimate"] for r in want["estimates"]], atol=1e-8, rtol=0)
    capsys.readouterr()


def test_too_many_dropouts_abort_with_one_line(capsys) -> None:
    code = main(["bfi", str(builtin_path("trauma")), "--formula", "mortality ~ age + ISS",
                 "--family", "binomial", "--site-column", "hospital", "--protect", "secagg",
                 "--drop-sites", "1", "--drop-phase", "after-key-exchange", "--quiet"])
    err = capsys.readouterr().err
    assert code == 1 and "nothing was released" in err and len(err.strip().splitlines()) == 1


def test_value_above_the_bound_is_refused(capsys) -> None:
    code = main(["bfi", str(builtin_path("Nurses")), "--formula", "stress ~ age",
                 "--site-column", "hospital", "--protect", "secagg", "--bound", "10", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "declared bound" in err  # the site's fixed refusal text


def test_bfi_dropout_inside_the_sum_round_counts_the_site(nurses) -> None:
    """After masked input the site's terms are in the sum (Bonawitz); re-running the
    round without it would reveal its vector by difference, so it is not re-run."""
    opts = BFIOptions(NURSES.formula, "gaussian", "hospital", lam=0.01)
    everyone = run_bfi(nurses, opts)
    got = run_bfi(nurses, opts, protection=SecAggSum(
        drop=DropPlan(("3", "17"), "after-masked-input", round_id=2)))
    assert set(got.dropped_sites) == {"3", "17"}
    np.testing.assert_allclose([r["estimate"] for r in got.estimates],
                               [r["estimate"] for r in everyone.estimates], atol=1e-8, rtol=0)


def test_results_report_seconds_per_stage(hospitals) -> None:
    fit = run_glmm(hospitals, GLMM, protection=SecAggSum())
    timings = fit.to_dict()["timings"]
    for key in ("sites_statistics", "protection_site", "protection_server", "total"):
        assert timings[key] >= 0
    assert timings["sites_statistics"] + timings["protection_total"] <= timings["total"] + 1e-6


@pytest.mark.parametrize("protect", ["secagg", "ckks", "secagg,ckks"])
def test_random_slope_glmm_under_protection_equals_plaintext(protect: str) -> None:
    from securefed.glmm_run import GLMMOptions, run_glmm
    from securefed.protection import ProtectionOptions, build_protection

    rng = np.random.default_rng(21)
    n_groups, per = 80, 8
    group = np.repeat(np.arange(n_groups), per)
    x = rng.normal(size=n_groups * per)
    b = rng.normal(0, [1.0, 0.8], size=(n_groups, 2))
    eta = -0.3 + 0.7 * x + b[group, 0] + b[group, 1] * x
    frame = pd.DataFrame({"x": x, "g": group, "site": group % 4 + 1,
                          "y": rng.binomial(1, 1 / (1 + np.exp(-eta)))})
    opts = GLMMOptions(formula="y ~ x + (1 + x | g)", family="binomial", site_column="site")
    plain = run_glmm(frame, opts)
    stack = build_protection(ProtectionOptions(protect=protect), ["1", "2", "3", "4"])
    fit = run_glmm(frame, opts, protection=stack)
    assert np.allclose(fit.theta, plain.theta, atol=1e-8)
    assert len(plain.theta) == 2 + 3
