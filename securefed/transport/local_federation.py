"""A real Flower federation on 127.0.0.1, for the tests and the benchmarks.

:class:`LocalFederation` makes, in one folder, a CA and a TLS certificate for the SuperLink,
securefed identities (``coordinator`` and every node) with their registry, and the Flower app
folder; it starts a SuperLink with SuperNode authentication, registers one SuperNode key per
node under the node's name (``flwr supernode register``, retried on a loaded machine) and starts
each SuperNode (:meth:`LocalFederation.start_supernode`) as its own process group on a free
port. Leaving the ``with`` block kills every process it started, process groups and every
descendant (Flower's ClientApp processes detach). Any failure raises
:class:`FederationError` with the tail of every process's log.

``fast=True`` starts each SuperNode as ``python -m securefed.transport.local_federation``: the
stock ``flower-supernode`` CLI with the idle poll capped at 0.1 s. Flower 1.41's SuperNode
sleeps a hard-coded 3 s whenever it polls the SuperLink and finds no message
(``start_client_internal``) and has no flag for it; in a deployment that latency is harmless, in
a test or benchmark that runs dozens of exchanges it is most of the wall time. Nothing else of
Flower (TLS, node authentication, the ClientApp processes, the messages) changes.
``fast=False`` runs the stock ``flower-supernode`` (what a deployment gets).

Importing this module imports neither Flower nor pandas; it needs ``securefed[flower]`` only to
start processes.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = ["FederationError", "LocalFederation", "flower_installed", "free_port"]

COORDINATOR = "coordinator"
_PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # the folder that holds securefed/


class FederationError(RuntimeError):
    """The federation could not start or a run failed; the message has the logs' tails."""


