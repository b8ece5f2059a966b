"""Report sections for survival results: a Cox fit's hazard ratios, a parametric fit's curves.

A stratified Cox fit releases no baseline hazard (each site's would disclose
its event times), so its section shows hazard ratios, concordance and the
global tests only. A BFI survival fit is fully parametric: the curves
``S(t | x)`` it implies for the chosen covariate profiles are drawn from the
combined estimate and covariance alone (:mod:`core_stats.survival_curves`),
on a time axis the fit itself gives (no data value enters the page).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from securefed.errors import InputError

__all__ = ["cox_section", "curves_section", "parse_profile"]


def parse_profile(text: str, terms: tuple[str, ...]) -> dict[str, float]:
    """``"sex=1,age=60"`` to ``{"sex": 1.0, "age": 60.0}`` over the fit's covariate terms."""
    out: dict[str, float] = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        name, sep, value = part.rpartition("=")
        if not sep or name.strip() not in terms:
            raise InputError(f"--profile {part!r}: write TERM=VALUE with a term of the fit "
                             f"({', '.join(terms)})")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            raise InputError(f"--profile {part!r}: the value must be a number") from None
    return out


def cox_section(result: dict) -> str:
    from securefed.report import _table

    out = "<h2>Hazard ratios</h2>" + _table(
        ["term", "exp(coef)", "lower .95", "upper .95"],
        [[r.get("term"), _f(r.get("hazard_ratio")), _f(r.get("ci_low")), _f(r.get("ci_high"))]
         for r in result.get("hazard_ratios") or []], "hazard-ratios")
    tests = result.get("tests") or {}
    conc = result.get("concordance") or {}
    rows = [[name.replace("_", " "), _f(t.get("statistic")), t.get("df"), _f(t.get("p_value"))]
            for name, t in tests.items()]
    out += "<h2>Global tests</h2>" + _table(["test", "statistic", "df", "p"], rows, "tests")
    out += _table(["partial logLik", "null logLik", "concordance", "se", "events", "ties"],
                  [[_f(result.get("loglik")), _f(result.get("loglik_null")),
                    _f(conc.get("concordance")), _f(conc.get("std_error")),
                    result.get("n_events"), result.get("ties")]], "cox-fit")
    out += ('<p class="muted">No survival curves: each site keeps its own baseline hazard '
            "(strata), and releasing it would disclose the site's event times.</p>")
    return out


def _f(value) -> float:
    return math.nan if value is None else float(value)


def curves_section(result: dict, profiles: list[str], stem: str, folder: Path,
                   figures: list[Path]) -> str:
    """Curves for each profile (default: every covariate 0) with 95% pointwise bands."""
    from core_stats.survival_curves import survival_curve, time_grid
    from securefed.report import _img, _plt, _table

    if result.get("stratify"):
        if profiles:
            raise InputError("--profile: curves are drawn for homogeneous fits only (with "
                             "centre-specific baseline parameters each centre has its own)")
        return ('<p class="muted">No survival curves: the baseline parameters are '
                "centre-specific.</p>")
    if str(result.get("baseline")) == "unspecified":
        if profiles:
            raise InputError("--profile: the unspecified baseline implies no survival curve "
                             "(its baseline hazard is not estimated)")
        return ('<p class="muted">No survival curves: the unspecified baseline hazard is '
                "not estimated.</p>")
    rows = result["estimates"]
    names = tuple(str(r["term"]) for r in rows)
    terms = tuple(n for n in names if not n.startswith("omega_"))
    theta = np.array([float(r["estimate"]) for r in rows])
    cov = np.array(result["covariance"], dtype=float)
    baseline = _baseline_of(result)
    chosen = profiles or [""]
    vectors = []
    for text in chosen:
        given = parse_profile(text, terms)
        vectors.append((text or "all covariates 0",
                        np.array([given.get(t, 0.0) for t in terms])))
    times = time_grid(theta, baseline, vectors[0][1])
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    table = []
    marks = np.linspace(0, len(times) - 1, 5).astype(int)
    for label, x in vectors:
        curve = survival_curve(theta, cov, baseline, x, times)
        line, = ax.plot(times, curve.survival, label=label)
        ax.fill_between(times, curve.lower, curve.upper, color=line.get_color(), alpha=0.2)
        table += [[label, times[i], curve.survival[i], curve.lower[i], curve.upper[i]]
                  for i in marks]
    ax.set_xlabel("time (the data's unit)")
    ax.set_ylabel("S(t | x)")
    ax.set_ylim(0, 1)
    ax.set_title(f"Survival the model implies ({baseline.kind} baseline, 95% pointwise "
                 "bands)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = folder / f"{stem}_survival.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    figures.append(path)
    return ("<h2>Survival curves</h2>" + _img(path, "survival curves for the chosen profiles")
            + _table(["profile", "time", "S(t | x)", "lower", "upper"], table, "survival")
            + f'<p class="muted">Baseline {result.get("baseline_hazard", "")}; parameters '
            + ", ".join(f"{k} = {v}" for k, v in (result.get("baseline_parameters") or {}).items())
            + ". Drawn from the combined estimate and covariance alone.</p>")


def _baseline_of(result: dict):
    """The fitted baseline as the result's JSON states it (its order or knots)."""
    from core_stats.survival_baselines import Baseline

    try:
        return Baseline(str(result["baseline"]), order=int(result.get("baseline_order", 0)),
                        knots=tuple(float(c) for c in result.get("baseline_knots", ())))
    except (ValueError, TypeError) as err:
        raise InputError(f"the result's baseline: {err}") from None
