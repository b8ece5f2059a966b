"""DP intervals that carry the noise, and the refusal of fits the noise cannot identify."""

from __future__ import annotations

import json
import random

import numpy as np
import pandas as pd
from test_privacy import GLMM, _clustered, _stack

from core_stats import bfi
from core_stats.families import get_family
from core_stats.formula import agree_schema, model_data, parse_formula, variable_report
from securefed.cli import main
from securefed.dp_bfi import fit_from_noisy_sums
from securefed.dp_statistics import summary_vector
from securefed.glmm_run import run_glmm


class _Seeded:
    """A seeded source for the exact discrete-Gaussian sampler (tests only)."""

    def __init__(self, seed: int) -> None:
        self._random = random.Random(seed)

    def randbelow(self, n: int) -> int:
        return self._random.randrange(n)


def _seeded_stack(rep: int, **dp):
    stack = _stack("secagg,dp", ["1", "2", "3", "4"], **dp)
    for i, site in enumerate(stack.privacy.sites.values()):
        site._rng = _Seeded(1000 * rep + i)
    return stack


def test_glmm_dp_intervals_cover_the_non_private_estimate_and_sampling_ses_alone_do_not():
    frame = _clustered(sites=4, groups=40)
    reference = np.array([f.estimate for f in run_glmm(frame, GLMM).fixed_effects])
    covered, naive = [], []
    for rep in range(8):
        fit = run_glmm(frame, GLMM, protection=_seeded_stack(rep, epsilon=4.0))
        est = np.array([f.estimate for f in fit.fixed_effects])
        se = np.array([f.std_error for f in fit.fixed_effects])
        sampling = np.array(list(fit.to_dict()["privacy"]["inference"]["sampling_se"].values()))
        covered += list(np.abs(est - reference) <= 1.96 * se)
        naive += list(np.abs(est - reference) <= 1.96 * sampling)
    # 24 intervals: about 0.9 cover; intervals without the noise (sampling SEs with the
    # clustering's design effect) cover far fewer
    assert np.mean(covered) >= 0.75
    assert np.mean(naive) <= np.mean(covered) - 0.2, (np.mean(covered), np.mean(naive))


def test_bfi_dp_intervals_from_noisy_sums_cover_the_exact_sums_fit():
    rng = np.random.default_rng(5)
    frame = pd.DataFrame({"x": rng.uniform(-1, 1, 400), "w": rng.binomial(1, 0.4, 400)})
    frame["y"] = 0.5 + 0.6 * frame.x - 0.4 * frame.w + rng.normal(0, 0.7, 400)
    family = get_family("gaussian")
    formula = "y ~ x + w"
    data = model_data(agree_schema(formula, [variable_report(parse_formula(formula), frame)]),
                      frame)
    names = data.fixed_names
    prior = bfi.prior_precision(len(names), family, lam=0.1, intercept_index=0)
    exact = summary_vector(data.X, data.y, 2.0, 3.0, "gaussian")
    truth, _ = fit_from_noisy_sums(exact, names, family, prior, 1e-9, 4, 0.95, replicates=2)
    noise_sd = 25.0  # the sum's noise, against sum(x^2) ~ 130
    covered, naive = [], []
    for _ in range(40):
        fit, info = fit_from_noisy_sums(exact + rng.normal(0, noise_sd, exact.shape), names,
                                        family, prior, noise_sd, 4, 0.95, replicates=100,
                                        rng=rng)
        sampling = np.array(list(info["sampling_se"].values()))
        error = np.abs(fit.estimate - truth.estimate)
        covered += list(error <= 1.96 * fit.sd)
        naive += list(error <= 1.96 * sampling)
    assert np.mean(covered) >= 0.9  # measured 0.99 (the bootstrap MSE is conservative)
    assert np.mean(naive) <= 0.6  # measured 0.29
    assert fit.sd[0] > sampling[0]


