"""Wall time and bytes per site: protected BFI and GLMM over Flower vs in-process (issue #6).

    python benchmarks/flower_bench.py              # 10 sites; writes benchmarks/results/
    python benchmarks/flower_bench.py --quick      # 3 sites, to a temporary folder
    python benchmarks/flower_bench.py --sites 5 --no-fast --out /tmp/fb

The same two study files (``[protection] layers = ["secagg"]``, signed audit
trail) run side by side in one run:

* in-process: every site in this process (``run_bfi`` / ``run_glmm`` with the
  study's options and protection, and an audit log, as ``securefed run``);
* over Flower with the stock ``flower-supernode`` (what a deployment gets): a
  real local federation on 127.0.0.1 with TLS and SuperNode authentication,
  one SuperNode per site, each site's rows in its own CSV, the study run by
  ``securefed.transport.flower_study:server_app`` through ``flwr run``;
* over Flower with the SuperNode's hard-coded 3 s idle poll capped at 0.1 s
  (``--no-fast`` skips it).

Recorded per fit: the fit's wall time (``seconds`` of the fit, without the
federation's start-up), the time from ``flwr run`` to ``result.json``,
rounds, message exchanges, protocol bytes sent per site (mean), the
Flower / in-process time ratio, and the largest absolute difference of any
Flower estimate (fixed effects and their standard errors; GLMM: also theta
and the log-likelihood) from the in-process fit. The load average is
recorded at the start and end of every measurement: other jobs may share the
machine.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_common import code_version, machine_line, markdown_table, results_dir  # noqa: E402
from flower_federation import LocalFederation, dp_shim_needed, flower_installed  # noqa: E402

from securefed.synthetic import make_clustered  # noqa: E402

NAME = "flower_bench"
MODELS = {"bfi": "y ~ x2 + x6 + x7", "glmm": "y ~ x2 + x6 + x7 + (1 | cluster)"}
STUDY = """\
title = "flower benchmark: {kind}"

[model]
kind = "{kind}"
formula = "{formula}"
family = "binomial"

[protection]
layers = ["secagg"]

