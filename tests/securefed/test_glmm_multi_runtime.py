"""Several random-effects terms through the site runtime (the ClientApp handler) and over
an in-memory Flower grid: equal to the direct in-process fit, under each site's policy
bounds on every term's parameters, with the level check made by the sites."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.supercore.task_identity import TaskIdentity

from core_stats.formula import DesignSchema
from core_stats.glmm import ParameterLayout
from core_stats.glmm_multi import MultiLayout
from protocols.errors import ProtocolError
from protocols.stack import PlaintextSum, SecAggSum
from securefed.errors import InputError
from securefed.glmm_run import GLMMOptions, run_glmm, run_glmm_remote
from securefed.keys import Identity, Registry
from securefed.level_sketch import new_level_key
from securefed.policy.enforce import admit_call
from securefed.policy.model import SitePolicy
from securefed.policy.refusal import PolicyRefused
from securefed.transport.calls import SiteCall
from securefed.transport.flower_rounds import FlowerRounds
from securefed.transport.flower_server import FlowerEngine, StageTimeouts
from securefed.transport.loopback import LoopbackGrid, loopback_rounds, policy_from_flags

GOLDEN = Path(__file__).parents[1] / "golden" / "glmm_multi"


def _spec(name: str):
    spec = json.loads((GOLDEN / f"{name}.json").read_text())
    frame = pd.read_csv(GOLDEN / spec["dataset_path"])
    return GLMMOptions(spec["formula"], spec["family"], spec["site_column"]), frame


def _same(fit, reference, atol=1e-10):
    np.testing.assert_allclose(fit.theta, reference.theta, rtol=0, atol=atol)
    np.testing.assert_allclose(fit.covariance, reference.covariance, rtol=0, atol=atol)
    assert fit.loglik == pytest.approx(reference.loglik, abs=atol)
    assert (fit.n_obs, fit.n_groups, fit.n_sites) == (reference.n_obs, reference.n_groups,
                                                      reference.n_sites)
    assert fit.extra["n_groups_by_factor"] == reference.extra["n_groups_by_factor"]


@pytest.mark.parametrize(("name", "protection"), [("grouseticks", SecAggSum()),
                                                  ("guImmun", PlaintextSum())])
def test_the_site_runtime_equals_the_direct_path(name, protection):
    opts, frame = _spec(name)
    direct = run_glmm(frame, opts, protection=protection, site_runtime=False)
    runtime = run_glmm(frame, opts, protection=protection)
    _same(runtime, direct)
    assert runtime.rounds > direct.rounds  # + the sites' level check


def _grid(frame, tmp_path, site_column, level_key=True, policy: SitePolicy | None = None):
    """Sites as a deployment has them: a CSV, a key, a registry, a policy file, a level key."""
    from securefed.policy.model import policy_text

    names = sorted(frame[site_column].astype(str).unique())
    parties = [Identity.generate("coordinator"), *(Identity.generate(n) for n in names)]
    registry = Registry.of(*parties)
    registry.save(tmp_path / "registry.json")
    parties[0].save_private_key(tmp_path / "coordinator.key")
    key_path = new_level_key(tmp_path / "level.key")
    policy = policy or policy_from_flags(SecAggSum())
    configs = {}
    for party in parties[1:]:
        name = party.name
        party.save_private_key(tmp_path / f"{name}.key")
        frame[frame[site_column].astype(str) == name].to_csv(tmp_path / f"{name}.csv",
                                                            index=False)
        (tmp_path / f"{name}.toml").write_text(policy_text(policy.with_record_dir(
            tmp_path / f"releases-{name}")))
        configs[name] = {"site-name": name, "data-path": str(tmp_path / f"{name}.csv"),
                         "identity-key": str(tmp_path / f"{name}.key"),
                         "registry": str(tmp_path / "registry.json"),
                         "policy": str(tmp_path / f"{name}.toml")}
        if level_key:
            configs[name]["level-key"] = str(key_path)
        (tmp_path / "audit" / name).mkdir(parents=True)
        configs[name]["audit-dir"] = str(tmp_path / "audit" / name)
    key = Ed25519PrivateKey.from_private_bytes(parties[0].export_private_key_raw())
    grid = LoopbackGrid(configs)
    engine = FlowerEngine(grid, key, registry, SecAggSum(),
                          StageTimeouts(stage=30.0, grace=1.0, poll=0.0))
    return FlowerRounds(engine), names, grid, registry


@pytest.fixture(scope="module")
def grouse_direct():
    """grouseticks under secagg on the direct path (the reference of the grid tests)."""
    opts, frame = _spec("grouseticks")
    return run_glmm(frame, opts, protection=SecAggSum(), site_runtime=False)


@pytest.fixture
def task_identity(monkeypatch):
    for attr in ("_run_id", "_node_id", "_task_id"):  # Flower sets these in a ServerApp
        monkeypatch.setattr(TaskIdentity, attr, 1)


def test_over_the_grid_sites_read_their_own_files_and_equal_in_process(tmp_path,
                                                                       task_identity,
                                                                       grouse_direct):
    opts, frame = _spec("grouseticks")
    direct = grouse_direct
    rounds, names, *_ = _grid(frame, tmp_path, opts.site_column)
    remote = run_glmm_remote(opts, rounds, names, protection=SecAggSum())
    _same(remote, direct)
    assert [r.group for r in remote.random_effects] == ["BROOD:LOCATION", "LOCATION"]


def test_a_level_in_two_sites_is_found_by_the_sites(tmp_path, task_identity):
    opts, frame = _spec("grouseticks")
    sites = frame[opts.site_column].astype(str)
    first, second = sorted(sites.unique())[:2]
    moved = frame.copy()
    row = int(np.flatnonzero(sites == second)[0])
    moved.loc[row, "LOCATION"] = frame.loc[sites == first, "LOCATION"].iloc[0]
    rounds, names, *_ = _grid(moved, tmp_path, opts.site_column)
    with pytest.raises(InputError, match="a level of 'LOCATION' appears in two or more sites"):
        run_glmm_remote(opts, rounds, names, protection=SecAggSum())


def test_a_site_without_the_level_key_cannot_check_and_refuses(tmp_path, task_identity):
    opts, frame = _spec("grouseticks")
    rounds, names, *_ = _grid(frame, tmp_path, opts.site_column, level_key=False)
    with pytest.raises(ProtocolError, match="rows cannot give"):
        run_glmm_remote(opts, rounds, names, protection=SecAggSum())


def _call(theta):
    term = ParameterLayout((), ("(Intercept)", "x"), "g", has_dispersion=False)
    scalar = ParameterLayout((), ("(Intercept)",), "h", has_dispersion=False)
    layout = MultiLayout(("(Intercept)",), (scalar, term), has_dispersion=True)
    return SiteCall("multi_terms_vector", {"layout": layout, "theta": np.asarray(theta, float),
                                           "derivatives": True})


@pytest.mark.parametrize(("theta", "admitted"), [
    ([0.5, -1.0, 0.2, 0.1, -0.3, 0.0], True),
    ([0.5, -30.0, 0.2, 0.1, -0.3, 0.0], False),  # the first term's log-SD below log_sd_min
    ([0.5, -1.0, 0.2, 0.1, 13.0, 0.0], False),  # the second term's slope log-SD
    ([0.5, -1.0, 0.2, 1e6, -0.3, 0.0], False),  # its correlation entry
    ([0.5, -1.0, 0.2, 0.1, -0.3, 13.0], False),  # the residual log-SD
    ([500.0, -1.0, 0.2, 0.1, -0.3, 0.0], False),  # |beta|
])
def test_the_policy_bounds_every_terms_parameters(theta, admitted):
    policy = SitePolicy.default()
    if admitted:
        assert admit_call(policy, _call(theta), []) is None  # no design: not counted
    else:
        with pytest.raises(PolicyRefused, match="outside this site's public bounds"):
            admit_call(policy, _call(theta), [])


@pytest.mark.parametrize(("rule", "message"), [
    ({"max_rounds": 5}, "as many releases"),
    ({"min_records": 10**6}, "fewer"),
    ({"min_effective_records": 10**6}, "fewer"),
])
def test_the_policy_counts_rounds_and_records_of_several_terms(rule, message):
    from securefed.site import Site

    opts, frame = _spec("grouseticks")
    sites = {str(n): part for n, part in frame.groupby(opts.site_column)}
    policy = replace(policy_from_flags(SecAggSum()), **rule)
    with loopback_rounds({n: Site(n, p) for n, p in sites.items()}, SecAggSum(),
                         policy) as rounds, pytest.raises(ProtocolError, match=message):
        run_glmm_remote(opts, rounds, list(sites), protection=SecAggSum())


def test_a_study_with_nested_terms_runs_over_flower_and_its_trail_verifies(tmp_path,
                                                                          task_identity,
                                                                          grouse_direct):
    """The deployment's ServerApp code (a study file, an audit trail every site logs)."""
    from securefed.audit_verify import verify_log
    from securefed.transport.flower_study import run_study_over_flower
    from securefed.transport.site_audit import site_log_paths

    opts, frame = _spec("grouseticks")
    direct = grouse_direct
    _, names, grid, registry = _grid(frame, tmp_path, opts.site_column)
    study = tmp_path / "study.toml"
    study.write_text(f'[model]\nkind = "glmm"\nformula = "{opts.formula}"\n'
                     f'family = "poisson"\n\n[protection]\nlayers = ["secagg"]\n\n'
                     + "".join(f'[[sites]]\nname = "{n}"\n\n' for n in names)
                     + '[output]\ndir = "out"\n')
    config = {"study": str(study), "registry": str(tmp_path / "registry.json"),
              "coordinator-key": str(tmp_path / "coordinator.key"), "stage-seconds": 30.0,
              "grace-seconds": 1.0, "poll-seconds": 0.0, "wait-seconds": 1.0}
    result = run_study_over_flower(grid, config)
    np.testing.assert_allclose(list(result["theta"].values()), direct.theta, rtol=0,
                               atol=1e-10)
    assert result["loglik"] == pytest.approx(direct.loglik, abs=1e-10)
    log = tmp_path / "out" / "audit.jsonl"
    run_id = json.loads(log.read_text().splitlines()[0])["payload"]["run_id"]
    logs = [site_log_paths(tmp_path / "audit" / n, run_id, n)[0] for n in names]
    report = verify_log(log, registry, logs)
    assert report.ok, report.summary()