def test_cli_refuses_an_unidentifiable_fit_after_the_first_release_with_exit_3(tmp_path,
                                                                              capsys):
    data = tmp_path / "d.csv"
    _clustered(sites=4, groups=10).to_csv(data, index=False)
    ledgers = tmp_path / "ledgers"
    ledgers.mkdir()
    code = main(["fit", str(data), "--formula", "y ~ x1 + x2 + (1 | g)", "--site-column",
                 "site", "--protect", "secagg,dp", "--epsilon", "0.2", "--dp-clip", "3",
                 "--privacy-ledger", str(ledgers), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 3
    assert err.count("\n") == 0  # one line
    assert "would need about epsilon=" in err and "Only the first release" in err
    for ledger in ledgers.glob("site-*.privacy.json"):
        releases = json.loads(ledger.read_text())["releases"]
        assert [r["purpose"] for r in releases] == ["round 1: design summary"]


def test_dp_glmm_json_carries_the_estimator_and_its_noise_aware_covariance(tmp_path, capsys):
    data, out = tmp_path / "d.csv", tmp_path / "fit.json"
    _clustered(sites=4, groups=40).to_csv(data, index=False)
    code = main(["fit", str(data), "--formula", "y ~ x1 + x2 + (1 | g)", "--site-column",
                 "site", "--protect", "secagg,dp", "--epsilon", "4", "--dp-clip", "3",
                 "--dp-max-se-ratio", "1000", "--json", str(out), "--quiet"])
    printed = capsys.readouterr().out
    assert code == 0
    assert "Number of obs (noisy): ~" in printed and "carry the privacy noise" in printed
    result = json.loads(out.read_text())
    inference = result["privacy"]["inference"]
    assert inference["estimator"].startswith("budgeted damped Newton")
    cov = np.array(inference["noise_aware_covariance"])
    assert cov.shape == (3, 3)
    se = [f["std_error"] for f in result["fixed_effects"]]
    np.testing.assert_allclose(se, np.sqrt(np.diag(cov)), rtol=1e-9)
    assert set(inference["predicted_se"]) == set(inference["realised_se"]) == {
        "(Intercept)", "x1", "x2"}
    assert all(inference["realised_se"][t] > inference["sampling_se"][t]
               for t in inference["parameters"])
    assert result["counts_noisy"] is True


def test_the_planned_noise_of_a_release_is_the_noise_it_then_has():
    from securefed.privacy import DpQuery

    stack = _stack("secagg,dp", ["1", "2", "3", "4"], epsilon=2.0)
    guard = stack.privacy
    query = DpQuery("test", 3.0, 0.01, np.array([0, 0, 2, 5]))
    planned = guard.planned_noise_sd(query, 4, 4)
    guard.apply({n: np.zeros(4) for n in ["1", "2", "3", "4"]}, query, 1)
    np.testing.assert_allclose(planned, guard.sum_noise_sd(4), rtol=1e-12)
    assert planned[3] == 32 * planned[0]  # units of 2^5


def test_glmm_dp_design_summary_curvature_carries_the_clustering_on_egsingle():
    # 60 schools of ~120 records: w X'X alone gave SE(intercept) 0.022 against lmer's 0.061
    from pathlib import Path

    from test_privacy import GLMMOptions
    path = Path(__file__).parents[1] / "golden" / "glmm_multi" / "data" / "egsingle.csv"
    frame = pd.read_csv(path)
    options = GLMMOptions(formula="math ~ year + (1 | schoolid)", family="gaussian",
                          site_column="site")
    plain = run_glmm(frame, options).fixed_effects[0]
    sites = [str(s) for s in sorted(frame.site.unique())]
    stack = _stack("secagg,dp", sites, family="gaussian", epsilon=16.0, clip=3.0,
                   outcome_bound=6.0)
    for i, site in enumerate(stack.privacy.sites.values()):
        site._rng = _Seeded(i)
    fit = run_glmm(frame, options, protection=stack)
    inference = fit.to_dict()["privacy"]["inference"]
    intercept = fit.fixed_effects[0]
    assert intercept.std_error >= plain.std_error
    assert abs(intercept.estimate - plain.estimate) <= 1.96 * intercept.std_error
    assert inference["curvature"] == "design summary, design effect"
