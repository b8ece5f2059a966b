"""A study file run by the Flower ServerApp (``flower_study``) over an in-memory grid.

The grid hands every message to the real ClientApp handler of the addressed
node (sites with their node config's data, keys and audit folder; under
``ckks`` a key holder with its secret context), so this is the code a
deployment runs, minus processes and TLS. The fits equal the in-process runs
of the same study to 1e-10 and the audit trail verifies with every site's own
log. Real processes, a frozen site and a killed one: ``flower/test_flower_study.py``.
"""

from __future__ import annotations

import json
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from flwr.supercore.task_identity import TaskIdentity
from test_flower_engine import LoopbackGrid

from protocols.stack import CkksSum, SecAggSum
from securefed.audit_verify import verify_log
from securefed.bfi_run import run_bfi
from securefed.errors import InputError
from securefed.glmm_run import run_glmm
from securefed.keys import Identity, Registry
from securefed.protection import build_protection
from securefed.study import load_study
from securefed.synthetic import make_clustered
from securefed.transport.ckks_keys import generate
from securefed.transport.flower_ckks import KEY_HOLDER
from securefed.transport.flower_study import run_study_over_flower
from securefed.transport.site_audit import site_log_paths

SITES = ("h1", "h2", "h3", "h4")


@pytest.fixture
def world(tmp_path, monkeypatch):
    for attr in ("_run_id", "_node_id", "_task_id"):  # Flower sets these in a ServerApp
        monkeypatch.setattr(TaskIdentity, attr, 1)
    frame = make_clustered(n_sites=4, clusters_per_site=10, rows_per_cluster=4, seed=8)
    frame = frame.assign(site="h" + frame.pop("hospital").astype(str))
    parties = [Identity.generate(n) for n in ("coordinator", *SITES, KEY_HOLDER)]
    for party in parties:
        party.save_private_key(tmp_path / f"{party.name}.key")
    registry = Registry.of(*parties)
    registry.save(tmp_path / "registry.json")
    secret, _ = generate(tmp_path / KEY_HOLDER)
    configs = {}
    for name in SITES:
        frame[frame["site"] == name].drop(columns="site").to_csv(tmp_path / f"{name}.csv",
                                                                 index=False)
        (tmp_path / "audit" / name).mkdir(parents=True)
        configs[name] = {"site-name": name, "data-path": str(tmp_path / f"{name}.csv"),
                         "identity-key": str(tmp_path / f"{name}.key"),
                         "registry": str(tmp_path / "registry.json"),
                         "audit-dir": str(tmp_path / "audit" / name),
                         # each site's own budget, for the secagg,dp study
                         "privacy-epsilon": 10.0, "privacy-delta": 1e-6,
                         "privacy-ledger": str(tmp_path / "privacy" / f"{name}.json")}
    configs[KEY_HOLDER] = {"site-name": KEY_HOLDER, "ckks-key": str(secret),
                           "identity-key": str(tmp_path / f"{KEY_HOLDER}.key"),
                           "registry": str(tmp_path / "registry.json")}
    return SimpleNamespace(root=tmp_path, frame=frame, registry=registry,
                           grid=LoopbackGrid(configs))


def write_study(world, name: str, model: str, layers: str, sites=SITES) -> dict:
    """The study file (sites named only) and the ServerApp's run config."""
    text = (f'[model]\n{model}\n\n[protection]\nlayers = {layers}\n\n'
            + "".join(f'[[sites]]\nname = "{s}"\n\n' for s in sites)
            + f'[output]\ndir = "out-{name}"\n')
    path = world.root / f"{name}.toml"
    path.write_text(text)
    return {"study": str(path), "registry": str(world.root / "registry.json"),
            "coordinator-key": str(world.root / "coordinator.key"), "stage-seconds": 5.0,
            "grace-seconds": 1.0, "poll-seconds": 0.01, "wait-seconds": 1.0}


def run_id_of(log) -> str:
    return json.loads(log.read_text().splitlines()[0])["payload"]["run_id"]


def site_logs(world, run_id: str) -> list:
    return [site_log_paths(world.root / "audit" / n, run_id, n)[0] for n in SITES]


