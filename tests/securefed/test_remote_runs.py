"""Fits over a remote transport equal the in-process fits; each site keeps its own log.

``Loopback`` is a transport whose "network" is JSON: every round's closure is
recorded as a :class:`SiteCall`, travels as text, and each site applies it to
its own :class:`Site` (:mod:`securefed.transport.release`), logging its
release in its own folder (:mod:`securefed.transport.site_audit`) exactly as a
Flower ClientApp does. The real Flower runs are in ``tests/securefed/flower``.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from protocols.stack import PlaintextSum, SecAggSum
from securefed.audit_log import Countersignature
from securefed.audit_trail import AuditTrail
from securefed.audit_verify import verify_log
from securefed.bfi_run import BFIOptions, run_bfi, run_bfi_remote
from securefed.errors import InputError
from securefed.glmm_run import GLMMOptions, run_glmm, run_glmm_remote
from securefed.keys import Identity, Registry
from securefed.site import Site
from securefed.synthetic import make_clustered
from securefed.transport.calls import SiteCall, apply_call, record_call
from securefed.transport.release import release
from securefed.transport.site_audit import countersign, log_release, site_log_paths


class Loopback:
    """A transport over JSON text to local sites, each with its own identity and log folder."""

    def __init__(self, frame: pd.DataFrame, protection, tmp_path=None) -> None:
        self.sites = {str(n): Site(str(n), p) for n, p in frame.groupby("site", sort=True)}
        self.protection = protection
        self.identities = {n: Identity.generate(n) for n in self.sites}
        self.folders = {}
        if tmp_path is not None:
            for name in self.sites:
                (tmp_path / name).mkdir()
                self.folders[name] = tmp_path / name
        self.calls: list[str] = []

    def setup(self, compute, site_names) -> None:
        text = record_call(compute, list(site_names)).to_json()
        self.calls.append(text)
        for name in site_names:
            apply_call(self.sites[name], SiteCall.from_json(text))

    def aggregate(self, purpose, compute, site_names, round_id, *, dp=None, audit=None):
        text = record_call(compute, list(site_names)).to_json()
        self.calls.append(text)
        vectors, releases = {}, {}
        for name in site_names:
            vectors[name] = release(self.sites[name], SiteCall.from_json(text), round_id, purpose)
            if audit is not None:
                releases[name] = json.loads(json.dumps(log_release(
                    self.folders[name], self.identities[name], vectors[name], round_id, purpose,
                    json.loads(json.dumps(audit)))))
        result = self.protection.aggregate(vectors, round_id=round_id, purpose=purpose)
        if audit is not None:
            result.details["releases"] = releases
        return result

    def countersign(self, request, lines, site_names):
        from dataclasses import asdict

        return [Countersignature(**countersign(self.folders[n], self.identities[n],
                                               asdict(request), "\n".join(lines)))
                for n in site_names]


@pytest.fixture(scope="module")
def clustered() -> pd.DataFrame:
    frame = make_clustered(n_sites=4, clusters_per_site=12, rows_per_cluster=4, seed=5)
    return frame.assign(site="h" + frame.pop("hospital").astype(str))


@pytest.mark.parametrize("nagq", [1, 5])
def test_remote_glmm_equals_in_process(clustered, nagq):
    opts = GLMMOptions("y ~ x2 + x6 + x7 + (1 | cluster)", "binomial", "site", nagq=nagq)
    local = run_glmm(clustered, opts, protection=SecAggSum())
    transport = Loopback(clustered, SecAggSum())
    remote = run_glmm_remote(opts, transport, list(transport.sites), protection=SecAggSum())
    np.testing.assert_allclose(remote.theta, local.theta, rtol=0, atol=1e-10)
    np.testing.assert_allclose(remote.covariance, local.covariance, rtol=0, atol=1e-10)
    assert (remote.n_obs, remote.n_groups, remote.n_sites) == (local.n_obs, local.n_groups, 4)
    assert remote.loglik == pytest.approx(local.loglik, abs=1e-9)
    assert all(SiteCall.from_json(c).method != "glmm_rows" for c in transport.calls)


def test_remote_glmm_lambda_grid_splits_at_the_sites_as_in_process(clustered):
    opts = GLMMOptions("y ~ x2 + x6 + (1 | cluster)", "binomial", "site",
                       lambda_grid=(0.0, 1.0), seed=3)
    local = run_glmm(clustered, opts)
    transport = Loopback(clustered, PlaintextSum())
    remote = run_glmm_remote(opts, transport, list(transport.sites), protection=PlaintextSum())
    np.testing.assert_allclose(remote.theta, local.theta, rtol=0, atol=1e-10)
    assert remote.extra["lambda_selection"] == local.extra["lambda_selection"]


def test_remote_bfi_equals_in_process(clustered):
    opts = BFIOptions("y ~ x2 + x6 + x7", "binomial", "site", standardize=("x6", "x7"))
    local = run_bfi(clustered, opts, protection=SecAggSum())
    transport = Loopback(clustered, SecAggSum())
    remote = run_bfi_remote(opts, transport, list(transport.sites), protection=SecAggSum())
    np.testing.assert_allclose(remote.fit.estimate, local.fit.estimate, rtol=0, atol=1e-10)
    np.testing.assert_allclose(remote.fit.sd, local.fit.sd, rtol=0, atol=1e-10)
    assert remote.standardization == local.standardization
    assert remote.to_dict()["estimates"][0]["term"] == local.to_dict()["estimates"][0]["term"]


def test_remote_bfi_gaussian_equals_in_process(clustered):
    frame = clustered.assign(z=clustered["x6"] * 0.7 + clustered["y"])
    opts = BFIOptions("z ~ x2 + x7", "gaussian", "site")
    local = run_bfi(frame, opts)
    transport = Loopback(frame, PlaintextSum())
    remote = run_bfi_remote(opts, transport, list(transport.sites), protection=PlaintextSum())
    np.testing.assert_allclose(remote.fit.estimate, local.fit.estimate, rtol=0, atol=1e-10)


def test_remote_bfi_refuses_what_needs_per_site_estimates(clustered):
    transport = Loopback(clustered, PlaintextSum())
    for opts in (BFIOptions("y ~ x2", "binomial", "site", stratify=("(Intercept)",)),
                 BFIOptions("y ~ x2", "binomial", "site", compare_pooled=True)):
        with pytest.raises(InputError, match="not available over a remote transport"):
            run_bfi_remote(opts, transport, list(transport.sites), protection=PlaintextSum())


def test_a_site_whose_rows_do_not_fit_the_public_design_refuses(clustered):
    frame = clustered.assign(x2=np.where(clustered["site"] == "h1", "yes", "no"))
    transport = Loopback(frame, PlaintextSum())
    opts = BFIOptions("y ~ x2", "binomial", "site")
    with pytest.raises(Exception, match="x2"):
        run_bfi_remote(opts, transport, list(transport.sites), protection=PlaintextSum())


def test_remote_audit_trail_each_site_logs_its_own_releases_and_it_all_verifies(
        clustered, tmp_path):
    transport = Loopback(clustered, SecAggSum(), tmp_path)
    coordinator = Identity.generate("coordinator")
    registry = Registry.of(coordinator, *transport.identities.values())
    (tmp_path / "coord").mkdir()
    log = tmp_path / "coord" / "audit.jsonl"
    opts = BFIOptions("y ~ x2 + x6", "binomial", "site")
    trail = AuditTrail.start_remote(log, coordinator=coordinator, registry=registry,
                                    site_names=list(transport.sites), model="bfi",
                                    config={"formula": opts.formula},
                                    protection={"name": "secagg"},
                                    countersign=transport.countersign)
    run_bfi_remote(opts, transport, list(transport.sites), protection=SecAggSum(), audit=trail)
    site_logs = [site_log_paths(transport.folders[n], trail.run_id, n)[0]
                 for n in transport.sites]
    assert all(p.exists() for p in site_logs)
    salts = site_log_paths(transport.folders["h1"], trail.run_id, "h1")[1]
    assert salts.stat().st_mode & 0o077 == 0
    report = verify_log(log, registry, site_logs)
    assert report.ok, report.summary()
    kinds = [json.loads(line)["kind"] for line in log.read_text().splitlines()]
    assert kinds.count("RELEASE") == 2 * len(transport.sites)  # count and terms rounds
    assert kinds[-1] == "CHECKPOINT"
    # a site's log that disagrees with the coordinator's is caught
    text = site_logs[0].read_text()
    assert text.count('"vector_kind":"bfi-count"') == 1
    site_logs[0].write_text(text.replace('"vector_kind":"bfi-count"', '"vector_kind":"bfi-cOunt"'))
    assert not verify_log(log, registry, site_logs).ok


def test_a_remote_study_names_its_sites_only(tmp_path):
    from securefed.study import load_study

    text = ('[model]\nkind = "bfi"\nformula = "y ~ x2"\nfamily = "binomial"\n\n'
            '[[sites]]\nname = "A"\n\n[[sites]]\nname = "B"\n')
    path = tmp_path / "study.toml"
    path.write_text(text)
    study = load_study(path, remote=True)
    assert [s.name for s in study.sites] == ["A", "B"] and study.sites[0].data is None
    with pytest.raises(InputError, match="has no data"):
        load_study(path)  # in-process, every site needs its data file
    path.write_text(text + 'data = "b.csv"\n')
    with pytest.raises(InputError, match="line 11: over Flower each site's data path"):
        load_study(path, remote=True)
