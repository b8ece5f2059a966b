"""``--robust``: the validator bounds each site's leave-one-out influence and names the site.

Honest runs pass (or, on the few golden data sets where one site really moves
a coefficient by more than the bound, the refusal is confirmed by refitting
without that site: tests/securefed/test_robust_golden.py); the poisoning attacks
of issue 22 are refused naming the attacker; a site that tells the validator
something else than the secure sum is refused.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

import securefed.bfi_run as bfi_run
import securefed.glmm_run as glmm_run
from core_stats.bfi_layout import triu_length, triu_pack, triu_unpack
from protocols.stack import SecAggSum
from securefed.audit import read_entries
from securefed.audit_log import EventKind
from securefed.bfi_run import BFIOptions, run_bfi
from securefed.cli import main
from securefed.data import builtin_path
from securefed.errors import InputError
from securefed.glmm_run import GLMMOptions, run_glmm
from securefed.policy.enforce import admit_round
from securefed.policy.model import SitePolicy, load_policy, policy_text
from securefed.policy.refusal import PolicyRefused
from securefed.robust import influence
from securefed.robust.validator import InfluenceRefused, Validator
from securefed.site import Site
from securefed.synthetic import make_hospitals
from securefed.vectors import pack_terms, unpack_terms

ATTACKER = "1"
FORMULA = "y ~ x2 + x6 + (1 | hospital)"
TRAUMA = BFIOptions("mortality ~ age + ISS + GCS", "binomial", "hospital", robust=True)
NURSES = BFIOptions("stress ~ age + gender + experien + wardtype", "gaussian", "hospital",
                    robust=True)


@pytest.fixture(scope="module")
def trauma() -> pd.DataFrame:
    frame = pd.read_csv(builtin_path("trauma"))
    frame["hospital"] = np.random.default_rng(3).permutation(len(frame)) % 5 + 1
    return frame


@pytest.fixture(scope="module")
def nurses() -> pd.DataFrame:
    frame = pd.read_csv(builtin_path("Nurses"))
    frame["hospital"] = frame.hospital.astype(int) % 5 + 1
    return frame


@pytest.fixture(scope="module")
def hospitals() -> pd.DataFrame:
    return make_hospitals(n_sites=5, rows_per_site=120, seed=5)


def _captured(monkeypatch, name: str) -> list:
    seen: list = []
    original = getattr(influence, name)

    def capture(*args, **kwargs):
        seen.append(original(*args, **kwargs))
        return seen[-1]

    import securefed.robust.runs as runs

    monkeypatch.setattr(runs, name, capture)
    return seen


# --------------------------------------------------------------------------- the numbers


def test_bfi_influence_is_the_exact_leave_one_out_shift(trauma, monkeypatch) -> None:
    seen = _captured(monkeypatch, "bfi_influence")
    full = run_bfi(trauma, TRAUMA)
    assert full.robust["largest_influence_se"] <= 2.0 and full.robust["n_sites"] == 5
    for site in seen[0]:
        without = run_bfi(trauma[trauma.hospital.astype(str) != site.site],
                          replace(TRAUMA, robust=False))
        expected = (full.fit.estimate - without.fit.estimate) / without.fit.sd
        np.testing.assert_allclose(site.shift_se, expected, rtol=1e-7, atol=1e-9)


def test_glmm_one_step_influence_matches_a_refit_on_the_slopes(hospitals, monkeypatch) -> None:
    seen = _captured(monkeypatch, "glmm_influence")
    opts = GLMMOptions(FORMULA, "binomial", "hospital", robust=True)
    full = run_glmm(hospitals, opts)
    assert full.extra["robust"]["method"].startswith("GLMM leave-one-out (one Newton step")
    for site in seen[0]:
        without = run_glmm(hospitals[hospitals.hospital.astype(str) != site.site],
                           replace(opts, robust=False))
        sd = np.sqrt(np.diag(np.asarray(without.covariance)))[1:3]
        refit = (np.asarray(full.theta)[1:3] - np.asarray(without.theta)[1:3]) / sd
        np.testing.assert_allclose(site.shift_se[1:3], refit, atol=0.05)


def test_a_site_above_the_bound_after_one_step_is_refitted_before_refusing(monkeypatch):
    """Site 3 is an outlier of the random-intercept distribution: one step puts its intercept
    shift above 2 SEs, the refit (the validator's Newton iterations) at 1.49, as run_glmm."""
    frame = make_hospitals(n_sites=5, rows_per_site=80, seed=1)
    opts = GLMMOptions(FORMULA, "binomial", "hospital", robust=True)
    one_step = _captured(monkeypatch, "glmm_influence")
    refitted = _captured(monkeypatch, "newton_leave_one_out")
    full = run_glmm(frame, opts)  # passes
    assert next(i for i in one_step[0] if i.site == "3").largest > 2.0
    assert [r.site for r in refitted] == ["3"]
    without = run_glmm(frame[frame.hospital != 3], replace(opts, robust=False))
    sd = np.sqrt(np.diag(np.asarray(without.covariance)))[:3]
    refit = (np.asarray(full.theta)[:3] - np.asarray(without.theta)[:3]) / sd
    np.testing.assert_allclose(refitted[0].shift_se, refit, atol=0.01)
    assert full.extra["robust"]["largest_influence_se"] < 2.0


def test_huber_combination_with_unit_weights_is_the_bfi_combination(trauma) -> None:
    rng = np.random.default_rng(1)
    curv, lin, priors = [], [], []
    for _ in range(6):
        m = rng.normal(size=(3, 3))
        a = m @ m.T + 3 * np.eye(3)
        curv.append(a)
        lin.append(a @ rng.normal(0, 0.01, 3))
        priors.append(0.01 * np.eye(3))
    theta, weights = influence.huber_combination(curv, lin, priors, [0, 1, 2], c=1e9)
    assert np.all(weights == 1.0)
    expected = np.linalg.solve(sum(curv) - sum(priors) + np.mean(priors, axis=0), sum(lin))
    np.testing.assert_allclose(theta, expected, rtol=1e-10)


# ------------------------------------------------------------------------------ attacks


def _bfi_liar(monkeypatch, change) -> None:
    """Site 1 sends the crafted bfi-terms vector to the secure sum *and* the validator."""
    def tamper(vector: np.ndarray) -> np.ndarray:
        d = int(round((-2 + np.sqrt(4 + 4 * (vector.size - 2))) / 2))
        t = triu_length(d)
        a, b = change(triu_unpack(vector[:t], d), vector[t:t + d].copy())
        return np.concatenate([triu_pack(a), b, vector[t + d:]])

    class Fooled(Validator):
        def tee(self, purpose, compute):
            return super().tee(purpose, lambda s: tamper(np.asarray(compute(s), dtype=float))
                               if s.name == ATTACKER else compute(s))

    monkeypatch.setattr(bfi_run, "validator_for",
                        lambda robust, bound: Fooled(bound) if robust else None)


def test_bfi_shift_and_pin_attacks_are_refused_naming_the_site(trauma, nurses,
                                                               monkeypatch) -> None:
    honest = run_bfi(trauma, replace(TRAUMA, robust=False))
    j = honest.parameter_names.index("age")
    unit = np.eye(len(honest.parameter_names))[j]
    per_se = honest.fit.sd[j] / honest.fit.covariance[j, j]
    _bfi_liar(monkeypatch, lambda a, b: (a, b + 8.0 * per_se * unit))  # +8 SE on age
    with pytest.raises(InfluenceRefused) as refused:
        run_bfi(trauma, TRAUMA, protection=SecAggSum())
    # site 1's own b'A^-1 b is outside its bound (the per-site check); else its influence is
    assert refused.value.check in ("site-linear-consistency", "bounded-influence")
    assert refused.value.site == ATTACKER and "site 1" in str(refused.value)
    honest = run_bfi(nurses, replace(NURSES, robust=False))  # trauma: linear-consistency
    j = honest.parameter_names.index("age")
    unit = np.eye(len(honest.parameter_names))[j]
    kappa = 10.0 * float(np.sum(1.0 / honest.fit.sd**2))
    target = honest.fit.estimate[j] + 5.0 * honest.fit.sd[j]
    _bfi_liar(monkeypatch, lambda a, b: (a + kappa * np.outer(unit, unit), b + kappa * target
                                         * unit))
    with pytest.raises(InfluenceRefused) as pinned:
        run_bfi(nurses, NURSES, protection=SecAggSum())
    assert pinned.value.site == ATTACKER


def test_each_sites_vector_gets_the_sum_checks_and_a_failure_names_it(nurses, monkeypatch):
    """Issue 22's `bfi-gaussian-A-negated` passes every check of the sum (1.4 SE); the
    validator checks site 1's own vector: its curvature is not positive definite."""
    _bfi_liar(monkeypatch, lambda a, b: (-a, b))
    run_bfi(nurses, replace(NURSES, robust=False), protection=SecAggSum())  # unchecked: passes
    with pytest.raises(InfluenceRefused) as refused:
        run_bfi(nurses, NURSES, protection=SecAggSum())
    assert refused.value.check == "site-curvature-pd" and refused.value.site == ATTACKER
    assert "site 1's own vector fails plausibility check 'curvature-pd'" in str(refused.value)


def test_a_shift_inside_the_bound_passes_and_just_outside_is_refused(trauma, monkeypatch):
    """The bound is exact for BFI: the attacker's room is what the validator says."""
    seen = _captured(monkeypatch, "bfi_influence")
    honest = run_bfi(trauma, TRAUMA)
    own = next(s for s in seen[0] if s.site == ATTACKER)
    j = honest.parameter_names.index("age")
    unit = np.eye(len(honest.parameter_names))[j]
    without = run_bfi(trauma[trauma.hospital.astype(str) != ATTACKER], replace(TRAUMA,
                                                                               robust=False))
    sd_minus = without.fit.sd[j]
    room = (2.0 - own.shift_se[j]) * sd_minus  # in units of theta_age
    delta = room / honest.fit.covariance[j, j]  # moves theta_age by cov_jj * delta
    for factor, passes in ((0.98, True), (1.02, False)):
        _bfi_liar(monkeypatch, lambda a, b, f=factor: (a, b + f * delta * unit))
        if passes:
            run_bfi(trauma, TRAUMA)
        else:
            with pytest.raises(InfluenceRefused):
                run_bfi(trauma, TRAUMA)


def test_a_site_that_tells_the_validator_something_else_is_refused(trauma, monkeypatch):
    honest = bfi_run.Coordinator

    class Crafting(honest):
        def secure_sum(self, purpose, compute, key=None, dp=None):
            if purpose == "bfi-terms":
                inner = compute

                def compute(site):
                    vector = np.array(inner(site), dtype=float)  # what the validator got
                    if site.name == ATTACKER:  # b_age + 1 in the secure sum only
                        vector[triu_length(4) + 1] += 1.0
                    return vector
            return super().secure_sum(purpose, compute, key=key, dp=dp)

    monkeypatch.setattr(bfi_run, "Coordinator", Crafting)
    with pytest.raises(InfluenceRefused) as refused:
        run_bfi(trauma, TRAUMA, protection=SecAggSum())
    assert refused.value.check == "summary-sum" and refused.value.site is None


def test_a_consistent_lie_is_refused_naming_the_site(nurses) -> None:
    lied = nurses.copy()
    mine = lied.hospital.astype(str) == ATTACKER
    lied.loc[mine, "stress"] = -lied.loc[mine, "stress"]  # made-up outcomes, consistent
    run_bfi(nurses, NURSES)  # honest: passes
    with pytest.raises(InfluenceRefused) as refused:
        run_bfi(lied, NURSES)
    assert refused.value.site == ATTACKER


def _glmm_attacker(monkeypatch, change) -> None:
    class Attacker(Site):
        def glmm_terms_vector(self, layout, theta, derivatives):
            vector = super().glmm_terms_vector(layout, theta, derivatives)
            if not derivatives:
                return vector
            full = 1 + layout.size + layout.size * (layout.size + 1) // 2
            value, grad, hess = unpack_terms(vector[:full], layout.size)
            value, grad, hess = change(value, grad, hess, np.asarray(theta))
            return np.concatenate([pack_terms(value, grad, hess), vector[full:]])

    monkeypatch.setattr(glmm_run, "Site", lambda name, part: (Attacker if name == ATTACKER
                                                               else Site)(name, part))


@pytest.mark.parametrize("attack", ["tilt", "scale"])
def test_glmm_attacks_are_refused_naming_the_site(hospitals, monkeypatch, attack) -> None:
    opts = GLMMOptions(FORMULA, "binomial", "hospital", robust=True)
    n_l = int((hospitals.hospital.astype(str) == ATTACKER).sum())
    if attack == "tilt":  # issue 22: 27.6 SE unchecked, passes every sum check
        _glmm_attacker(monkeypatch, lambda v, g, h, t: (v + n_l * t[2], g + n_l * np.eye(g.size)[2],
                                                         h))
    else:  # claims 40 times its information
        _glmm_attacker(monkeypatch, lambda v, g, h, t: (40 * v, 40 * g, 40 * h))
    with pytest.raises(InfluenceRefused) as refused:
        run_glmm(hospitals, opts, protection=SecAggSum())
    assert refused.value.site == ATTACKER


# --------------------------------------------------------------- the CLI and the audit log


def test_a_refused_robust_run_is_one_cli_line_and_logged(nurses, tmp_path, capsys) -> None:
    lied = nurses.copy()
    mine = lied.hospital.astype(str) == ATTACKER
    lied.loc[mine, "stress"] = -lied.loc[mine, "stress"]
    path = tmp_path / "nurses.csv"
    lied.to_csv(path, index=False)
    log = tmp_path / "run.jsonl"
    code = main(["bfi", str(path), "--formula", NURSES.formula, "--site-column", "hospital",
                 "--protect", "secagg", "--robust", "--audit-log", str(log), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1
    assert "--robust refused the run: site 1 moves" in err
    refusals = [e.payload for e in read_entries(log) if e.kind is EventKind.REFUSAL]
    assert refusals and "site 1 moves" in refusals[0]["detail"]


def test_an_honest_robust_run_reports_the_bound(nurses, tmp_path, capsys) -> None:
    path = tmp_path / "nurses.csv"
    nurses.to_csv(path, index=False)
    out = tmp_path / "fit.json"
    code = main(["bfi", str(path), "--formula", NURSES.formula, "--site-column", "hospital",
                 "--protect", "secagg", "--robust", "--robust-bound", "2.5", "--json", str(out),
                 "--quiet"])
    text = capsys.readouterr().out
    assert code == 0 and "bounded influence (--robust)" in text and "bound 2.5" in text
    import json

    robust = json.loads(out.read_text())["robust"]
    assert robust["bound_se"] == 2.5 and 0 < robust["largest_influence_se"] <= 2.5


def test_glmm_cli_robust(hospitals, tmp_path, capsys) -> None:
    path = tmp_path / "h.csv"
    hospitals.to_csv(path, index=False)
    code = main(["fit", str(path), "--formula", FORMULA, "--site-column", "hospital",
                 "--protect", "secagg", "--robust", "--quiet"])
    assert code == 0 and "bounded influence (--robust)" in capsys.readouterr().out


# ------------------------------------------------------------- what --robust refuses to do


def test_robust_refuses_what_it_cannot_bound(hospitals, nurses) -> None:
    with pytest.raises(InputError, match="several random-effects terms"):
        frame = hospitals.assign(ward=hospitals.index % 4 + 10 * hospitals.hospital)
        run_glmm(frame, GLMMOptions("y ~ x2 + (1 | hospital) + (1 | ward)", "binomial",
                                    "hospital", robust=True))
    with pytest.raises(InputError, match="--stratify"):
        run_bfi(nurses, replace(NURSES, stratify=("(Intercept)",)))
    with pytest.raises(InputError, match="positive"):
        run_bfi(nurses, replace(NURSES, robust_bound=0.0))
    from securefed.bfi_run import run_bfi_remote

    with pytest.raises(InputError, match="remote transport"):
        run_bfi_remote(NURSES, None, ["1", "2", "3"], protection=SecAggSum())


def test_study_file_and_site_policy_settings(tmp_path) -> None:
    from securefed.study import load_study

    for i in range(3):
        make_hospitals(n_sites=1, rows_per_site=20, seed=i).to_csv(tmp_path / f"s{i}.csv",
                                                                    index=False)
    text = (f'[model]\nkind = "glmm"\nformula = "{FORMULA}"\nfamily = "binomial"\n'
            'robust = true\nrobust_bound = 1.5\n'
            + "".join(f'[[sites]]\nname = "s{i}"\ndata = "s{i}.csv"\n' for i in range(3)))
    (tmp_path / "study.toml").write_text(text)
    study = load_study(tmp_path / "study.toml")
    assert study.options.robust and study.options.robust_bound == 1.5
    (tmp_path / "bad.toml").write_text(text.replace("robust = true\n", ""))
    with pytest.raises(InputError, match="robust_bound needs robust = true"):
        load_study(tmp_path / "bad.toml")
    policy = SitePolicy(robust_required=True)
    path = tmp_path / "policy.toml"
    path.write_text(policy_text(policy))
    assert load_policy(path).robust_required

    class Params:
        sites = ("a", "b", "c")
        layer = "none"

    with pytest.raises(PolicyRefused, match="robust-required"):
        admit_round(replace(policy, layers=("none",)), "a", Params(), {"a", "b", "c"})
    admit_round(SitePolicy(layers=("none",)), "a", Params(), {"a", "b", "c"})
