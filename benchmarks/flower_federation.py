"""A real local Flower federation for the benchmarks: TLS, SuperNode authentication, N sites.

Adapted from ``tests/securefed/flower/conftest.py`` (the benchmarks import
nothing from ``tests/``). :class:`LocalFederation` makes a CA and certificates,
SuperNode keys and securefed identities in a folder, writes each site's rows
to its own CSV, starts a SuperLink and one SuperNode per site as separate
process groups on free ports, registers each SuperNode's key under its site
name, and runs study files with securefed's study ServerApp
(``securefed.transport.flower_study:server_app``). Leaving the ``with`` block
kills every process it started (process groups and every descendant).

``fast=False`` runs the stock ``flower-supernode`` (what a deployment gets);
``fast=True`` runs this file as a script: the stock SuperNode CLI with its
hard-coded 3 s idle poll capped at 0.1 s (as the tests' ``fast_supernode.py``).
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
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
APP_PYPROJECT = """\
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "securefed-flower-bench"
version = "1.0.0"
description = "securefed Flower benchmark"
license = "MIT"
dependencies = ["flwr>=1.41"]

[tool.flwr.app]
publisher = "securefed"

[tool.flwr.app.components]
serverapp = "bench_serverapp:server_app"
clientapp = "securefed.transport.flower_client:client_app"

[tool.flwr.app.config]
study = ""
registry = "{registry}"
coordinator-key = "{coordinator_key}"
wait-seconds = 600.0
stage-seconds = 600.0
grace-seconds = 60.0
"""

# The app's ServerApp: securefed's study ServerApp, plus (while FlowerEngine.run_round takes
# no ``dp``) a shim. At c977c07 BFI passed every round a post-processing DpQuery
# (``dp=_DERIVED``), FlowerRounds forwarded it and run_round raised TypeError; without a
# privacy layer (these studies have none) that query is ignored in-process, so the shim drops
# it. Since 6c53a0c the Coordinator passes ``dp`` only under privacy: the shim is a no-op.
SERVERAPP = """\
import inspect

from securefed.transport import flower_rounds, flower_server, flower_study

server_app = flower_study.server_app

if "dp" not in inspect.signature(flower_server.FlowerEngine.run_round).parameters:
    _aggregate = flower_rounds.FlowerRounds.aggregate

    def _without_derived_dp(self, purpose, compute, site_names, round_id, *, dp=None,
                            audit=None):
        if dp is not None and getattr(dp, "post_processing", False):
            dp = None
        return _aggregate(self, purpose, compute, site_names, round_id, dp=dp, audit=audit)

    flower_rounds.FlowerRounds.aggregate = _without_derived_dp
