"""The cost of protection: the same GLMM and BFI fits under each protection layer.

    python benchmarks/protection_cost.py     # writes benchmarks/results/protection_cost.{csv,md}

Measured side by side in one run, in-process (every party on this machine):
wall time, mean bytes sent per site over the whole fit, rounds, and the largest
absolute difference of any estimate from the plaintext fit.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from securefed.bfi_run import BFIOptions, run_bfi  # noqa: E402
from securefed.glmm_run import GLMMOptions, run_glmm  # noqa: E402
from securefed.privacy import DPOptions  # noqa: E402
from securefed.privacy_curve import _nurses_frame  # noqa: E402
from securefed.protection import ProtectionOptions, build_protection  # noqa: E402
from securefed.synthetic import make_clustered  # noqa: E402

EPSILON = 4.0
STACKS = ["none", "secagg", "secagg+ (k=4)", "ckks", "secagg,ckks", "secagg,dp",
          "secagg,ckks,dp"]


def _stack(name: str, sites: list[str], family: str, clip: float, bound: float | None):
    if name.startswith("secagg+"):
        return build_protection(ProtectionOptions(protect="secagg", neighbours=4), sites)
    dp = DPOptions(epsilon=EPSILON, clip=clip, outcome_bound=bound) if "dp" in name else None
    return build_protection(ProtectionOptions(protect=name, dp=dp), sites, family)


def _glmm(name):
    """20 hospitals x 50 patients x 5 visits, random intercept per patient, GH5."""
    frame = make_clustered(20, 50, 5, seed=5)
    terms = " + ".join(f"x{j}" for j in range(2, 11))
    layer = _stack(name, [str(s) for s in range(1, 21)], "binomial", 4.0, None)
    fit = run_glmm(frame, GLMMOptions(f"y ~ {terms} + (1 | cluster)", "binomial", "hospital",
                                      nagq=5), protection=layer)
    return np.array([f.estimate for f in fit.fixed_effects]), fit.rounds, fit.bytes_sent_per_site


def _bfi(name):
    """Nurses (25 hospitals), covariates mapped to [-1, 1] with public ranges."""
    frame = _nurses_frame()
    opts = BFIOptions("stress ~ age + gender + experien + wardtype", "gaussian", "hospital",
                      lam=0.01)
    layer = _stack(name, [str(s) for s in sorted(frame.hospital.unique())], "gaussian",
                   5.0**0.5, 3.0)
    report = run_bfi(frame, opts, protection=layer)
    return np.array([r["estimate"] for r in report.estimates]), report.rounds, \
        report.bytes_sent_per_site


def main() -> None:
    rows = []
    for model, run in (("GLMM 20 sites x 250, GH5", _glmm), ("BFI Nurses, 25 sites", _bfi)):
        if model.startswith("GLMM"):
            model = "GLMM 20 sites x 50 patients x 5 visits, GH5"
        reference = None
        for name in STACKS:
            start = time.perf_counter()
            estimate, rounds, sent = run(name)
            seconds = time.perf_counter() - start
            if reference is None:
                reference = estimate
            rows.append({"model": model, "protection": name, "seconds": round(seconds, 3),
                         "rounds": rounds, "bytes_per_site": sent,
                         "max_abs_error": float(np.max(np.abs(estimate - reference)))})
            print(rows[-1], flush=True)
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    table = pd.DataFrame(rows)
    table.to_csv(out / "protection_cost.csv", index=False)
    lines = ["# The cost of protection (in-process, 2 cores, one run)", "",
             "`python benchmarks/protection_cost.py`. Error: largest |estimate - plaintext| "
             f"over the coefficients. DP rows: epsilon = {EPSILON:g} per site, delta = 1e-6 "
             "(GLMM: budget-aware fit, 3 Newton rounds, clip R = 4; BFI: clip R = sqrt 5, "
             "|stress| <= 3); their error is the DP noise and clipping, one draw.", "",
             "| model | protection | seconds | rounds | bytes per site | max abs error |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['protection']} | {r['seconds']} | {r['rounds']} | "
                     f"{r['bytes_per_site']} | {r['max_abs_error']:.1e} |")
    (out / "protection_cost.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