def test_a_glmm_study_over_flower_equals_the_in_process_run_and_its_trail_verifies(world):
    config = write_study(world, "glmm", 'kind = "glmm"\nformula = "y ~ x2 + x6 + (1 | cluster)"'
                         '\nfamily = "binomial"\nnagq = 3', '["secagg"]')
    result = run_study_over_flower(world.grid, config)
    study = load_study(config["study"], remote=True)
    local = run_glmm(world.frame, study.options, protection=SecAggSum()).to_dict()
    assert list(result["theta"]) == list(local["theta"])
    np.testing.assert_allclose(list(result["theta"].values()), list(local["theta"].values()),
                               rtol=0, atol=1e-10)
    np.testing.assert_allclose([e["std_error"] for e in result["fixed_effects"]],
                               [e["std_error"] for e in local["fixed_effects"]], rtol=0, atol=1e-10)
    assert result["n_obs"] == local["n_obs"] and result["transport"]["engine"] == "flower"
    out = study.output_dir
    assert (out / "result.json").exists() and (out / "summary.txt").exists()
    run_id = run_id_of(out / "audit.jsonl")
    report = verify_log(out / "audit.jsonl", world.registry, site_logs(world, run_id))
    assert report.ok, report.summary()


def test_a_bfi_study_under_ckks_uses_the_remote_key_holder_and_equals_in_process(world):
    config = write_study(world, "bfi", 'kind = "bfi"\nformula = "y ~ x2 + x6 + x7"\n'
                         'family = "binomial"\nstandardize = ["x6"]', '["ckks"]')
    result = run_study_over_flower(world.grid, config)
    study = load_study(config["study"], remote=True)
    local = run_bfi(world.frame, study.options, protection=CkksSum()).to_dict()
    got = [(e["term"], e["estimate"], e["sd"]) for e in result["estimates"]]
    want = [(e["term"], e["estimate"], e["sd"]) for e in local["estimates"]]
    assert [g[0] for g in got] == [w[0] for w in want]
    np.testing.assert_allclose([g[1:] for g in got], [w[1:] for w in want], rtol=0, atol=1e-10)
    ledger = (world.root / KEY_HOLDER / "ckks-secret.ctx.rounds").read_text().split()
    assert len(ledger) == 3  # one decryption each: counts, standardisation moments, terms
    run_id = run_id_of(study.output_dir / "audit.jsonl")
    report = verify_log(study.output_dir / "audit.jsonl", world.registry,
                        site_logs(world, run_id))
    assert report.ok, report.summary()


def test_the_key_holder_listed_as_a_site_is_refused_in_one_line(world):
    config = write_study(world, "kh", 'kind = "bfi"\nformula = "y ~ x2"\nfamily = "binomial"',
                         '["ckks"]', sites=(*SITES, KEY_HOLDER))
    with pytest.raises(InputError, match="key holder; it holds no data"):
        run_study_over_flower(world.grid, config)
    error = (world.root / "out-kh" / "error.txt").read_text()
    assert error.count("\n") == 1 and "remove it from [[sites]]" in error



DP_GLMM = ('kind = "glmm"\nformula = "y ~ x2 + x6 + (1 | cluster)"\nfamily = "binomial"',
           '["secagg", "dp"]')


def site_spent(world, name: str) -> float:
    from securefed.privacy import SitePrivacy

    ledger = SitePrivacy.load(name, 10.0, 1e-6, world.root / "privacy" / f"{name}.json")
    return ledger.ledger.epsilon_spent


def test_a_secagg_dp_study_noises_at_each_site_which_charges_its_own_ledger(world):
    model, layers = DP_GLMM
    config = write_study(world, "dp", model, layers)
    study_file = world.root / "dp.toml"
    study_file.write_text(study_file.read_text() + "\n[privacy]\nepsilon = 6.0\nclip = 4.0\n"
                          "max_se_ratio = 1000.0\n")  # a small test set: run, not refuse
    result = run_study_over_flower(world.grid, config)
    privacy = result["privacy"]
    assert privacy["epsilon_spent"] == pytest.approx(6.0, rel=1e-6)
    assert [r["round"] for r in privacy["releases"]] == [1, 2, 3, 4]
    for name in SITES:  # every site paid exactly what the coordinator accounted
        assert site_spent(world, name) == pytest.approx(privacy["epsilon_spent"], rel=1e-9)
    assert result["study"]["protection"]["privacy"]["epsilon"] == 6.0
    run_id = run_id_of(world.root / "out-dp" / "audit.jsonl")
    report = verify_log(world.root / "out-dp" / "audit.jsonl", world.registry,
                        site_logs(world, run_id))
    assert report.ok, report.summary()