def flower_installed() -> bool:
    """True if Flower's ``flower-superlink`` is beside this Python or on the PATH."""
    return (Path(sys.executable).parent / "flower-superlink").exists() or bool(
        shutil.which("flower-superlink"))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
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
    """SuperLink plus SuperNodes on 127.0.0.1 (use as a context manager).

    Parameters
    ----------
    root : Path
        Folder for everything (keys, certificates, logs, homes, the app).
    nodes : sequence of str
        Names of the SuperNodes to register (sites, and e.g. a CKKS key holder); each gets a
        securefed identity ``keys/NAME.key`` and a SuperNode key.
    app_pyproject : str
        The Flower app's ``pyproject.toml``; ``{registry}`` and ``{coordinator_key}`` are
        filled in.
    app_files : mapping of str to str
        Other files of the app folder (e.g. the ServerApp module), name to text.
    fast : bool
        SuperNodes with a 0.1 s idle poll (see the module docstring).
    env : mapping of str to str, optional
        Extra environment variables for every process.
    """

    def __init__(self, root: Path, nodes: Sequence[str], *, app_pyproject: str,
                 app_files: Mapping[str, str] | None = None, fast: bool = True,
                 env: Mapping[str, str] | None = None) -> None:
        self.root = Path(root)
        self.nodes = tuple(nodes)
        self.fast = fast
        self._app_pyproject, self._app_files = app_pyproject, dict(app_files or {})
        self._extra_env = dict(env or {})
        self.procs: dict[str, subprocess.Popen] = {}
        self.logs: dict[str, Path] = {}
        self.runs = 0

    # ----- processes -------------------------------------------------------------------
    def start(self, name: str, args: list[str], home: Path) -> None:
        """Start ``args`` as process group ``name`` with its own FLWR_HOME and log file."""
        home.mkdir(parents=True, exist_ok=True)
        log = self.root / "logs" / f"{name}.log"
        log.parent.mkdir(exist_ok=True)
        env = {**self.env, "FLWR_HOME": str(home)}
        with open(log, "wb") as out:
            self.procs[name] = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT,
                                                env=env, start_new_session=True)
        self.logs[name] = log

    def flwr(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
        """Run the ``flwr`` CLI in the app folder against this SuperLink."""
        return subprocess.run(["flwr", *args], env=self.env, capture_output=True, text=True,
                              timeout=timeout, cwd=self.app_dir)

    def report(self, lines: int = 40) -> str:
        """Every process's state and the last ``lines`` of its log."""
        parts = []
        for name, log in self.logs.items():
            proc = self.procs.get(name)
            state = "running" if proc and proc.poll() is None else f"exit {proc.returncode}"
            text = log.read_text(errors="replace").splitlines()[-lines:] if log.exists() else []
            parts.append(f"----- {name} ({state}): {log}\n" + "\n".join(text))
        return "\n".join(parts)

    def fail(self, why: str) -> None:
        """Raise :class:`FederationError` with ``why`` and the logs' tails."""
        raise FederationError(f"{why}\n{self.report()}")

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

    def __enter__(self) -> LocalFederation:
        try:
            self.prepare()
        except BaseException:
            self.stop_all()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop_all()

    # ----- setup -----------------------------------------------------------------------
    def prepare(self) -> None:
        """Keys, certificates, the app, the SuperLink and every node's registration."""
        from securefed.keys import Identity, Registry
        from securefed.transport.pki import write_ca_and_server, write_node_key

        if not flower_installed():
            raise FederationError("flwr is not installed: pip install 'securefed[flower]'")
        root = self.root
        root.mkdir(parents=True, exist_ok=True)
        self.pki = write_ca_and_server(root / "pki", ["127.0.0.1", "localhost"])
        self.keys = root / "keys"
        self.keys.mkdir()
        parties = [Identity.generate(name) for name in (COORDINATOR, *self.nodes)]
        for party in parties:
            party.save_private_key(self.keys / f"{party.name}.key")
        self.registry = self.keys / "registry.json"
        self.coordinator_key = self.keys / f"{COORDINATOR}.key"
        Registry.of(*parties).save(self.registry)
        self.app_dir = root / "app"
        self.app_dir.mkdir()
        (self.app_dir / "pyproject.toml").write_text(self._app_pyproject.format(
            registry=self.registry, coordinator_key=self.coordinator_key))
        for name, text in self._app_files.items():
            (self.app_dir / name).write_text(text)
        self.port = free_port()
        operator_home = root / "operator"
        operator_home.mkdir()
        (operator_home / "config.toml").write_text(
            f'[superlink]\ndefault = "local"\n\n[superlink.local]\n'
            f'address = "127.0.0.1:{self.port}"\nroot-certificates = "{self.pki["ca"]}"\n')
        self.env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0",
                    "FLWR_DISABLE_UPDATE_CHECK": "1", "FLWR_HOME": str(operator_home),
                    "PYTHONPATH": os.pathsep.join(
                        [str(_PACKAGE_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
                    "PATH": os.pathsep.join([str(Path(sys.executable).parent),
                                             os.environ["PATH"]]), **self._extra_env}
        self.start("superlink", [
            "flower-superlink", "--ssl-ca-certfile", str(self.pki["ca"]),
            "--ssl-certfile", str(self.pki["cert"]), "--ssl-keyfile", str(self.pki["key"]),
            "--enable-supernode-auth", "--disable-runtime-dependency-installation",
            "--host", "127.0.0.1", "--port", str(self.port)], root / "superlink-home")
        self.node_keys = {name: write_node_key(root / "pki", name) for name in self.nodes}
        self._register({name: public for name, (_, public) in self.node_keys.items()})

    def identity_key(self, name: str) -> Path:
        """The securefed identity key of ``name`` (``coordinator`` or a node)."""
        return self.keys / f"{name}.key"

    def supernode_args(self, private_key: Path, node_config: str, *, stock: bool = False,
                       extra: Sequence[str] = ()) -> list[str]:
        """The command line of a SuperNode with ``private_key`` and ``node_config``."""
        program = (["flower-supernode"] if stock or not self.fast
                   else [sys.executable, "-m", "securefed.transport.local_federation"])
        return [*program, "--root-certificates", str(self.pki["ca"]),
                "--superlink", f"127.0.0.1:{self.port}", "--auth-supernode-private-key",
                str(private_key), *extra, "--port", str(free_port()),
                "--node-config", node_config]

    def start_supernode(self, name: str, node_config: str) -> None:
        """Start the registered node ``name``'s SuperNode with ``node_config``."""
        private, _ = self.node_keys[name]
        self.start(name, self.supernode_args(private, node_config), self.root / f"home-{name}")

    def _register(self, public_keys: dict[str, Path]) -> None:
        """``flwr supernode register KEY local --name NODE`` for every node, with retries.

        On a loaded machine ``flwr`` can print its success and then take minutes to exit: a
        registration counts when it said so, whether or not it exited.
        """
        deadline = time.monotonic() + 300  # a loaded CI machine is slow
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
                except subprocess.TimeoutExpired as slow:
                    os.killpg(proc.pid, signal.SIGKILL)
                    output = ((slow.output or b"").decode(errors="replace")
                              if isinstance(slow.output, bytes) else (slow.output or ""))
                    output += proc.communicate()[0]
                if proc.returncode == 0 or "registered successfully" in output:
                    del todo[name]
                elif time.monotonic() > deadline or self.procs["superlink"].poll() is not None:
                    self.fail(f"could not register SuperNode {name}:\n{output}")
            if todo:
                time.sleep(1)


def _fast_supernode() -> int:
    """The stock ``flower-supernode`` CLI with its idle poll capped at 0.1 s."""
    import types

    import flwr.supernode.start_client_internal as internal
    from flwr.supernode.cli import flower_supernode

    internal.time = types.SimpleNamespace(
        **{name: getattr(time, name) for name in dir(time) if not name.startswith("_")})
    internal.time.sleep = lambda seconds: time.sleep(min(seconds, 0.1))
    sys.argv[0] = "flower-supernode"
    return flower_supernode()


if __name__ == "__main__":
    sys.exit(_fast_supernode())
