"""The text of ``summary(glmer(...))`` / ``summary(lmer(...))`` for a federated fit.

What lme4 prints, in its layout: the method line, family and link, formula, data, the
information criteria with deviance (``-2 logLik``; lmer's REML criterion under REML)
and residual degrees of freedom, the random effects with Variance, Std.Dev. and
correlations (and the residual for a Gaussian model; glmmTMB's dispersion line for Gamma
and nbinom2), the number of observations and groups per grouping factor, the fixed
effects (``t value`` and no p-value for a Gaussian model, as lmer; ``z value`` and
``Pr(>|z|)`` otherwise) with significance stars, and the correlation of fixed effects.
Added for a federated fit: the sites and protection, the penalty (and how it was
chosen), Wald 95% CIs, rounds and warnings. lme4's "Scaled residuals" quantiles are not
printed: they are order statistics of patient-level residuals, which no site releases.
"""

from __future__ import annotations

import numpy as np

from core_stats.families import get_family

__all__ = ["glmm_summary"]


def _stars(p: float) -> str:
    if not np.isfinite(p):
        return ""
    for cut, mark in ((0.001, "***"), (0.01, "**"), (0.05, "*"), (0.1, ".")):
        if p < cut:
            return mark
    return ""


def _pformat(p: float) -> str:
    if not np.isfinite(p):
        return "NA"
    return "< 2e-16" if p < 2e-16 else f"{p:.3g}"


def _abbreviate(name: str, width: int = 6) -> str:
    """R's abbreviate() for the correlation table's column heads (roughly)."""
    if name == "(Intercept)":
        return "(Intr)"
    if len(name) <= width:
        return name
    inner = name.strip("()")
    kept = inner[0] + "".join(c for c in inner[1:] if c.lower() not in "aeiou")
    return ("(" + kept[: width - 1] if name.startswith("(") else kept[:width])


def _family(fit):
    return get_family(fit.family, fit.link)


def _header(fit) -> list[str]:
    family = _family(fit)
    linear = family.t_statistic
    reml = getattr(fit, "reml", False)
    method = ("Laplace Approximation" if fit.nagq == 1
              else f"Adaptive Gauss-Hermite Quadrature, nAGQ = {fit.nagq}")
    lines = [("Linear mixed model fit by REML" if reml else
              "Linear mixed model fit by maximum likelihood" if linear else
              f"Generalized linear mixed model fit by maximum likelihood ({method})")]
    if not linear:
        lines.append(f" Family: {family.r_name}  ( {fit.link} )")
    lines.append(f"Formula: {fit.formula}")
    data = fit.extra.get("data")
    sites = f"{fit.n_sites} site{'s' if fit.n_sites != 1 else ''}"
    lines.append(f"   Data: {data + ', ' if data else ''}federated over {sites}; "
                 f"protection: {fit.protection}")
    if fit.penalty_lambda or "lambda_selection" in fit.extra:
        chosen = fit.extra.get("lambda_selection")
        grid = ", ".join(f"{row['lambda']:g}" for row in (chosen or {}).get("table", []))
        how = f" (chosen by {chosen['criterion']} from {grid})" if grid else ""
        lines.append(f"Penalty: lambda = {fit.penalty_lambda:g} on non-intercept effects{how}")
    if reml:  # lmer prints the criterion, not the information criteria
        return lines + ["", f"REML criterion at convergence: {fit.extra['reml_criterion']:.1f}"]
    n_params = len(fit.theta)
    df_resid = fit.n_obs - n_params
    heads = ("AIC", "BIC", "logLik", "deviance", "df.resid")
    values = (f"{fit.aic:.1f}", f"{fit.bic:.1f}", f"{fit.loglik:.1f}",
              f"{-2.0 * fit.loglik:.1f}", f"{df_resid}")
    widths = [max(len(h), len(v)) + 1 for h, v in zip(heads, values, strict=True)]
    lines += ["", " ".join(h.rjust(w) for h, w in zip(heads, widths, strict=True)),
              " ".join(v.rjust(w) for v, w in zip(values, widths, strict=True))]
    return lines


