"""A real Flower federation on 127.0.0.1: TLS, SuperNode authentication, five sites.

``federation`` (session scope: every Flower test shares it) is a
:class:`securefed.transport.local_federation.LocalFederation` (the benchmarks use the same
class): a CA and certificates, SuperNode keys and securefed identities in a temporary
directory, a SuperLink and one SuperNode per site as separate process groups on free ports,
each SuperNode's key registered under its site name, each site's rows in its own CSV. A sixth
SuperNode, ``keyholder``, holds no data: it is the CKKS key holder, whose key pair is generated
in its own directory (``keyholder/``) by ``python -m securefed.transport.ckks_keys``.
``federation.run(steps)`` submits the test ServerApp with ``flwr run`` and returns what it
wrote. The SuperNodes have a 0.1 s idle poll instead of 3 s (``fast=True``). Every process is
killed at teardown; any failure is reported with the tail of every process's log.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core_stats.families import get_family
from core_stats.glmm import ParameterLayout
from securefed.site import GLMMSiteDesign
from securefed.transport.local_federation import LocalFederation, flower_installed
from securefed.transport.pki import write_node_key

SITES = ("A", "B", "C", "D", "E")
KEY_HOLDER = "keyholder"
#: each site's own privacy budget (node config ``privacy-epsilon``; E's is smaller)
SITE_EPSILON = {"A": 10.0, "B": 10.0, "C": 10.0, "D": 10.0, "E": 4.0}
SITE_DELTA = 1e-6
#: the random-intercept GLMM the round-level tests compute at a fixed θ
LAYOUT = ParameterLayout(("(Intercept)", "x1", "x2"), ("(Intercept)",), "group", False)
THETA = np.array([-0.2, 0.6, -0.3, -0.4])
BOUND = 2.0**40
TEST_APP = Path(__file__).with_name("flower_test_app.py")
APP_PYPROJECT = """\
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "securefed-flower-test"
version = "1.0.0"
description = "securefed Flower deployment test"
license = "MIT"
dependencies = ["flwr>=1.41"]

[tool.flwr.app]
publisher = "securefed"

[tool.flwr.app.components]
serverapp = "flower_test_app:server_app"
clientapp = "securefed.transport.flower_client:client_app"

[tool.flwr.app.config]
scenario = ""
result = ""
"""


def site_frames(seed: int = 7) -> dict[str, pd.DataFrame]:
    """Binomial random-intercept data: 8 groups of 6 rows per site."""
    rng = np.random.default_rng(seed)
    frames = {}
    for k, name in enumerate(SITES):
        groups = np.repeat([f"{name}{g}" for g in range(8)], 6)
        x1, x2 = rng.normal(size=48), rng.normal(size=48) + 0.2 * k
        b = np.repeat(rng.normal(scale=0.8, size=8), 6)
        p = 1 / (1 + np.exp(-(-0.3 + 0.7 * x1 - 0.4 * x2 + b)))
        frames[name] = pd.DataFrame({"y": (rng.random(48) < p).astype(float), "x1": x1,
                                     "x2": x2, "group": groups})
    return frames


class Federation(LocalFederation):
    """The shared local federation, failing as a pytest failure, with the test ServerApp."""

    def __init__(self, root: Path) -> None:
        super().__init__(root, (*SITES, KEY_HOLDER), app_pyproject=APP_PYPROJECT,
                         app_files={"flower_test_app.py": TEST_APP.read_text()}, fast=True,
                         env={"FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.05"})

    @property
    def scenario_base(self) -> dict:
        return {"coordinator_key": str(self.coordinator_key), "registry": str(self.registry),
                "sites": list(SITES), "bound": BOUND, "key_holder": KEY_HOLDER,
                "timeouts": {"stage": 120.0, "grace": 20.0, "poll": 0.05}, "settle": 3.0}

    def fail(self, why: str) -> None:
        pytest.fail(f"{why}\n{self.report()}", pytrace=False)

    def run(self, steps: list[dict], timeout: float = 400.0, **settings) -> dict:
        """Submit the test ServerApp with ``steps`` (and scenario ``settings``); its report."""
        self.runs += 1
        scenario = self.root / f"scenario{self.runs}.json"
        result = self.root / f"run{self.runs}" / "result.json"
        result.parent.mkdir()
        scenario.write_text(json.dumps({**self.scenario_base, **settings, "steps": steps}))
        done = self.flwr("run", ".", "local", "--run-config",
                         f'scenario="{scenario}" result="{result}"')
        if done.returncode != 0:
            self.fail(f"flwr run failed:\n{done.stdout}\n{done.stderr}")
        deadline = time.monotonic() + timeout
        while not result.exists():
            if time.monotonic() > deadline:
                self.fail(f"the ServerApp wrote no result within {timeout} s")
            if self.procs["superlink"].poll() is not None:
                self.fail("the SuperLink exited")
            time.sleep(0.5)
        report = json.loads(result.read_text())
        if "error" in report:
            self.fail(f"the ServerApp failed: {report['error']}\n{report['traceback']}")
        return report

    def ledger(self, site: str) -> Path:
        """The site's privacy ledger (node config ``privacy-ledger``)."""
        return self.root / "ledgers" / f"{site}.privacy.json"

    def pgid(self, site: str) -> int:
        return self.procs[site].pid

    def live_sites(self, at_least: int = 3) -> list[str]:
        """The sites whose SuperNode runs and is not stopped (earlier tests kill and freeze)."""
        names = []
        for name in SITES:
            proc = self.procs[name]
            if proc.poll() is None and Path(f"/proc/{proc.pid}/stat").read_text().rsplit(
                    ")", 1)[1].split()[0] != "T":  # T: stopped (SIGSTOP)
                names.append(name)
        if len(names) < at_least:
            pytest.fail(f"only {names} of the sites still run; the test needs {at_least}")
        return names


