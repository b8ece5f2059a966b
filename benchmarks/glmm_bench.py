"""Whole-process timing of `securefed fit` against lme4::glmer and glmmTMB.

Run from the repository root (R with lme4 and glmmTMB must be installed; the
tests never need R):

    python benchmarks/glmm_bench.py            # writes benchmarks/results/glmm.{csv,md}

Each problem is written once as CSV; then, side by side in one run, it is
fitted by `securefed fit` (in-process federation, plaintext and secagg) and by
Rscript calling glmer (same nAGQ) and glmmTMB (Laplace). Wall time is the whole
process (start-up, reading the CSV, fitting), the median of `--repeats` runs.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from securefed.synthetic import make_hospitals  # noqa: E402

TERMS = " + ".join(f"x{j}" for j in range(2, 11))
FORMULA = f"y ~ {TERMS} + (1 | hospital)"
PROBLEMS = [  # (name, sites, rows per site, nAGQ)
    ("paper 10 x 500", 10, 500, 1),
    ("paper 10 x 500 GH5", 10, 500, 5),
    ("60 sites x 500", 60, 500, 1),
    ("60 sites x 500 GH5", 60, 500, 5),
    ("60 sites x 2000", 60, 2000, 1),
]
R_SCRIPT = r"""
args <- commandArgs(TRUE)
suppressMessages({library(lme4); library(glmmTMB)})
d <- read.csv(args[1])
f <- as.formula(args[2])
if (args[3] == "glmer") {
  fit <- glmer(f, data = d, family = binomial, nAGQ = as.integer(args[4]))
  cat(sprintf('{"loglik": %.10f}', as.numeric(logLik(fit))))
} else {
  fit <- glmmTMB(f, data = d, family = binomial)
  cat(sprintf('{"loglik": %.10f}', as.numeric(logLik(fit))))
}
"""


def timed(cmd: list[str]) -> tuple[float, str]:
    start = time.perf_counter()
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return time.perf_counter() - start, out.stdout


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        r_file = Path(tmp) / "fit.R"
        r_file.write_text(R_SCRIPT)
        for name, sites, per_site, nagq in PROBLEMS:
            data = Path(tmp) / f"{sites}_{per_site}.csv"
            if not data.exists():
                make_hospitals(sites, per_site, seed=11).to_csv(data, index=False)
            out_json = Path(tmp) / "fit.json"
            runs = {
                "securefed (none)": ["securefed", "fit", str(data), "--formula", FORMULA,
                                     "--family", "binomial", "--site-column", "hospital",
                                     "--nagq", str(nagq), "--quiet", "--json", str(out_json)],
                "securefed (secagg)": ["securefed", "fit", str(data), "--formula", FORMULA,
                                       "--family", "binomial", "--site-column", "hospital",
                                       "--nagq", str(nagq), "--quiet", "--protect", "secagg",
                                       "--json", str(out_json)],
                "lme4 glmer": ["Rscript", str(r_file), str(data), FORMULA, "glmer", str(nagq)],
            }
            if nagq == 1:
                runs["glmmTMB"] = ["Rscript", str(r_file), str(data), FORMULA, "tmb", "1"]
            for tool, cmd in runs.items():
                times, loglik, rounds = [], None, None
                for _ in range(args.repeats):
                    seconds, stdout = timed(cmd)
                    times.append(seconds)
                    if tool.startswith("securefed"):
                        result = json.loads(out_json.read_text())
                        loglik, rounds = result["loglik"], result["rounds"]
                    else:
                        loglik = json.loads(stdout)["loglik"]
                rows.append({"problem": name, "sites": sites, "rows": sites * per_site,
                             "nagq": nagq, "tool": tool,
                             "seconds_median": round(statistics.median(times), 3),
                             "loglik": round(loglik, 4), "rounds": rounds})
                print(rows[-1], flush=True)
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "glmm.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    lines = ["# GLMM: whole-process wall time, securefed vs lme4 and glmmTMB", "",
             f"Median of {args.repeats} runs, one machine (2 cores), measured side by side by "
             "`python benchmarks/glmm_bench.py`. Binomial random-intercept model with 9 "
             "covariates (the paper-000 design, `securefed.synthetic.make_hospitals`).", "",
             "| problem | tool | seconds | logLik | rounds |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['problem']} | {r['tool']} | {r['seconds_median']} | {r['loglik']} "
                     f"| {r['rounds'] if r['rounds'] is not None else ''} |")
    (out / "glmm.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
