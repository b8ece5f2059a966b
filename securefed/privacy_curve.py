"""Accuracy against privacy: the same model over a grid of ε, with repetitions.

For each ε (and ∞: the non-private fit) and each repetition, the model is
fitted under ``secagg,dp`` and compared with the non-private fit of the same
data: the error of every coefficient in units of its non-private standard
error, whether the private 95% interval covers the non-private estimate, and
the interval's width (in the same units). A GLMM fit refused as unidentified
(:class:`~securefed.dp_inference.NotIdentifiable`) is counted as refused, not
as a failure. For BFI the DP fit is the homogeneous model's posterior from
the summed statistics (:mod:`securefed.dp_bfi`), so coverage is reported
against both non-private references: BFI's combination of local fits and the
pooled posterior of the same model. Built-in data:

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
from securefed.dp_inference import NotIdentifiable
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
    pooled: Callable | None = None  # frame -> {term: estimate}: a second reference


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


BFI_FORMULA = "stress ~ age + gender + experien + wardtype"


def _bfi_fit(frame, protection):
    opts = BFIOptions(formula=BFI_FORMULA, family="gaussian", site_column="hospital")
    report = run_bfi(frame, opts, protection=protection)
    return [(e["term"], e["estimate"], e["sd"], e["ci_low"], e["ci_high"])
            for e in report.to_dict()["estimates"]]


def _bfi_pooled(frame) -> dict[str, float]:
    """The non-private posterior of the homogeneous model on the pooled rows."""
    from core_stats import bfi
    from core_stats.families import get_family
    from core_stats.formula import agree_schema, model_data, parse_formula, variable_report
    from securefed.bfi_run import _priors

    opts = BFIOptions(formula=BFI_FORMULA, family="gaussian", site_column="hospital")
    family = get_family("gaussian")
    schema = agree_schema(BFI_FORMULA, [variable_report(parse_formula(BFI_FORMULA), frame)])
    data = model_data(schema, frame)
    prior, _ = _priors(opts, family, data.fixed_names)
    fit = bfi.fit_pooled(data.X, data.y, family, prior, names=data.fixed_names)
    return dict(zip(fit.names, fit.estimate.tolist(), strict=True))


MODELS = {
    "glmm": CurveModel("glmm", _glmm_frame, _glmm_fit, "binomial", 4.0, None),
    "bfi": CurveModel("bfi", _nurses_frame, _bfi_fit, "gaussian", math.sqrt(5.0), 3.0,
                      _bfi_pooled),
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
        pooled = model.pooled(frame) if model.pooled is not None else {}
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
                                 "refused": isinstance(err, NotIdentifiable),
                                 "failed": str(err)[:200]})
                    continue
                for term, est, _se, lo, hi in fitted:
                    ref_est, ref_se = reference[term]
                    other = pooled.get(term, np.nan)
                    rows.append({"model": name, "epsilon": eps, "repeat": rep, "term": term,
                                 "error_in_se": (est - ref_est) / ref_se,
                                 "covered": float(lo <= ref_est <= hi),
                                 "covered_pooled": float(lo <= other <= hi)
                                 if np.isfinite(other) else np.nan,
                                 "width_in_se": (hi - lo) / ref_se, "refused": False,
                                 "failed": ""})
    return pd.DataFrame(rows)


def summarise(table: pd.DataFrame) -> pd.DataFrame:
    """Per model and ε: RMSE (in non-private SEs), coverage, failed fits."""
    out = []
    for (model, eps), part in table.groupby(["model", "epsilon"], sort=True):
        ok = part[part["failed"] == ""]
        failed = part[part["failed"] != ""]
        pooled = ok["covered_pooled"].dropna() if "covered_pooled" in ok else ok["covered"][:0]
        out.append({"model": model, "epsilon": eps,
                    "rmse_in_se": float(np.sqrt(np.mean(ok["error_in_se"] ** 2)))
                    if len(ok) else np.nan,
                    "coverage": float(ok["covered"].mean()) if len(ok) else np.nan,
                    "coverage_pooled": float(pooled.mean()) if len(pooled) else np.nan,
                    "median_width_in_se": float(ok["width_in_se"].median())
                    if len(ok) else np.nan,
                    "fits": int(part["repeat"].nunique()),
                    "refused_fits": int(failed["refused"].astype(bool).sum()),
                    "failed_fits": int((~failed["refused"].astype(bool)).sum())})
    return pd.DataFrame(out)


def plot_curve(summary: pd.DataFrame, path: Path) -> None:
    """Three panels against ε (∞ drawn at the right): RMSE (log scale), coverage of the
    95% interval (dashed: against the pooled posterior), and the interval's median width."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    finite = sorted(e for e in summary["epsilon"].unique() if math.isfinite(e))
    inf_x = (max(finite) * 2.5) if finite else 1.0
    for model, part in summary.groupby("model"):
        fin = part[np.isfinite(part["epsilon"])]
        line = axes[0].plot(fin["epsilon"], fin["rmse_in_se"], marker="o", label=model)[0]
        colour = line.get_color()
        axes[1].plot(fin["epsilon"], fin["coverage"], marker="o", label=model, color=colour)
        if fin["coverage_pooled"].notna().any():
            axes[1].plot(fin["epsilon"], fin["coverage_pooled"], marker="x", ls="--",
                         color=colour, label=f"{model} (vs pooled posterior)")
        axes[2].plot(fin["epsilon"], fin["median_width_in_se"], marker="o", label=model,
                     color=colour)
        at_inf = part[~np.isfinite(part["epsilon"])]
        if len(at_inf):  # the non-private fit: error 0 (off the log scale)
            axes[1].plot([inf_x], at_inf["coverage"], marker="s", color=colour)
            axes[2].plot([inf_x], at_inf["median_width_in_se"], marker="s", color=colour)
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xticks(finite + [inf_x])
        ax.set_xticklabels([f"{e:g}" for e in finite] + ["∞"])
        ax.set_xlabel("ε per site (δ = 1e-6)")
        ax.legend(fontsize=8)
    axes[0].set_yscale("log")
    axes[0].set_ylabel("RMSE vs non-private fit (in its SEs; 0 at ∞)")
    axes[1].axhline(0.95, color="grey", lw=0.8, ls="--")
    axes[1].axhline(0.93, color="grey", lw=0.8, ls=":")
    axes[1].set_ylim(0, 1.02)
    axes[1].set_ylabel("95% CI covers the non-private estimate")
    axes[2].set_yscale("log")
    axes[2].set_ylabel("median 95% CI width (in non-private SEs)")
    fig.suptitle("Accuracy against privacy (secagg,dp; built-in data; refused fits left out)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
