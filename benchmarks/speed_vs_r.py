"""Whole processes side by side: securefed against glmmTMB, lme4 and the R BFI workflow.

Run from the repository root (needs R with mlmRev, glmmTMB and lme4, and the R package BFI
in ``$BFI_R_LIBS``, default ``/tmp/bfi_r/lib``; the tests never need R):

    python3 benchmarks/speed_vs_r.py [--repeats 3] [--out DIR]

Each command is one whole process, as a user types it: interpreter or R start-up, library
loading, reading the CSV, the fit, printing. ``securefed`` runs as ``python3 -m securefed.cli``
from this checkout, so the code measured is the tree's. The commands of one comparison run
interleaved (ours, R's, ours, R's, ...), so the machine's load hits both alike; the table
gives the best of ``--repeats`` wall times and the CPU (user + sys, children included) of that
run, the load average before and after, and ratios of best wall times. The fits are checked
to be the same (log-likelihood; BFI estimates) and securefed's own timings say which part is
protection (``timings.protection_total`` of its JSON). Writes ``speed_vs_r.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench_common import ROOT, code_version, machine_line, results_dir

R_DIR = ROOT / "benchmarks" / "r"
NURSES = ROOT / "securefed" / "data" / "Nurses.csv"
FIT_FORMULA = "use ~ age + I(age^2) + urban + livch + (1 | district)"
BFI_MODEL = ["--formula", "stress ~ age + gender + experien + wardtype", "--family", "gaussian",
             "--site-column", "hospital", "--lambda", "0.01",
             "--standardize", "age,experien,stress"]
SECUREFED = [sys.executable, "-m", "securefed.cli"]


@dataclass(frozen=True)
class Run:
    """One whole process: wall seconds, CPU seconds (user + sys, children too), stdout."""

    wall: float
    cpu: float
    stdout: str
    code: int


@dataclass
class Tool:
    """A command of one comparison and its runs."""

    label: str
    cmd: list[str]
    env: dict[str, str] | None = None
    json_out: Path | None = None
    expect_code: int = 0
    runs: list[Run] = field(default_factory=list)
    results: list[dict] = field(default_factory=list)

    @property
    def best(self) -> Run:
        return min(self.runs, key=lambda r: r.wall)


def run_once(tool: Tool) -> None:
    """Run ``tool`` once as a child process; wall clock and the child's rusage."""
    env = {**os.environ, **(tool.env or {})}
    started = time.perf_counter()
    proc = subprocess.Popen(tool.cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    before = os.times()
    stdout, stderr = proc.communicate()
    wall = time.perf_counter() - started
    after = os.times()
    cpu = (after.children_user - before.children_user
           + after.children_system - before.children_system)
    if proc.returncode != tool.expect_code:
        raise SystemExit(f"{tool.label}: exit {proc.returncode}\n{stderr[-2000:]}")
    tool.runs.append(Run(wall, cpu, stdout, proc.returncode))
    if tool.json_out is not None:
        tool.results.append(json.loads(tool.json_out.read_text()))


def interleaved(tools: list[Tool], repeats: int) -> dict:
    """Run the tools round-robin ``repeats`` times; the load average before and after."""
    load_before = os.getloadavg()
    for _ in range(repeats):
        for tool in tools:
            run_once(tool)
    return {"load_before": load_before, "load_after": os.getloadavg()}


def _protection(tool: Tool) -> float | None:
    """Protection seconds inside the best run (securefed's own timings), if it reports them."""
    if not tool.results:
        return None
    best = min(range(len(tool.runs)), key=lambda i: tool.runs[i].wall)
    return tool.results[best].get("timings", {}).get("protection_total")


def fit_case(tmp: Path) -> tuple[list[Tool], Tool]:
    data = tmp / "contraception.csv"
    subprocess.run(["Rscript", str(R_DIR / "contraception_csv.R"), str(data)], check=True)
    model = [str(data), "--formula", FIT_FORMULA, "--family", "binomial",
             "--site-column", "district", "--quiet"]
    ours = [Tool(f"securefed fit --protect {p}",
                 [*SECUREFED, "fit", *model, "--protect", p, "--json", str(tmp / f"fit_{p}.json")],
                 json_out=tmp / f"fit_{p}.json") for p in ("secagg", "none")]
    r_fit = str(R_DIR / "glmm_contraception.R")
    theirs = [Tool(f"Rscript glmm_contraception.R ({pkg})", ["Rscript", r_fit, str(data), pkg])
              for pkg in ("glmmTMB", "lme4")]
    return [ours[0], theirs[0], ours[1], theirs[1]], theirs[0]


def bfi_case(tmp: Path, r_libs: str) -> tuple[list[Tool], Tool]:
    ours = [Tool(f"securefed bfi --protect {p}",
                 [*SECUREFED, "bfi", str(NURSES), *BFI_MODEL, "--protect", p, "--quiet",
                  "--json", str(tmp / f"bfi_{p}.json")], json_out=tmp / f"bfi_{p}.json")
            for p in ("secagg", "none")]
    r_bfi = Tool("Rscript bfi_nurses.R (BFI 3.1.0)",
                 ["Rscript", str(R_DIR / "bfi_nurses.R"), str(NURSES)], env={"R_LIBS": r_libs})
    return [ours[0], r_bfi, ours[1]], r_bfi


def startup_case(tmp: Path) -> list[Tool]:
    missing = str(tmp / "no_such_file.csv")
    return [
        Tool("securefed --help", [*SECUREFED, "--help"]),
        Tool("securefed fit (missing file)",
             [*SECUREFED, "fit", missing, "--formula", FIT_FORMULA, "--site-column", "district"],
             expect_code=2),
        Tool("securefed bfi (unknown column)",
             [*SECUREFED, "bfi", str(NURSES), "--formula", "stress ~ age + shift",
              "--site-column", "hospital"], expect_code=2),
    ]


def same_fit(fit_tools: list[Tool], bfi_tools: list[Tool]) -> dict:
    """How far securefed's fits are from R's: log-likelihood, and BFI's regression terms."""
    sf_fit = fit_tools[0].results[-1]
    tmb = json.loads(fit_tools[1].runs[-1].stdout)
    lme4 = json.loads(fit_tools[3].runs[-1].stdout)
    sf_bfi = bfi_tools[0].results[-1]
    r_bfi = json.loads(bfi_tools[1].runs[-1].stdout)
    ours = {row["term"]: row for row in sf_bfi["estimates"]}
    terms = [n for n in r_bfi["names"] if n in ours]
    est = max(abs(ours[t]["estimate"] - r_bfi["estimate"][r_bfi["names"].index(t)])
              for t in terms)
    sd = max(abs(ours[t]["sd"] - r_bfi["sd"][r_bfi["names"].index(t)]) for t in terms)
    plain = fit_tools[2].results[-1]
    return {"fit_loglik": sf_fit["loglik"], "glmmTMB_loglik": tmb["loglik"],
            "lme4_loglik": lme4["loglik"], "fit_rounds": sf_fit["rounds"],
            "fit_secagg_vs_none_max_theta": max(abs(v - plain["theta"][k])
                                                for k, v in sf_fit["theta"].items()),
            "bfi_terms": terms, "bfi_max_estimate_diff": est, "bfi_max_sd_diff": sd,
            "bfi_rounds": sf_bfi["rounds"]}


def row(tool: Tool, reference: Tool | None) -> dict:
    best = tool.best
    out = {"command": tool.label, "best_wall": best.wall, "best_cpu": best.cpu,
           "walls": [r.wall for r in tool.runs], "protection": _protection(tool)}
    if reference is not None:
        out["ratio"] = best.wall / reference.best.wall
        out["cpu_ratio"] = best.cpu / reference.best.cpu
    return out


def goal_lines(report: dict) -> list[str]:
    """Each goal, met or not, by wall time and by CPU time (the load inflates wall times)."""
    start, fit, bfi = report["cases"]
    worst = max(start["rows"], key=lambda r: r["best_wall"])
    worst_cpu = max(r["best_cpu"] for r in start["rows"])
    out = [f"start-up at most 0.3 s: {'met' if worst['best_wall'] <= 0.3 else 'not met'} by wall "
           f"(slowest {worst['best_wall']:.3f} s), {'met' if worst_cpu <= 0.3 else 'not met'} by "
           f"CPU (slowest {worst_cpu:.3f} s)"]
    for case, what in ((fit, "fit --protect secagg vs glmmTMB"),
                       (bfi, "bfi --protect secagg vs R BFI")):
        ours = case["rows"][0]
        rest = ours["best_wall"] - (ours["protection"] or 0.0)
        out.append(f"{what}: wall ratio {ours['ratio']:.2f}, CPU ratio {ours['cpu_ratio']:.2f}: "
                   f"{'met' if ours['ratio'] <= 1.0 else 'not met'}; secure aggregation took "
                   f"{ours['protection']:.3f} s of its {ours['best_wall']:.3f} s, the rest "
                   f"{rest:.3f} s")
    return out


def markdown(report: dict) -> str:
    lines = ["# Whole processes: securefed against glmmTMB, lme4 and R BFI", "",
             f"`python3 benchmarks/speed_vs_r.py --repeats {report['repeats']}`; "
             f"{report['machine']}; code {report['code']}. Best of {report['repeats']} "
             "interleaved runs each; wall and CPU (user + sys) of the best run; ratio = best "
             "wall / the R reference's best wall. 'protection' is the part of securefed's run "
             "spent in secure aggregation (its JSON `timings.protection_total`, today's "
             "protocol: keys agreed once per run, protocols/secagg_run.py).", ""]
    for case in report["cases"]:
        load = case["load"]
        lines += [f"## {case['title']}", "",
                  f"Load average before {load['load_before'][0]:.2f} / after "
                  f"{load['load_after'][0]:.2f} (1 min); goal: {case['goal']}.", "",
                  "| command | best wall s | CPU s | wall ratio | CPU ratio | protection s | "
                  "wall − protection s | all walls s |", "|---|---|---|---|---|---|---|---|"]
        for r in case["rows"]:
            ratio = f"{r['ratio']:.2f}" if "ratio" in r else ""
            cpu_ratio = f"{r['cpu_ratio']:.2f}" if "cpu_ratio" in r else ""
            prot = r.get("protection")
            rest = f"{r['best_wall'] - prot:.3f}" if prot else ""
            prot = f"{prot:.3f}" if prot is not None else ""
            walls = ", ".join(f"{w:.3f}" for w in r["walls"])
            lines.append(f"| `{r['command']}` | {r['best_wall']:.3f} | {r['best_cpu']:.3f} | "
                         f"{ratio} | {cpu_ratio} | {prot} | {rest} | {walls} |")
        lines.append("")
    lines += ["## Goals", ""] + [f"- {line}" for line in goal_lines(report)] + [""]
    check = report["same_fit"]
    lines += ["## The same fits", "",
              f"- contraception logLik: securefed {check['fit_loglik']:.6f}, glmmTMB "
              f"{check['glmmTMB_loglik']:.6f}, lme4 {check['lme4_loglik']:.6f}; securefed "
              f"took {check['fit_rounds']} rounds; secagg and none differ by at most "
              f"{check['fit_secagg_vs_none_max_theta']:.1e} in theta.",
              f"- Nurses BFI: largest difference from R's bfi() in the regression terms "
              f"({', '.join(check['bfi_terms'])}): estimate {check['bfi_max_estimate_diff']:.1e}, "
              f"SD {check['bfi_max_sd_diff']:.1e} (R BFI puts its prior on sigma2, securefed "
              f"on log sigma: the same model, a different parametrisation of the dispersion); "
              f"{check['bfi_rounds']} rounds.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", help="folder for the results (default benchmarks/results)")
    parser.add_argument("--from-json", help="only write the markdown of a recorded JSON")
    args = parser.parse_args()
    if args.from_json:
        report = json.loads(Path(args.from_json).read_text())
        for case in report["cases"]:  # runs recorded before the CPU ratio was a column
            reference = next((r for r in case["rows"] if "ratio" in r and
                              abs(r["ratio"] - 1.0) < 1e-12 and not r["command"].startswith(
                                  "securefed")), None)
            for r in case["rows"]:
                if reference is not None and "cpu_ratio" not in r:
                    r["cpu_ratio"] = r["best_cpu"] / reference["best_cpu"]
        (Path(args.from_json).with_suffix(".md")).write_text(markdown(report))
        return
    r_libs = os.environ.get("BFI_R_LIBS", "/tmp/bfi_r/lib")
    out = results_dir(False, args.out)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        fit_tools, tmb = fit_case(tmp)
        bfi_tools, r_bfi = bfi_case(tmp, r_libs)
        start_tools = startup_case(tmp)
        cases = []
        for title, goal, tools, reference in (
                ("Start-up", "each at most 0.3 s", start_tools, None),
                ("GLMM: contraception, 1,934 women in 60 districts as 60 sites",
                 "`securefed fit --protect secagg` at most glmmTMB's whole process",
                 fit_tools, tmb),
                ("BFI: Nurses, 1,000 nurses in 25 hospitals",
                 "`securefed bfi --protect secagg` at most the R BFI workflow's",
                 bfi_tools, r_bfi)):
            load = interleaved(tools, args.repeats)
            cases.append({"title": title, "goal": goal, "load": load,
                          "rows": [row(t, reference) for t in tools]})
            for r in cases[-1]["rows"]:
                print(f"{r['command']}: best {r['best_wall']:.3f} s wall, "
                      f"{r['best_cpu']:.3f} s CPU", flush=True)
        report = {"repeats": args.repeats, "machine": machine_line(), "code": code_version(),
                  "cases": cases, "same_fit": same_fit(fit_tools, bfi_tools)}
    (out / "speed_vs_r.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "speed_vs_r.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
