"""The site runtime's cost in-process: a Contraception-sized GLMM, loopback vs direct.

``securefed fit`` runs every simulated site through the site runtime's handler
(:mod:`securefed.transport.loopback`; no Flower needed);
``run_glmm(..., site_runtime=False)`` applies each round's closure to the sites
directly. Both give the same fit;
this script times both on 1,934 rows in 60 sites (one district each), binomial,
4 covariates + (1 | district), under ``none`` and ``secagg``, best of
``--repeat`` interleaved runs each (after one warm-up run that pays the
one-time imports), and prints the overhead in wall time and in CPU time (the
process's own work: on a shared, loaded machine the fairer figure).

    python3 benchmarks/runtime_overhead.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from protocols.stack import PlaintextSum, SecAggSum  # noqa: E402
from securefed.glmm_run import GLMMOptions, run_glmm  # noqa: E402

FORMULA = "use ~ age + age2 + urban + livch + (1 | district)"


def contraception_like(seed: int = 1) -> pd.DataFrame:
    """1,934 women in 60 districts (sizes as uneven as Contraception's), binomial ``use``."""
    rng = np.random.default_rng(seed)
    sizes = rng.multinomial(1934 - 60 * 2, rng.dirichlet(np.full(60, 1.5))) + 2
    district = np.repeat(np.arange(60), sizes)
    n = len(district)
    age = rng.normal(0.0, 9.0, n)
    urban = (rng.random(n) < 0.3).astype(float)
    livch = rng.integers(0, 4, n).astype(float)
    b = rng.normal(0.0, 0.5, 60)[district]
    eta = -0.7 + 0.005 * age - 0.004 * age**2 / 10 + 0.7 * urban + 0.3 * livch + b
    use = (rng.random(n) < 1 / (1 + np.exp(-eta))).astype(float)
    return pd.DataFrame({"use": use, "age": age, "age2": age**2 / 10, "urban": urban,
                         "livch": livch, "district": district, "site": district})


def timed(frame, opts, protection, runtime: bool) -> tuple[float, float, object]:
    """Wall and CPU seconds of one fit (CPU time: the work, whatever else the machine runs)."""
    started, cpu = time.perf_counter(), time.process_time()
    fit = run_glmm(frame, opts, protection=protection(), site_runtime=runtime)
    return time.perf_counter() - started, time.process_time() - cpu, fit


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    frame = contraception_like()
    opts = GLMMOptions(FORMULA, "binomial", "site")
    timed(frame, opts, PlaintextSum, True)  # one-time imports, outside the timings
    for name, protection in (("none", PlaintextSum), ("secagg", SecAggSum)):
        times: dict[bool, list[float]] = {False: [], True: []}
        cpus: dict[bool, list[float]] = {False: [], True: []}
        fits = {}
        for _ in range(args.repeat):  # interleaved: the machine's load hits both alike
            for runtime in (False, True):
                seconds, cpu, fits[runtime] = timed(frame, opts, protection, runtime)
                times[runtime].append(seconds)
                cpus[runtime].append(cpu)
        direct, loop = min(times[False]), min(times[True])
        cpu_direct, cpu_loop = min(cpus[False]), min(cpus[True])
        diff = float(np.max(np.abs(np.subtract(fits[False].theta, fits[True].theta))))
        print(f"{name}: wall direct {direct:.3f} s, site runtime {loop:.3f} s, overhead "
              f"{100 * (loop / direct - 1):+.1f}%; CPU direct {cpu_direct:.3f} s, site runtime "
              f"{cpu_loop:.3f} s, overhead {100 * (cpu_loop / cpu_direct - 1):+.1f}% (best of "
              f"{args.repeat}); rounds {fits[False].rounds}/{fits[True].rounds}, "
              f"max |theta diff| {diff:.1e}")

if __name__ == "__main__":
    main()