"""

__all__ = ["FederationError", "LocalFederation", "dp_shim_needed", "flower_installed"]


def dp_shim_needed() -> bool:
    """True while ``FlowerEngine.run_round`` takes no ``dp`` (the ServerApp then drops
    BFI's post-processing queries; see ``SERVERAPP``)."""
    import inspect

    from securefed.transport.flower_server import FlowerEngine

    return "dp" not in inspect.signature(FlowerEngine.run_round).parameters


class FederationError(RuntimeError):
    """The federation could not start or a run failed; the message has the logs' tails."""


def flower_installed() -> bool:
    return (Path(sys.executable).parent / "flower-superlink").exists() or bool(
        shutil.which("flower-superlink"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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


class LocalFederation:
    """SuperLink + one SuperNode per site on 127.0.0.1 (use as a context manager)."""

    def __init__(self, root: Path, frames: dict[str, pd.DataFrame], *, fast: bool) -> None:
        self.root, self.frames, self.fast = Path(root), frames, fast
        self.sites = sorted(frames)
        self.procs: dict[str, subprocess.Popen] = {}
        self.logs: dict[str, Path] = {}
        self.runs = 0

    # ----- processes -------------------------------------------------------------------
    def _start(self, name: str, args: list[str], home: Path) -> None:
        home.mkdir(parents=True, exist_ok=True)
        log = self.root / "logs" / f"{name}.log"
        log.parent.mkdir(exist_ok=True)
        env = {**self.env, "FLWR_HOME": str(home)}
        with open(log, "wb") as out:
            self.procs[name] = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT,
                                                env=env, start_new_session=True)
        self.logs[name] = log

    def report(self, lines: int = 30) -> str:
        parts = []
        for name, log in self.logs.items():
            proc = self.procs.get(name)
            state = "running" if proc and proc.poll() is None else f"exit {proc.returncode}"
            text = log.read_text(errors="replace").splitlines()[-lines:] if log.exists() else []
            parts.append(f"----- {name} ({state}): {log}\n" + "\n".join(text))
        return "\n".join(parts)

    def fail(self, why: str) -> None:
        raise FederationError(f"{why}\n{self.report()}")

    def stop_all(self) -> None:
        """SIGKILL every process group started here and every descendant (some detach)."""
        pids = []
        for proc in self.procs.values():
            pids += [proc.pid, *_descendants(proc.pid)]
        for proc in self.procs.values():
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

    def __enter__(self) -> LocalFederation:
        try:
            self._setup()
        except BaseException:
            self.stop_all()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop_all()

    # ----- setup -----------------------------------------------------------------------
    def _setup(self) -> None:
        from securefed.keys import Identity, Registry
        from securefed.transport.pki import write_ca_and_server, write_node_key

        root = self.root
        root.mkdir(parents=True, exist_ok=True)
        pki = write_ca_and_server(root / "pki", ["127.0.0.1", "localhost"])
        keys = root / "keys"
        keys.mkdir()
        parties = [Identity.generate("coordinator"), *(Identity.generate(s) for s in self.sites)]
        for party in parties:
            party.save_private_key(keys / f"{party.name}.key")
        self.registry = keys / "registry.json"
        self.coordinator_key = keys / "coordinator.key"
        Registry.of(*parties).save(self.registry)
        data = root / "data"
        data.mkdir()
        for name, frame in self.frames.items():
            frame.to_csv(data / f"{name}.csv", index=False)
        self.app_dir = root / "app"
        self.app_dir.mkdir()
        (self.app_dir / "pyproject.toml").write_text(APP_PYPROJECT.format(
            registry=self.registry, coordinator_key=self.coordinator_key))
        (self.app_dir / "bench_serverapp.py").write_text(SERVERAPP)
        port = free_port()
        operator_home = root / "operator"
        operator_home.mkdir()
        (operator_home / "config.toml").write_text(
            f'[superlink]\ndefault = "local"\n\n[superlink.local]\n'
            f'address = "127.0.0.1:{port}"\nroot-certificates = "{pki["ca"]}"\n')
        self.env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0",
                    "FLWR_DISABLE_UPDATE_CHECK": "1", "FLWR_HOME": str(operator_home),
                    "PYTHONPATH": os.pathsep.join(
                        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
                    "PATH": os.pathsep.join([str(Path(sys.executable).parent),
                                             os.environ["PATH"]])}
        self._start("superlink", [
            "flower-superlink", "--ssl-ca-certfile", str(pki["ca"]),
            "--ssl-certfile", str(pki["cert"]), "--ssl-keyfile", str(pki["key"]),
            "--enable-supernode-auth", "--disable-runtime-dependency-installation",
            "--host", "127.0.0.1", "--port", str(port)], root / "superlink-home")
        node_keys = {name: write_node_key(root / "pki", name) for name in self.sites}
        self._register({name: public for name, (_, public) in node_keys.items()})
        supernode = ([sys.executable, str(Path(__file__).resolve())] if self.fast
                     else ["flower-supernode"])
        for name, (private, _) in node_keys.items():
            audit = root / "audit" / name
            audit.mkdir(parents=True)
            node_config = (f'site-name="{name}" data-path="{data / f"{name}.csv"}" '
                           f'identity-key="{keys / f"{name}.key"}" '
                           f'registry="{self.registry}" audit-dir="{audit}"')
            self._start(name, [
                *supernode, "--root-certificates", str(pki["ca"]),
                "--superlink", f"127.0.0.1:{port}", "--auth-supernode-private-key",
                str(private), "--port", str(free_port()), "--node-config", node_config],
                root / f"home-{name}")

    def _register(self, public_keys: dict[str, Path]) -> None:
        """``flwr supernode register KEY local --name SITE`` for every site, with retries."""
        deadline = time.monotonic() + 300
        todo = dict(public_keys)
        while todo:
            running = {name: subprocess.Popen(
                ["flwr", "supernode", "register", str(key), "local", "--name", name],
                env=self.env, cwd=self.app_dir, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, text=True, start_new_session=True)
                for name, key in todo.items()}
            for name, proc in running.items():
                try:
                    output = proc.communicate(timeout=180)[0]
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    output = proc.communicate()[0]
                if proc.returncode == 0 or "registered successfully" in output:
                    del todo[name]
                elif time.monotonic() > deadline or self.procs["superlink"].poll() is not None:
                    self.fail(f"could not register SuperNode {name}:\n{output}")
            if todo:
                time.sleep(1)

    # ----- runs ------------------------------------------------------------------------
    def run_study(self, study: Path, out_dir: Path, timeout: float = 3600.0) -> tuple[dict, float]:
        """Submit the study ServerApp for ``study``; (its result.json, seconds until written).

        The seconds run from ``flwr run`` to ``result.json`` appearing: submission,
        the ServerApp's start, waiting for the SuperNodes, the fit and the audit.
        """
        self.runs += 1
        started = time.perf_counter()
        done = subprocess.run(["flwr", "run", ".", "local", "--run-config", f'study="{study}"'],
                              env=self.env, capture_output=True, text=True, timeout=300,
                              cwd=self.app_dir)
        if done.returncode != 0:
            self.fail(f"flwr run failed:\n{done.stdout}\n{done.stderr}")
        result, error = out_dir / "result.json", out_dir / "error.txt"
        deadline = time.monotonic() + timeout
        while not result.exists():
            if error.exists():
                self.fail(f"the ServerApp stopped: {error.read_text().strip()}")
            if time.monotonic() > deadline:
                self.fail(f"the ServerApp wrote no result within {timeout} s")
            if self.procs["superlink"].poll() is not None:
                self.fail("the SuperLink exited")
            time.sleep(0.2)
        seconds = time.perf_counter() - started
        for _ in range(50):  # written in one call; make sure it is complete
            try:
                return json.loads(result.read_text()), seconds
            except json.JSONDecodeError:
                time.sleep(0.1)
        return json.loads(result.read_text()), seconds


if __name__ == "__main__":  # the fast-poll SuperNode: stock CLI, idle poll capped at 0.1 s
    import types

    import flwr.supernode.start_client_internal as internal
    from flwr.supernode.cli import flower_supernode

    internal.time = types.SimpleNamespace(
        **{name: getattr(time, name) for name in dir(time) if not name.startswith("_")})
    internal.time.sleep = lambda seconds: time.sleep(min(seconds, 0.1))
    sys.argv[0] = "flower-supernode"
    sys.exit(flower_supernode())
