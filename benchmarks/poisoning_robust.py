"""Poisoning benchmark under ``--robust``: one malicious site among N = 5 or 12.

The attacks of :mod:`benchmarks.poisoning`, against runs with bounded influence
(:mod:`securefed.robust`): the attacker is *consistent* (it sends the validator
the same crafted vector it puts into the secure sum), except in the
``inconsistent`` rows. Searched worst cases: the largest attack of each kind
that passes (bisection on its size, both signs). Each row reports the shift of
the target coefficient from the honest estimate in honest SEs (the SE of the
honest run with all N sites) and the verdict, with the site named when the
validator named it. ``own influence``: the attacker's honest leave-one-out
shift of the target, ``(theta - theta_(-1)) / sd_(-1)``; an attacker can move
the estimate to ``bound`` SEs of ``theta_(-1)`` on either side, so from the
honest estimate by up to about ``bound sd_(-1)/sd + |own influence|``.

Run: ``nice python3 benchmarks/poisoning.py --robust`` (writes
``benchmarks/results/poisoning_robust.md`` and ``.csv``).
"""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import pandas as pd

import securefed.bfi_run as bfi_run
from benchmarks.bench_common import machine_line, markdown_table, results_dir
from benchmarks.poisoning import (
    ATTACKER,
    FORMULA,
    NURSES,
    TRAUMA,
    bfi_data,
    bfi_tamper,
    flipped,
    glmm_data,
    glmm_tamper,
    run_bfi_attacked,
    run_glmm_attacked,
)
from core_stats.bfi_layout import triu_length, triu_unpack
from protocols.stack import SecAggSum
from securefed.bfi_run import BFIOptions, run_bfi
from securefed.glmm_run import GLMMOptions, run_glmm
from securefed.plausibility import ImplausibleAggregate
from securefed.robust.validator import InfluenceRefused, Validator

__all__ = ["main"]


def measure(model: str, n_sites: int, attack: str, setting: str, run) -> dict:
    """One row: ``run()`` gives the shift in honest SEs, or raises a refusal."""
    started = time.perf_counter()
    try:
        shift, verdict = float(run()), "passed"
    except InfluenceRefused as refused:
        shift = float("nan")
        verdict = f"refused: {refused.check}" + (f" (site {refused.site} named)"
                                                  if refused.site else "")
    except ImplausibleAggregate as refused:
        shift, verdict = float("nan"), f"refused: {refused.check}"
    return {"model": model, "N": n_sites, "attack": attack, "setting": setting,
            "shift_se": shift, "verdict": verdict, "seconds": time.perf_counter() - started}


def searched(model: str, n_sites: int, attack: str, run_at, high: float, unit: str,
             steps: int = 12) -> list[dict]:
    """The largest size in ``[0, high]`` (each sign) whose attack passes; its row."""
    rows = []
    for sign in (1.0, -1.0):
        low, top, best = 0.0, high, None
        for _ in range(steps):
            mid = 0.5 * (low + top)
            row = measure(model, n_sites, attack, f"searched: {sign * mid:+.3g} {unit}",
                          lambda m=sign * mid: run_at(m))
            if row["verdict"] == "passed":
                low, best = mid, row
            else:
                top = mid
        if best is not None:
            rows.append(best)
    return rows


# ------------------------------------------------------------------------------ BFI


def run_bfi_consistent(frame, opts, tamper):
    """The attacker sends the crafted vector to the secure sum and to the validator."""
    honest = bfi_run.validator_for

    class Fooled(Validator):
        def tee(self, purpose, compute):
            return super().tee(purpose, lambda s: tamper(np.asarray(compute(s), dtype=float))
                               if s.name == ATTACKER else compute(s))

    bfi_run.validator_for = lambda robust, bound: Fooled(bound) if robust else None
    try:
        return run_bfi(frame, opts, protection=SecAggSum())
    finally:
        bfi_run.validator_for = honest


