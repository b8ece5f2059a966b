"""Differential privacy end to end: budgets, refusals, noise, accounting, outputs."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from core_stats.bfi_local import fit_map
from core_stats.bfi_stats import fit_map_gaussian_stats
from core_stats.families import get_family
from protocols.dp import zcdp_epsilon
from protocols.errors import PrivacyBudgetExceeded, ProtocolError
from securefed.bfi_run import BFIOptions, run_bfi
from securefed.cli import main
from securefed.errors import InputError
from securefed.glmm_run import GLMMOptions, run_glmm
from securefed.privacy import DPOptions, DpQuery, PrivacyGuard
from securefed.protection import ProtectionOptions, build_protection
from securefed.synthetic import make_hospitals


def _clustered(seed: int = 1, sites: int = 6, groups: int = 40, size: int = 5) -> pd.DataFrame:
    """Many small groups (patients' visits) nested in sites: where per-group bounds work."""
    rng = np.random.default_rng(seed)
    n = sites * groups * size
    group = np.repeat(np.arange(sites * groups), size)
    X = np.column_stack([rng.binomial(1, 0.5, n), rng.uniform(-1, 1.5, n)])
    b = rng.normal(0.0, 0.8, sites * groups)
    eta = -0.5 + X @ np.array([0.5, -0.7]) + b[group]
    frame = pd.DataFrame({"x1": X[:, 0], "x2": X[:, 1], "g": group,
                          "site": group // groups + 1})
    frame["y"] = rng.binomial(1, 1 / (1 + np.exp(-eta)))
    return frame


GLMM = GLMMOptions(formula="y ~ x1 + x2 + (1 | g)", family="binomial", site_column="site")


def _stack(protect: str, sites: list[str], family: str = "binomial", **dp) -> object:
    options = DPOptions(**{"epsilon": 2.0, "clip": 3.0, **dp})
    return build_protection(ProtectionOptions(protect=protect, dp=options), sites, family)


def test_glmm_under_dp_approaches_the_plaintext_fit_as_epsilon_grows() -> None:
    frame = _clustered()
    sites = [str(s) for s in sorted(frame.site.unique())]
    plain = run_glmm(frame, GLMM)
    se = np.array([f.std_error for f in plain.fixed_effects])
    errors = {}
    for eps in (1e6, 4.0):
        fit = run_glmm(frame, GLMM, protection=_stack("secagg,dp", sites, epsilon=eps, rounds=5))
        est = np.array([f.estimate for f in fit.fixed_effects])
        errors[eps] = float(np.max(np.abs(est - [f.estimate for f in plain.fixed_effects]) / se))
        out = fit.to_dict()
        assert out["protection"] == "secagg,dp"
        assert out["privacy"]["epsilon_spent"] <= eps * (1 + 1e-9)
        assert {"epsilon_spent", "delta", "rho", "releases"} <= set(out["privacy"])
        assert len(out["privacy"]["releases"]) == 1 + 5
    # without noise only the clipping bias of groups larger than the bound remains
    assert errors[1e6] < 0.2
    assert errors[4.0] > errors[1e6]


def test_bfi_under_dp_equals_the_pooled_posterior_and_plaintext_bfi_without_noise() -> None:
    from core_stats import bfi
    from core_stats.formula import agree_schema, model_data, parse_formula, variable_report

    rng = np.random.default_rng(3)
    frame = pd.DataFrame({"site": np.repeat(np.arange(1, 6), 60), "x": rng.normal(0, 0.5, 300)})
    frame["y"] = 0.3 + 0.8 * frame.x + rng.normal(0, 0.5, 300)
    opts = BFIOptions(formula="y ~ x", family="gaussian", site_column="site", lam=0.1)
    plain = run_bfi(frame, opts)
    sites = [str(s) for s in range(1, 6)]
    private = run_bfi(frame, opts, protection=_stack(
        "secagg,dp", sites, "gaussian", epsilon=1e7, clip=10.0, outcome_bound=10.0))
    out = private.to_dict()
    got = [e["estimate"] for e in out["estimates"]]
    data = model_data(agree_schema("y ~ x", [variable_report(parse_formula("y ~ x"), frame)]),
                      frame)
    prior = bfi.prior_precision(2, get_family("gaussian"), lam=0.1, intercept_index=0)
    pooled = bfi.fit_pooled(data.X, data.y, get_family("gaussian"), prior,
                            names=data.fixed_names)
    # the homogeneous model's posterior, from the noisy sums: exact without noise ...
    assert np.allclose(got, pooled.estimate, atol=1e-3)
    # ... and BFI's approximation of it (local scale MAPs from 60 rows differ slightly)
    assert np.allclose(got, [e["estimate"] for e in plain.to_dict()["estimates"]], atol=0.05)
    assert [r["purpose"] for r in out["privacy"]["releases"]] == ["row count",
                                                                 "sufficient statistics"]
    assert out["privacy"]["inference"]["estimator"].startswith("MAP of the pooled model")


def test_local_gaussian_map_from_sufficient_statistics_equals_the_row_fit() -> None:
    rng = np.random.default_rng(0)
    X = np.column_stack([np.ones(80), rng.normal(size=(80, 2))])
    y = X @ [1.0, -2.0, 0.5] + rng.normal(size=80)
    prior = np.diag([0.1, 0.2, 0.3, 0.05])
    rows = fit_map(X, y, get_family("gaussian"), prior, names=["a", "b", "c"])
    stats = fit_map_gaussian_stats(80, y @ y, X.T @ y, X.T @ X, prior, names=["a", "b", "c"])
    assert np.allclose(rows.theta, stats.theta, atol=1e-10)
    assert np.allclose(rows.curvature, stats.curvature, rtol=1e-9)
    assert rows.names == stats.names


def test_a_release_over_any_sites_budget_is_refused_before_anything_is_charged() -> None:
    guard = PrivacyGuard.create(DPOptions(epsilon=1.0, clip=1.0), ["a", "b", "c"], 3)
    vectors = {n: np.ones(4) for n in "abc"}
    guard.apply(vectors, DpQuery("first", 1.0, 0.01), round_id=1)
    spent = {n: s.ledger.rho_spent for n, s in guard.sites.items()}
    with pytest.raises(PrivacyBudgetExceeded, match="would need epsilon="):
        guard.apply(vectors, DpQuery("too much", 1.0, 5.0), round_id=2)
    assert {n: s.ledger.rho_spent for n, s in guard.sites.items()} == spent
    with pytest.raises(ProtocolError, match="no stated sensitivity"):
        guard.apply(vectors, None, round_id=3)


def test_distributed_noise_is_sized_for_the_minimum_number_of_contributors() -> None:
    sites = [str(i) for i in range(12)]
    guard = PrivacyGuard.create(DPOptions(epsilon=1e9, clip=1.0), sites, 9)
    query = DpQuery("noise", 1.0, 0.5)
    draws = []
    for round_id in range(30):
        noisy = guard.apply({n: np.zeros(50) for n in sites[:9]}, query, round_id)
        draws.append(sum(noisy.values()))
    # nine contributors: the summed shares are N(0, sigma^2) with rho = 1/(2 sigma^2) ~ 0.5
    sd = float(np.std(np.concatenate(draws)))
    assert sd == pytest.approx(guard.sum_noise_sd(9)[0], rel=0.1)
    assert 0.9 < sd < 1.2  # Δ / sqrt(2 rho) = 1, inflated slightly by the grid and KLS bound
    assert guard.sum_noise_sd(12)[0] > guard.sum_noise_sd(9)[0]


def test_noisy_values_sit_on_a_grid_the_secure_sum_encodes_exactly() -> None:
    sites = ["a", "b", "c", "d"]
    stack = _stack("secagg,dp", sites, epsilon=3.0)
    noisy = stack.privacy.apply({n: np.random.default_rng(1).normal(size=30) for n in sites},
                                DpQuery("grid", 2.0, 0.1), round_id=1)
    total = stack.aggregate(noisy, round_id=1, purpose="grid").total
    assert np.array_equal(total, sum(noisy.values()))


def test_plan_over_budget_is_refused_before_the_first_release(tmp_path) -> None:
    options = DPOptions(epsilon=1.0, clip=1.0, ledger_dir=tmp_path, run_epsilon=0.7)
    first = PrivacyGuard.create(options, ["a", "b", "c"], 1)
    first.apply({n: np.zeros(3) for n in "abc"}, DpQuery("all", 1.0, options.run_rho), 1)
    assert (tmp_path / "site-a.privacy.json").exists()
    with pytest.raises(PrivacyBudgetExceeded, match="Nothing was released"):
        PrivacyGuard.create(options, ["a", "b", "c"], 1)
    stored = json.loads((tmp_path / "site-b.privacy.json").read_text())
    assert stored["epsilon_spent"] == pytest.approx(zcdp_epsilon(options.run_rho, 1e-6))


def test_missing_bounds_are_refused_naming_the_flag() -> None:
    sites = ["a", "b", "c"]
    with pytest.raises(InputError, match="--dp-clip"):
        build_protection(ProtectionOptions(protect="secagg,dp", dp=DPOptions(epsilon=1.0)),
                         sites, "binomial")
    with pytest.raises(InputError, match="--dp-outcome-bound"):
        _stack("secagg,dp", sites, "poisson")
    with pytest.raises(InputError, match="needs a budget"):
        build_protection(ProtectionOptions(protect="secagg,dp"), sites, "binomial")
    with pytest.raises(InputError, match="'dp' in --protect"):
        build_protection(ProtectionOptions(protect="secagg", dp=DPOptions(epsilon=1.0)), sites)


@pytest.mark.parametrize("protect", ["secagg,ckks", "ckks,secagg"])
def test_secagg_ckks_stack_gives_the_plaintext_glmm(protect: str) -> None:
    frame = make_hospitals(4, 60)
    opts = GLMMOptions(formula="y ~ x2 + x6 + (1 | hospital)", family="binomial",
                       site_column="hospital")
    plain = run_glmm(frame, opts)
    stack = build_protection(ProtectionOptions(protect=protect), ["1", "2", "3", "4"])
    assert stack.name == "secagg,ckks"
    fit = run_glmm(frame, opts, protection=stack)
    assert np.allclose(fit.theta, plain.theta, atol=1e-8)


@pytest.mark.parametrize("protect", ["dp", "ckks,dp", "secagg,ckks,dp"])
def test_every_dp_stack_runs_and_spends_its_budget(protect: str) -> None:
    frame = _clustered(sites=4, groups=10)
    stack = _stack(protect, ["1", "2", "3", "4"], epsilon=1.0, rounds=2, max_se_ratio=1e6)
    fit = run_glmm(frame, GLMM, protection=stack)
    out = fit.to_dict()
    assert out["protection"] == protect
    assert out["privacy"]["epsilon_spent"] == pytest.approx(1.0, rel=1e-6)
    mechanisms = {r["mechanism"] for r in out["privacy"]["releases"]}
    assert mechanisms == ({"discrete Gaussian"} if protect == "dp"
                          else {"distributed discrete Gaussian"})


def test_cli_refuses_over_budget_with_exit_3_and_logs_no_release(tmp_path, capsys) -> None:
    data = tmp_path / "d.csv"
    _clustered(sites=4, groups=10).to_csv(data, index=False)
    log = tmp_path / "run.jsonl"
    code = main(["fit", str(data), "--formula", "y ~ x1 + (1 | g)", "--site-column", "site",
                 "--protect", "secagg,dp", "--epsilon", "1", "--dp-run-epsilon", "3",
                 "--dp-clip", "2", "--audit-log", str(log), "--quiet"])
    err = capsys.readouterr().err
    assert code == 3
    assert "epsilon=3" in err and "Nothing was released" in err
    assert not log.exists() or "RELEASE" not in log.read_text()


def test_cli_fit_under_dp_writes_privacy_json_and_audit_fields(tmp_path) -> None:
    data, out, log = tmp_path / "d.csv", tmp_path / "out.json", tmp_path / "run.jsonl"
    _clustered(sites=4, groups=10).to_csv(data, index=False)
    code = main(["fit", str(data), "--formula", "y ~ x1 + (1 | g)", "--site-column", "site",
                 "--protect", "secagg,dp", "--epsilon", "2", "--delta", "1e-5",
                 "--dp-clip", "2", "--dp-rounds", "2", "--json", str(out),
                 "--audit-log", str(log), "--quiet"])
    assert code == 0
    privacy = json.loads(out.read_text())["privacy"]
    assert privacy["delta"] == 1e-5
    assert privacy["epsilon_spent"] == pytest.approx(2.0, rel=1e-6)
    assert math.isclose(privacy["rho"], sum(r["rho"] for r in privacy["releases"]), rel_tol=1e-9)
    site_log = tmp_path / "run.site-1.jsonl"
    releases = [json.loads(line) for line in site_log.read_text().splitlines()
                if '"RELEASE"' in line]
    assert releases and all("epsilon_spent" in json.dumps(r) for r in releases)
    assert main(["audit", "verify", str(log), "--keys", str(tmp_path / "run.registry.json")]) == 0


def test_cli_requires_dp_clip(tmp_path, capsys) -> None:
    data = tmp_path / "d.csv"
    _clustered(sites=3, groups=5).to_csv(data, index=False)
    code = main(["fit", str(data), "--formula", "y ~ x1 + (1 | g)", "--site-column", "site",
                 "--protect", "secagg,dp", "--epsilon", "1"])
    assert code == 2
    assert "--dp-clip" in capsys.readouterr().err


def test_privacy_curve_command_writes_csv_and_png(tmp_path) -> None:
    out = tmp_path / "curve"
    code = main(["privacy-curve", "--out", str(out), "--models", "bfi", "--epsilons", "8,inf",
                 "--repeats", "1", "--quiet"])
    assert code == 0
    summary = pd.read_csv(out / "privacy_curve.csv")
    assert list(summary["epsilon"]) == [8.0, math.inf]
    assert summary.loc[1, "rmse_in_se"] == 0.0 and summary.loc[1, "coverage"] == 1.0
    assert summary.loc[0, "rmse_in_se"] > 0.0
    assert (out / "privacy_curve.png").stat().st_size > 10_000
    assert main(["privacy-curve", "--out", str(out), "--models", "lasso"]) == 2


def test_clustered_generator_nests_clusters_in_hospitals() -> None:
    from securefed.synthetic import make_clustered

    frame = make_clustered(3, 4, 2, seed=1)
    assert len(frame) == 24
    assert (frame.groupby("cluster")["hospital"].nunique() == 1).all()
    assert frame["hospital"].nunique() == 3


def test_pass_glm_binomial_map_from_sums_approximates_the_row_fit() -> None:
    from core_stats.bfi_stats import LOGISTIC_QUADRATIC, fit_map_binomial_stats

    assert LOGISTIC_QUADRATIC[1] == pytest.approx(0.5)
    assert -0.125 < LOGISTIC_QUADRATIC[2] < -0.11  # a little flatter than the Taylor term -1/8
    rng = np.random.default_rng(4)
    X = np.column_stack([np.ones(4000), rng.normal(0, 0.7, size=(4000, 2))])
    y = rng.binomial(1, 1 / (1 + np.exp(-(X @ [-0.3, 0.5, -0.4])))).astype(float)
    prior = np.eye(3) * 0.1
    rows = fit_map(X, y, get_family("binomial"), prior, names=["(Intercept)", "a", "b"])
    stats = fit_map_binomial_stats(4000, X.T @ y, X.T @ X, prior,
                                   names=("(Intercept)", "a", "b"), intercept=0)
    # small effects: the quadratic approximation is within 15% of the exact MAP
    assert np.allclose(stats.theta, rows.theta, rtol=0.15, atol=0.03)
    assert np.all(np.linalg.eigvalsh(stats.curvature) > 0)


def test_binomial_bfi_under_dp_runs_and_poisson_is_refused() -> None:
    rng = np.random.default_rng(8)
    frame = pd.DataFrame({"site": np.repeat(np.arange(1, 5), 300), "x": rng.normal(0, 0.7, 1200)})
    frame["y"] = rng.binomial(1, 1 / (1 + np.exp(-(0.2 + 0.6 * frame.x))))
    sites = [str(s) for s in range(1, 5)]
    opts = BFIOptions(formula="y ~ x", family="binomial", site_column="site", lam=0.1)
    plain = [e["estimate"] for e in run_bfi(frame, opts).to_dict()["estimates"]]
    private = run_bfi(frame, opts, protection=_stack("secagg,dp", sites, epsilon=1e7))
    got = [e["estimate"] for e in private.to_dict()["estimates"]]
    assert np.allclose(got, plain, rtol=0.15, atol=0.05)
    frame["y"] = rng.poisson(2.0, 1200)
    with pytest.raises(InputError, match="poisson"):
        run_bfi(frame, BFIOptions(formula="y ~ x", family="poisson", site_column="site"),
                protection=_stack("secagg,dp", sites, "poisson", outcome_bound=10.0))


def test_bfi_standardisation_under_dp_uses_declared_ranges(tmp_path, capsys) -> None:
    rng = np.random.default_rng(9)
    frame = pd.DataFrame({"site": np.repeat(np.arange(1, 5), 200),
                          "age": rng.uniform(20, 65, 800)})
    frame["y"] = 1.0 + 0.03 * frame.age + rng.normal(0, 0.5, 800)
    sites = [str(s) for s in range(1, 5)]
    opts = BFIOptions(formula="y ~ age", family="gaussian", site_column="site", lam=0.1,
                      standardize=("age",))
    plain = run_bfi(frame, opts).to_dict()
    stack = _stack("secagg,dp", sites, "gaussian", epsilon=1e7, clip=4.0, outcome_bound=4.0,
                   standardize_ranges=(("age", 18.0, 70.0),))
    private = run_bfi(frame, opts, protection=stack).to_dict()
    assert np.allclose(private["standardization"]["mean"], plain["standardization"]["mean"],
                       rtol=1e-4)
    assert np.allclose(private["standardization"]["sd"], plain["standardization"]["sd"],
                       rtol=1e-3)
    got = [e["estimate"] for e in private["estimates"]]
    assert np.allclose(got, [e["estimate"] for e in plain["estimates"]], atol=0.02)
    assert [r["purpose"] for r in private["privacy"]["releases"]][:2] == [
        "row count", "standardisation sums"]
    with pytest.raises(InputError, match="--dp-standardize-range age=LOW:HIGH"):
        run_bfi(frame, opts, protection=_stack("secagg,dp", sites, "gaussian",
                                               outcome_bound=4.0))
    data = tmp_path / "d.csv"
    frame.to_csv(data, index=False)
    code = main(["bfi", str(data), "--formula", "y ~ age", "--family", "gaussian",
                 "--site-column", "site", "--standardize", "age", "--protect", "secagg,dp",
                 "--epsilon", "4", "--dp-clip", "3", "--dp-outcome-bound", "4",
                 "--dp-standardize-range", "age=18:70", "--quiet"])
    assert code == 0
    assert main(["bfi", str(data), "--formula", "y ~ age", "--family", "gaussian",
                 "--site-column", "site", "--standardize", "age", "--protect", "secagg,dp",
                 "--epsilon", "4", "--dp-clip", "3", "--dp-outcome-bound", "4",
                 "--dp-standardize-range", "age:18-70"]) == 2
    assert "COLUMN=LOW:HIGH" in capsys.readouterr().err
