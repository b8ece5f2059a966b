"""The ServerApp of the Flower deployment tests (copied into the test's Flower App).

It runs the steps of a scenario file with :class:`FlowerEngine` and writes
every round's result, or the error that stopped it, to a JSON file the test
reads. A ``study`` step runs a study file with the study ServerApp's code and
may stop (SIGSTOP) or kill (SIGKILL) sites' SuperNode process groups right
after a stage of a round, and resume a stopped one later: real processes,
real dropouts.

With ``"layer": "ckks"`` the engine runs CKKS with the scenario's key holder;
after each sum it writes what the coordinator received (ciphertext chunks and
the public context) next to the result file, and a ``forged_sum`` step plays
a coordinator that substitutes a public context whose secret key it made.
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
from securefed.transport.flower_ckks import RemoteCkksSum
from securefed.transport.flower_server import FlowerEngine, SiteRefused, StageTimeouts

server_app = ServerApp()


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    scenario = json.loads(Path(str(context.run_config["scenario"])).read_text())
    out = Path(str(context.run_config["result"]))
    results: list[dict] = []
    try:
        _run(grid, scenario, results, out.parent)
        report = {"results": results}
    except Exception as exc:  # the test prints it with the processes' logs
        report = {"results": results, "error": f"{type(exc).__name__}: {exc}",
                  "traceback": traceback.format_exc()}
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(report))
    os.replace(tmp, out)


def _protection(scenario: dict):
    """``ckks`` (remote key holder), ``secagg``, or ``secagg,dp`` with the coordinator's DP
    options if the scenario has any."""
    if scenario.get("layer") == "ckks":
        return RemoteCkksSum(bound=scenario["bound"])
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


def _run(grid: Grid, scenario: dict, results: list[dict], out_dir: Path) -> None:
    identity = Identity.load(scenario["coordinator_key"], "coordinator")
    private = Ed25519PrivateKey.from_private_bytes(identity.export_private_key_raw())
    ckks = scenario.get("layer") == "ckks"
    engine = FlowerEngine(grid, private, Registry.load(scenario["registry"]),
                          _protection(scenario), StageTimeouts(**scenario["timeouts"]),
                          key_holder=scenario.get("key_holder"))
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
            logged = len(engine.stage_log)  # this sum's exchanges (4 or 5 under secagg)
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
            live = [s for s in live if s not in result.dropped]
            results.append({"kind": "sum", "total": result.total.tolist(),
                            "stages": engine.stage_log[logged:],
                            "contributors": list(result.contributors),
                            "dropped": list(result.dropped),
                            "bytes": dict(result.bytes_sent_per_site)})
            if engine.privacy is not None:
                results[-1]["noise_sd"] = engine.privacy.sum_noise_sd(
                    len(result.contributors)).tolist()
                results[-1]["min_contributors"] = engine.privacy.min_contributors
            if ckks:
                results[-1]["received"] = _dump_received(engine, out_dir, step["round_id"])
        elif step["kind"] == "study":
            from securefed.transport.flower_study import run_study_over_flower

            config = {"study": step["study"], "registry": scenario["registry"],
                      "coordinator-key": scenario["coordinator_key"],
                      "stage-seconds": scenario["timeouts"]["stage"],
                      "grace-seconds": scenario["timeouts"]["grace"],
                      "poll-seconds": scenario["timeouts"]["poll"]}
            observed: list = []
            specs = step.get("interrupts", [])
            result = run_study_over_flower(grid, config, _study_interrupt(specs, observed))
            for spec in specs:
                if spec.get("resume"):  # the late reply has left the site by now
                    _wait_sent(Path(spec["resume"]["log"]), spec["sent_before"], 120.0)
            results.append({"kind": "study", "result": result, "stages": observed})
        elif step["kind"] == "forged_sum":
            results.append(_forged_sum(engine, private, step, live))
        results[-1]["seconds"] = time.perf_counter() - started


def _dump_received(engine: FlowerEngine, out_dir: Path, round_id: int) -> dict:
    """Write what the coordinator holds of this round: ciphertext chunks, public context."""
    rounds = engine._ckks
    (out_dir / "coordinator-context.bin").write_bytes(rounds.signed_context().public_context)
    files = {}
    for name, ciphertext in rounds.received.items():
        paths = []
        for index, chunk in enumerate(ciphertext.chunks):
            path = out_dir / f"received-{round_id}-{name}-{index}.bin"
            path.write_bytes(chunk)
            paths.append(str(path))
        files[name] = {"chunks": paths, "n_values": ciphertext.n_values,
                       "fingerprint": ciphertext.fingerprint}
    return files


def _forged_sum(engine: FlowerEngine, private: Ed25519PrivateKey, step: dict,
                live: list[str]) -> dict:
    """A coordinator substitutes a context of its own key, signed by itself as the key holder."""
    from protocols.ckks import CkksKeyHolder
    from securefed.transport.flower_ckks import sign_public_context

    attacker = CkksKeyHolder.generate()
    engine._ckks._signed = sign_public_context(private, engine.key_holder,
                                               attacker.public_context())
    try:
        result = engine.run_round(step["round_id"], step["purpose"],
                                  SiteCall.from_json(step["call"]), live)
    except SiteRefused as exc:
        return {"kind": "forged_sum", "refused": str(exc), "stages": engine.stage_log[-1:]}
    return {"kind": "forged_sum", "released": result.total.tolist()}


def _study_interrupt(specs: list[dict], observed: list):
    """Record every exchange; signal each spec's site once, after ``after`` of ``round``.

    With ``resume`` (a round and stage) a stopped site is continued (SIGCONT)
    then, in the middle of the fit: its late reply to the round it missed
    arrives while a later round runs.
    """
    done: dict[int, list[str]] = {k: [] for k in range(len(specs))}

    def observer(engine, stage, answered) -> None:
        observed.append([engine.current_round, stage.value, list(answered),
                         engine.stage_log[-1][1]])
        for k, spec in enumerate(specs):
            if not done[k] and engine.current_round == spec["round"] and \
                    stage.value == spec["after"]:
                os.killpg(spec["pgid"], getattr(signal, spec["signal"]))
                done[k].append("signalled")
            resume = spec.get("resume")
            if resume and done[k] == ["signalled"] and engine.current_round == \
                    resume["round"] and stage.value == resume["after"]:
                spec["sent_before"] = Path(resume["log"]).read_text(errors="replace").count(
                    "Sent successfully")
                os.killpg(spec["pgid"], signal.SIGCONT)
                done[k].append("resumed")

    return observer


def _wait_sent(log: Path, before: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while log.read_text(errors="replace").count("Sent successfully") <= before:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the resumed site sent nothing within {timeout} s")
        time.sleep(0.2)