{sites}
[output]
dir = "{out}"
"""


def site_frames(n_sites: int, clusters: int, rows: int, seed: int) -> dict[str, pd.DataFrame]:
    """``make_clustered`` split by hospital into one frame per site ``S01``, ``S02``, ..."""
    frame = make_clustered(n_sites, clusters, rows, seed=seed)
    return {f"S{int(h):02d}": part.drop(columns="hospital").reset_index(drop=True)
            for h, part in frame.groupby("hospital")}


def write_study(folder: Path, kind: str, sites: list[str], out: Path, stem: str = "") -> Path:
    path = folder / f"{stem or kind}.toml"
    entries = "".join(f'[[sites]]\nname = "{name}"\n\n' for name in sites)
    path.write_text(STUDY.format(kind=kind, formula=MODELS[kind], sites=entries, out=out))
    return path


def load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def numbers(kind: str, result: dict) -> np.ndarray:
    """Every estimate compared: fixed effects and sds (GLMM: + theta, log-likelihood)."""
    if kind == "bfi":
        rows = result["estimates"]
        return np.array([r["estimate"] for r in rows] + [r["sd"] for r in rows], dtype=float)
    rows = result["fixed_effects"]
    return np.array([r["estimate"] for r in rows] + [r["std_error"] for r in rows]
                    + list(result["theta"].values()) + [result["loglik"]], dtype=float)


def in_process(kind: str, study_path: Path, pooled: pd.DataFrame, work: Path) -> dict:
    from securefed.bfi_run import run_bfi
    from securefed.glmm_run import run_glmm
    from securefed.protection import build_protection
    from securefed.study import load_study

    study = load_study(study_path, remote=True)
    names = sorted(s.name for s in study.sites)
    protection = build_protection(study.protection, names)
    audit = work / f"inprocess-{kind}-audit.jsonl"
    before = load()
    started = time.perf_counter()
    run = run_glmm if kind == "glmm" else run_bfi
    fit = run(pooled, study.options, protection=protection, audit_log=audit)
    wall = time.perf_counter() - started
    result = fit.to_dict()
    return {"result": result, "seconds": result["seconds"], "end_to_end_seconds": wall,
            "exchanges": None, "load_before": before, "load_after": load()}


def over_flower(kind: str, fed: LocalFederation, study_path: Path, out: Path) -> dict:
    before = load()
    result, wall = fed.run_study(study_path, out)
    return {"result": result, "seconds": result["seconds"], "end_to_end_seconds": wall,
            "exchanges": result["transport"]["exchanges"], "load_before": before,
            "load_after": load()}


def row(kind: str, engine: str, n_sites: int, m: dict, reference: dict | None) -> dict:
    res = m["result"]
    out = {"model": kind.upper(), "engine": engine, "sites": n_sites,
           "seconds": round(m["seconds"], 2),
           "end_to_end_seconds": round(m["end_to_end_seconds"], 2),
           "rounds": res["rounds"], "exchanges": m["exchanges"],
           "bytes_per_site": res["bytes_sent_per_site"],
           "load_before": m["load_before"], "load_after": m["load_after"]}
    if reference is not None:
        ref = reference["result"]
        out["ratio"] = round(m["seconds"] / reference["seconds"], 1)
        out["max_abs_diff"] = float(np.max(np.abs(numbers(kind, res) - numbers(kind, ref))))
        out["transport_seconds"] = res["transport"]["seconds"]
        out["seconds_per_exchange"] = round(m["seconds"] / max(1, m["exchanges"]), 2)
    out["timings"] = res.get("timings")
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="3 sites, to a temporary folder")
    parser.add_argument("--clusters", type=int, default=50, help="clusters per site")
    parser.add_argument("--rows", type=int, default=5, help="rows per cluster")
    parser.add_argument("--seed", type=int, default=6)
    parser.add_argument("--no-fast", action="store_true",
                        help="skip the fast-poll SuperNode federation")
    parser.add_argument("--models", default="bfi,glmm", help="comma-separated: bfi, glmm")
    parser.add_argument("--out", help="results folder (default benchmarks/results/)")
    parser.add_argument("--keep", action="store_true", help="keep the federation's folder")
    args = parser.parse_args(argv)
    if args.quick:
        args.sites = 3
    kinds = [k.strip() for k in args.models.split(",") if k.strip()]
    if not kinds or any(k not in MODELS for k in kinds):
        parser.error(f"--models: choose from {', '.join(MODELS)}")
    if not flower_installed():
        sys.exit("flwr is not installed: pip install -e '.[test]'")
    # a SIGTERM unwinds through the federations' `with` blocks, which kill their processes
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    out = results_dir(args.quick, args.out)
    work = Path(tempfile.mkdtemp(prefix="securefed-flower-bench-"))
    print(f"work folder: {work}", flush=True)
    started, load_start, code_start = time.perf_counter(), load(), code_version()
    frames = site_frames(args.sites, args.clusters, args.rows, args.seed)
    sites = sorted(frames)
    engines = [("flower (stock supernode)", False)]
    if not args.no_fast:
        engines.append(("flower (0.1 s poll supernode)", True))
    measured: dict[tuple[str, str], dict] = {}
    rows: list[dict] = []
    command = "python benchmarks/flower_bench.py " + " ".join(
        sys.argv[1:] if argv is None else argv)

    def save(status: str) -> None:
        """Write what is measured so far (after every fit: a stopped run keeps its rows)."""
        done = sorted(rows, key=lambda r: (r["model"] != "BFI", r["engine"] != "in-process"))
        report = {"command": command.strip(), "status": status, "machine": machine_line(),
                  "code_start": code_start, "code": code_version(), "flwr": _flwr_version(),
                  "sites": len(sites),
                  "bfi_dp_shim": dp_shim_needed(),
                  "rows_per_site": args.clusters * args.rows,
                  "data": f"make_clustered({args.sites}, {args.clusters}, {args.rows}, "
                          f"seed={args.seed})",
                  "models": MODELS, "family": "binomial", "protection": ["secagg"],
                  "load_start": load_start, "load_end": load(),
                  "seconds_total": round(time.perf_counter() - started, 1), "rows": done}
        (out / f"{NAME}.json").write_text(json.dumps(report, indent=1) + "\n")
        (out / f"{NAME}.md").write_text("\n".join(markdown(report)) + "\n")

    status = "stopped"
    try:
        for engine, fast in engines:
            fed_root = work / ("fast" if fast else "stock")
            print(f"starting a {len(sites)}-site federation: {engine}", flush=True)
            t0 = time.perf_counter()
            with LocalFederation(fed_root, frames, fast=fast) as fed:
                setup = time.perf_counter() - t0
                print(f"  started in {setup:.0f} s", flush=True)
                if not measured:  # in-process, on the rows as the sites read them
                    pooled = pd.concat(
                        [pd.read_csv(fed_root / "data" / f"{n}.csv").assign(site=n)
                         for n in sites], ignore_index=True)
                    for kind in kinds:
                        study = write_study(work, kind, sites, work / f"out-{kind}-inprocess",
                                            stem=f"{kind}-inprocess")
                        measured[kind, "in-process"] = in_process(kind, study, pooled, work)
                        rows.append(row(kind, "in-process", len(sites),
                                        measured[kind, "in-process"], None))
                        print(f"  {rows[-1]}", flush=True)
                    save("running")
                for kind in kinds:
                    run_out = fed_root / f"out-{kind}"
                    study = write_study(fed_root, kind, sites, run_out)
                    measured[kind, engine] = over_flower(kind, fed, study, run_out)
                    rows.append(row(kind, engine, len(sites), measured[kind, engine],
                                    measured[kind, "in-process"]))
                    rows[-1]["federation_start_seconds"] = round(setup, 1)
                    print(f"  {rows[-1]}", flush=True)
                    save("running")
        status = "complete"
    finally:
        if rows:
            save(status)
        if not args.keep:
            import shutil

            shutil.rmtree(work, ignore_errors=True)
    print(f"wrote {out / (NAME + '.json')} and {out / (NAME + '.md')}")


def _flwr_version() -> str:
    from importlib.metadata import version

    return version("flwr")


def markdown(report: dict) -> list[str]:
    table = [{**r, "diff": "" if r.get("max_abs_diff") is None else f"{r['max_abs_diff']:.1e}",
              "ratio": "" if r.get("ratio") is None else f"{r['ratio']:.1f}x",
              "load": f"{r['load_before'][0]:.1f} / {r['load_after'][0]:.1f}"}
             for r in report["rows"]]
    columns = ["model", "engine", "seconds", "end_to_end_seconds", "ratio", "rounds",
               "exchanges", "bytes_per_site", "diff", "load"]
    headers = ["model", "engine", "fit s", "submit→result s", "fit time vs in-process",
               "rounds", "exchanges", "protocol bytes/site", "max abs diff vs in-process",
               "load 1 min (before / after)"]
    n = report["sites"]
    return [
        f"# Protected BFI and GLMM over Flower vs in-process ({n} sites, secagg)", "",
        f"`{report['command']}` — {report['machine']}, flwr {report['flwr']}, "
        + (f"code {report['code']}" if report.get("code_start", report["code"])
           == report["code"] else f"code {report['code_start']} at the start, "
           f"{report['code']} at the end (commits landed during the run)")
        + f"; whole run {report['seconds_total']:.0f} s"
        + ("." if report["status"] == "complete" else
           f" — **run {report['status']}: only the rows below were measured**."), "",
        f"Data: `{report['data']}` ({report['rows_per_site']} rows per site, one CSV per "
        f"site). BFI `{report['models']['bfi']}`, GLMM `{report['models']['glmm']}` "
        "(Laplace), binomial; `[protection] layers = [\"secagg\"]`; signed audit trail "
        "in both engines.", "",
        *markdown_table(table, columns, digits=2, headers=headers), "",
        "* **fit s**: the fit's own wall time (`seconds` in `result.json`), from the first "
        "round to the estimate, without the federation's start-up. **submit→result s**: from "
        "`flwr run` to `result.json` (ServerApp start, waiting for the SuperNodes, the "
        "audit's countersignatures). In-process: the `run_bfi`/`run_glmm` call.",
        "* **exchanges**: Flower message exchanges (one message to every live site and "
        "their replies); each starts a fresh ClientApp process per site. With the stock "
        "SuperNode each exchange also waits for the SuperNode's hard-coded 3 s idle poll "
        "(Flower 1.41); the 0.1 s poll row caps that sleep (test-only wrapper, "
        "`benchmarks/flower_federation.py`).",
        "* **protocol bytes/site**: securefed's payload bytes sent per site (mean), as "
        "counted by the coordinator; the gRPC/TLS framing and Flower's own messages are not "
        "included.",
        *(["* **BFI dp shim**: at c977c07 BFI over Flower raised TypeError (`run_bfi_remote` "
            "passes every round `dp=DpQuery.derived(...)`, forwarded to "
            "`FlowerEngine.run_round`, which has no `dp`); 6c53a0c fixed it (the Coordinator "
            "passes `dp` only under privacy). The benchmark's ServerApp "
            "(`benchmarks/flower_federation.py`) drops a post-processing `dp` while "
            "`run_round` takes none: a no-op from 6c53a0c on."]
           if report["bfi_dp_shim"] else []),
        "* **max abs diff**: largest |Flower − in-process| over the estimates and their "
        "standard errors (GLMM: also theta and the log-likelihood).",
        f"* **Caveats**: one run, all parties and processes on one {os.cpu_count()}-core "
        "machine over 127.0.0.1 (no network latency), shared with other jobs: load average "
        f"{report['load_start']} at the start, {report['load_end']} at the end "
        "(1/5/15 min). Flower times are dominated by process starts and polling, so they "
        "scale with the machine's load; treat them as an order of magnitude.",
    ]


if __name__ == "__main__":
    main()
