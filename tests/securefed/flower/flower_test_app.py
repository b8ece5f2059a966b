"""The ServerApp of the Flower deployment tests (copied into the test's Flower App).

It runs the steps of a scenario file with :class:`FlowerEngine` and writes
every round's result, or the error that stopped it, to a JSON file the test
reads. A step may stop (SIGSTOP) or kill (SIGKILL) a site's SuperNode process
group right after a stage, and resume it later: real processes, real dropouts.
"""

from __future__ import annotations

import json
import os
import signal
import time
import traceback
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from protocols.stack import SecAggSum
from securefed.keys import Identity, Registry
from securefed.transport.calls import SiteCall
from securefed.transport.flower_server import FlowerEngine, StageTimeouts

server_app = ServerApp()


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    scenario = json.loads(Path(str(context.run_config["scenario"])).read_text())
    out = Path(str(context.run_config["result"]))
    results: list[dict] = []
    try:
        _run(grid, scenario, results)
        report = {"results": results}
    except Exception as exc:  # the test prints it with the processes' logs
        report = {"results": results, "error": f"{type(exc).__name__}: {exc}",
                  "traceback": traceback.format_exc()}
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(report))
    os.replace(tmp, out)


def _protection(scenario: dict):
    """``secagg``, or ``secagg,dp`` with the coordinator's DP options if the scenario has any."""
    if "dp" not in scenario:
        return SecAggSum(bound=scenario["bound"])
    from securefed.privacy import DPOptions
    from securefed.protection import ProtectionOptions, build_protection

    options = ProtectionOptions("secagg,dp", bound=scenario["bound"],
                                dp=DPOptions(**scenario["dp"]))
    return build_protection(options, list(scenario["sites"]), scenario.get("family"))


def _query(spec: dict | None):
    if spec is None:
        return None
    from securefed.privacy import DpQuery

    units = spec.get("log2_units")
    return DpQuery(spec["purpose"], spec["sensitivity"], spec["rho"],
                   None if units is None else np.asarray(units, dtype=np.int64))


def _run(grid: Grid, scenario: dict, results: list[dict]) -> None:
    identity = Identity.load(scenario["coordinator_key"], "coordinator")
    engine = FlowerEngine(grid, Ed25519PrivateKey.from_private_bytes(
        identity.export_private_key_raw()), Registry.load(scenario["registry"]),
        _protection(scenario), StageTimeouts(**scenario["timeouts"]))
    live = list(scenario["sites"])
    engine.wait_for_sites(live)
    time.sleep(scenario.get("settle", 0.0))
    results.append({"kind": "nodes", "seconds": 0.0,
                    "nodes": sorted(str(node.name) for node in grid.get_nodes())})
    for step in scenario["steps"]:
        started = time.perf_counter()
        if step["kind"] == "sum":
            for call in step.get("setup", []):
                engine.setup(SiteCall.from_json(call))
            engine.observer = _interrupt(step.get("interrupt"))
            try:
                result = engine.run_round(step["round_id"], step["purpose"],
                                          SiteCall.from_json(step["call"]), live,
                                          dp=_query(step.get("dp")))
            except Exception as exc:
                if not step.get("expect_error"):
                    raise
                results.append({"kind": "refused", "stages": engine.stage_log[-1:],
                                "error": [c.__name__ for c in type(exc).__mro__],
                                "message": str(exc),
                                "seconds": time.perf_counter() - started})
                continue
            finally:
                engine.observer = None
            live = [s for s in live if s not in result.dropped]
            results.append({"kind": "sum", "total": result.total.tolist(),
                            "stages": engine.stage_log[-5:],
                            "contributors": list(result.contributors),
                            "dropped": list(result.dropped),
                            "bytes": dict(result.bytes_sent_per_site)})
            if engine.privacy is not None:
                results[-1]["noise_sd"] = engine.privacy.sum_noise_sd(
                    len(result.contributors)).tolist()
                results[-1]["min_contributors"] = engine.privacy.min_contributors
        elif step["kind"] == "resume":
            _resume(step)
            results.append({"kind": "resume"})
        results[-1]["seconds"] = time.perf_counter() - started


def _interrupt(spec: dict | None):
    if spec is None:
        return None

    def observer(stage, answered) -> None:
        if stage.value == spec["after"]:
            os.killpg(spec["pgid"], getattr(signal, spec["signal"]))

    return observer


def _resume(step: dict) -> None:
    """SIGCONT a stopped SuperNode and wait until it has sent its late reply."""
    log = Path(step["log"])
    before = log.read_text(errors="replace").count("Sent successfully")
    os.killpg(step["pgid"], signal.SIGCONT)
    deadline = time.monotonic() + step["timeout"]
    while log.read_text(errors="replace").count("Sent successfully") <= before:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the resumed site sent nothing within {step['timeout']} s")
        time.sleep(0.2)