def test_a_study_over_a_sites_budget_is_refused_before_anyone_is_charged(world):
    model, layers = DP_GLMM
    config = write_study(world, "over", model, layers)
    study_file = world.root / "over.toml"
    study_file.write_text(study_file.read_text() + "\n[privacy]\nepsilon = 12.0\nclip = 4.0\n")
    with pytest.raises(Exception, match="budget"):
        run_study_over_flower(world.grid, config)  # each site's own budget is 10
    assert all(site_spent(world, name) == 0.0 for name in SITES)
    error = (world.root / "out-over" / "error.txt").read_text()
    assert error.count("\n") == 1 and "budget" in error


def test_the_deployment_apps_are_the_study_server_app_and_the_site_client_app():
    from securefed.transport import flower, flower_client, flower_study

    assert flower.server_app is flower_study.server_app
    assert flower.client_app is flower_client.client_app


def set_site_budgets(world, epsilon: float) -> None:
    for context in world.grid.contexts.values():
        if "privacy-epsilon" in context.node_config:
            context.node_config["privacy-epsilon"] = epsilon


@pytest.mark.parametrize("family", ["binomial", "gaussian"])
def test_a_bfi_study_under_secagg_dp_fits_from_the_noisy_summed_statistics(world, family):
    """Each site adds its share of the sum's noise to its clipped sufficient statistics
    (m contributors); with a huge budget the fit from the sums is the in-process one."""
    from securefed.privacy import SitePrivacy

    set_site_budgets(world, 1e8)
    outcome = "y" if family == "binomial" else "z"
    if family == "gaussian":
        for name in SITES:
            path = world.root / f"{name}.csv"
            frame = pd.read_csv(path)
            frame.assign(z=frame["x6"] * 0.7 + frame["y"]).to_csv(path, index=False)
    bound = "" if family == "binomial" else "outcome_bound = 4.0\n"
    config = write_study(world, family, f'kind = "bfi"\nformula = "{outcome} ~ x2 + x6"\n'
                         f'family = "{family}"', '["secagg", "dp"]')
    study_file = world.root / f"{family}.toml"
    study_file.write_text(study_file.read_text()
                          + f"\n[privacy]\nepsilon = 1e7\nclip = 3.0\n{bound}")
    result = run_study_over_flower(world.grid, config)
    study = load_study(config["study"], remote=True)
    frame = pd.concat([pd.read_csv(world.root / f"{n}.csv").assign(site=n) for n in SITES],
                      ignore_index=True)
    local = run_bfi(frame, study.options, protection=build_protection(
        study.protection, list(SITES), family)).to_dict()
    np.testing.assert_allclose([e["estimate"] for e in result["estimates"]],
                               [e["estimate"] for e in local["estimates"]], rtol=0, atol=5e-3)
    # (in-process runs differ from each other by ~1e-3 at this epsilon: the noise left)
    # the same releases, charged alike: the count, then the summed statistics
    shape = [(r["round"], r["mechanism"], r["rho"]) for r in result["privacy"]["releases"]]
    assert shape == [(r["round"], r["mechanism"], pytest.approx(r["rho"]))
                     for r in local["privacy"]["releases"]]
    assert shape[1][1] == "distributed discrete Gaussian"
    assert result["privacy"]["inference"]["replicates"] > 0
    for name in SITES:
        ledger = SitePrivacy.load(name, 1e8, 1e-6, world.root / "privacy" / f"{name}.json")
        assert ledger.ledger.epsilon_spent == pytest.approx(
            result["privacy"]["epsilon_spent"], rel=1e-9)
    run_id = run_id_of(study.output_dir / "audit.jsonl")
    report = verify_log(study.output_dir / "audit.jsonl", world.registry,
                        site_logs(world, run_id))
    assert report.ok, report.summary()


