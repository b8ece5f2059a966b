"""The factor-levels round over the site runtime (Flower's messages, in memory).

Over a remote transport the coordinator holds no rows: it asks every site for
its variable report, agrees the levels and sends the schema; each site
rebuilds its own design. The fits must equal the in-process ones, where the
coordinator agrees the levels from the same reports directly.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from protocols.stack import PlaintextSum, SecAggSum
from securefed.bfi_run import BFIOptions, run_bfi, run_bfi_remote
from securefed.errors import InputError
from securefed.glmm_run import GLMMOptions, run_glmm, run_glmm_remote
from securefed.remote_levels import remote_schema
from securefed.site import Site
from securefed.transport.flower_server import RowsCannotServe, SiteRefused
from securefed.transport.loopback import loopback_rounds, policy_from_flags

GOLDEN = Path(__file__).parents[1] / "golden"
OWLS = "SiblingNegotiation ~ FoodTreatment * SexParent + I((ArrivalTime - 25)^2) + " \
       "offset(log(BroodSize)) + (1 | Nest)"
GUIMMUN = "immun ~ kid2p + mom25p + ord + ethn * rural + pcInd81 + I(pcInd81^2)"


def _owls() -> pd.DataFrame:
    return pd.read_csv(GOLDEN / "glmm_language" / "data" / "owls_factors.csv")


def _guimmun() -> pd.DataFrame:
    return pd.read_csv(GOLDEN / "bfi_language" / "data" / "guimmun.csv",
                       dtype={"comm": str, "ord": str})


def _sites(frame: pd.DataFrame) -> dict[str, Site]:
    return {str(k): Site(str(k), p) for k, p in frame.groupby("site", sort=True)}


def test_glmm_fit_with_factors_over_the_runtime_equals_in_process() -> None:
    frame = _owls()
    opts = GLMMOptions(OWLS, "poisson", "site")
    direct = run_glmm(frame, opts, site_runtime=False)
    sites = _sites(frame)
    protection = SecAggSum()
    with loopback_rounds(sites, protection) as rounds:
        remote = run_glmm_remote(opts, rounds, list(sites), protection=protection)
    assert remote.parameter_names == direct.parameter_names
    assert "FoodTreatmentSatiated:SexParentMale" in remote.coef()
    np.testing.assert_allclose(remote.theta, direct.theta, rtol=0, atol=1e-10)
    assert remote.loglik == pytest.approx(direct.loglik, abs=1e-10)
    assert remote.extra["factor_levels"] == direct.extra["factor_levels"]


def test_bfi_with_factors_over_the_runtime_equals_in_process() -> None:
    frame = _guimmun()
    opts = BFIOptions(GUIMMUN, "binomial", "site")
    direct = run_bfi(frame, opts, site_runtime=False)
    sites = _sites(frame)
    with loopback_rounds(sites, PlaintextSum()) as rounds:
        remote = run_bfi_remote(opts, rounds, list(sites), protection=PlaintextSum())
    assert remote.term_names == direct.term_names
    assert {"ethnN:ruralY", "I(pcInd81^2)", "ord7p"} <= set(remote.term_names)
    np.testing.assert_allclose(remote.fit.estimate, direct.fit.estimate, rtol=0, atol=1e-10)
    np.testing.assert_allclose(remote.fit.sd, direct.fit.sd, rtol=0, atol=1e-10)
    # site S02 has no mother of ethnicity N: the agreed levels still hold N
    assert "N" not in set(frame.loc[frame.site == "S02", "ethn"])
    assert remote.to_dict()["factor_levels"]["ethn"] == ["L", "N", "S"]
    assert remote.to_dict()["factor_levels"] == direct.to_dict()["factor_levels"]


def test_a_text_outcome_and_weights_over_the_runtime() -> None:
    frame = pd.read_csv(GOLDEN / "bfi_language" / "data" / "cbpp.csv", dtype={"herd": str,
                                                                            "period": str})
    frame = frame.assign(p=frame.incidence / frame["size"])
    opts = BFIOptions("p ~ period", "binomial", "site", weights="size")
    direct = run_bfi(frame, opts, site_runtime=False)
    sites = _sites(frame)
    with loopback_rounds(sites, PlaintextSum()) as rounds:
        remote = run_bfi_remote(opts, rounds, list(sites), protection=PlaintextSum())
    np.testing.assert_allclose(remote.fit.estimate, direct.fit.estimate, rtol=0, atol=1e-10)


def test_the_report_carries_labels_never_counts() -> None:
    frame = _guimmun()
    sites = _sites(frame)
    with loopback_rounds(sites, PlaintextSum()) as rounds:
        reports = rounds.variable_reports(GUIMMUN, list(sites))
    assert sorted(reports) == sorted(sites)
    assert reports["S02"]["ethn"] == {"levels": ["L", "S"], "numeric": False}
    assert reports["S01"]["pcInd81"] == "numeric"
    text = repr(reports)
    for count in map(str, frame.groupby("site").size()):
        assert f" {count}" not in text and f"{count}," not in text


def test_small_cells_and_dp_only_sites_refuse_the_report() -> None:
    frame = _guimmun()
    rare = frame.copy()
    rare.loc[rare.index[0], "ord"] = "99"  # one record with a category of its own
    base = policy_from_flags(PlaintextSum())
    for data, policy, code in ((rare, replace(base, min_cell_count=5), "small-cell"),
                               (frame, replace(base, dp_required=True), "dp-required")):
        sites = _sites(data)
        with loopback_rounds(sites, PlaintextSum(), policy) as rounds:
            with pytest.raises(SiteRefused, match=code):
                remote_schema(rounds, GUIMMUN, list(sites))
    numeric_only = "pcInd81 ~ I(pcInd81^2)"  # no labels: nothing exact about categories
    sites = _sites(frame)
    with loopback_rounds(sites, PlaintextSum(), replace(base, dp_required=True)) as rounds:
        assert remote_schema(rounds, numeric_only, list(sites)).factors == ()


def test_a_column_of_numbers_at_one_site_and_text_at_another_is_refused() -> None:
    frame = _guimmun()
    parts = _sites(frame)
    parts["S01"] = Site("S01", frame[frame.site == "S01"].assign(ethn=1.0))
    with loopback_rounds(parts, PlaintextSum()) as rounds:
        with pytest.raises(InputError, match="holds numbers at some sites and text"):
            remote_schema(rounds, GUIMMUN, list(parts))
    with loopback_rounds(_sites(frame), PlaintextSum()) as rounds:
        with pytest.raises(RowsCannotServe, match="cannot-compute"):
            remote_schema(rounds, GUIMMUN.replace("rural", "no_such_column"), list(parts))


def test_a_malformed_report_is_refused() -> None:
    class Liar:
        def __init__(self, report):
            self.report = report

        def variable_reports(self, formula, names, audit=None):
            return dict.fromkeys(names, self.report)

    for report in ({"ethn": {"levels": "LNS", "numeric": False}},
                   {"ethn": {"levels": [1, 2], "numeric": False}},
                   {"open('x')": "numeric"}):
        with pytest.raises(InputError, match="site A"):
            remote_schema(Liar(report), "immun ~ ethn", ["A", "B", "C"])


def test_a_site_refuses_levels_not_in_r_order() -> None:
    """A schema whose levels a coordinator reordered (moving the reference level) or
    repeated is refused where it arrives, before the site builds anything."""
    from core_stats.formula import DesignSchema
    from securefed.transport.calls import SiteCall
    from securefed.transport.codec import CodecError

    formula = "immun ~ ethn + factor(ord)"
    honest = DesignSchema(formula, (("ethn", ("L", "N", "S")), ("factor(ord)", ("2", "10"))))
    text = SiteCall("bfi_terms_vector", {"spec": _spec(honest)}).to_json()
    assert SiteCall.from_json(text) == SiteCall.from_json(text)
    for factors in ((("ethn", ("N", "L", "S")),), (("ethn", ("L", "L", "S")),)):
        bad = text.replace('"L","N","S"', ",".join(f'"{v}"' for v in factors[0][1]))
        with pytest.raises(CodecError, match="not distinct and in R's order"):
            SiteCall.from_json(bad)


def _spec(schema):
    from core_stats.families import BINOMIAL
    from securefed.site import BFISiteSpec

    return BFISiteSpec(schema, BINOMIAL, np.eye(4) * 0.01,
                       ("(Intercept)", "ethnN", "ethnS", "factor(ord)10"))


def test_remote_bfi_counts_and_standardises_the_rows_the_model_uses() -> None:
    """A site with missing values: its count and standardisation rounds use the rows its
    local fit uses (R's na.omit), so the remote fit equals the in-process one (it was
    refused as implausible: the count round had counted every row)."""
    frame = _guimmun()
    frame.loc[frame.index[:5], "pcInd81"] = np.nan
    frame = frame.assign(z=np.arange(len(frame)) % 7 + 0.5)
    opts = BFIOptions("immun ~ kid2p + pcInd81 + z", "binomial", "site", standardize=("z",))
    direct = run_bfi(frame, opts, site_runtime=False)
    sites = _sites(frame)
    with loopback_rounds(sites, PlaintextSum()) as rounds:
        remote = run_bfi_remote(opts, rounds, list(sites), protection=PlaintextSum())
    assert remote.fit.n_obs == direct.fit.n_obs == len(frame) - 5
    np.testing.assert_allclose(remote.fit.estimate, direct.fit.estimate, rtol=0, atol=1e-10)
    assert remote.standardization == direct.standardization
