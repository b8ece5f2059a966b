"""In-process runs through the one site runtime equal the direct path to 1e-10.

``run_glmm`` / ``run_bfi`` (hence ``securefed fit``, ``bfi`` and ``run``)
send every round as Flower messages to each simulated site's ClientApp
handler (:mod:`securefed.transport.loopback`); ``site_runtime=False`` is the
direct path (the coordinator applies each round's closure to the sites).
"""

from __future__ import annotations

import numpy as np
import pytest

from protocols.stack import CkksSum, PlaintextSum, SecAggSum
from securefed.bfi_run import BFIOptions, run_bfi
from securefed.glmm_run import GLMMOptions, run_glmm, runtime_supports
from securefed.synthetic import make_clustered
from securefed.transport import site_runtime
from securefed.transport.loopback import policy_from_flags


@pytest.fixture(scope="module")
def frame():
    data = make_clustered(n_sites=4, clusters_per_site=10, rows_per_cluster=5, seed=21)
    data = data.assign(site="h" + data.pop("hospital").astype(str))
    return data.assign(kind=np.where(data["x6"] > 0, "high", "low"), z=data["x6"] + data["y"])


@pytest.fixture
def handled(monkeypatch):
    """Counts the messages the ClientApp handler served."""
    calls = []
    real = site_runtime.handle

    def counting(message, context):
        calls.append(str(message.record["stage"]))
        return real(message, context)

    monkeypatch.setattr(site_runtime, "handle", counting)
    return calls


def close(a, b) -> None:
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-10)


@pytest.mark.parametrize("protection", [PlaintextSum, SecAggSum, lambda: SecAggSum(neighbours=2)],
                         ids=["none", "secagg", "secagg+"])
def test_glmm_through_the_runtime_equals_the_direct_path(frame, protection, handled):
    opts = GLMMOptions("y ~ x2 + kind + x7 + (1 | cluster)", "binomial", "site", nagq=2)
    direct = run_glmm(frame, opts, protection=protection(), site_runtime=False)
    assert not handled
    runtime = run_glmm(frame, opts, protection=protection())
    assert handled.count("open") == 4 * runtime.rounds  # every round at every site's handler
    close(runtime.theta, direct.theta)
    close(runtime.covariance, direct.covariance)
    assert runtime.loglik == pytest.approx(direct.loglik, abs=1e-10)
    assert runtime.parameter_names == direct.parameter_names  # categorical levels agreed
    assert (runtime.rounds, runtime.n_obs, runtime.n_groups) == (direct.rounds, direct.n_obs,
                                                                  direct.n_groups)


def test_a_lambda_grid_with_auc_through_the_runtime_equals_the_direct_path(frame):
    opts = GLMMOptions("y ~ x2 + x6 + (1 | cluster)", "binomial", "site", lambda_grid=(0.0, 2.0),
                       seed=4)
    direct = run_glmm(frame, opts, site_runtime=False).to_dict()
    runtime = run_glmm(frame, opts).to_dict()
    assert runtime["auc_validation"] == pytest.approx(direct["auc_validation"], abs=1e-12)
    assert runtime["lambda_selection"]["chosen"] == direct["lambda_selection"]["chosen"]
    close(list(runtime["theta"].values()), list(direct["theta"].values()))


@pytest.mark.parametrize(("formula", "family", "standardize"), [
    ("y ~ x2 + x6 + x7", "binomial", ("x6", "x7")), ("z ~ x2 + x7", "gaussian", ())])
def test_bfi_through_the_runtime_equals_the_direct_path(frame, formula, family, standardize,
                                                        handled):
    opts = BFIOptions(formula, family, "site", standardize=standardize)
    direct = run_bfi(frame, opts, protection=SecAggSum(), site_runtime=False)
    assert not handled
    runtime = run_bfi(frame, opts, protection=SecAggSum())
    assert handled
    close(runtime.fit.estimate, direct.fit.estimate)
    close(runtime.fit.sd, direct.fit.sd)
    assert runtime.standardization == direct.standardization
    assert runtime.rounds == direct.rounds and runtime.warnings == direct.warnings


