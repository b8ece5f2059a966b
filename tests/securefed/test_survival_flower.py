"""Cox and BFI survival over Flower's message path: an in-memory grid of SuperNode handlers.

The grid (:class:`~securefed.transport.loopback.LoopbackGrid`) hands each message to
the node's handler. Each node reads its own CSV (``data-path``), keeps only its setup
calls in its ``Context`` (a SuperNode's fresh process per message rebuilds the site from
them), applies its own policy and answers with the real ClientApp handler
(:func:`securefed.transport.flower_client.handle`); the coordinator holds no
rows (:mod:`securefed.survival_remote`). Results equal the in-process fits to
1e-10. The real processes are in ``tests/securefed/flower``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.supercore.task_identity import TaskIdentity

from protocols.stack import PlaintextSum, SecAggSum
from securefed.bfi_survival_run import SurvivalBFIOptions, run_bfi_survival
from securefed.cox_run import CoxOptions, run_cox
from securefed.errors import InputError
from securefed.keys import Identity, Registry
from securefed.survival_remote import run_bfi_survival_remote, run_cox_remote
from securefed.transport.flower_rounds import FlowerRounds
from securefed.transport.flower_server import FlowerEngine, SiteRefused, StageTimeouts
from securefed.transport.loopback import LoopbackGrid

GOLDEN = Path(__file__).parents[1] / "golden"


def _world(tmp_path, monkeypatch, frame: pd.DataFrame, site_column: str, protection):
    for attr in ("_run_id", "_node_id", "_task_id"):  # Flower sets these in a ServerApp
        monkeypatch.setattr(TaskIdentity, attr, 1)
    names = sorted(str(n) for n in frame[site_column].unique())
    parties = [Identity.generate("coordinator"), *(Identity.generate(n) for n in names)]
    for party in parties:
        party.save_private_key(tmp_path / f"{party.name}.key")
    registry = Registry.of(*parties)
    registry.save(tmp_path / "registry.json")
    configs = {}
    for name, part in frame.groupby(site_column):
        name = str(name)
        part.to_csv(tmp_path / f"{name}.csv", index=False)
        policy = tmp_path / f"{name}.policy.toml"
        policy.write_text(f'[protection]\nlayers = ["secagg", "none"]\n\n'
                          f'[record]\ndir = "{tmp_path / ("releases-" + name)}"\n')
        configs[name] = {"site-name": name, "data-path": str(tmp_path / f"{name}.csv"),
                         "identity-key": str(tmp_path / f"{name}.key"),
                         "registry": str(tmp_path / "registry.json"), "policy": str(policy)}
    key = Ed25519PrivateKey.from_private_bytes(parties[0].export_private_key_raw())
    engine = FlowerEngine(LoopbackGrid(configs), key, registry, protection,
                          StageTimeouts(stage=5.0, grace=1.0, poll=0.01))
    return FlowerRounds(engine), names


def close(a, b) -> None:
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-10)


@pytest.mark.parametrize("protection", [PlaintextSum, SecAggSum], ids=["none", "secagg"])
def test_cox_over_flower_equals_in_process(tmp_path, monkeypatch, protection):
    frame = pd.read_csv(GOLDEN / "cox" / "veteran.csv")
    opts = CoxOptions("Surv(time, status) ~ trt + karno + age", "site")
    local = run_cox(frame, opts, protection=protection(), site_runtime=False)
    rounds, names = _world(tmp_path, monkeypatch, frame, "site", protection())
    remote = run_cox_remote(opts, rounds, names, protection=protection())
    close([f.estimate for f in remote.fixed_effects], [f.estimate for f in local.fixed_effects])
    close([f.std_error for f in remote.fixed_effects],
          [f.std_error for f in local.fixed_effects])
    assert remote.loglik == pytest.approx(local.loglik, abs=1e-10)
    assert remote.concordance == local.concordance and remote.rounds == local.rounds


@pytest.mark.parametrize("baseline", ["gompertz", "poly", "pwexp", "unspecified"])
def test_bfi_survival_over_flower_equals_in_process(tmp_path, monkeypatch, baseline):
    frame = pd.read_csv(GOLDEN / "bfi_survival" / "gompertz_bfi.csv")
    opts = SurvivalBFIOptions("Surv(time, status) ~ x1 + x2", "centre", baseline,
                              knots=(0.0, 0.7, 1.6) if baseline == "pwexp" else ())
    local = run_bfi_survival(frame, opts, protection=SecAggSum(), site_runtime=False)
    rounds, names = _world(tmp_path, monkeypatch, frame, "centre", SecAggSum())
    remote = run_bfi_survival_remote(opts, rounds, names, protection=SecAggSum())
    close(remote.fit.estimate, local.fit.estimate)
    close(remote.fit.sd, local.fit.sd)
    assert remote.fit.names == local.fit.names and remote.order_counts == local.order_counts


def test_a_site_whose_status_is_coded_otherwise_refuses(tmp_path, monkeypatch):
    frame = pd.read_csv(GOLDEN / "cox" / "veteran.csv").assign(status=lambda f: f["status"] + 1)
    rounds, names = _world(tmp_path, monkeypatch, frame, "site", SecAggSum())
    with pytest.raises(SiteRefused, match="cannot-compute"):
        run_cox_remote(CoxOptions("Surv(time, status) ~ age", "site"), rounds, names,
                       protection=SecAggSum())  # the study said 0/1, the sites have 1/2


def test_a_text_covariate_is_refused_by_the_sites(tmp_path, monkeypatch):
    """With no rows the coordinator reads every covariate as numeric; a site whose column
    is text builds other design columns and refuses (no silently different model)."""
    frame = pd.read_csv(GOLDEN / "cox" / "veteran.csv")
    rounds, names = _world(tmp_path, monkeypatch, frame, "site", SecAggSum())
    with pytest.raises(SiteRefused, match="cannot-compute"):
        run_cox_remote(CoxOptions("Surv(time, status) ~ celltype", "site"), rounds, names,
                       protection=SecAggSum())


def test_status_coding_is_one_of_surv_codings():
    with pytest.raises(InputError, match="choose 0/1, 1/2 or logical"):
        run_cox_remote(CoxOptions("Surv(time, status) ~ age", "site"), None, ["a"],
                       protection=SecAggSum(), coding="yes/no")