BFI_PLAIN = 'kind = "bfi"\nformula = "y ~ x2 + x6"\nfamily = "binomial"'


def pin_sites(world, fingerprint: str, sites=SITES) -> None:
    for context in world.grid.contexts.values():
        if context.node_config.get("site-name") in sites:
            context.node_config["expect-fingerprint"] = fingerprint


def test_sites_that_pin_the_agreed_registry_run_and_the_trail_verifies_pinned(world):
    pin_sites(world, world.registry.fingerprint)
    config = write_study(world, "pinned", BFI_PLAIN, '["secagg"]')
    study_file = world.root / "pinned.toml"
    study_file.write_text(study_file.read_text() + "\n[audit]\nexpect_fingerprint = "
                          f'"{world.registry.fingerprint}"\n')
    result = run_study_over_flower(world.grid, config)
    assert result["study"]["registry_fingerprint"] == world.registry.fingerprint
    log = world.root / "out-pinned" / "audit.jsonl"
    report = verify_log(log, world.registry, site_logs(world, run_id_of(log)),
                        expect_fingerprint=world.registry.fingerprint)
    assert report.ok and report.pinned == world.registry.fingerprint, report.summary()


def _site_entries(world, site: str) -> list[dict]:
    """Every entry of every audit log in the site's audit folder."""
    return [json.loads(line) for log in sorted((world.root / "audit" / site).glob("*.jsonl"))
            if "salts" not in log.name for line in log.read_text().splitlines()]


def released(world, site: str) -> list[dict]:
    return [e for e in _site_entries(world, site) if e["kind"] == "RELEASE"]


def refusals(world, site: str) -> list[str]:
    return [e["payload"]["detail"] for e in _site_entries(world, site) if e["kind"] == "REFUSAL"]


def test_a_site_whose_registry_is_not_the_pinned_one_refuses_before_releasing(world):
    pin_sites(world, "ab" * 32, sites=("h1",))
    config = write_study(world, "h1-pins", BFI_PLAIN, '["none"]')
    with pytest.raises(Exception, match="h1: untrusted-registry: the run's registry is not "
                       "this site's own pinned copy"):
        run_study_over_flower(world.grid, config)
    assert released(world, "h1") == [] and refusals(world, "h1") == ["untrusted-registry"]


def test_sites_refuse_a_run_started_under_another_registry(world):
    extra = Identity.generate("observer")  # the coordinator's registry is not the sites'
    other = Registry.of(*(Identity.load(world.root / f"{n}.key") for n in
                          ("coordinator", *SITES, KEY_HOLDER)), extra)
    other.save(world.root / "other-registry.json")
    config = write_study(world, "other", BFI_PLAIN, '["none"]')
    config["registry"] = str(world.root / "other-registry.json")
    with pytest.raises(Exception, match="untrusted-registry"):
        run_study_over_flower(world.grid, config)
    assert all(released(world, n) == [] for n in SITES)


def test_a_study_pinning_another_registry_is_refused_in_one_line(world):
    config = write_study(world, "wrong-pin", BFI_PLAIN, '["none"]')
    study_file = world.root / "wrong-pin.toml"
    study_file.write_text(study_file.read_text() + '\n[audit]\nexpect_fingerprint = "'
                          + "cd" * 32 + '"\n')
    with pytest.raises(InputError, match="not the pinned cdcdcdcdcdcdcdcd"):
        run_study_over_flower(world.grid, config)
    error = (world.root / "out-wrong-pin" / "error.txt").read_text()
    assert error.count("\n") == 1 and "refusing to run" in error


def with_a_text_factor(world) -> pd.DataFrame:
    """x6's tertiles as a text column (site h1 has no 'high'), and integer weights; the
    sites' files are rewritten with it."""
    frame = world.frame.copy()
    cuts = np.quantile(frame["x6"], [1 / 3, 2 / 3])
    grade = np.where(frame["x6"] < cuts[0], "low", np.where(frame["x6"] < cuts[1], "mid",
                                                             "high"))
    frame["grade"] = np.where((frame["site"] == "h1") & (grade == "high"), "mid", grade)
    frame["w"] = 1 + frame["x2"].astype(int)
    for name in SITES:
        frame[frame["site"] == name].drop(columns="site").to_csv(world.root / f"{name}.csv",
                                                                 index=False)
    return frame


