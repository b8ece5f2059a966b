"""Accuracy against privacy: the same model over a grid of ε, with repetitions.

For each ε (and ∞: the non-private fit) and each repetition, the model is
fitted under ``secagg,dp`` and compared with the non-private fit of the same
data: the error of every coefficient in units of its non-private standard
error, and whether the private 95% interval covers the non-private
estimate. Built-in data:

* ``glmm``: :func:`securefed.synthetic.make_clustered` — 12 hospitals, 50
  patients each with 5 visits, random intercept per patient, binary outcome
  (the paper-000 covariates); clip R = 4 (no row is longer), 3 Newton rounds.
* ``bfi``: the Nurses data (25 hospitals), stress on age, gender, experience
  and ward type, mapped to [-1, 1] with public ranges (age 18–70, experience
  0–50 years, stress scored 1–7) before the run; clip R = √5, bound B = 3.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from securefed.bfi_run import BFIOptions, run_bfi
from securefed.data import builtin_path
from securefed.glmm_run import GLMMOptions, run_glmm
from securefed.privacy import DPOptions
from securefed.protection import ProtectionOptions, build_protection
from securefed.synthetic import make_clustered

__all__ = ["EPSILONS", "CurveModel", "MODELS", "privacy_curve", "plot_curve"]

EPSILONS = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, math.inf)
DELTA = 1e-6


@dataclass(frozen=True)
class CurveModel:
    """A built-in model: its data, a fit function, and its DP bounds."""

    name: str
    frame: Callable[[], pd.DataFrame]
    fit: Callable  # (frame, protection or None) -> list of (term, estimate, se, lo, hi)
    family: str
    clip: float
    outcome_bound: float | None


def _glmm_frame() -> pd.DataFrame:
    return make_clustered(12, 50, 5, seed=7)


def _glmm_fit(frame, protection):
    terms = " + ".join(f"x{j}" for j in range(2, 11))
    opts = GLMMOptions(formula=f"y ~ {terms} + (1 | cluster)", family="binomial",
                       site_column="hospital")
    fit = run_glmm(frame, opts, protection=protection)
    return [(f.term, f.estimate, f.std_error, f.ci_low, f.ci_high) for f in fit.fixed_effects]


def _nurses_frame() -> pd.DataFrame:
    raw = pd.read_csv(builtin_path("Nurses"))
    frame = raw[["hospital", "gender", "wardtype"]].copy()
    frame["age"] = (raw["age"] - 44.0) / 26.0  # public range 18-70 years -> [-1, 1]
    frame["experien"] = (raw["experien"] - 25.0) / 25.0  # 0-50 years -> [-1, 1]
    frame["stress"] = raw["stress"] - 4.0  # scored 1-7 -> [-3, 3]
    return frame


def _bfi_fit(frame, protection):
    opts = BFIOptions(formula="stress ~ age + gender + experien + wardtype", family="gaussian",
                      site_column="hospital")
    report = run_bfi(frame, opts, protection=protection)
    return [(e["term"], e["estimate"], e["sd"], e["ci_low"], e["ci_high"])
            for e in report.to_dict()["estimates"]]


MODELS = {
    "glmm": CurveModel("glmm", _glmm_frame, _glmm_fit, "binomial", 4.0, None),
    "bfi": CurveModel("bfi", _nurses_frame, _bfi_fit, "gaussian", math.sqrt(5.0), 3.0),
}


def privacy_curve(models: Sequence[str], epsilons: Sequence[float], repeats: int,
                  on_point: Callable[[str, float, int], None] | None = None) -> pd.DataFrame:
    """One row per model, ε, repetition and coefficient."""
    rows = []
    for name in models:
        model = MODELS[name]
        frame = model.frame()
        sites = sorted({str(v) for v in frame["hospital"]})
        reference = {t: (e, s) for t, e, s, _, _ in model.fit(frame, None)}
        for eps in epsilons:
            for rep in range(1 if math.isinf(eps) else repeats):
                if on_point is not None:
                    on_point(name, eps, rep)
                protection = None
                if not math.isinf(eps):
                    dp = DPOptions(epsilon=eps, delta=DELTA, clip=model.clip,
                                   outcome_bound=model.outcome_bound)
                    protection = build_protection(ProtectionOptions(protect="secagg,dp", dp=dp),
                                                  sites, model.family)
                try:
                    fitted = model.fit(frame, protection)
                except Exception as err:  # a failed private fit is a result, not a crash
                    rows.append({"model": name, "epsilon": eps, "repeat": rep, "term": None,
                                 "error_in_se": np.nan, "covered": np.nan,
                                 "failed": str(err)[:200]})
                    continue
                for term, est, _se, lo, hi in fitted:
                    ref_est, ref_se = reference[term]
                    rows.append({"model": name, "epsilon": eps, "repeat": rep, "term": term,
                                 "error_in_se": (est - ref_est) / ref_se,
                                 "covered": float(lo <= ref_est <= hi), "failed": ""})
    return pd.DataFrame(rows)


def summarise(table: pd.DataFrame) -> pd.DataFrame:
    """Per model and ε: RMSE (in non-private SEs), coverage, failed fits."""
    out = []
    for (model, eps), part in table.groupby(["model", "epsilon"], sort=True):
        ok = part[part["failed"] == ""]
        out.append({"model": model, "epsilon": eps,
                    "rmse_in_se": float(np.sqrt(np.mean(ok["error_in_se"] ** 2)))
                    if len(ok) else np.nan,
                    "coverage": float(ok["covered"].mean()) if len(ok) else np.nan,
                    "fits": int(part["repeat"].nunique()),
                    "failed_fits": int((part["failed"] != "").sum())})
    return pd.DataFrame(out)


def plot_curve(summary: pd.DataFrame, path: Path) -> None:
    """Two panels: RMSE (log scale) and coverage against ε (∞ drawn at the right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    finite = sorted(e for e in summary["epsilon"].unique() if math.isfinite(e))
    inf_x = (max(finite) * 2.5) if finite else 1.0
    for model, part in summary.groupby("model"):
        finite_part = part[np.isfinite(part["epsilon"])]
        line = axes[0].plot(finite_part["epsilon"], finite_part["rmse_in_se"], marker="o",
                            label=model)[0]
        axes[1].plot(finite_part["epsilon"], finite_part["coverage"], marker="o", label=model,
                     color=line.get_color())
        at_inf = part[~np.isfinite(part["epsilon"])]
        if len(at_inf):  # the non-private fit: error 0 (off the log scale), coverage 1
            axes[1].plot([inf_x], at_inf["coverage"], marker="s", color=line.get_color())
    for ax in axes:
        ax.set_xscale("log", base=2)
        ticks = finite + [inf_x]
        ax.set_xticks(ticks)
        ax.set_xticklabels([f"{e:g}" for e in finite] + ["∞"])
        ax.set_xlabel("ε per site (δ = 1e-6)")
        ax.legend()
    axes[0].set_yscale("log")
    axes[0].set_ylabel("RMSE vs non-private fit (in its SEs; 0 at ∞)")
    axes[1].axhline(0.95, color="grey", lw=0.8, ls="--")
    axes[1].set_ylim(0, 1.02)
    axes[1].set_ylabel("95% CI covers the non-private estimate")
    fig.suptitle("Accuracy against privacy (secagg,dp; built-in data)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