def test_what_the_runtime_does_not_carry_in_process_yet_keeps_the_direct_path(frame, handled):
    from securefed.glmm_run import runtime_carries_audit

    assert runtime_supports(CkksSum()) and not runtime_carries_audit(CkksSum())
    run_bfi(frame, BFIOptions("y ~ x2", "binomial", "site", heterogeneity=("x2",)))
    assert not handled


@pytest.mark.parametrize("model", ["glmm", "bfi"])
def test_ckks_through_the_runtime_equals_the_direct_path(frame, model, handled):
    if model == "glmm":
        opts = GLMMOptions("y ~ x2 + x7 + (1 | cluster)", "binomial", "site")
        direct = run_glmm(frame, opts, protection=CkksSum(), site_runtime=False)
        runtime = run_glmm(frame, opts, protection=CkksSum())
        estimates = (runtime.theta, direct.theta), (runtime.covariance, direct.covariance)
    else:
        opts = BFIOptions("y ~ x2 + x6", "binomial", "site", standardize=("x6",))
        direct = run_bfi(frame, opts, protection=CkksSum(), site_runtime=False).fit
        runtime = run_bfi(frame, opts, protection=CkksSum()).fit
        estimates = (runtime.estimate, direct.estimate), (runtime.sd, direct.sd)
    assert handled.count("decrypt") == handled.count("open") // 4  # one per round
    for ours, theirs in estimates:
        close(ours, theirs)


def test_the_simulated_sites_policy_is_written_from_the_flags():
    policy = policy_from_flags(SecAggSum(threshold=3, min_contributors=4))
    assert policy.layers == ("secagg",) and policy.min_threshold == 3
    assert policy.min_contributors == 4
    assert policy_from_flags(PlaintextSum()).layers == ("none",)


def _trail(path):
    from securefed.audit import read_entries, verify_log
    from securefed.audit_trail import trail_paths
    from securefed.keys import Registry

    entries = read_entries(path)
    sites = entries[0].payload["sites"]
    report = verify_log(path, Registry.load(path.with_suffix(".registry.json")),
                        site_logs=[trail_paths(path, s)[0] for s in sites])
    assert report.ok, report.summary()
    shape = []
    for entry in entries:
        payload = {k: v for k, v in entry.payload.items() if k in (
            "round", "vector_kind", "length", "contributors", "dropouts", "site", "reason")}
        shape.append((entry.kind.value, payload))
    return shape, [[e.kind.value for e in read_entries(trail_paths(path, s)[0])] for s in sites]


@pytest.mark.parametrize("phase", [None, "after-key-exchange", "after-key-sharing",
                                   "after-masked-input", "during-unmask"])
def test_audited_runs_with_dropouts_through_the_runtime_equal_the_direct_path(
        frame, phase, handled, tmp_path):
    from protocols.stack import DropPlan

    def protection():
        return SecAggSum(drop=None if phase is None else DropPlan(("h2",), phase, 2))

    opts = GLMMOptions("y ~ x2 + x7 + (1 | cluster)", "binomial", "site")
    direct = run_glmm(frame, opts, protection=protection(), site_runtime=False,
                      audit_log=tmp_path / "direct.jsonl")
    assert not handled
    runtime = run_glmm(frame, opts, protection=protection(), audit_log=tmp_path / "rt.jsonl")
    assert handled.count("countersign") == (4 if phase is None else 3)
    close(runtime.theta, direct.theta)
    close(runtime.covariance, direct.covariance)
    assert runtime.n_obs == direct.n_obs and runtime.rounds == direct.rounds
    # the same entries, in the same order, in the coordinator's and every site's log
    assert _trail(tmp_path / "rt.jsonl") == _trail(tmp_path / "direct.jsonl")