@pytest.mark.parametrize("kind, model", [
    ("glmm", 'formula = "y ~ grade * x2 + (1 | cluster)"\nfamily = "binomial"'),
    ("bfi", 'formula = "y ~ grade * x7"\nfamily = "binomial"\nweights = "w"'),
])
def test_a_study_with_a_text_factor_agrees_levels_from_the_sites(world, kind, model):
    """The factor-levels round: each site reports its labels, the coordinator agrees them
    (h1's missing level included) and the fit equals the in-process run to 1e-10."""
    frame = with_a_text_factor(world)
    assert "high" not in set(frame.loc[frame.site == "h1", "grade"])
    config = write_study(world, f"levels-{kind}", f'kind = "{kind}"\n{model}', '["secagg"]')
    result = run_study_over_flower(world.grid, config)
    study = load_study(config["study"], remote=True)
    run = run_glmm if kind == "glmm" else run_bfi
    local = run(frame, study.options, protection=SecAggSum()).to_dict()
    if kind == "glmm":
        assert "gradelow:x2" in result["theta"] and list(result["theta"]) == list(local["theta"])
        got, want = list(result["theta"].values()), list(local["theta"].values())
    else:
        assert [e["term"] for e in result["estimates"]][:3] == ["(Intercept)", "gradelow",
                                                                "grademid"]
        got = [(e["estimate"], e["sd"]) for e in result["estimates"]]
        want = [(e["estimate"], e["sd"]) for e in local["estimates"]]
        assert result["factor_levels"] == {"grade": ["high", "low", "mid"]}
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-10)
    run_id = run_id_of(study.output_dir / "audit.jsonl")
    report = verify_log(study.output_dir / "audit.jsonl", world.registry,
                        site_logs(world, run_id))
    assert report.ok, report.summary()


def survival_world(world, name: str, model: str) -> dict:
    """The world's sites hold survival rows (R's lung, split over the four sites)."""
    from pathlib import Path

    lung = pd.read_csv(Path(__file__).parents[1] / "golden" / "cox" / "lung.csv").dropna()
    lung = lung.drop(columns="site").assign(site=[SITES[i % 4] for i in range(len(lung))])
    for site in SITES:
        lung[lung["site"] == site].drop(columns="site").to_csv(world.root / f"{site}.csv",
                                                               index=False)
    return write_study(world, name, model, '["secagg"]'), lung


@pytest.mark.parametrize("model", [
    'kind = "cox"\nformula = "Surv(time, status) ~ age + sex + ph.ecog"\nstatus_coding = "1/2"',
    'kind = "bfi"\nformula = "Surv(time, status) ~ age + sex"\nfamily = "survival"\n'
    'baseline = "weibull"\nlambda = 0.01\nstatus_coding = "1/2"'])
def test_survival_studies_over_flower_equal_in_process_and_their_trails_verify(world, model):
    from securefed.bfi_survival_run import run_bfi_survival
    from securefed.cox_run import run_cox

    config, lung = survival_world(world, "surv", model)
    result = run_study_over_flower(world.grid, config)
    study = load_study(config["study"], remote=True)
    fit = run_cox if study.kind == "cox" else run_bfi_survival
    local = fit(lung, replace(study.options, site_column="site"),
                protection=SecAggSum()).to_dict()
    key = "fixed_effects" if study.kind == "cox" else "estimates"
    se = "std_error" if study.kind == "cox" else "sd"
    assert [e["term"] for e in result[key]] == [e["term"] for e in local[key]]
    np.testing.assert_allclose([e["estimate"] for e in result[key]],
                               [e["estimate"] for e in local[key]], rtol=0, atol=1e-10)
    np.testing.assert_allclose([e[se] for e in result[key]], [e[se] for e in local[key]],
                               rtol=0, atol=1e-10)
    out = study.output_dir
    report = verify_log(out / "audit.jsonl", world.registry,
                        site_logs(world, run_id_of(out / "audit.jsonl")))
    assert report.ok, report.summary()
