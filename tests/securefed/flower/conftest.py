"""A real Flower federation on 127.0.0.1: TLS, SuperNode authentication, five sites.

``federation`` (session scope: every Flower test shares it) makes a CA and
certificates, SuperNode keys and securefed identities in a temporary
directory, writes each site's rows to its own CSV, starts a SuperLink and one
SuperNode per site as separate process groups on free ports, and registers
each SuperNode's key under its site name. A sixth SuperNode, ``keyholder``,
holds no data: it is the CKKS key holder, whose key pair is generated in its
own directory (``keyholder/``) by ``python -m securefed.transport.ckks_keys``.
``federation.run(steps)`` submits the test ServerApp with ``flwr run`` and
returns what it wrote. The SuperNodes run through ``fast_supernode.py`` (the
stock CLI with a 0.1 s idle poll instead of 3 s). Every process is killed at
teardown; any failure is reported with the tail of every process's log.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core_stats.families import get_family
from core_stats.glmm import ParameterLayout
from securefed.keys import Identity, Registry
from securefed.site import GLMMSiteDesign
from securefed.transport.pki import write_ca_and_server, write_node_key

SITES = ("A", "B", "C", "D", "E")
KEY_HOLDER = "keyholder"
#: each site's own privacy budget (node config ``privacy-epsilon``; E's is smaller)
SITE_EPSILON = {"A": 10.0, "B": 10.0, "C": 10.0, "D": 10.0, "E": 4.0}
SITE_DELTA = 1e-6
#: the random-intercept GLMM the round-level tests compute at a fixed θ
LAYOUT = ParameterLayout(("(Intercept)", "x1", "x2"), ("(Intercept)",), "group", False)
THETA = np.array([-0.2, 0.6, -0.3, -0.4])
REPO = Path(__file__).resolve().parents[3]
BOUND = 2.0**40
FAST_SUPERNODE = Path(__file__).with_name("fast_supernode.py")
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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


@dataclass
class Federation:
    root: Path
    env: dict[str, str]
    app_dir: Path
    scenario_base: dict
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    logs: dict[str, Path] = field(default_factory=dict)
    runs: int = 0

    def start(self, name: str, args: list[str], home: Path) -> None:
        home.mkdir(parents=True, exist_ok=True)
        log = self.root / "logs" / f"{name}.log"
        log.parent.mkdir(exist_ok=True)
        env = {**self.env, "FLWR_HOME": str(home)}
        with open(log, "wb") as out:
            self.procs[name] = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT,
                                                env=env, start_new_session=True)
        self.logs[name] = log

    def flwr(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
        return subprocess.run(["flwr", *args], env=self.env, capture_output=True, text=True,
                              timeout=timeout, cwd=self.app_dir)

    def report(self, lines: int = 40) -> str:
        parts = []
        for name, log in self.logs.items():
            proc = self.procs.get(name)
            state = "running" if proc and proc.poll() is None else f"exit {proc.returncode}"
            text = log.read_text(errors="replace").splitlines()[-lines:] if log.exists() else []
            parts.append(f"----- {name} ({state}): {log}\n" + "\n".join(text))
        return "\n".join(parts)

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

    def stop_all(self) -> None:
        """SIGKILL every process group started here and every descendant (some detach)."""
        pids = []
        for proc in self.procs.values():
            pids += [proc.pid, *_descendants(proc.pid)]
        for proc in self.procs.values():  # orphans (e.g. an executor whose node exited)
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for pid in pids:
            try:
                os.kill(pid, signal.SIGCONT)
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for proc in self.procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass


def _register(fed: Federation, public_keys: dict[str, Path]) -> None:
    """``flwr supernode register KEY --name SITE`` for every node, in parallel, with retries.

    On a loaded machine ``flwr`` can print its success and then take minutes to
    exit: a registration counts when it said so, whether or not it exited.
    """
    deadline = time.monotonic() + 300  # a loaded CI machine is slow
    todo = dict(public_keys)
    while todo:
        running = {name: subprocess.Popen(
            ["flwr", "supernode", "register", str(key), "local", "--name", name],
            env=fed.env, cwd=fed.app_dir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True) for name, key in todo.items()}
        for name, proc in running.items():
            try:
                output = proc.communicate(timeout=180)[0]
            except subprocess.TimeoutExpired as slow:  # seen on a loaded machine
                proc.kill()
                output = (slow.output or b"").decode(errors="replace") + proc.communicate()[0]
            if proc.returncode == 0 or "registered successfully" in output:
                del todo[name]
            elif time.monotonic() > deadline or fed.procs["superlink"].poll() is not None:
                fed.fail(f"could not register SuperNode {name}:\n{output}")
        if todo:
            time.sleep(1)


@pytest.fixture(scope="session")
def federation(tmp_path_factory):
    if not (Path(sys.executable).parent / "flower-superlink").exists() and shutil.which(
            "flower-superlink") is None:
        pytest.fail("flwr is not installed: pip install -e '.[test]'")
    root = tmp_path_factory.mktemp("flower")
    pki = write_ca_and_server(root / "pki", ["127.0.0.1", "localhost"])
    keys = root / "keys"
    keys.mkdir()
    parties = [Identity.generate(name) for name in ("coordinator", *SITES, KEY_HOLDER)]
    for party in parties:
        party.save_private_key(keys / f"{party.name}.key")
    Registry.of(*parties).save(keys / "registry.json")
    data = root / "data"
    data.mkdir()
    for name, frame in site_frames().items():
        frame.to_csv(data / f"{name}.csv", index=False)
    app_dir = root / "app"
    app_dir.mkdir()
    (app_dir / "pyproject.toml").write_text(APP_PYPROJECT)
    shutil.copy(Path(__file__).with_name("flower_test_app.py"), app_dir)
    port = free_port()
    operator_home = root / "operator"
    operator_home.mkdir()
    (operator_home / "config.toml").write_text(
        f'[superlink]\ndefault = "local"\n\n[superlink.local]\naddress = "127.0.0.1:{port}"\n'
        f'root-certificates = "{pki["ca"]}"\n')
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
           "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.05", "FLWR_HOME": str(operator_home),
           "PYTHONPATH": str(REPO),
           "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])}
    fed = Federation(root, env, app_dir, {
        "coordinator_key": str(keys / "coordinator.key"),
        "registry": str(keys / "registry.json"), "sites": list(SITES), "bound": BOUND,
        "key_holder": KEY_HOLDER,
        "timeouts": {"stage": 120.0, "grace": 20.0, "poll": 0.05}, "settle": 3.0})
    try:
        fed.start("superlink", [
            "flower-superlink", "--ssl-ca-certfile", str(pki["ca"]),
            "--ssl-certfile", str(pki["cert"]), "--ssl-keyfile", str(pki["key"]),
            "--enable-supernode-auth", "--disable-runtime-dependency-installation",
            "--host", "127.0.0.1", "--port", str(port)], root / "superlink-home")
        node_keys = {name: write_node_key(root / "pki", name) for name in (*SITES, KEY_HOLDER)}
        _register(fed, {name: public for name, (_, public) in node_keys.items()})
        # the key holder makes its CKKS key pair on its own disk, as in a deployment
        made = subprocess.run([sys.executable, "-m", "securefed.transport.ckks_keys",
                               str(root / KEY_HOLDER)], env=env, capture_output=True, text=True)
        if made.returncode != 0:
            fed.fail(f"ckks_keys failed:\n{made.stdout}\n{made.stderr}")
        for name, (private, _) in node_keys.items():
            node_config = (f'site-name="{name}" identity-key="{keys / f"{name}.key"}" '
                           f'registry="{keys / "registry.json"}" ')
            if name == KEY_HOLDER:
                node_config += f'ckks-key="{root / KEY_HOLDER / "ckks-secret.ctx"}"'
            else:
                (root / "audit" / name).mkdir(parents=True)
                node_config += (f'data-path="{data / f"{name}.csv"}" '
                                f'audit-dir="{root / "audit" / name}" '
                                f'privacy-epsilon={SITE_EPSILON[name]} '
                                f'privacy-delta={SITE_DELTA} privacy-ledger="{fed.ledger(name)}"')
            fed.start(name, [
                sys.executable, str(FAST_SUPERNODE), "--root-certificates", str(pki["ca"]),
                "--superlink", f"127.0.0.1:{port}", "--auth-supernode-private-key",
                str(private), "--port", str(free_port()), "--node-config", node_config],
                root / f"home-{name}")
        # an unregistered SuperNode with a valid CA and site A's data and keys
        intruder, _ = write_node_key(root / "pki", "intruder")
        fed.start("intruder", [
            "flower-supernode", "--root-certificates", str(pki["ca"]),
            "--superlink", f"127.0.0.1:{port}", "--auth-supernode-private-key", str(intruder),
            "--max-retries", "2", "--port", str(free_port()), "--node-config",
            f'site-name="A" data-path="{data / "A.csv"}" identity-key="{keys / "A.key"}" '
            f'registry="{keys / "registry.json"}"'], root / "home-intruder")
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
