"""Whole-process timing of `securefed cox` and `securefed bfi --family survival` against R.

Run from the repository root (R with survival must be installed; R BFI 3.1.0 is used when
the folder named by ``BFI_R_LIB`` holds it; the tests never need R):

    BFI_R_LIB=/tmp/bfi_r/lib nice python3 benchmarks/cox_bench.py   # writes results/cox.{csv,md}

Each problem is written once as CSV. Then, side by side in one run, it is fitted by:

* `securefed cox` (in-process federation, none and secagg) and Rscript calling
  `coxph(Surv(time, status) ~ ... + strata(site))` (Efron ties);
* `securefed bfi --family survival --baseline B` and Rscript calling R BFI's
  `MAP.estimation(basehaz = B)` per site, then `bfi()`: B = weibull on both synthetic
  problems; poly (max_order 2), pwexp (4 pieces up to the smallest of the sites' largest
  times, as R's documentation sets it; securefed is given that number) and unspecified
  on a small one (R's poly integrates numerically per patient and per evaluation: on
  5 x 400 one R run took over 6 minutes).

Wall time is the whole process (start-up, reading the CSV, fitting), the median of
``--repeats`` runs. securefed runs from this checkout (``python3 -m securefed.cli``).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench_common import machine_line  # noqa: E402

COX_R = r"""
args <- commandArgs(TRUE)
suppressMessages(library(survival))
d <- read.csv(args[1])
fit <- coxph(as.formula(paste(args[2], "+ strata(site)")), data = d, ties = "efron")
cat(sprintf('{"loglik": %.10f, "coef": [%s]}', fit$loglik[2],
            paste(sprintf("%.10f", coef(fit)), collapse = ",")))
"""
BFI_R = r"""
args <- commandArgs(TRUE)
suppressMessages(library(BFI))
d <- read.csv(args[1])
x <- strsplit(args[2], ",")[[1]]
basehaz <- args[3]
Lambda <- inv.prior.cov(d[, x], lambda = 0.01, family = "survival", basehaz = basehaz)
mmt <- min(tapply(d$time, d$site, max))
fits <- lapply(split(d, d$site), function(part)
  MAP.estimation(y = part[, c("time", "status")], X = part[, x], family = "survival",
                 Lambda = Lambda, basehaz = basehaz, min_max_times = mmt))
