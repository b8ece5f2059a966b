"""Cox and BFI survival through the one site runtime equal the direct path to 1e-10.

``run_cox`` and ``run_bfi_survival`` send every round as Flower messages to each
simulated site's ClientApp handler (:mod:`securefed.survival_runtime`);
``site_runtime=False`` is the direct path.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from protocols.stack import CkksSum, PlaintextSum, SecAggSum
from securefed.bfi_survival_run import SurvivalBFIOptions, run_bfi_survival
from securefed.cox_run import CoxOptions, run_cox
from securefed.errors import InputError
from securefed.transport import site_runtime

GOLDEN = Path(__file__).parents[1] / "golden"
GOMPERTZ = GOLDEN / "bfi_survival" / "gompertz_bfi.csv"


@pytest.fixture
def handled(monkeypatch):
    """The stages the ClientApp handler served."""
    calls = []
    real = site_runtime.handle

    def counting(message, context):
        calls.append(str(message.record["stage"]))
        return real(message, context)

    monkeypatch.setattr(site_runtime, "handle", counting)
    return calls


def close(a, b) -> None:
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-10)


@pytest.mark.parametrize("protection", [PlaintextSum, SecAggSum, CkksSum],
                         ids=["none", "secagg", "ckks"])
@pytest.mark.parametrize("ties", ["efron", "breslow"])
def test_cox_through_the_runtime_equals_the_direct_path(protection, ties, handled):
    frame = pd.read_csv(GOLDEN / "cox" / "veteran.csv")
    opts = CoxOptions("Surv(time, status) ~ trt * karno + log(age) + celltype", "site", ties)
    direct = run_cox(frame, opts, protection=protection(), site_runtime=False)
    assert not handled
    runtime = run_cox(frame, opts, protection=protection())
    sites = frame["site"].nunique()
    assert handled.count("open") == sites * runtime.rounds  # every round at every handler
    close([f.estimate for f in runtime.fixed_effects], [f.estimate for f in direct.fixed_effects])
    close([f.std_error for f in runtime.fixed_effects],
          [f.std_error for f in direct.fixed_effects])
    assert runtime.loglik == pytest.approx(direct.loglik, abs=1e-10)
    assert runtime.concordance == direct.concordance
    assert runtime.rounds == direct.rounds and runtime.n_events == direct.n_events


@pytest.mark.parametrize("protection", [PlaintextSum, SecAggSum, CkksSum],
                         ids=["none", "secagg", "ckks"])
@pytest.mark.parametrize("baseline", ["weibull", "poly", "pwexp", "unspecified"])
def test_bfi_survival_through_the_runtime_equals_the_direct_path(protection, baseline,
                                                                 handled):
    frame = pd.read_csv(GOMPERTZ)
    opts = SurvivalBFIOptions("Surv(time, status) ~ x1 + x2", "centre", baseline,
                              knots=(0.0, 0.7, 1.6) if baseline == "pwexp" else ())
    direct = run_bfi_survival(frame, opts, protection=protection(), site_runtime=False)
    assert not handled
    runtime = run_bfi_survival(frame, opts, protection=protection())
    assert handled.count("open") == 3 * runtime.rounds
    close(runtime.fit.estimate, direct.fit.estimate)
    close(runtime.fit.sd, direct.fit.sd)
    assert runtime.order_counts == direct.order_counts and runtime.fit.names == direct.fit.names
    assert [r["purpose"] for r in runtime.releases] == [r["purpose"] for r in direct.releases]


def test_a_site_input_error_reads_as_on_the_direct_path(handled):
    frame = pd.read_csv(GOMPERTZ).assign(time=lambda f: f["time"].where(f.index != 3, -1.0))
    with pytest.raises(InputError, match="site 1: the time column 'time' has negative times"):
        run_cox(frame, CoxOptions("Surv(time, status) ~ x1", "centre"))
    assert not handled  # refused before any round


def test_centre_specific_baselines_keep_the_direct_path(handled):
    opts = SurvivalBFIOptions("Surv(time, status) ~ x1 + x2", "centre", "gompertz",
                              stratify=("omega_1",))
    run_bfi_survival(pd.read_csv(GOMPERTZ), opts, protection=SecAggSum())
    assert not handled


def _policy(**changes):
    import dataclasses

    from securefed.transport.loopback import policy_from_flags

    return dataclasses.replace(policy_from_flags(PlaintextSum()), **changes)


@pytest.mark.parametrize(("changes", "beta", "refused"), [
    ({"formulas": ("Surv(time, status) ~ x1 + x2",)}, 0.1, "model-not-approved"),
    ({"formulas": ("Surv(time, status) ~ x1",)}, 0.1, None),
    ({"columns": ("time", "status", "x2")}, 0.1, "model-not-approved"),  # x1 not allowed
    ({"max_abs_beta": 5.0}, 50.0, "theta-out-of-bounds"),  # the coordinator's beta too big
    ({"max_abs_beta": 5.0}, 4.0, None),
])
def test_the_sites_policy_decides_survival_rounds(changes, beta, refused):
    from core_stats.formula import DesignSchema
    from securefed.site import Site
    from securefed.survival_runtime import runtime_coordinator
    from securefed.survival_spec import survival_spec
    from securefed.transport.flower_server import SiteRefused

    frame = pd.read_csv(GOMPERTZ)
    spec = survival_spec(frame, "Surv(time, status) ~ x1", "centre")
    assert isinstance(spec.schema, DesignSchema)
    sites = [Site(str(n), p) for n, p in frame.groupby("centre")]
    with runtime_coordinator(sites, PlaintextSum(), lambda s: s.prepare_cox(spec),
                             _policy(**changes)) as coordinator:
        def terms():
            return coordinator.secure_sum("cox-terms", lambda s: s.cox_terms_vector(
                np.array([beta]), "efron", True))
        if refused:
            with pytest.raises(SiteRefused, match=rf"refused\[{refused}\]"):
                terms()
        else:
            assert terms().shape == (3,)
