"""Paper 000's simulation study: Laplace vs adaptive Gauss-Hermite vs the pooled fit.

    nice -n 10 python benchmarks/paper000_simulation.py            # full: 8 settings x 20
    python benchmarks/paper000_simulation.py --quick                # smoke run, 2 data sets
    python benchmarks/paper000_simulation.py --resummarise          # tables from the fits CSV

Design (stated exactly). Settings numbered as in the paper's text (Settings 1-2:
2 sites x 500; 3-4: 10 x 500; 5-6: 2 x 30; 7-8: 10 x 30; odd = random-intercept
variance 1, even = 4, the authors' code's values). Data set r of setting s uses
seed 1000 s + r (``securefed.synthetic.make_hospitals``): per patient 4 binary
covariates x2..x5 ~ Bernoulli(0.5) and 5 continuous x6..x10 ~ Uniform(-1, 1.5),
logit P(y = 1) = -1.5 + x'beta + b_site with beta = (0.1, -0.5, -0.3, 0.4,
-0.2, -0.25, 0.35, -0.1, 0.5) (the authors' coefficients for X1..X10, X1 the
intercept), b_site ~ N(0, variance). Unpenalised ML (lambda = 0), all rows used
(the paper's 7:3 split serves only its lambda selection, not made here).

Methods: federated GLMM ``y ~ x2 + ... + x10 + (1 | hospital)`` with K = 1
(LA), 2, 5, 10 nodes (securefed, exact derivatives, tol 1e-8); the pooled fit
lme4::glmer (Laplace, the paper's "centralized GLMM") on all rows at one place,
if R with lme4 is installed; and the GLM ignoring sites.

Failures are counted, never dropped silently: a data set is *separated* when
some beta != 0 has (2y - 1) x'beta >= 0 for every row (LP of Konis 2007; then
no ML estimate exists for any method); a fit is an error, not converged,
singular (sigma = 0, a valid boundary ML fit) or converged. Metrics use the
converged and singular fits on data with an ML estimate; the counts are in the tables.

Writes to benchmarks/results/: paper000_fits.csv.gz (one row per fit and
coefficient, with status and regime), paper000_summary.csv/.md (counts and
metrics per setting and method, the paired comparison with GH10 and the
answer), paper000_paired.csv, paper000_summary.png, paper000_run.json (run
time, machine, code version) and the README snippet paper000_readme.md.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import bench_common as bench
import numpy as np
import pandas as pd

from securefed.synthetic import TRUE_COEFFICIENTS, make_hospitals

SETTINGS = [(s, n, v) for n in (500, 30) for s in (2, 10) for v in (1.0, 4.0)]
FEDERATED = [("LA", 1), ("GH2", 2), ("GH5", 5), ("GH10", 10)]
ORDER = ["LA", "GH2", "GH5", "GH10", "pooled lme4", "GLM"]
TERMS = " + ".join(f"x{j}" for j in range(2, 11))
FORMULA = f"y ~ {TERMS} + (1 | hospital)"
USABLE = ("converged", "singular")


def dataset(setting: int, replicate: int) -> pd.DataFrame:
    """Data set ``replicate`` of ``setting`` (1-based, the paper's numbering)."""
    sites, per_site, var = SETTINGS[setting - 1]
    return make_hospitals(sites, per_site, sd=float(np.sqrt(var)), seed=1000 * setting + replicate)


def _design(frame: pd.DataFrame, by_site: bool = False) -> np.ndarray:
    slopes = [frame[f"x{j}"] for j in range(2, 11)]
    if by_site:
        return np.column_stack([(frame.hospital == h).astype(float)
                                for h in sorted(frame.hospital.unique())] + slopes)
    return np.column_stack([np.ones(len(frame))] + slopes)


def separated(X: np.ndarray, y: np.ndarray) -> bool:
    """(Quasi-)complete separation: max sum (2y-1)x'b s.t. (2y-1)x'b >= 0, |b| <= 1, is > 0."""
    from scipy.optimize import linprog

    signed = (2 * y - 1)[:, None] * X
    res = linprog(-signed.sum(0), A_ub=-signed, b_ub=np.zeros(len(y)),
                  bounds=[(-1, 1)] * X.shape[1], method="highs")
    return bool(res.status == 0 and -res.fun > 1e-7)


def regime(frame: pd.DataFrame) -> str:
    """``separated`` (by the covariates alone: no ML estimate exists for any method),
    ``separated within sites`` (only with an indicator per site, e.g. a site whose
    outcome is constant: the GLMM stays finite only through the random intercept,
    and sigma-hat can run off), or ``well-posed``."""
    y = frame.y.to_numpy(float)
    if separated(_design(frame), y):
        return "separated"
    if separated(_design(frame, by_site=True), y):
        return "separated within sites"
    return "well-posed"


def _fit_one(job: tuple[int, int]) -> list[dict]:
    from securefed.glmm_run import GLMMOptions, run_glmm

    setting, replicate = job
    frame = dataset(setting, replicate)
    base = {"setting": setting, "replicate": replicate, "regime": regime(frame)}
    rows = []
    for method, nagq in FEDERATED:
        start = time.perf_counter()
        try:
            fit = run_glmm(frame, GLMMOptions(FORMULA, "binomial", "hospital", nagq=nagq))
        except Exception as err:  # a failed fit is a result too
            rows.append({**base, "method": method, "status": "error",
                         "message": str(err).splitlines()[0][:100]})
            continue
        status = ("not converged" if not fit.converged
                  else "singular" if fit.singular else "converged")
        re = fit.random_effects[0] if fit.random_effects else None
        common = {**base, "method": method, "status": status, "message": fit.message[:100],
                  "sigma": re.sd if re else 0.0,
                  "sigma_low": re.ci_low if re else None, "sigma_high": re.ci_high if re else None,
                  "loglik": fit.loglik, "rounds": fit.rounds,
                  "seconds": time.perf_counter() - start}
        for fe in fit.fixed_effects:
            rows.append({**common, "term": fe.term, "estimate": fe.estimate, "se": fe.std_error,
                         "ci_low": fe.ci_low, "ci_high": fe.ci_high, "p": fe.p_value})
    rows.extend(_glm(frame, base))
    return rows


def _glm(frame: pd.DataFrame, base: dict) -> list[dict]:
    """The GLM ignoring sites (the paper's 'centralized GLM' baseline), by Newton."""
    from scipy.special import ndtr

    start = time.perf_counter()
    X, y = _design(frame), frame.y.to_numpy(float)
    beta, converged = np.zeros(X.shape[1]), False
    with np.errstate(all="ignore"):
        for _ in range(50):
            mu = 1 / (1 + np.exp(-X @ beta))
            info = X.T @ (X * (mu * (1 - mu))[:, None])
            try:
                step = np.linalg.solve(info, X.T @ (y - mu))
            except np.linalg.LinAlgError:
                break
            beta += step
            if not np.all(np.isfinite(beta)):
                break
            if np.max(np.abs(step)) < 1e-10:
                converged = True
                break
        se = np.sqrt(np.diag(np.linalg.pinv(info)))
    common = {**base, "method": "GLM", "status": "converged" if converged else "not converged",
              "message": "" if converged else "Newton did not converge in 50 steps",
              "seconds": time.perf_counter() - start}
    return [{**common, "term": term, "estimate": b, "se": s, "ci_low": b - 1.96 * s,
             "ci_high": b + 1.96 * s, "p": 2 * ndtr(-abs(b / s))}
            for term, b, s in zip(TRUE_COEFFICIENTS, beta, se, strict=True)]


R_POOLED = r"""
suppressMessages(library(lme4))
args <- commandArgs(TRUE)
d <- read.csv(args[1])
f <- as.formula(args[3])
out <- list()
for (key in unique(d$key)) {
  part <- d[d$key == key, ]
  t0 <- proc.time()[["elapsed"]]
  msg <- ""
  fit <- withCallingHandlers(
    tryCatch(glmer(f, data = part, family = binomial, nAGQ = 1),
             error = function(e) { msg <<- conditionMessage(e); NULL }),
    warning = function(w) {
      msg <<- paste(msg, conditionMessage(w)); invokeRestart("muffleWarning") })
  secs <- proc.time()[["elapsed"]] - t0
  if (is.null(fit)) {
    out[[key]] <- data.frame(key = key, term = NA, estimate = NA, se = NA, sigma = NA,
                             status = "error", message = msg, seconds = secs)
    next
  }
  cf <- summary(fit)$coefficients
  conv <- paste(fit@optinfo$conv$lme4$messages, collapse = " ")
  status <- if (grepl("failed to converge", paste(msg, conv))) "not converged" else
            if (isSingular(fit)) "singular" else "converged"
  out[[key]] <- data.frame(key = key, term = rownames(cf), estimate = cf[, 1], se = cf[, 2],
                           sigma = sqrt(VarCorr(fit)$hospital[1]), status = status,
                           message = trimws(paste(msg, conv)), seconds = secs,
                           loglik = as.numeric(logLik(fit)))
}
write.csv(do.call(rbind, out), args[2], row.names = FALSE)
"""


def _lme4_pooled(jobs: list[tuple[int, int]]) -> list[dict]:
    """glmer (Laplace) on every pooled data set, in one R process; [] without R/lme4."""
    from scipy.special import ndtr

    rscript = shutil.which("Rscript")
    if rscript is None or subprocess.run([rscript, "-e", "library(lme4)"],
                                         capture_output=True).returncode != 0:
        print("R with lme4 not found: the pooled lme4 fit is skipped", flush=True)
        return []
    with tempfile.TemporaryDirectory() as tmp:
        data = pd.concat([dataset(s, r).assign(key=f"{s}_{r}") for s, r in jobs])
        data.to_csv(Path(tmp) / "data.csv", index=False)
        (Path(tmp) / "pooled.R").write_text(R_POOLED)
        subprocess.run([rscript, str(Path(tmp) / "pooled.R"), str(Path(tmp) / "data.csv"),
                        str(Path(tmp) / "out.csv"), FORMULA], check=True, capture_output=True)
        fits = pd.read_csv(Path(tmp) / "out.csv", keep_default_na=False, na_values=["NA"])
    regimes = {(s, r): regime(dataset(s, r)) for s, r in jobs}
    rows = []
    for rec in fits.to_dict("records"):
        setting, replicate = map(int, rec.pop("key").split("_"))
        rec.update(setting=setting, replicate=replicate, method="pooled lme4",
                   regime=regimes[(setting, replicate)])
        if rec["status"] != "error":
            b, s = rec["estimate"], rec["se"]
            rec.update(ci_low=b - 1.96 * s, ci_high=b + 1.96 * s,
                       p=2 * ndtr(-abs(b / s)), rounds=np.nan)
        else:
            rec["term"] = None
        rows.append(rec)
    return rows


def _per_fit(fits: pd.DataFrame) -> pd.DataFrame:
    return fits.drop_duplicates(["setting", "replicate", "method"])


def census(fits: pd.DataFrame) -> pd.DataFrame:
    """Data sets per setting and regime (well-posed / separated within sites / separated)."""
    sets = fits.drop_duplicates(["setting", "replicate"])
    table = sets.groupby(["setting", "regime"]).size().unstack(fill_value=0)
    for name in ("well-posed", "separated within sites", "separated"):
        if name not in table:
            table[name] = 0
    return table[["well-posed", "separated within sites", "separated"]].reset_index()


def summarise(fits: pd.DataFrame) -> pd.DataFrame:
    """Counts of every fit outcome, then metrics over the usable fits, per setting and method.

    Data sets separated by the covariates are left out (no ML estimate exists);
    usable = converged or singular.
    """
    fits = fits[fits.regime != "separated"].copy()
    fits["truth"] = fits.term.map(TRUE_COEFFICIENTS)
    fits["error"] = fits.estimate - fits.truth
    fits["covered"] = (fits.ci_low <= fits.truth) & (fits.truth <= fits.ci_high)
    fits["significant"] = fits.p < 0.05
    fits["right_sign"] = np.sign(fits.estimate) == np.sign(fits.truth)
    rows = []
    for (setting, method), part in fits.groupby(["setting", "method"]):
        per_fit = _per_fit(part)
        usable = part[part.status.isin(USABLE)]
        slopes = usable[usable.term != "(Intercept)"]
        sig = slopes[slopes.significant]
        kept = _per_fit(usable)
        sites, n, var = SETTINGS[setting - 1]
        sd_err = kept.sigma - np.sqrt(var)
        row = {"setting": setting, "sites": sites, "per_site": n, "variance": var,
               "method": method, "datasets": len(per_fit),
               "sep_in_sites": int((per_fit.regime == "separated within sites").sum()),
               "errors": int((per_fit.status == "error").sum()),
               "not_converged": int((per_fit.status == "not converged").sum()),
               "singular": int((per_fit.status == "singular").sum()), "used": len(kept),
               "bias_beta": slopes.error.mean(), "rmse_beta": _rmse(slopes.error),
               "medae_beta": slopes.error.abs().median(),
               "coverage": usable.covered.mean(), "power": slopes.significant.mean(),
               "sign_precision": sig.right_sign.mean() if len(sig) else np.nan,
               "rounds": kept.rounds.mean(), "seconds": kept.seconds.mean()}
        if method != "GLM":
            row.update(sigma_bias=sd_err.mean(), sigma_rmse=_rmse(sd_err))
        if kept.sigma_low.notna().any():
            row["sigma_coverage"] = ((kept.sigma_low <= np.sqrt(var))
                                     & (np.sqrt(var) <= kept.sigma_high)).mean()
        rows.append(row)
    if not rows:
        return pd.DataFrame(columns=SUMMARY_COLS)
    table = pd.DataFrame(rows)
    table["order"] = table.method.map(ORDER.index)
    return table.sort_values(["setting", "order"]).drop(columns="order").reset_index(drop=True)


def _rmse(errors: pd.Series) -> float:
    return float(np.sqrt((errors ** 2).mean())) if len(errors) else np.nan


def paired(fits: pd.DataFrame, subset: str = "well-posed",
           reference: str = "GH10") -> pd.DataFrame:
    """Each method against GH10 on the same data sets (where both are usable).

    ``d_rmse`` is the mean over data sets of (RMSE of the method's slopes - RMSE
    of GH10's), with its standard error: negative means the method is closer to
    the truth than GH10; ``closer`` the share of data sets where it is.
    ``max_dbeta``/``max_dsigma``: largest |difference| of any slope / of sigma
    from GH10's; ``calls_differ``: share of data sets where any slope's
    significance call differs from GH10's.
    """
    ok = fits[(fits.regime == subset) & fits.status.isin(USABLE)
              & (fits.term != "(Intercept)")].copy()
    ok["sq"] = (ok.estimate - ok.term.map(TRUE_COEFFICIENTS)) ** 2
    wide = ok.pivot_table(index=["setting", "replicate", "term"], columns="method",
                          values=["estimate", "sq", "p", "sigma"], aggfunc="first")
    rows = []
    for method in [m for m in ORDER if m not in (reference, "GLM")]:
        if ("estimate", method) not in wide or ("estimate", reference) not in wide:
            continue
        both = wide[wide[("estimate", method)].notna() & wide[("estimate", reference)].notna()]
        for setting, part in both.groupby(level="setting"):
            by_set = part.groupby(level="replicate")
            sq = by_set[[("sq", method), ("sq", reference)]].mean() ** 0.5
            rmse = sq[("sq", method)] - sq[("sq", reference)]
            differ = (part[("p", method)] < 0.05) != (part[("p", reference)] < 0.05)
            sigma = by_set[[("sigma", method), ("sigma", reference)]].first()
            rows.append({"setting": setting, "method": method, "datasets": len(rmse),
                         "d_rmse": rmse.mean(),
                         "d_rmse_se": rmse.std(ddof=1) / np.sqrt(len(rmse))
                         if len(rmse) > 1 else np.nan,
                         "closer": float((rmse < 0).mean()),
                         "max_dbeta": float(np.abs(part[("estimate", method)]
                                                   - part[("estimate", reference)]).max()),
                         "max_dsigma": float(np.abs(sigma[("sigma", method)]
                                                    - sigma[("sigma", reference)]).max()),
                         "calls_differ": float(differ.groupby(level="replicate").any().mean())})
    return pd.DataFrame(rows, columns=PAIR_COLS)


def disagreements(fits: pd.DataFrame, threshold: float = 0.05) -> pd.DataFrame:
    """Data sets where LA and GH10 differ materially: a slope by > ``threshold``, or sigma
    by > 0.1 (both fits usable, an ML estimate exists). RMSEs are of the slopes vs truth."""
    ok = fits[(fits.regime != "separated") & fits.status.isin(USABLE)
              & (fits.term != "(Intercept)") & fits.method.isin(["LA", "GH10"])].copy()
    ok["sq"] = (ok.estimate - ok.term.map(TRUE_COEFFICIENTS)) ** 2
    rows = []
    for (setting, replicate), part in ok.groupby(["setting", "replicate"]):
        la, gh = (part[part.method == m].set_index("term") for m in ("LA", "GH10"))
        if la.empty or gh.empty:
            continue
        dbeta = float((la.estimate - gh.estimate).abs().max())
        dsigma = abs(float(la.sigma.iloc[0]) - float(gh.sigma.iloc[0]))
        if dbeta > threshold or dsigma > 0.1:
            rows.append({"setting": setting, "replicate": replicate,
                         "regime": part.regime.iloc[0], "max_dbeta": dbeta,
                         "sigma_LA": float(la.sigma.iloc[0]), "sigma_GH10": float(gh.sigma.iloc[0]),
                         "rmse_LA": float(la.sq.mean() ** 0.5),
                         "rmse_GH10": float(gh.sq.mean() ** 0.5)})
    return pd.DataFrame(rows, columns=DISAGREE_COLS)


def verdict(summary: pd.DataFrame, pairs: pd.DataFrame, differ: pd.DataFrame,
            counts: pd.DataFrame, lme4_gap: float | None) -> list[str]:
    """The answer to the issue's question, computed from the tables (not typed).

    On well-posed data a difference is *material* when LA's paired slope-RMSE
    excess over GH10 is beyond two standard errors and above 1% of GH10's RMSE.
    """
    la = pairs[pairs.method == "LA"].set_index("setting")
    if la.empty:
        return []
    gh10, la_rows = summary[summary.method == "GH10"], summary[summary.method == "LA"]
    rmse = gh10.set_index("setting").rmse_beta.reindex(la.index)
    detectable = la.d_rmse - 2 * la.d_rmse_se > 0
    material = la[detectable & (la.d_rmse > 0.01 * rmse)].index.tolist()
    better = la[la.d_rmse + 2 * la.d_rmse_se < 0].index.tolist()
    small = [s for s in la.index if SETTINGS[s - 1][1] == 30]
    big = [s for s in la.index if SETTINGS[s - 1][1] == 500]
    answer = (f"Yes on well-posed data, in setting(s) {_names(material)}." if material
              else "No, not on well-posed data.")
    both = la_rows.merge(gh10, on="setting", suffixes=("", "_gh"))
    lines = [
        f"**Does GH beat LA when sites are small?** {answer} With exact derivatives, on the "
        f"{int(counts['well-posed'].sum())} well-posed data sets LA's slopes differ from GH10's "
        f"by at most {la.loc[big].max_dbeta.max():.1g} with 500 patients per site and "
        f"{la.loc[small].max_dbeta.max():.2g} with 30, σ̂ by at most "
        f"{la.loc[big].max_dsigma.max():.2g} and {la.loc[small].max_dsigma.max():.2g}; "
        f"significance calls differ in {100 * la.calls_differ.max():.0f}% of data sets at most; "
        f"LA's slope RMSE exceeds GH10's materially in setting(s) {_names(material)} and is "
        f"below it in {_names(better)} (largest paired difference {la.d_rmse.abs().max():.1g}, "
        f"against RMSEs of {gh10.rmse_beta.min():.2f}–{gh10.rmse_beta.max():.2f}). Over every "
        "data set with an ML estimate, power differs by at most "
        f"{(both.power - both.power_gh).abs().max():.3f} and CI coverage by at most "
        f"{(both.coverage - both.coverage_gh).abs().max():.3f} between LA and GH10 in any "
        f"setting. GH10 costs {gh10.seconds.sum() / la_rows.seconds.sum():.1f}× LA's time per "
        f"fit, in {gh10.rounds.mean():.1f} rounds vs LA's {la_rows.rounds.mean():.1f}."]
    if lme4_gap is not None:
        lines[0] += (" Federated LA equals the pooled lme4 (Laplace) fit: slopes within "
                     f"{lme4_gap:.1g} on every well-posed data set.")
    if len(differ):
        gh_wins = int((differ.rmse_GH10 < differ.rmse_LA).sum())
        odd = int((differ.regime == "separated within sites").sum())
        lines.append(
            f"Where LA and GH10 do differ (a slope by > 0.05 or σ̂ by > 0.1): {len(differ)} data "
            f"set(s), in setting(s) {_names(sorted(set(differ.setting)))}, {odd} of them "
            "separated within sites (a site whose outcome its covariates or its intercept "
            f"predict perfectly), with σ̂ from {differ[['sigma_LA', 'sigma_GH10']].min().min():.1f}"
            f" to {differ[['sigma_LA', 'sigma_GH10']].max().max():.1f}. GH10's slopes are closer "
            f"to the truth on {gh_wins} of them and LA's on {len(differ) - gh_wins}"
            + (", but" if gh_wins == len(differ) else ";")
            + f" both are far off there (slope RMSE {differ.rmse_GH10.min():.1f}–"
            f"{differ[['rmse_LA', 'rmse_GH10']].max().max():.1f} against a median of "
            f"{gh10.rmse_beta.median():.2f} over the settings): the data hardly identify σ, and "
            "no quadrature rescues them.")
    n_sep = int(counts["separated"].sum())
    where = counts[counts["separated"] > 0].setting.tolist()
    lines.append(f"{n_sep} data set(s) are separated by the covariates alone (no ML estimate "
                 f"exists for any method; settings {_names(where)}): counted and left out of "
                 f"every metric; {int(counts['separated within sites'].sum())} are separated "
                 "only within sites (mostly a site without events, where the GLMM's estimate "
                 "exists): kept, counted in `sep_in_sites`.")
    return lines


def _names(settings: list[int]) -> str:
    return ", ".join(map(str, settings)) if settings else "none"


SUMMARY_COLS = ["setting", "sites", "per_site", "variance", "method", "datasets",
                "sep_in_sites", "errors", "not_converged", "singular", "used", "bias_beta",
                "rmse_beta", "medae_beta", "coverage",
                "power", "sign_precision", "sigma_bias", "sigma_rmse", "sigma_coverage",
                "rounds", "seconds"]
PAIR_COLS = ["setting", "method", "datasets", "d_rmse", "d_rmse_se", "closer", "max_dbeta",
             "max_dsigma", "calls_differ"]
DISAGREE_COLS = ["setting", "replicate", "regime", "max_dbeta", "sigma_LA", "sigma_GH10",
                 "rmse_LA", "rmse_GH10"]
HEAD = [
    "Design: the script's docstring (the paper's setting numbering; make_hospitals with seed "
    "1000·setting + r; the authors' coefficients; unpenalised ML, all rows).", "",
    "Data sets are sorted first, never dropped silently: *separated* (an LP finds a direction "
    "of (quasi-)complete separation in the covariates: no ML estimate exists for any method; "
    "counted, left out), *separated within sites* (separation needs an indicator per site, "
    "e.g. a site with no events: the GLMM's ML estimate exists, kept, counted in "
    "`sep_in_sites`, paired separately below), *well-posed*. "
    "Per method, fits that raised an `error`, did `not_converged` or ended `singular` (σ̂ = 0, "
    "lme4's boundary fit; kept) are counted; metrics use the `used` (converged or singular) "
    "fits.", "",
    "bias/RMSE over the 9 slopes; coverage of 95% Wald CIs over all 10 coefficients; "
    "power = recall = share of slopes significant at 0.05 (every true slope is non-zero, so "
    "precision in the usual sense is 1 by construction); `sign_precision` = share of "
    "significant slopes with the right sign; σ bias/RMSE of σ̂ against the true SD; "
    "`sigma_coverage` of securefed's 95% CI for σ; rounds = communication rounds; seconds "
    "per fit (lme4: glmer alone, inside R).", ""]
PAIR_HEAD = [
    "d_rmse = mean over data sets of (method's slope RMSE − GH10's) ± SE (negative: closer to "
    "the truth); closer = share of data sets where the method is closer than GH10; max |Δβ| "
    "and max |Δσ| against GH10; calls_differ = share of data sets where any slope's "
    "significance call differs from GH10's.", ""]


def write_tables(fits: pd.DataFrame, out: Path, n_datasets: int) -> None:
    counts, summary = census(fits), summarise(fits)
    pairs, odd_pairs = paired(fits), paired(fits, "separated within sites")
    summary.to_csv(out / "paper000_summary.csv", index=False)
    pd.concat([pairs.assign(regime="well-posed"),
               odd_pairs.assign(regime="separated within sites")]).to_csv(
        out / "paper000_paired.csv", index=False)
    ran = bench.run_line(out, "paper000")
    vs_la = paired(fits, reference="LA")
    gap = vs_la[vs_la.method == "pooled lme4"].max_dbeta.max() if len(vs_la) else None
    differ = disagreements(fits)
    answer = verdict(summary, pairs, differ, counts,
                     None if gap is None or np.isnan(gap) else float(gap))
    lines = ["# Paper 000 simulation: LA vs adaptive GH vs the pooled fit (and the GLM)", "",
             f"{n_datasets} data sets per setting; `nice -n 10 python "
             f"benchmarks/paper000_simulation.py` ({ran}, 2 worker "
             "processes).", "", *HEAD, *answer, "", "## Data sets per setting", "",
             *bench.markdown_table(counts.to_dict("records"), list(counts.columns)), "",
             "## Every data set with an ML estimate", "",
             *bench.markdown_table(summary.to_dict("records"), SUMMARY_COLS), "",
             "## Paired with GH10 on the same well-posed data sets", "", *PAIR_HEAD,
             *bench.markdown_table(pairs.to_dict("records"), PAIR_COLS, digits=4), "",
             "## Paired with GH10 on the same data sets separated within sites", "",
             *PAIR_HEAD, *bench.markdown_table(odd_pairs.to_dict("records"), PAIR_COLS, digits=4),
             "", "## Every data set where LA and GH10 differ (a slope by > 0.05 or σ̂ by > 0.1)",
             "", *bench.markdown_table(differ.to_dict("records"), DISAGREE_COLS)]
    (out / "paper000_summary.md").write_text("\n".join(lines) + "\n")
    _plot(summary, out / "paper000_summary.png")
    bench.write_snippet(out, "paper000", [
        f"**Paper 000's simulation (generated).** {n_datasets} data sets per setting "
        "(`nice -n 10 python benchmarks/paper000_simulation.py`, " + ran + "; all tables, "
        "counts and the design in `benchmarks/results/paper000_summary.md`).", "", *answer, "",
        "Per setting, LA / GH10 / pooled lme4 (/ GLM): fits used (converged or singular, "
        "on data with an ML estimate), slope RMSE, 95% CI coverage, power, RMSE of σ̂, "
        "rounds and seconds per fit:", "", *_wide(summary), "",
        "![paper 000 summary](benchmarks/results/paper000_summary.png)"])
    print("\n".join(lines))


def _wide(summary: pd.DataFrame) -> list[str]:
    """One row per setting, methods side by side (the README's table)."""
    methods = ["LA", "GH10", "pooled lme4", "GLM"]
    rows = []
    for setting, part in summary.groupby("setting"):
        by = part.set_index("method").reindex(methods)
        sites, n, var = SETTINGS[setting - 1]

        def join(col: str, which: list[str], digits: int = 2, by=by) -> str:
            return " / ".join("–" if pd.isna(by.loc[m, col]) else
                              f"{by.loc[m, col]:.{digits}f}" for m in which)

        rows.append({"setting": f"{setting}: {sites}×{n}, σ²={var:g}",
                     "used": join("used", methods[:3], 0),
                     "slope RMSE": join("rmse_beta", methods),
                     "coverage": join("coverage", methods),
                     "power": join("power", methods),
                     "σ̂ RMSE": join("sigma_rmse", methods[:3]),
                     "rounds": join("rounds", methods[:2], 1),
                     "seconds": join("seconds", methods[:3])})
    return bench.markdown_table(rows, list(rows[0]))


def _plot(summary: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("rmse_beta", "RMSE of slopes"), ("coverage", "95% CI coverage"),
              ("power", "power (recall) at 0.05"), ("sigma_rmse", "RMSE of σ̂")]
    fig, grid = plt.subplots(2, 2, figsize=(12, 8))
    axes = grid.ravel()
    offsets = {m: (i - 2.5) * 0.1 for i, m in enumerate(ORDER)}
    labels = [f"{i + 1}\n{a}×{b}\nσ²={c:g}" for i, (a, b, c) in enumerate(SETTINGS)]
    for ax, (metric, title) in zip(axes, panels, strict=True):
        for method in ORDER:
            part = summary[summary.method == method]
            if part.empty or metric not in part or part[metric].isna().all():
                continue
            ax.plot(part.setting + offsets[method], part[metric], marker="o", linestyle="",
                    label=method)
        ax.set_xticks(range(1, 9))
        ax.set_xticklabels(labels, fontsize=8)
        ax.set_title(title)
    axes[1].axhline(0.95, color="black", linewidth=0.8)
    axes[0].set_yscale("log")
    axes[3].set_yscale("log")
    axes[0].legend(fontsize=8)
    fig.suptitle("Paper 000 simulation: setting (sites × patients per site, variance); "
                 "data sets with an ML estimate")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 2 data sets per setting, written to a temp folder")
    parser.add_argument("--out", help="results folder (default benchmarks/results)")
    parser.add_argument("--resummarise", action="store_true",
                        help="rebuild the tables from paper000_fits.csv.gz without fitting")
    parser.add_argument("--no-lme4", action="store_true", help="skip the pooled lme4 fit")
    args = parser.parse_args()
    datasets = 2 if args.quick else args.datasets
    out = bench.results_dir(args.quick, args.out)
    if args.resummarise:
        fits = pd.read_csv(out / "paper000_fits.csv.gz")
        write_tables(fits, out, int(fits.replicate.nunique()))
        return
    clock = bench.Stopwatch()
    jobs = [(s, r) for s in range(1, len(SETTINGS) + 1) for r in range(datasets)]
    with ProcessPoolExecutor(args.workers) as pool:
        rows = [row for part in pool.map(_fit_one, jobs) for row in part]
    if not args.no_lme4:
        rows += _lme4_pooled(jobs)
    fits = pd.DataFrame(rows)
    fits.to_csv(out / "paper000_fits.csv.gz", index=False)
    bench.record_run(out, "paper000", clock.elapsed, datasets=datasets, workers=args.workers)
    write_tables(fits, out, datasets)
    print(f"wrote {out} in {clock.elapsed:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
