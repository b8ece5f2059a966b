"""Poisoning benchmark: one malicious site among N = 5 or 12, secure aggregation on.

For each model and attack, the shift of the target coefficient in honest SEs,
whether a plausibility check refused the run (and which), convergence and
rounds. Models: GLMM ``y ~ x2 + x6 + (1 | hospital)`` (binomial, Laplace and
nAGQ = 5; Gaussian) on :func:`securefed.synthetic.make_hospitals`, target
``x6``; BFI on Nurses (Gaussian, ``stress ~ age + gender + experien +
wardtype``, hospitals regrouped into N sites) and trauma (binomial,
``mortality ~ age + ISS + GCS``, rows split into N sites), target ``age``.
The attacker is site ``1``. Attacks (the table of issue 22):

* ``tilt``: GLMM, adds ``delta beta_j`` to its log-likelihood (and ``delta
  e_j`` to its gradient) in every round, ``delta`` a multiple of its rows.
  The searched worst case: the largest ``delta`` in ``[n_l, 10 n_l]`` that
  passes (bisection).
* ``scale``: GLMM, multiplies its honest ``[l, g, H]`` by ``k``.
* ``b-shift``: BFI, adds ``delta e_j`` to ``A_l theta_l``; ``delta`` set to
  move the estimate by a given number of SEs, and the largest ``delta`` that
  passes ``linear-consistency`` (:func:`linear_room`, knowing the others' sums).
* ``pin``: BFI, adds ``kappa e_j e_j'`` to ``A_l`` and ``kappa t e_j`` to
  ``A_l theta_l`` with ``t`` 10 SEs above the honest estimate (``kappa`` 10
  and 1000 times the summed ``A_jj``).
* ``flip``: a consistent lie: the attacker's outcomes flipped (binomial
  ``1 - y``, Gaussian ``-y``), any model.

Run: ``nice python3 benchmarks/poisoning.py`` (writes
``benchmarks/results/poisoning.md`` and ``.csv``); ``--quick`` for N = 5 only;
``--robust`` for the same attacks against ``--robust`` runs
(:mod:`benchmarks.poisoning_robust`, ``results/poisoning_robust.md``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import securefed.bfi_run as bfi_run  # noqa: E402
import securefed.glmm_run as glmm_run  # noqa: E402
from benchmarks.bench_common import machine_line, markdown_table, results_dir  # noqa: E402
from core_stats.bfi_combine import HomogeneousLayout  # noqa: E402
from core_stats.bfi_layout import triu_length, triu_pack, triu_unpack  # noqa: E402
from protocols.errors import EncodingError  # noqa: E402
from protocols.stack import SecAggSum  # noqa: E402
from securefed.bfi_run import BFIOptions, run_bfi  # noqa: E402
from securefed.data import builtin_path  # noqa: E402
from securefed.glmm_run import GLMMOptions, run_glmm  # noqa: E402
from securefed.plausibility import ImplausibleAggregate  # noqa: E402
from securefed.plausibility_linear import linear_room  # noqa: E402
from securefed.site import Site  # noqa: E402
from securefed.synthetic import make_hospitals  # noqa: E402
from securefed.vectors import pack_terms, unpack_terms  # noqa: E402

ATTACKER = "1"
FORMULA = "y ~ x2 + x6 + (1 | hospital)"
NURSES = "stress ~ age + gender + experien + wardtype"
TRAUMA = "mortality ~ age + ISS + GCS"


def glmm_data(family: str, n_sites: int) -> pd.DataFrame:
    frame = make_hospitals(n_sites=n_sites, rows_per_site=120, seed=5)
    if family == "gaussian":
        rng = np.random.default_rng(11)
        frame["y"] = 0.5 * frame.x2 - 0.7 * frame.x6 + rng.normal(0, 1, n_sites)[
            frame.hospital - 1] + rng.normal(0, 1, len(frame))
    return frame


def bfi_data(name: str, n_sites: int) -> pd.DataFrame:
    if name == "nurses":
        frame = pd.read_csv(builtin_path("Nurses"))
        frame["hospital"] = (frame.hospital.astype(int) % n_sites) + 1
        return frame
    frame = pd.read_csv(builtin_path("trauma"))
    frame["hospital"] = np.random.default_rng(3).permutation(len(frame)) % n_sites + 1
    return frame


def flipped(frame: pd.DataFrame, outcome: str, family: str) -> pd.DataFrame:
    frame = frame.copy()
    mine = frame.hospital.astype(str) == ATTACKER
    frame.loc[mine, outcome] = 1 - frame.loc[mine, outcome] if family == "binomial" \
        else -frame.loc[mine, outcome]
    return frame


# ----------------------------------------------------------------------------- GLMM


def glmm_tamper(kind: str, size: float, j: int):
    def tamper(vector: np.ndarray, layout, theta: np.ndarray) -> np.ndarray:
        full = 1 + layout.size + layout.size * (layout.size + 1) // 2
        if vector.size == 1:
            value, grad, hess = float(vector[0]), None, None
        else:
            value, grad, hess = unpack_terms(vector[:full], layout.size)
        if kind == "tilt":
            value = value + size * theta[j]
            grad = None if grad is None else grad + size * np.eye(grad.size)[j]
        else:  # scale
            value, grad, hess = size * value, None if grad is None else size * grad, \
                None if hess is None else size * hess
        if grad is None:
            return np.array([value])
        return np.concatenate([pack_terms(value, grad, hess), vector[full:]])
    return tamper


def run_glmm_attacked(frame, opts, tamper) -> object:
    class Attacker(Site):
        def glmm_terms_vector(self, layout, theta, derivatives):
            honest = super().glmm_terms_vector(layout, theta, derivatives)
            return tamper(honest, layout, np.asarray(theta, dtype=float))

    honest_site = glmm_run.Site
    glmm_run.Site = lambda name, part: (Attacker if name == ATTACKER else Site)(name, part)
    try:
        return run_glmm(frame, opts, protection=SecAggSum())
    finally:
        glmm_run.Site = honest_site


def glmm_rows(family: str, nagq: int, n_sites: int, quick: bool) -> list[dict]:
    frame = glmm_data(family, n_sites)
    opts = GLMMOptions(FORMULA, family, "hospital", nagq=nagq)
    honest = run_glmm(frame, opts, protection=SecAggSum())
    j = honest.parameter_names.index("x6")
    se = float(np.sqrt(honest.covariance[j][j]))
    rows_l = int((frame.hospital.astype(str) == ATTACKER).sum())
    model = f"GLMM {family} " + ("Laplace" if nagq == 1 else f"nAGQ={nagq}")
    attacks = [("tilt", f"delta = {m} n_l", glmm_tamper("tilt", m * rows_l, j))
               for m in ((0.1, 1.0) if quick else (0.1, 1.0, 10.0))]
    attacks += [("scale", f"k = {k}", glmm_tamper("scale", k, 0)) for k in (5.0, 40.0)]
    def attacked(tamper):
        fit = run_glmm(flipped(frame, "y", family), opts, protection=SecAggSum()) \
            if tamper is None else run_glmm_attacked(frame, opts, tamper)
        return (fit.theta[j] - honest.theta[j]) / se, fit.converged, fit.rounds

    flip = ("flip", "1 - y" if family == "binomial" else "-y", None)
    rows = [measure(model, n_sites, attack, setting, lambda t=tamper: attacked(t))
            for attack, setting, tamper in [*attacks, flip]]
    if not quick:
        rows.append(searched_tilt(model, n_sites, rows_l, j, attacked))
    return rows


def searched_tilt(model: str, n_sites: int, rows_l: int, j: int, attacked) -> dict:
    """The largest tilt ``m n_l`` (``1 <= m <= 10``, bisection on ``log m``, 6 steps)
    that passes every check: the searched worst case."""
    low, high, best = 1.0, 10.0, None
    for _ in range(6):
        mid = float(np.sqrt(low * high))
        row = measure(model, n_sites, "tilt", f"searched: delta = {mid:.2f} n_l",
                      lambda m=mid: attacked(glmm_tamper("tilt", m * rows_l, j)))
        if row["verdict"].startswith("passed"):
            low, best = mid, row
        else:
            high = mid
    if best is None:
        best = measure(model, n_sites, "tilt", "searched: delta = 1.00 n_l",
                       lambda: attacked(glmm_tamper("tilt", rows_l, j)))
    return best


def measure(model: str, n_sites: int, attack: str, setting: str, run) -> dict:
    """One row: ``run()`` gives ``(shift in SE, converged, rounds)`` or raises a refusal."""
    started = time.perf_counter()
    try:
        shift, converged, rounds = run()
        verdict = "passed" if converged else "passed, not converged"
    except ImplausibleAggregate as refused:
        shift, verdict, rounds = float("nan"), f"refused: {refused.check}", None
    except EncodingError:  # the encoding cap, applied by the (here obliging) attacker
        shift, verdict, rounds = float("nan"), "refused: encoding bound (at the site)", None
    return {"model": model, "N": n_sites, "attack": attack, "setting": setting,
            "shift_se": shift, "verdict": verdict, "rounds": rounds,
            "seconds": time.perf_counter() - started}


# ------------------------------------------------------------------------------ BFI


def bfi_tamper(change):
    def tamper(vector: np.ndarray) -> np.ndarray:
        d = int(round((-2 + np.sqrt(4 + 4 * (vector.size - 2))) / 2))
        t = triu_length(d)
        A, b = triu_unpack(vector[:t], d), vector[t:t + d]
        A, b = change(A, b)
        return np.concatenate([triu_pack(A), b, vector[t + d:]])
    return tamper


def run_bfi_attacked(frame, opts, tamper) -> object:
    honest = bfi_run.Coordinator

    class Crafting(honest):
        def secure_sum(self, purpose, compute, key=None, dp=None):
            if purpose == "bfi-terms" and tamper is not None:
                inner = compute

                def compute(site):
                    vector = np.asarray(inner(site), dtype=float)
                    return tamper(vector) if site.name == ATTACKER else vector
            total = super().secure_sum(purpose, compute, key=key, dp=dp)
            if purpose == "bfi-terms":
                self.bfi_total = np.array(total)
                seen.append(self)
            return total

    seen: list = []
    bfi_run.Coordinator = Crafting
    try:
        return run_bfi(frame, opts, protection=SecAggSum()), seen[-1].bfi_total
    finally:
        bfi_run.Coordinator = honest


def bfi_rows(name: str, n_sites: int) -> list[dict]:
    frame = bfi_data(name, n_sites)
    family = "gaussian" if name == "nurses" else "binomial"
    outcome = "stress" if name == "nurses" else "mortality"
    opts = BFIOptions(NURSES if name == "nurses" else TRAUMA, family, "hospital", lam=0.01)
    honest, total = run_bfi_attacked(frame, opts, None)
    layout = HomogeneousLayout(honest.parameter_names, honest.fit.family)
    j = honest.parameter_names.index("age")
    se, est = float(honest.fit.sd[j]), float(honest.fit.estimate[j])
    per_se = se / float(honest.fit.covariance[j, j])  # delta on b_j per SE of theta_j
    lo, hi = linear_room(total, layout, layout.family, j)
    unit = np.eye(layout.dim)[j]
    attacks = [("b-shift", f"{s:g} SE", bfi_tamper(lambda A, b, s=s: (A, b + s * per_se * unit)))
               for s in (2.0, 10.0, 1e3, 1e10)]
    attacks.append(("b-shift", "largest passing", bfi_tamper(
        lambda A, b: (A, b + 0.999 * hi * unit))))
    a_jj = float(triu_unpack(total[:triu_length(layout.dim)], layout.dim)[j, j])
    for factor in (10.0, 1e3):
        attacks.append(("pin", f"t = +10 SE, kappa = {factor:g} A_jj", bfi_tamper(
            lambda A, b, k=factor * a_jj: (A + k * np.outer(unit, unit),
                                           b + k * (est + 10 * se) * unit))))
    def attacked(tamper):
        fit, _ = run_bfi_attacked(flipped(frame, outcome, family), opts, None) \
            if tamper is None else run_bfi_attacked(frame, opts, tamper)
        return (fit.fit.estimate[j] - est) / se, True, fit.rounds

    flip = ("flip", "1 - y" if family == "binomial" else "-y", None)
    return [measure(f"BFI {name} ({family})", n_sites, attack, setting,
                    lambda t=tamper: attacked(t)) for attack, setting, tamper in [*attacks, flip]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="N = 5 only, fewer attacks")
    parser.add_argument("--out", default=None)
    parser.add_argument("--robust", action="store_true",
                        help="the attacks against --robust runs (benchmarks/poisoning_robust.py)")
    parser.add_argument("--robust-bound", type=float, default=2.0)
    args = parser.parse_args(argv)
    if args.robust:
        from benchmarks.poisoning_robust import main as robust_main

        return robust_main(args.quick, args.out, args.robust_bound)
    started = time.perf_counter()
    rows: list[dict] = []
    for n_sites in (5,) if args.quick else (5, 12):
        rows += bfi_rows("nurses", n_sites) + bfi_rows("trauma", n_sites)
        rows += glmm_rows("binomial", 1, n_sites, args.quick)
        rows += glmm_rows("gaussian", 1, n_sites, args.quick)
        if n_sites == 5:
            rows += glmm_rows("binomial", 5, n_sites, True)
        print(f"N = {n_sites} done after {time.perf_counter() - started:.0f} s", flush=True)
    out = results_dir(args.quick, args.out)
    pd.DataFrame(rows).to_csv(out / "poisoning.csv", index=False)
    columns = ["model", "N", "attack", "setting", "shift_se", "verdict", "rounds"]
    lines = ["# Poisoning benchmark: one malicious site, secure aggregation on", "",
             "Shift of the target coefficient (GLMM `x6`, BFI `age`) in honest SEs; "
             "`refused: <check>` means the run was refused (no estimate). Made by "
             "`nice python3 benchmarks/poisoning.py`.", "",
             *markdown_table(rows, columns, digits=2,
                             headers=["model", "N", "attack", "setting", "shift (SE)",
                                      "verdict", "rounds"]),
             "", f"Total {time.perf_counter() - started:.0f} s. {machine_line()}"]
    (out / "poisoning.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
