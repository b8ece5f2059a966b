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
    assert not runtime_supports(CkksSum())
    run_bfi(frame, BFIOptions("y ~ x2", "binomial", "site", heterogeneity=("x2",)))
    run_glmm(frame, GLMMOptions("y ~ x2 + (1 | cluster)", "binomial", "site"),
             protection=CkksSum())
    assert not handled


def test_the_simulated_sites_policy_is_written_from_the_flags():
    policy = policy_from_flags(SecAggSum(threshold=3, min_contributors=4))
    assert policy.layers == ("secagg",) and policy.min_threshold == 3
    assert policy.min_contributors == 4
    assert policy_from_flags(PlaintextSum()).layers == ("none",)
