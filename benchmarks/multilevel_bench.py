"""Several random-effects terms (#17): how a site's Laplace work grows, and whole-process
fits against lme4 and glmmTMB.

Run from the repository root (R with lme4, glmmTMB and mlmRev for part 2; the tests never
need R):

    nice python3 benchmarks/multilevel_bench.py            # writes benchmarks/results/multilevel.md
    nice python3 benchmarks/multilevel_bench.py --quick    # part 1 only, smaller, to /tmp

Part 1 times one site's terms (value, exact gradient and Hessian; warm-started modes, the
median of 3) on simulated three-level Poisson data, ``y ~ x + (1 | hospital/ward/patient)``,
growing the number of blocks (hospitals), the rows per block (visits), and the size of a
block (patients per ward). Part 2 fits the golden problems of tests/golden/glmm_multi as
whole processes, side by side: ``python3`` (import, read the CSV, the in-process federated
fit over the golden's sites) against ``Rscript`` running glmer / lmer and glmmTMB.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "core_stats"))

from bench_common import machine_line, markdown_table, results_dir  # noqa: E402

from core_stats.families import POISSON  # noqa: E402
from core_stats.glmm_multi import MultiLayout, RandomTerm, multi_rows, term_layout  # noqa: E402
from core_stats.glmm_multi_laplace import multi_site_terms  # noqa: E402

R_SCRIPT = r"""
args <- commandArgs(TRUE)
suppressMessages({library(lme4); library(glmmTMB)})
spec <- jsonlite::fromJSON(args[1])
d <- read.csv(file.path(dirname(args[1]), spec$dataset_path))
f <- as.formula(spec$formula)
fam <- get(spec$family)()
fit <- if (args[2] == "tmb") glmmTMB(f, data = d, family = fam, REML = FALSE) else
    if (spec$family == "gaussian") lmer(f, data = d, REML = FALSE) else
    glmer(f, data = d, family = fam)
cat(sprintf('{"loglik": %.10f}', as.numeric(logLik(fit))))
"""
PY_FIT = """
import json, sys
sys.path[:0] = [{root!r}, {tests!r}]
from multi_data import fit_problem, golden_problem
est = fit_problem(golden_problem({name!r})[1])
print(json.dumps({{"loglik": est.loglik, "rounds": est.rounds}}))
"""


def three_levels(hospitals: int, wards: int, patients: int, visits: int, seed: int = 1):
    """One site's rows: visits of patients in wards in hospitals, and its layout."""
    rng = np.random.default_rng(seed)
    n = hospitals * wards * patients * visits
    patient = np.arange(n) // visits
    ward = patient // patients
    hospital = ward // wards
    x = rng.normal(size=n)
    eta = (0.5 + 0.3 * x + rng.normal(0, 0.5, hospitals)[hospital]
           + rng.normal(0, 0.4, ward.max() + 1)[ward]
           + rng.normal(0, 0.6, patient.max() + 1)[patient])
    ones = np.ones((n, 1))
    terms = (RandomTerm("patient:ward:hospital", ones, patient),
             RandomTerm("ward:hospital", ones, ward), RandomTerm("hospital", ones, hospital))
    rows = multi_rows(rng.poisson(np.exp(eta)).astype(float), np.column_stack([ones, x]), terms)
    layout = MultiLayout(("(Intercept)", "x"), tuple(term_layout(t) for t in terms), False)
    return rows, layout


def time_site(rows, layout, repeats: int = 3) -> tuple[float, float]:
    theta = np.array([0.5, 0.3, np.log(0.6), np.log(0.4), np.log(0.5)])
    modes = multi_site_terms(rows, POISSON, layout, theta).modes
    out = []
    for derivatives in (True, False):
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            multi_site_terms(rows, POISSON, layout, theta, derivatives=derivatives,
                             start_modes=modes)
            times.append(time.perf_counter() - start)
        out.append(statistics.median(times))
    return out[0], out[1]