@pytest.fixture(scope="session")
def federation(tmp_path_factory):
    if not flower_installed():
        pytest.fail("flwr is not installed: pip install -e '.[test,flower]'")
    root = tmp_path_factory.mktemp("flower")
    fed = Federation(root)
    try:
        fed.prepare()
        data = root / "data"
        data.mkdir()
        for name, frame in site_frames().items():
            frame.to_csv(data / f"{name}.csv", index=False)
        # the key holder makes its CKKS key pair on its own disk, as in a deployment
        made = subprocess.run([sys.executable, "-m", "securefed.transport.ckks_keys",
                               str(root / KEY_HOLDER)], env=fed.env, capture_output=True,
                              text=True)
        if made.returncode != 0:
            fed.fail(f"ckks_keys failed:\n{made.stdout}\n{made.stderr}")
        for name in (*SITES, KEY_HOLDER):
            node_config = (f'site-name="{name}" identity-key="{fed.identity_key(name)}" '
                           f'registry="{fed.registry}" ')
            if name == KEY_HOLDER:
                node_config += f'ckks-key="{root / KEY_HOLDER / "ckks-secret.ctx"}"'
            else:
                (root / "audit" / name).mkdir(parents=True)
                node_config += (f'data-path="{data / f"{name}.csv"}" '
                                f'audit-dir="{root / "audit" / name}" '
                                f'privacy-epsilon={SITE_EPSILON[name]} '
                                f'privacy-delta={SITE_DELTA} privacy-ledger="{fed.ledger(name)}"')
            fed.start_supernode(name, node_config)
        # an unregistered SuperNode with a valid CA and site A's data and keys
        intruder, _ = write_node_key(root / "pki", "intruder")
        fed.start("intruder", fed.supernode_args(
            intruder, f'site-name="A" data-path="{data / "A.csv"}" '
                      f'identity-key="{fed.identity_key("A")}" registry="{fed.registry}"',
            stock=True, extra=("--max-retries", "2")), root / "home-intruder")
        yield fed
    finally:
        fed.stop_all()


def design(frames: dict[str, pd.DataFrame]) -> GLMMSiteDesign:
    """The public design of ``y ~ x1 + x2 + (1 | group)`` over the sites' rows."""
    from core_stats.formula import DesignSchema

    return GLMMSiteDesign(DesignSchema("y ~ x1 + x2 + (1 | group)"), get_family("binomial"), 3)


def closures(frames):
    """What a GLMM fit's first rounds ask of a site: prepare, design summary, terms at θ."""
    glmm_design = design(frames)
    return {
        "prepare": lambda s: s.prepare_glmm(glmm_design),
        "summary": lambda s: s.design_summary_vector(),
        "terms": lambda s: s.glmm_terms_vector(LAYOUT, THETA, True),
    }