if (basehaz == "poly") {
  q_ls <- sapply(fits, function(f) f$q_l)
  len <- length(x) + max(q_ls) + 1
  b <- bfi(theta_A_polys = lapply(fits, function(f) f$theta_A_poly),
           Lambda = Lambda[1:len, 1:len], family = "survival", basehaz = "poly", q_ls = q_ls)
} else {
  b <- bfi(theta_hats = lapply(fits, function(f) f$theta_hat),
           A_hats = lapply(fits, function(f) f$A_hat), Lambda = Lambda,
           family = "survival", basehaz = basehaz)
}
cat(sprintf('\n{"coef": [%s]}\n', paste(sprintf("%.10f", b$theta_hat), collapse = ",")))
"""
R_BASEHAZ = {"weibull": "weibul", "poly": "poly", "pwexp": "pwexp",
             "unspecified": "unspecified"}

def synthetic(sites: int, per_site: int, seed: int = 5) -> pd.DataFrame:
    """Weibull proportional hazards (shape 1.3) with 4 covariates; uniform censoring."""
    rng = np.random.default_rng(seed)
    n = sites * per_site
    X = np.column_stack([rng.normal(size=n), rng.integers(0, 2, n), rng.normal(size=n),
                         rng.uniform(-1, 1, n)])
    site_effect = np.repeat(rng.normal(0, 0.3, sites), per_site)
    eta = X @ np.array([0.5, -0.4, 0.2, 0.3]) + site_effect
    event_time = (rng.exponential(size=n) / (0.2 * np.exp(eta))) ** (1 / 1.3)
    censor = rng.uniform(0, 8, n)
    return pd.DataFrame({"time": np.round(np.minimum(event_time, censor), 3) + 0.001,
                         "status": (event_time <= censor).astype(int), "x1": X[:, 0],
                         "x2": X[:, 1], "x3": X[:, 2], "x4": X[:, 3],
                         "site": [f"s{k}" for k in np.repeat(np.arange(sites), per_site)]})


def problems() -> list[tuple[str, pd.DataFrame, str, tuple[str, ...]]]:
    """(name, data, formula, the BFI survival baselines to run); the small synthetic
    problem is fitted by BFI only."""
    lung = pd.read_csv(ROOT / "tests" / "golden" / "cox" / "lung.csv")
    colon = pd.read_csv(ROOT / "tests" / "golden" / "cox" / "colon.csv")
    syn = "Surv(time, status) ~ x1 + x2 + x3 + x4"
    return [("lung, 18 sites", lung, "Surv(time, status) ~ age + sex + ph.ecog", ()),
            ("colon, 5 sites", colon, "Surv(time, status) ~ rx + sex + age + nodes", ()),
            ("synthetic 3 x 150", synthetic(3, 150), syn, tuple(R_BASEHAZ)),
            ("synthetic 5 x 400", synthetic(5, 400), syn, ("weibull",)),
            ("synthetic 20 x 2000", synthetic(20, 2000), syn, ("weibull",))]


def timed(cmd: list[str], env: dict | None = None) -> tuple[float, str]:
    start = time.perf_counter()
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT, env=env)
    return time.perf_counter() - start, out.stdout


def _runs(data: Path, formula: str, baselines: tuple[str, ...], tmp: Path,
          bfi_lib: str | None):
    me = [sys.executable, "-m", "securefed.cli"]
    out_json = tmp / "fit.json"
    runs = {
        "securefed cox (none)": (me + ["cox", str(data), "--formula", formula,
                                       "--site-column", "site", "--json", str(out_json)], None),
        "securefed cox (secagg)": (me + ["cox", str(data), "--formula", formula,
                                         "--site-column", "site", "--protect", "secagg",
                                         "--json", str(out_json)], None),
        "R coxph + strata(site)": (["Rscript", str(tmp / "cox.R"), str(data), formula], None),
    }
    frame = pd.read_csv(data)
    max_time = float(frame.groupby("site")["time"].max().min())  # R's min_max_times
    covariates = ",".join(t.strip() for t in formula.split("~")[1].split("+"))
    for baseline in baselines:
        extra = {"pwexp": ["--baseline-pieces", "4", "--baseline-max-time", repr(max_time)]}
        runs[f"securefed bfi survival {baseline}"] = (
            me + ["bfi", str(data), "--formula", formula, "--family", "survival",
                  "--baseline", baseline, *extra.get(baseline, []), "--site-column", "site",
                  "--json", str(out_json)], None)
        if bfi_lib:
            runs[f"R BFI 3.1.0 {R_BASEHAZ[baseline]}"] = (
                ["Rscript", str(tmp / "bfi.R"), str(data), covariates, R_BASEHAZ[baseline]],
                {**os.environ, "R_LIBS": bfi_lib})
    return runs, out_json


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    bfi_lib = os.environ.get("BFI_R_LIB")
    rows = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "cox.R").write_text(COX_R)
        (tmp / "bfi.R").write_text(BFI_R)
        for name, frame, formula, baselines in problems():
            data = tmp / "data.csv"
            frame.to_csv(data, index=False)
            runs, out_json = _runs(data, formula, baselines, tmp, bfi_lib)
            for tool, (cmd, env) in runs.items():
                times, first = [], None
                for _ in range(args.repeats):
                    seconds, stdout = timed(cmd, env)
                    times.append(seconds)
                    if tool.startswith("securefed"):
                        result = json.loads(out_json.read_text())
                        rows_key = "fixed_effects" if "cox" in tool else "estimates"
                        first = result[rows_key][0]["estimate"]
                        rounds = result["rounds"]
                    else:
                        last = [line for line in stdout.splitlines() if line.strip()][-1]
                        first, rounds = json.loads(last)["coef"][0], None
                rows.append({"problem": name, "rows": len(frame), "tool": tool,
                             "seconds_median": round(statistics.median(times), 3),
                             "first_coef": round(first, 6), "rounds": rounds})
                print(rows[-1], flush=True)
    out = ROOT / "benchmarks" / "results"
    with open(out / "cox.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    lines = ["# Survival: whole-process wall time, securefed vs R (survival, BFI)", "",
             f"Median of {args.repeats} runs, measured side by side by "
             "`python3 benchmarks/cox_bench.py` (" + machine_line() + ", a machine shared "
             "with other jobs). `first coef` is the first coefficient each tool reports "
             "(securefed's equal R's to the precision shown; R BFI's differ where its BFGS "
             "stops short, docs/survival.md).", "",
             "| problem | rows | tool | seconds | first coef | rounds |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['problem']} | {r['rows']} | {r['tool']} | {r['seconds_median']} | "
                     f"{r['first_coef']} | {r['rounds'] if r['rounds'] is not None else ''} |")
    (out / "cox.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
