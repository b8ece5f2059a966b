"""A real local Flower federation for the benchmarks: N sites, each with its own CSV.

The processes, keys, certificates and registrations are
:class:`securefed.transport.local_federation.LocalFederation` (the Flower tests use the same
class). This module adds the benchmark's app (securefed's study ServerApp,
``securefed.transport.flower_study:server_app``), writes each site's rows to its own CSV, starts
one SuperNode per site with its data and audit folder, and runs study files.
``fast=False`` runs the stock ``flower-supernode`` (what a deployment gets); ``fast=True`` caps
its hard-coded 3 s idle poll at 0.1 s.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pandas as pd

from securefed.transport.local_federation import (
    FederationError,
    flower_installed,
)
from securefed.transport.local_federation import (
    LocalFederation as _Federation,
)

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


class LocalFederation(_Federation):
    """SuperLink + one SuperNode per site (``frames``: site name to its rows)."""

    def __init__(self, root: Path, frames: dict[str, pd.DataFrame], *, fast: bool) -> None:
        super().__init__(root, sorted(frames), app_pyproject=APP_PYPROJECT,
                         app_files={"bench_serverapp.py": SERVERAPP}, fast=fast)
        self.frames = frames
        self.sites = sorted(frames)

    def prepare(self) -> None:
        super().prepare()
        data = self.root / "data"
        data.mkdir()
        for name in self.sites:
            self.frames[name].to_csv(data / f"{name}.csv", index=False)
            audit = self.root / "audit" / name
            audit.mkdir(parents=True)
            self.start_supernode(name, f'site-name="{name}" data-path="{data / f"{name}.csv"}" '
                                       f'identity-key="{self.identity_key(name)}" '
                                       f'registry="{self.registry}" audit-dir="{audit}"')

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
