"""A site whose policy pins a study file's SHA-256 computes only that study's model.

Played through the site runtime (the simulated sites of
:mod:`securefed.transport.loopback`, each with the pinning policy): the round
must carry the study file byte for byte, and the call must compute the
study's formula and family.
"""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import pandas as pd
import pytest

from core_stats.families import get_family
from core_stats.formula import DesignSchema
from protocols.stack import PlaintextSum
from securefed.policy.model import PolicyError, SitePolicy, load_policy, policy_text
from securefed.site import GLMMSiteDesign, Site
from securefed.transport.calls import SiteCall
from securefed.transport.flower_server import SiteRefused
from securefed.transport.loopback import loopback_rounds, policy_from_flags

STUDY = '''title = "pinned"

[model]
kind = "glmm"
formula = "y ~ x + (1 | g)"
family = "binomial"
'''


def _sites() -> dict[str, Site]:
    rng = np.random.default_rng(8)
    return {n: Site(n, pd.DataFrame({"y": rng.integers(0, 2, 30), "x": rng.normal(size=30),
                                     "g": np.repeat(np.arange(6), 5)})) for n in "ABCD"}


def _summary(engine, formula: str, family: str, round_id: int):
    design = GLMMSiteDesign(DesignSchema(formula), get_family(family), 1)
    engine.setup(SiteCall("prepare_glmm", {"design": design}))
    return engine.run_round(round_id, "design-summary", SiteCall("design_summary_vector"),
                            "ABCD")


@pytest.fixture
def pinned():
    policy = dataclasses.replace(policy_from_flags(PlaintextSum()),
                                 study_sha256=hashlib.sha256(STUDY.encode()).hexdigest())
    with loopback_rounds(_sites(), PlaintextSum(), policy) as rounds:
        yield rounds._rounds.engine


def test_the_pinned_study_is_computed(pinned):
    pinned.study_text = STUDY
    assert _summary(pinned, "y ~ x + (1 | g)", "binomial", 1).total[0] == 120.0


@pytest.mark.parametrize("study", [None, STUDY.replace("1 | g", "1|g"),
                                   STUDY + "\n# one more line\n"],
                         ids=["no-study", "another-text", "an-edited-file"])
def test_a_round_without_the_pinned_study_file_is_refused(pinned, study):
    pinned.study_text = study
    with pytest.raises(SiteRefused, match="study-not-pinned"):
        _summary(pinned, "y ~ x + (1 | g)", "binomial", 1)


@pytest.mark.parametrize(("formula", "family"), [("y ~ x + g + (1 | g)", "binomial"),
                                                 ("y ~ x + (1 | g)", "poisson")])
def test_another_model_under_the_pinned_study_is_refused(pinned, formula, family):
    pinned.study_text = STUDY
    with pytest.raises(SiteRefused, match="model-not-approved"):
        _summary(pinned, formula, family, 1)


def test_the_pin_is_read_back_and_checked(tmp_path):
    digest = hashlib.sha256(STUDY.encode()).hexdigest()
    path = tmp_path / "policy.toml"
    path.write_text(policy_text(SitePolicy(study_sha256=digest).with_record_dir(tmp_path)))
    assert load_policy(path).study_sha256 == digest
    with pytest.raises(PolicyError, match="study_sha256"):
        SitePolicy(study_sha256="ABC")