def test_a_level_sketch_asked_again_over_another_roster_is_refused(tmp_path, task_identity):
    """With a fresh nonce the bins differ, but the site keys the sketch without it: over a
    smaller roster it would tell the missing site's number of levels (differencing)."""
    from securefed.glmm_multi_run import public_terms
    from securefed.level_sketch import LevelSketchRequest
    from securefed.site import GLMMSiteDesign

    opts, frame = _spec("grouseticks")
    rounds, names, *_ = _grid(frame, tmp_path, opts.site_column)
    from core_stats.families import POISSON

    design = GLMMSiteDesign(DesignSchema(opts.formula), POISSON, 1)
    terms, _ = public_terms(design.schema)
    rounds.setup(lambda s: s.prepare_glmm_multi(design), names)

    def ask(nonce, roster, round_id):
        request = LevelSketchRequest((1,), (terms[1].name,), (256,), nonce)
        return rounds.aggregate("level-sketch", lambda s: s.level_sketch_vector(request),
                                roster, round_id)

    # 63 locations in 256 bins (a bin counts the sites holding a level there)
    assert 50 < ask("first", names, 1).total.sum() <= 63
    assert 50 < ask("second", names, 2).total.sum() <= 63  # the same roster again: allowed
    with pytest.raises(ProtocolError, match="differenc|roster"):
        ask("third", names[:-1], 3)