def bfi_rows(name: str, n_sites: int, bound: float) -> list[dict]:
    frame = bfi_data(name, n_sites)
    family = "gaussian" if name == "nurses" else "binomial"
    outcome = "stress" if name == "nurses" else "mortality"
    opts = BFIOptions(NURSES if name == "nurses" else TRAUMA, family, "hospital", lam=0.01,
                      robust=True, robust_bound=bound)
    honest, total = run_bfi_attacked(frame, replace(opts, robust=False), None)
    j = honest.parameter_names.index("age")
    se, est = float(honest.fit.sd[j]), float(honest.fit.estimate[j])
    per_se = se / float(honest.fit.covariance[j, j])
    dim = len(honest.parameter_names)
    unit = np.eye(dim)[j]
    a_jj = float(triu_unpack(total[:triu_length(dim)], dim)[j, j])
    model = f"BFI {name} ({family})"
    without = run_bfi(frame[frame.hospital.astype(str) != ATTACKER], replace(opts, robust=False))
    own = (est - float(without.fit.estimate[j])) / float(without.fit.sd[j])

    def shift_of(tamper) -> float:
        fit = run_bfi_consistent(frame, opts, tamper)
        return (fit.fit.estimate[j] - est) / se

    def b_shift(s):
        return bfi_tamper(lambda A, b: (A, b + s * per_se * unit))

    def pin(t, k=1e3 * a_jj):
        return bfi_tamper(lambda A, b: (A + k * np.outer(unit, unit),
                                        b + k * (est + t * se) * unit))

    rows = [measure(model, n_sites, "honest", f"own influence {own:+.2f}",
                    lambda: shift_of(lambda v: v))]
    rows += [measure(model, n_sites, "b-shift", f"{s:g} SE", lambda s=s: shift_of(b_shift(s)))
             for s in (2.0, 10.0, 1e3)]
    rows += searched(model, n_sites, "b-shift", lambda s: shift_of(b_shift(s)), 20.0, "SE")
    rows += [measure(model, n_sites, "pin", f"t = +10 SE, kappa = {f:g} A_jj",
                     lambda f=f: shift_of(pin(10.0, f * a_jj))) for f in (10.0, 1e3)]
    rows += searched(model, n_sites, "pin", lambda t: shift_of(pin(t)), 20.0, "SE target")
    rows.append(measure(model, n_sites, "flip", "1 - y" if family == "binomial" else "-y",
                        lambda: (run_bfi(flipped(frame, outcome, family), opts,
                                         protection=SecAggSum()).fit.estimate[j] - est) / se))
    rows.append(measure(model, n_sites, "inconsistent", "b-shift 10 SE in the sum only",
                        lambda: (run_bfi_attacked(frame, opts, b_shift(10.0))[0]
                                 .fit.estimate[j] - est) / se))
    return rows


# ----------------------------------------------------------------------------- GLMM


def glmm_rows(family: str, nagq: int, n_sites: int, bound: float) -> list[dict]:
    frame = glmm_data(family, n_sites)
    opts = GLMMOptions(FORMULA, family, "hospital", nagq=nagq, robust=True, robust_bound=bound)
    honest = run_glmm(frame, replace(opts, robust=False), protection=SecAggSum())
    j = honest.parameter_names.index("x6")
    se = float(np.sqrt(honest.covariance[j][j]))
    rows_l = int((frame.hospital.astype(str) == ATTACKER).sum())
    model = f"GLMM {family} " + ("Laplace" if nagq == 1 else f"nAGQ={nagq}")
    without = run_glmm(frame[frame.hospital.astype(str) != ATTACKER], replace(opts, robust=False))
    own = (honest.theta[j] - without.theta[j]) / float(np.sqrt(without.covariance[j][j]))

    def shift_of(tamper) -> float:
        fit = run_glmm(flipped(frame, "y", family), opts, protection=SecAggSum()) \
            if tamper is None else run_glmm_attacked(frame, opts, tamper)
        return (fit.theta[j] - honest.theta[j]) / se

    rows = [measure(model, n_sites, "honest", f"own influence {own:+.2f}",
                    lambda: shift_of(glmm_tamper("tilt", 0.0, j)))]
    rows += [measure(model, n_sites, "tilt", f"delta = {m} n_l",
                     lambda m=m: shift_of(glmm_tamper("tilt", m * rows_l, j)))
             for m in (0.1, 1.0, 10.0)]
    rows += searched(model, n_sites, "tilt", lambda m: shift_of(glmm_tamper("tilt", m * rows_l, j)),
                     1.0, "n_l", steps=9)
    rows += [measure(model, n_sites, "scale", f"k = {k}",
                     lambda k=k: shift_of(glmm_tamper("scale", k, 0))) for k in (5.0, 40.0)]
    rows.append(measure(model, n_sites, "flip", "1 - y" if family == "binomial" else "-y",
                        lambda: shift_of(None)))
    return rows


def main(quick: bool = False, out: str | None = None, bound: float = 2.0) -> int:
    started = time.perf_counter()
    rows: list[dict] = []
    for n_sites in (5,) if quick else (5, 12):
        rows += bfi_rows("nurses", n_sites, bound) + bfi_rows("trauma", n_sites, bound)
        rows += glmm_rows("binomial", 1, n_sites, bound) + glmm_rows("gaussian", 1, n_sites, bound)
        if n_sites == 5 and not quick:
            rows += glmm_rows("binomial", 5, n_sites, bound)
        print(f"N = {n_sites} done after {time.perf_counter() - started:.0f} s", flush=True)
    where = results_dir(quick, out)
    pd.DataFrame(rows).to_csv(where / "poisoning_robust.csv", index=False)
    columns = ["model", "N", "attack", "setting", "shift_se", "verdict"]
    lines = ["# Poisoning benchmark under --robust (bounded influence), secure aggregation on",
             "", f"Bound {bound:g} honest SEs. Shift of the target coefficient (GLMM `x6`, BFI "
             "`age`) from the honest estimate, in honest SEs. Made by `nice python3 "
             "benchmarks/poisoning.py --robust`.", "",
             *markdown_table(rows, columns, digits=2,
                             headers=["model", "N", "attack", "setting", "shift (SE)",
                                      "verdict"]),
             "", f"Total {time.perf_counter() - started:.0f} s. {machine_line()}"]
    (where / "poisoning_robust.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))
    return 0