def _random_effects(fit) -> list[str]:
    rows = []
    corr = {(c.group, c.term1, c.term2): c.correlation for c in fit.correlations}
    earlier: dict[str, list[str]] = {}
    for re in fit.random_effects:
        before = earlier.setdefault(re.group, [])
        cells = " ".join(f"{corr[(re.group, e, re.term)]:5.2f}" for e in before
                         if (re.group, e, re.term) in corr)
        ci = f"[{re.ci_low:.4f}, {re.ci_high:.4f}]" if re.ci_low is not None else ""
        residual = re.group == "Residual"
        rows.append(("" if before else re.group, "" if residual else re.term,
                     f"{re.sd**2:.4g}", f"{re.sd:.4g}", cells, ci))
        before.append(re.term)
    heads = ("Groups", "Name", "Variance", "Std.Dev.", "Corr", "95% CI (Std.Dev.)")
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(heads)]
    fmt = [str.ljust, str.ljust, str.ljust, str.ljust, str.rjust, str.ljust]
    lines = ["", "Random effects:",
             " " + " ".join(f(h, w) for f, h, w in zip(fmt, heads, widths, strict=True))]
    lines += [" " + " ".join(f(v, w) for f, v, w in zip(fmt, r, widths, strict=True)).rstrip()
              for r in rows]
    groups = {re.group for re in fit.random_effects if re.group != "Residual"}
    per_group = fit.extra.get("n_groups_by_factor") or {g: fit.n_groups for g in groups}
    listed = "; ".join(f"{g}, {n}" for g, n in per_group.items())
    if getattr(fit, "counts_noisy", False):  # differentially private counts
        listed = "; ".join(f"{g}, ~{n}" for g, n in per_group.items())
        lines.append(f"Number of obs (noisy): ~{fit.n_obs}, groups (noisy):  {listed}; "
                     f"sites: {fit.n_sites}")
    else:
        lines.append(f"Number of obs: {fit.n_obs}, groups:  {listed}; sites: {fit.n_sites}")
    return lines


def _dispersion(fit) -> list[str]:
    """glmmTMB's dispersion line (Gamma's sigma^2, NB2's theta) with its Wald 95% CI."""
    found = fit.extra.get("dispersion")
    family = _family(fit)
    if not found or family.dispersion is None or not family.dispersion.label:
        return []
    ci = (f" (95% CI {found['ci_low']:.3g}, {found['ci_high']:.3g})"
          if found.get("ci_low") is not None and found.get("ci_high") is not None else "")
    return ["", family.dispersion.label.format(value=f"{found['estimate']:.3g}") + ci]


def _fixed_effects(fit) -> list[str]:
    gaussian = _family(fit).t_statistic
    stat = "t value" if gaussian else "z value"
    names = [fe.term for fe in fit.fixed_effects]
    width = max([len(n) for n in names] + [4])
    head = f"{'':<{width}} {'Estimate':>10} {'Std. Error':>10} {stat:>8}"
    head += "" if gaussian else f" {'Pr(>|z|)':>10}    "
    lines = ["", "Fixed effects:", head + f" {'2.5 %':>9} {'97.5 %':>9}"]
    for fe in fit.fixed_effects:
        row = f"{fe.term:<{width}} {fe.estimate:10.5g} {fe.std_error:10.4g} {fe.z_value:8.3f}"
        if not gaussian:
            row += f" {_pformat(fe.p_value):>10} {_stars(fe.p_value):<3}"
        lines.append(row + f" {fe.ci_low:9.4g} {fe.ci_high:9.4g}")
    if not gaussian:
        lines += ["---", "Signif. codes:  0 '***' 0.001 '**' 0.01 '*' 0.05 '.' 0.1 ' ' 1"]
    if getattr(fit, "counts_noisy", False):
        lines.append("Std. errors, p-values and intervals carry the privacy noise "
                     "(parametric bootstrap of the DP fit) and the sampling variance")
    return lines + _fixed_correlations(fit, names)


def _fixed_correlations(fit, names: list[str]) -> list[str]:
    p = len(names)
    if p < 2 or len(fit.covariance) < p:
        return []
    cov = np.array([row[:p] for row in fit.covariance[:p]], dtype=float)
    sd = np.sqrt(np.diag(cov))
    if not np.all(np.isfinite(sd)) or np.any(sd <= 0):
        return []
    corr = cov / np.outer(sd, sd)
    width = max(len(n) for n in names[1:])
    heads = [_abbreviate(n) for n in names[:-1]]
    lines = ["", "Correlation of Fixed Effects:",
             " " * width + " " + " ".join(f"{h:>6}" for h in heads)]
    for i in range(1, p):
        cells = " ".join(f"{corr[i, j]:6.3f}" for j in range(i))
        lines.append(f"{names[i]:<{width}} {cells}")
    return lines


def glmm_summary(fit) -> str:
    """``fit`` (a :class:`~core_stats.results.GLMMFit`) as lme4's summary prints it."""
    lines = _header(fit) + _random_effects(fit) + _dispersion(fit) + _fixed_effects(fit)
    status = "converged" if fit.converged else f"NOT converged: {fit.message}"
    lines += ["", f"Rounds: {fit.rounds} ({fit.iterations} Newton steps), {status}"]
    if fit.singular:
        lines.append("boundary (singular) fit: the random-effect variance is estimated as 0"
                     if len(fit.random_effects) <= 1 + _family(fit).t_statistic else
                     "boundary (singular) fit: the random-effect covariance is singular "
                     "(a variance at 0 or a correlation at ±1)")
    lines += [f"warning: {w}" for w in fit.warnings]
    return "\n".join(lines)