def scaling(quick: bool) -> list[dict]:
    grid = {"blocks": [(h, 5, 4, 3) for h in ((10, 20, 40) if quick else (25, 50, 100, 200))],
            "rows per block": [(50, 5, 4, v) for v in ((2, 4) if quick else (2, 4, 8, 16))],
            "block size": [(50, 5, p, 3) for p in ((2, 4) if quick else (2, 4, 8, 16))]}
    out = []
    for varied, shapes in grid.items():
        for shape in shapes:
            rows, layout = three_levels(*shape)
            full, value = time_site(rows, layout)
            q_block = int(np.diff(rows.u_starts).max())
            out.append({"varied": varied, "hospitals": shape[0], "rows": rows.n_rows,
                        "blocks": rows.n_blocks, "Q per block": q_block,
                        "seconds (derivatives)": full, "seconds (value)": value,
                        "us per row (derivatives)": 1e6 * full / rows.n_rows})
            print(out[-1], flush=True)
    return out


def factorisations(quick: bool) -> list[dict]:
    """Block-dense (batched LAPACK per block size) against a sparse LU (SuperLU) of the whole
    random-effects Hessian ``H`` at ``u = 0``: factor + log det + one solve (what the modes and
    the value-only rounds need), and ``H_b^{-1}`` in full per block (what the exact Hessian
    needs; by the sparse LU, solving for every column)."""
    from scipy.sparse.linalg import splu

    from core_stats.glmm_blocks import BlockLayout, BlockMatrices, SparseFactor
    from core_stats.glmm_multi_laplace import _Evaluator

    out = []
    shapes = [(50, 5, 4, 3), (50, 5, 16, 3), (5, 10, 40, 2)][: 2 if quick else 3]
    for shape in shapes:
        rows, layout = three_levels(*shape)
        theta = np.array([0.5, 0.3, np.log(0.6), np.log(0.4), np.log(0.5)])
        ev = _Evaluator(rows, POISSON, layout, theta, 0)
        H = ev.hessian(-ev.kernel(np.zeros(rows.n_u), 2)[2])
        rhs, blocks = np.ones(rows.n_u), BlockLayout(rows.u_starts)

        def dense(H=H, rhs=rhs, blocks=blocks) -> None:
            factor = BlockMatrices(blocks, H)
            factor.log_det_per_block()
            for block, (_, _, idx) in zip(factor.blocks, blocks.buckets, strict=True):
                np.linalg.solve(block, rhs[idx][..., None])

        def sparse_lu(H=H, rhs=rhs) -> None:
            factor = SparseFactor(H)
            factor.log_det()
            factor.solve(rhs)

        def columns(H=H) -> None:
            splu(H.tocsc()).solve(np.eye(H.shape[0]))

        out.append({"rows": rows.n_rows, "blocks": rows.n_blocks,
                    "Q per block": int(np.diff(rows.u_starts).max()),
                    "dense factor+solve": _median(dense), "sparse LU factor+solve":
                    _median(sparse_lu), "dense H_b^-1": _median(
                        lambda H=H, blocks=blocks: BlockMatrices(blocks, H).inverse()),
                    "sparse LU H^-1": _median(columns, 1)})
        print(out[-1], flush=True)
    return out