def test_an_audited_bfi_with_a_dropout_through_the_runtime_equals_the_direct_path(
        frame, handled, tmp_path):
    from protocols.stack import DropPlan

    opts = BFIOptions("y ~ x2 + x6", "binomial", "site")
    plan = DropPlan(("h3",), "after-masked-input", 1)
    direct = run_bfi(frame, opts, protection=SecAggSum(drop=plan), site_runtime=False,
                     audit_log=tmp_path / "direct.jsonl")
    runtime = run_bfi(frame, opts, protection=SecAggSum(drop=plan),
                      audit_log=tmp_path / "rt.jsonl")
    assert handled
    close(runtime.fit.estimate, direct.fit.estimate)
    close(runtime.fit.sd, direct.fit.sd)
    assert _trail(tmp_path / "rt.jsonl") == _trail(tmp_path / "direct.jsonl")


def _dp_stack(protect, names, seed=None, **options):
    """A dp stack; with ``seed``, each site's noise from a seeded source (tests only)."""
    import random

    from securefed.privacy import DPOptions
    from securefed.protection import ProtectionOptions, build_protection

    class Seeded:
        def __init__(self, seed: int) -> None:
            self._random = random.Random(seed)

        def randbelow(self, n: int) -> int:
            return self._random.randrange(n)

    stack = build_protection(ProtectionOptions(protect, dp=DPOptions(clip=5.0, **options)),
                             names, "binomial")
    if seed is not None:
        for i, site in enumerate(stack.privacy.sites.values()):
            site._rng = Seeded(seed + i)
    return stack


@pytest.mark.parametrize("protect", ["secagg,dp", "dp"])
def test_dp_stacks_through_the_runtime_equal_the_direct_path(frame, protect, handled):
    names = sorted(frame["site"].unique())
    opts = GLMMOptions("y ~ x2 + x7 + (1 | cluster)", "binomial", "site")
    direct = run_glmm(frame, opts, protection=_dp_stack(protect, names, 7, epsilon=1e4),
                      site_runtime=False).to_dict()
    assert not handled
    runtime = run_glmm(frame, opts, protection=_dp_stack(protect, names, 7, epsilon=1e4))
    assert handled.count("open") == 4 * runtime.rounds
    runtime = runtime.to_dict()
    # each site draws its noise itself, from its own source: the same draws, the same fit
    close(list(runtime["theta"].values()), list(direct["theta"].values()))
    assert runtime["privacy"]["releases"] == direct["privacy"]["releases"]
    assert runtime["privacy"]["epsilon_spent"] == direct["privacy"]["epsilon_spent"]
    bfi = BFIOptions("y ~ x2 + x6", "binomial", "site")
    direct = run_bfi(frame, bfi, protection=_dp_stack(protect, names, 9, epsilon=1e4),
                     site_runtime=False)
    runtime = run_bfi(frame, bfi, protection=_dp_stack(protect, names, 9, epsilon=1e4))
    close(runtime.fit.estimate, direct.fit.estimate)  # (its SDs: a bootstrap, unseeded)


def test_a_privacy_ledger_through_the_runtime_is_charged_once_and_refuses_the_next_run(
        frame, tmp_path, handled):
    import json

    from protocols.dp import zcdp_epsilon
    from protocols.errors import PrivacyBudgetExceeded

    names = sorted(frame["site"].unique())
    opts = BFIOptions("y ~ x2 + x6", "binomial", "site")
    stack = _dp_stack("secagg,dp", names, epsilon=1.0, run_epsilon=0.7, ledger_dir=tmp_path)
    run_bfi(frame, opts, protection=stack)
    assert handled
    spent = {n: (tmp_path / f"site-{n}.privacy.json").read_text() for n in names}
    for text in spent.values():  # the simulated sites' own ledgers are not a second charge
        assert json.loads(text)["epsilon_spent"] == pytest.approx(
            zcdp_epsilon(stack.privacy.options.run_rho, 1e-6))
    with pytest.raises(PrivacyBudgetExceeded):  # 0.7 of 1.0 is spent: a second run is refused
        run_bfi(frame, opts, protection=_dp_stack("secagg,dp", names, epsilon=1.0,
                                                  run_epsilon=0.7, ledger_dir=tmp_path))
    assert spent == {n: (tmp_path / f"site-{n}.privacy.json").read_text() for n in names}
