"""Several random-effects terms through `securefed fit`: nested and crossed factors within
sites, against glmer/glmmTMB goldens (tests/golden/glmm_multi), under secure aggregation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from protocols.stack import SecAggSum
from securefed.cli import main
from securefed.glmm_run import GLMMOptions, run_glmm

GOLDEN = Path(__file__).parents[1] / "golden" / "glmm_multi"


def _spec(name: str):
    spec = json.loads((GOLDEN / f"{name}.json").read_text())
    return spec, pd.read_csv(GOLDEN / spec["dataset_path"])


@pytest.mark.parametrize("name", ["grouseticks", "egsingle"])
def test_nested_terms_under_secagg_equal_the_reference(name):
    spec, frame = _spec(name)
    fit = run_glmm(frame, GLMMOptions(spec["formula"], spec["family"], spec["site_column"]),
                   protection=SecAggSum())
    ref = spec["fits"]["glmmTMB"]
    assert fit.converged
    assert fit.loglik == pytest.approx(ref["loglik"], abs=1e-3)
    ours = {fe.term: fe.estimate for fe in fit.fixed_effects}
    for term, beta in ref["fixef"].items():
        assert abs(ours[term] - beta) <= 1e-3 * (1 + abs(beta)), term
    groups = [t["name"] for t in spec["terms"]]
    assert [r.group for r in fit.random_effects if r.group != "Residual"] == groups
    text = fit.summary()
    assert "groups:  " + "; ".join(f"{t['name']}, {t['n_groups']}" for t in spec["terms"]) in text


def test_cli_refuses_what_several_terms_cannot_do_yet(tmp_path, capsys):
    spec, frame = _spec("grouseticks")
    path = tmp_path / "g.csv"
    frame.to_csv(path, index=False)
    base = ["fit", str(path), "--formula", spec["formula"], "--family", "poisson",
            "--site-column", spec["site_column"], "--quiet"]
    assert main([*base, "--nagq", "5"]) == 2
    assert "--nagq" in capsys.readouterr().err
    frame.assign(site=frame.BROOD % 3).to_csv(path, index=False)  # locations cross sites
    assert main(base) == 2
    err = capsys.readouterr().err
    assert "a level of 'LOCATION' appears in sites" in err and len(err.strip().splitlines()) == 1


def test_uncorrelated_bars_are_named_as_lme4_prints_them():
    spec, frame = _spec("egsingle")
    fit = run_glmm(frame, GLMMOptions("math ~ year + (1 + year || schoolid)", "gaussian",
                                      spec["site_column"]))
    assert fit.converged
    assert [(r.group, r.term) for r in fit.random_effects] == [
        ("schoolid", "(Intercept)"), ("schoolid.1", "year"), ("Residual", "")]


@pytest.fixture(scope="module")
def grouse_plain():
    spec, frame = _spec("grouseticks")
    return run_glmm(frame, GLMMOptions(spec["formula"], spec["family"], spec["site_column"]))


@pytest.mark.parametrize("protect", ["ckks", "secagg,ckks"])
def test_nested_terms_under_ckks_equal_plaintext(protect, grouse_plain):
    from securefed.protection import ProtectionOptions, build_protection

    spec, frame = _spec("grouseticks")
    opts = GLMMOptions(spec["formula"], spec["family"], spec["site_column"])
    plain = grouse_plain
    sites = sorted(frame[spec["site_column"]].astype(str).unique())
    fit = run_glmm(frame, opts, protection=build_protection(ProtectionOptions(protect=protect),
                                                            sites))
    assert fit.protection == protect and fit.converged
    assert np.allclose(fit.theta, plain.theta, atol=1e-8, rtol=0)  # as the single-term tests
    assert fit.loglik == pytest.approx(plain.loglik, abs=1e-8)


def test_differential_privacy_with_several_terms_is_refused_in_one_line(tmp_path, capsys):
    spec, frame = _spec("egsingle")
    path = tmp_path / "e.csv"
    frame.to_csv(path, index=False)
    code = main(["fit", str(path), "--formula", spec["formula"], "--family", "gaussian",
                 "--site-column", spec["site_column"], "--protect", "secagg,dp",
                 "--epsilon", "16", "--dp-outcome-bound", "6", "--dp-clip", "3", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "differential privacy are refused" in err and "clustering" in err