def _median(function, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def timed(cmd: list[str]) -> tuple[float, dict]:
    start = time.perf_counter()
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return time.perf_counter() - start, json.loads(done.stdout.strip().splitlines()[-1])


def whole_process(repeats: int) -> list[dict]:
    golden = ROOT / "tests" / "golden" / "glmm_multi"
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        r_file = Path(tmp) / "fit.R"
        r_file.write_text(R_SCRIPT)
        for name in ("grouseticks", "egsingle", "guImmun"):
            spec = golden / f"{name}.json"
            code = PY_FIT.format(root=str(ROOT), tests=str(ROOT / "tests" / "core_stats"),
                                 name=name)
            runs = {"securefed (in-process federation)": [sys.executable, "-c", code],
                    "lme4": ["Rscript", str(r_file), str(spec), "lme4"],
                    "glmmTMB": ["Rscript", str(r_file), str(spec), "tmb"]}
            for tool, cmd in runs.items():
                times, result = [], {}
                for _ in range(repeats):
                    seconds, result = timed(cmd)
                    times.append(seconds)
                out.append({"problem": name, "tool": tool, "seconds": statistics.median(times),
                            "loglik": result["loglik"], "rounds": result.get("rounds")})
                print(out[-1], flush=True)
    return out


def protected_processes(repeats: int) -> list[dict]:
    """``securefed fit`` as a user runs it (start-up, CSV, checks, fit, summary), each golden
    problem under ``none`` and ``secagg``; in process every site answers through the site
    runtime (its ClientApp handler, keys, policy, the keyed level check) when flwr is installed."""
    golden = ROOT / "tests" / "golden" / "glmm_multi"
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("grouseticks", "egsingle", "guImmun"):
            spec = json.loads((golden / f"{name}.json").read_text())
            for layer in ("none", "secagg"):
                result = Path(tmp) / f"{name}-{layer}.json"
                cmd = [sys.executable, "-m", "securefed.cli", "fit",
                       str(golden / spec["dataset_path"]), "--formula", spec["formula"],
                       "--family", spec["family"], "--site-column", spec["site_column"],
                       "--protect", layer, "--json", str(result), "--quiet"]
                times = []
                for _ in range(repeats):
                    start = time.perf_counter()
                    subprocess.run(cmd, check=True, capture_output=True, cwd=ROOT)
                    times.append(time.perf_counter() - start)
                fit = json.loads(result.read_text())
                timings = fit.get("timings", {})
                out.append({"problem": name, "protection": layer,
                            "sites": spec["n_sites"], "seconds": statistics.median(times),
                            "site statistics": timings.get("sites_statistics"),
                            "protection (sites+server)": timings.get("protection_total"),
                            "loglik": fit["loglik"], "rounds": fit["rounds"]})
                print(out[-1], flush=True)
    return out


def protected_section(repeats: int) -> list[str]:
    lines = ["## 4. Whole process under protection: `securefed fit --protect none|secagg`", "",
             f"Median of {repeats} runs of the CLI process; `site statistics` and `protection` "
             "are the fit's own timings (seconds inside the sites' Laplace work and inside "
             "secure aggregation, sites and server); rounds include the counts round and "
             "the sites' keyed level check (`securefed/level_sketch.py`). " + machine_line()
             + f"; load average at the start {os.getloadavg()[0]:.1f} (2 cores shared). "
             "Sections 3 and 4 ran at different times and loads: compare within a section.",
             ""]
    return lines + markdown_table(protected_processes(repeats),
                                  ["problem", "protection", "sites", "seconds",
                                   "site statistics", "protection (sites+server)", "loglik",
                                   "rounds"], digits=4)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out")
    parser.add_argument("--protected-only", action="store_true",
                        help="only section 4, appended to an existing multilevel.md")
    args = parser.parse_args()
    if args.protected_only:
        path = results_dir(False, args.out) / "multilevel.md"
        text = path.read_text().split("\n## 4.")[0].rstrip("\n")
        path.write_text(text + "\n\n" + "\n".join(protected_section(args.repeats)) + "\n")
        print(path)
        return
    out = results_dir(args.quick, args.out)
    lines = ["# Several random-effects terms: Laplace work per site, and fits vs lme4 / glmmTMB",
             "", f"`nice python3 benchmarks/multilevel_bench.py`; {machine_line()}; a shared, "
             "loaded machine: read ratios, not absolute times. OpenBLAS threads: "
             f"{os.environ.get('OPENBLAS_NUM_THREADS', 'default')} (on a loaded 2-core machine "
             "its default threading made 182 x 182 inverses 40x slower).", "",
             "## 1. One site's terms, `y ~ x + (1 | hospital/ward/patient)` (Poisson, P = 5)", "",
             "Exact gradient and Hessian (derivatives) or the value only, warm-started "
             "conditional modes, median of 3.", ""]
    lines += markdown_table(scaling(args.quick), ["varied", "hospitals", "rows", "blocks",
                                                  "Q per block", "seconds (derivatives)",
                                                  "seconds (value)", "us per row (derivatives)"],
                            digits=4)
    lines += ["", "## 2. Factorising H: block-dense or sparse LU (seconds)", ""]
    lines += markdown_table(factorisations(args.quick),
                            ["rows", "blocks", "Q per block", "dense factor+solve",
                             "sparse LU factor+solve", "dense H_b^-1", "sparse LU H^-1"],
                            digits=4)
    if not args.quick:
        lines += ["", "## 3. Whole process, the golden problems of tests/golden/glmm_multi", "",
                  f"Median of {args.repeats} runs of each process (start-up, reading the CSV, "
                  "fitting); securefed sums the golden's sites in one process (plaintext).", ""]
        lines += markdown_table(whole_process(args.repeats),
                                ["problem", "tool", "seconds", "loglik", "rounds"], digits=4)
        lines += ["", *protected_section(args.repeats)]
    (out / "multilevel.md").write_text("\n".join(lines) + "\n")
    print(out / "multilevel.md")


if __name__ == "__main__":
    main()
