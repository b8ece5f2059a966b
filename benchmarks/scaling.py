"""Scaling: time and peak memory of a federated GLMM (plaintext, secagg) and of BFI.

    nice -n 10 python benchmarks/scaling.py            # default grid (see scaling_run.json)
    python benchmarks/scaling.py --quick               # smoke grid, to a temp folder
    python benchmarks/scaling.py --replot              # tables and plot from scaling.csv

Every point runs in a fresh subprocess (``--point JSON``), so its peak memory
is its own: ``peak_mb`` is the process's maximum resident set (ru_maxrss)
and ``fit_mb`` that peak minus the resident set just before the first fit
(data already generated). Time is the wall time of the point's median
repetition (3 repetitions below 10^5 rows in all and 300 sites, else 1;
each point first fits a small data set of the same shape, untimed, so
imports and first-call costs are not counted),
split into the stages every result reports (``timings``): the sites'
statistics, protection (site and server side) and the rest (coordinator:
Newton steps, checks, bookkeeping; for BFI also the sites' local MAP fits,
which run outside the timed sums). ``cpu_seconds`` is the process CPU time
of the same fit: the machine is shared, so wall time carries other users'
load and the slopes are fitted to CPU time. Points run with single-threaded
BLAS (OMP/OPENBLAS/MKL_NUM_THREADS=1), so CPU time is work done, not the
spinning of BLAS threads waiting for a busy core.

Data (seeded): ``sites`` sites of ``rows`` rows each, ``p`` covariates
N(0, 1), beta_j = ±0.5/sqrt(p) alternating, intercept -1, a random
intercept per site with SD 1 (and, for q = 2, a random slope on x1 with
SD 0.5), binary outcome. GLMM: ``y ~ x1 + ... + xp + (1 | site)`` (q = 2:
``(1 + x1 | site)``), Laplace (K = 1), tol 1e-8. secagg: complete-graph
SecAgg for up to 30 sites, SecAgg+ with ``recommended_neighbours`` above.
BFI: logistic ``y ~ x1 + ... + xp``, lambda = 0.01, plaintext.

Axes from the base point (3 sites, the fewest secure aggregation takes;
1000 rows per site; p = 10): rows per site 10^3 -> 10^6; covariates
5 -> 50 (at 10,000 rows per site, so per-row work shows); sites 2 -> 1000
(secagg from 3); and a q = 2 line along the sites
axis (10 -> 1000, plaintext). The log-log slope of CPU time and of ``fit_mb``
against the axis value is fitted per axis and method by least squares.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import bench_common as bench
import numpy as np
import pandas as pd

BASE = {"sites": 3, "rows": 1000, "p": 10, "q": 1}
P_AXIS_ROWS = 10_000
METHODS = ("glmm", "glmm+secagg", "bfi")
STAGES = ("sites_statistics", "protection_total", "rest")
TIMEOUT = 900
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def grid(quick: bool) -> list[dict]:
    """Points as dicts: axis, value, sites, rows, p, q, method, repeats."""
    if quick:
        axes = {"rows": [1000, 10_000], "p": [5, 20], "sites": [3, 20], "sites_q2": [10, 30]}
    else:
        axes = {"rows": [1000, 10_000, 100_000, 1_000_000], "p": [5, 10, 20, 50],
                "sites": [2, 3, 10, 30, 100, 300, 1000], "sites_q2": [10, 30, 100, 300, 1000]}
    points = []
    for axis, values in axes.items():
        for value in values:
            shape = dict(BASE)
            shape["sites" if axis.startswith("sites") else axis] = value
            methods = ("glmm",) if axis == "sites_q2" else METHODS
            if axis == "sites_q2":
                shape["q"] = 2
            if axis == "p":
                shape["rows"] = P_AXIS_ROWS  # enough rows that per-row work, not overhead, counts
            for method in methods:
                if method == "glmm+secagg" and shape["sites"] < 3:
                    continue  # secure aggregation needs at least 3 sites
                big = shape["rows"] * shape["sites"] >= 100_000 or shape["sites"] >= 300
                points.append({"axis": axis, "value": value, **shape, "method": method,
                               "repeats": 1 if big or quick else 3})
    return points


def make_data(sites: int, rows: int, p: int, q: int, seed: int = 7) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    n = sites * rows
    X = rng.standard_normal((n, p))
    beta = 0.5 / np.sqrt(p) * np.where(np.arange(p) % 2 == 0, 1.0, -1.0)
    site = np.repeat(np.arange(sites), rows)
    eta = -1.0 + X @ beta + rng.normal(0.0, 1.0, sites)[site]
    if q == 2:
        eta += rng.normal(0.0, 0.5, sites)[site] * X[:, 0]
    frame = pd.DataFrame(X, columns=[f"x{j}" for j in range(1, p + 1)])
    frame["site"] = site
    frame["y"] = rng.binomial(1, 1.0 / (1.0 + np.exp(-eta)))
    return frame


def _rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        pages = int(handle.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def _protection(sites: int):
    from protocols.graph import recommended_neighbours
    from protocols.stack import SecAggSum

    k = recommended_neighbours(sites)
    if sites <= 30 or k >= sites - 1:
        return SecAggSum(), "complete"
    return SecAggSum(neighbours=k), f"k={k}"


def run_point(point: dict) -> dict:
    """One grid point in this process: median time, stage split, peak memory."""
    from securefed.bfi_run import BFIOptions, run_bfi
    from securefed.glmm_run import GLMMOptions, run_glmm

    terms = " + ".join(f"x{j}" for j in range(1, point["p"] + 1))
    random = "(1 + x1 | site)" if point["q"] == 2 else "(1 | site)"

    def fit(frame: pd.DataFrame) -> tuple[dict, int, bool, str]:
        if point["method"] == "bfi":
            report = run_bfi(frame, BFIOptions(f"y ~ {terms}", "binomial", "site", lam=0.01))
            return report.timings, report.rounds, True, ""
        protection, graph = None, ""
        if point["method"] == "glmm+secagg":
            protection, graph = _protection(frame.site.nunique())
        result = run_glmm(frame, GLMMOptions(f"y ~ {terms} + {random}", "binomial", "site"),
                          protection=protection)
        return result.extra["timings"], result.rounds, result.converged, graph

    try:  # warm-up: imports and first-call costs, untimed
        fit(make_data(max(3, min(point["sites"], 10)), 500, point["p"], point["q"], seed=1))
    except Exception:  # noqa: BLE001 - a failed warm-up only means less warming
        pass
    frame = make_data(point["sites"], point["rows"], point["p"], point["q"])
    before = _rss_mb()
    runs = []
    for _ in range(point["repeats"]):
        start, cpu = time.perf_counter(), time.process_time()
        timings, rounds, converged, graph = fit(frame)
        wall = time.perf_counter() - start
        runs.append({"seconds": wall, "cpu_seconds": time.process_time() - cpu,
                     "rounds": rounds, "converged": converged,
                     "sites_statistics": timings.get("sites_statistics", 0.0),
                     "protection_total": timings.get("protection_total", 0.0)})
    best = sorted(runs, key=lambda r: r["seconds"])[len(runs) // 2]  # the median run
    best["rest"] = max(best["seconds"] - best["sites_statistics"] - best["protection_total"], 0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {**point, **best, "graph": graph, "peak_mb": peak, "fit_mb": peak - before,
            "spread": max(r["seconds"] for r in runs) - min(r["seconds"] for r in runs)}


def measure(point: dict) -> dict:
    """``run_point`` in a fresh subprocess; a failure or timeout is a row too."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--point", json.dumps(point)]
    env = {**os.environ, **{name: "1" for name in THREAD_VARIABLES}}
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT,
                              cwd=bench.ROOT, env=env)
    except subprocess.TimeoutExpired:
        return {**point, "error": f"timeout after {TIMEOUT} s"}
    if done.returncode != 0:
        return {**point, "error": (done.stderr.strip().splitlines() or ["?"])[-1][:120]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def slopes(table: pd.DataFrame) -> pd.DataFrame:
    """Least-squares slope of log(time) and log(peak memory) on log(axis value)."""
    rows = []
    ok = table[table.seconds.notna()] if "seconds" in table else table.iloc[0:0]
    for (axis, method), part in ok.groupby(["axis", "method"]):
        if part.value.nunique() < 2:
            continue
        x = np.log(part.value.astype(float))
        row = {"axis": axis, "method": method, "points": len(part),
               "from": int(part.value.min()), "to": int(part.value.max()),
               "time_slope": float(np.polyfit(x, np.log(part.cpu_seconds), 1)[0]),
               "time_slope_top": _top_slope(part),
               "memory_slope": float(np.polyfit(x, np.log(part.fit_mb.clip(lower=1.0)), 1)[0])}
        last = part.sort_values("value").iloc[-1]
        shares = {s: last[s] / last.seconds for s in STAGES}
        row["cpu_at_largest"] = float(last.cpu_seconds)
        row["dominant_at_largest"] = max(shares, key=shares.get)
        row["share_at_largest"] = shares[row["dominant_at_largest"]]
        rows.append(row)
    return pd.DataFrame(rows)


def _top_slope(part: pd.DataFrame) -> float:
    """Slope over the three largest points (two if there are fewer): the growth once fixed
    per-fit costs no longer matter."""
    top = part.sort_values("value").tail(3)
    return float(np.polyfit(np.log(top.value.astype(float)), np.log(top.cpu_seconds), 1)[0])


AXIS_TITLES = {"rows": "rows per site (3 sites, p = 10)", "p": "covariates (3 sites x 10,000)",
               "sites": "sites (1000 rows each, p = 10)",
               "sites_q2": "sites, random slope q = 2 (1000 rows each)"}


def plot(table: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    axes_names = [a for a in AXIS_TITLES if a in set(table.axis)]
    fig, axes = plt.subplots(2, len(axes_names), figsize=(4.4 * len(axes_names), 7.5),
                             squeeze=False)
    ok = table[table.seconds.notna()]
    for col, axis in enumerate(axes_names):
        values = sorted(ok[ok.axis == axis].value.unique())
        for method, part in ok[ok.axis == axis].groupby("method"):
            part = part.sort_values("value")
            axes[0, col].plot(part.value, part.cpu_seconds, marker="o", label=method)
            axes[1, col].plot(part.value, part.peak_mb, marker="o", label=method)
        for row, label in ((0, "CPU seconds per fit"), (1, "peak RSS of the process (MB)")):
            ax = axes[row, col]
            ax.set_xscale("log")
            ax.set_xticks(values, [f"{int(v):,}" for v in values], fontsize=8)
            ax.xaxis.set_minor_formatter(NullFormatter())
            if row == 0:  # time on a log scale; memory (a few hundred MB up) linear
                ax.set_yscale("log")
                ax.yaxis.set_major_formatter(ScalarFormatter())
                ax.yaxis.set_minor_formatter(NullFormatter())
            ax.set_ylabel(label)
            ax.set_xlabel(AXIS_TITLES[axis])
        axes[0, col].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


COLUMNS = ["axis", "value", "method", "graph", "repeats", "rounds", "converged", "seconds",
           "cpu_seconds",
           "sites_statistics", "protection_total", "rest", "peak_mb", "fit_mb", "error"]
SLOPE_COLS = ["axis", "method", "points", "from", "to", "time_slope", "time_slope_top",
              "memory_slope", "cpu_at_largest", "dominant_at_largest", "share_at_largest"]


STAGE_NAMES = {"sites_statistics": "sites' statistics", "protection_total": "protection",
               "rest": "rest"}
METHOD_NAMES = {"glmm": "GLMM", "glmm+secagg": "GLMM under secagg", "bfi": "BFI"}


def findings(table: pd.DataFrame, fits: pd.DataFrame) -> list[str]:
    """Sentences computed from the slopes and the largest points (not typed)."""
    lines = []
    for method, name in METHOD_NAMES.items():
        part = fits[(fits.method == method) & (fits.axis != "sites_q2")]
        if part.empty:
            continue
        growth = " / ".join(f"{r.axis}^{r.time_slope:.2f}" for r in part.itertuples())
        top = " / ".join(f"{r.time_slope_top:.2f}" for r in part.itertuples())
        dominant = "; ".join(
            f"{AXIS_POINT[r.axis].format(int(r.to))}: {r.cpu_at_largest:.3g} s, "
            f"{STAGE_NAMES[r.dominant_at_largest]} {100 * r.share_at_largest:.0f}%"
            for r in part.itertuples())
        lines.append(f"- {name}: CPU time ∝ {growth} (over the three largest points of each "
                     f"axis: {top}). At each axis' end (CPU seconds, largest stage): {dominant}.")
    q2 = fits[fits.axis == "sites_q2"]
    if len(q2):
        rounds = table[table.axis == "sites_q2"].rounds
        lines.append(f"- Random slope (q = 2), plaintext: CPU time grows as "
                     f"sites^{q2.time_slope.iloc[0]:.2f}, {q2.cpu_at_largest.iloc[0]:.3g} s at "
                     f"{int(q2.to.iloc[0]):,} sites, in {rounds.min():.0f}–{rounds.max():.0f} "
                     "rounds.")
    mem = fits[fits.axis == "rows"]
    if len(mem):
        biggest = table[(table.axis == "rows") & table.fit_mb.notna()].sort_values("value")
        top = biggest.iloc[-1] if len(biggest) else None
        lines.append("- Memory above the data grows as rows^" + ", rows^".join(
            f"{r.memory_slope:.2f} ({METHOD_NAMES[r.method]})" for r in mem.itertuples())
            + (f"; the largest point ({int(top.value):,} rows per site) peaks at "
               f"{biggest.peak_mb.max():,.0f} MB." if top is not None else "."))
    return lines


REST = ("the coordinator's Newton steps, checks and bookkeeping; for BFI also the sites' "
        "local MAP fits, which bfi_run does not time as sites' statistics")
AXIS_POINT = {"rows": "{:,} rows per site", "p": "p = {}", "sites": "{:,} sites",
              "sites_q2": "{:,} sites"}


def write(table: pd.DataFrame, out: Path) -> None:
    fits = slopes(table)
    fits.to_csv(out / "scaling_slopes.csv", index=False)
    cpu = float((table.cpu_seconds * table.repeats).sum()) / 60
    ran = (f"{bench.run_line(out, 'scaling')}; the timed fits alone used {cpu:.1f} min of CPU, "
           "the rest is start-up, data generation, warm-up and other users' load")
    found = findings(table, fits)
    lines = [
        "# Scaling: time and peak memory", "",
        f"`nice -n 10 python benchmarks/scaling.py` ({ran}; the machine is shared, so wall "
        "times carry other users' load). Design: the script's docstring. Each point in its "
        "own process; seconds = wall time of the median of `repeats` fits, cpu_seconds its "
        "CPU time; stage columns in wall seconds (`rest` = coordinator: Newton steps, "
        "checks, bookkeeping; for BFI also the sites' local fits); `peak_mb` = maximum RSS "
        "of the process, `fit_mb` = that minus the RSS before the first fit.", "", *found,
        f"- `rest` = {REST}.", "",
        "## Log-log slopes (cost ∝ axis^slope; time = CPU time, memory = fit_mb)", "",
        *bench.markdown_table(fits.to_dict("records"), SLOPE_COLS, digits=2), "",
        "## Every point", "",
        *bench.markdown_table(table.to_dict("records"), COLUMNS, digits=3), "",
        "![scaling](scaling.png)"]
    (out / "scaling.md").write_text("\n".join(lines) + "\n")
    plot(table, out / "scaling.png")
    bench.write_snippet(out, "scaling", [
        f"**Scaling (generated).** `nice -n 10 python benchmarks/scaling.py` ({ran}; every "
        "point in its own process; base 3 sites × 1000 rows, p = 10 (p axis at 10,000 rows), "
        "Laplace; all points in "
        "`benchmarks/results/scaling.md`, with the slope table). Log-log slopes of CPU time "
        "and of memory above the data, and the stage that takes the most wall time at each "
        "axis' largest point:",
        "", *found, f"- `rest` = {REST}.", "",
        "![scaling](benchmarks/results/scaling.png)"])
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke grid, to a temp folder")
    parser.add_argument("--out", help="results folder (default benchmarks/results)")
    parser.add_argument("--replot", action="store_true", help="tables and plot from scaling.csv")
    parser.add_argument("--point", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.point:
        print(json.dumps(run_point(json.loads(args.point))))
        return
    out = bench.results_dir(args.quick, args.out)
    if args.replot:
        write(pd.read_csv(out / "scaling.csv"), out)
        return
    clock = bench.Stopwatch()
    rows = []
    for point in grid(args.quick):
        rows.append(measure(point))
        print({k: rows[-1].get(k) for k in ("axis", "value", "method", "seconds", "peak_mb",
                                             "error")}, flush=True)
    table = pd.DataFrame(rows)
    for col in COLUMNS:
        if col not in table:
            table[col] = np.nan
    table.to_csv(out / "scaling.csv", index=False)
    bench.record_run(out, "scaling", clock.elapsed, points=len(table))
    write(table, out)
    print(f"wrote {out} in {clock.elapsed:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
