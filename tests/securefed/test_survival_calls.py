"""Survival site calls travel as strict JSON and are checked again on arrival."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from core_stats.bfi_combine import HomogeneousLayout
from core_stats.bfi_survival import SURVIVAL
from core_stats.survival_baselines import Baseline
from securefed.survival_spec import survival_spec
from securefed.transport.calls import SiteCall, record_call
from securefed.transport.codec import CodecError

FRAME = pd.DataFrame({"time": [1.0, 2.0, 3.0, 4.0], "status": [1, 0, 1, 1],
                      "age": [50.0, 60.0, 70.0, 65.0], "site": ["a", "a", "b", "b"]})


def _spec():
    return survival_spec(FRAME, "Surv(time, status) ~ age", "site")


def test_survival_calls_round_trip():
    spec = _spec()
    layout = HomogeneousLayout(("age", "omega_0", "omega_1"), SURVIVAL)
    calls = [record_call(lambda s: s.prepare_cox(spec), ["a", "b"]),
             record_call(lambda s: s.cox_terms_vector(np.array([0.1]), "efron", True), ["a"]),
             record_call(lambda s: s.poly_order_vector(2, 0.1), ["a"]),
             record_call(lambda s: s.bfi_survival_vector(
                 layout, Baseline("poly", order=1), 0.01 * np.eye(3)), ["a"])]
    for call in calls:
        again = SiteCall.from_json(call.to_json())
        assert again == call
    arrived = SiteCall.from_json(calls[0].to_json()).kwargs["spec"]
    assert arrived.names == spec.names and arrived.coding == spec.coding
    assert arrived.formula.covariates == ("age",)
    layout_back = SiteCall.from_json(calls[3].to_json()).kwargs["layout"]
    assert layout_back.family is SURVIVAL and layout_back.names == layout.names


def _tampered(path: list[str], value) -> str:
    text = json.loads(record_call(lambda s: s.prepare_cox(_spec()), ["a"]).to_json())
    node = text["kwargs"]["spec"]["fields"]
    for key in path[:-1]:
        node = node[key]["fields"]
    node[path[-1]] = value
    return json.dumps(text)


def test_a_formula_that_is_not_data_is_refused_on_arrival():
    with pytest.raises(CodecError, match="only column names"):
        SiteCall.from_json(_tampered(["formula", "text"],
                                     "Surv(time, status) ~ I(__import__('os'))"))


def test_a_status_coding_outside_surv_is_refused_on_arrival():
    with pytest.raises(CodecError):
        SiteCall.from_json(_tampered(["coding", "kind"], "yes/no"))
