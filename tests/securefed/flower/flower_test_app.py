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


def _run(grid: Grid, scenario: dict, results: list[dict]) -> None:
    identity = Identity.load(scenario["coordinator_key"], "coordinator")
    engine = FlowerEngine(grid, Ed25519PrivateKey.from_private_bytes(
        identity.export_private_key_raw()), Registry.load(scenario["registry"]),
        SecAggSum(bound=scenario["bound"]), StageTimeouts(**scenario["timeouts"]))
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
            result = engine.run_round(step["round_id"], step["purpose"],
                                      SiteCall.from_json(step["call"]), live)
            engine.observer = None
            live = [s for s in live if s not in result.dropped]
            results.append({"kind": "sum", "total": result.total.tolist(),
                            "stages": engine.stage_log[-5:],
                            "contributors": list(result.contributors),
                            "dropped": list(result.dropped),
                            "bytes": dict(result.bytes_sent_per_site)})
        elif step["kind"] == "study":
            from securefed.transport.flower_study import run_study_over_flower

            config = {"study": step["study"], "registry": scenario["registry"],
                      "coordinator-key": scenario["coordinator_key"],
                      "stage-seconds": scenario["timeouts"]["stage"],
                      "grace-seconds": scenario["timeouts"]["grace"],
                      "poll-seconds": scenario["timeouts"]["poll"]}
            observed: list = []
            spec = step.get("interrupt")
            result = run_study_over_flower(grid, config, _study_interrupt(spec, observed))
            if spec and spec.get("resume"):  # the late reply has left the site by now
                _wait_sent(Path(spec["resume"]["log"]), spec["sent_before"], 120.0)
            results.append({"kind": "study", "result": result, "stages": observed})
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


def _study_interrupt(spec: dict | None, observed: list):
    """Record every exchange; signal a site once, after ``spec["after"]`` of ``spec["round"]``.

    With ``spec["resume"]`` (a round and stage) a stopped site is continued
    (SIGCONT) then, in the middle of the fit: its late reply to the round it
    missed arrives while a later round runs.
    """
    done: list[str] = []

    def observer(engine, stage, answered) -> None:
        observed.append([engine.current_round, stage.value, list(answered),
                         engine.stage_log[-1][1]])
        if spec and not done and engine.current_round == spec["round"] and \
                stage.value == spec["after"]:
            os.killpg(spec["pgid"], getattr(signal, spec["signal"]))
            done.append("signalled")
        resume = (spec or {}).get("resume")
        if resume and done == ["signalled"] and engine.current_round == resume["round"] and \
                stage.value == resume["after"]:
            spec["sent_before"] = Path(resume["log"]).read_text(errors="replace").count(
                "Sent successfully")
            os.killpg(spec["pgid"], signal.SIGCONT)
            done.append("resumed")

    return observer


def _wait_sent(log: Path, before: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while log.read_text(errors="replace").count("Sent successfully") <= before:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the resumed site sent nothing within {timeout} s")
        time.sleep(0.2)


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
