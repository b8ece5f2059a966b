"""A federated GLMM fit, from a table split by site to a :class:`GLMMFit`.

Rounds, in order: one design-summary sum (counts, outcome moments, X'X for
start values and collinearity), then Newton rounds on summed marginal
log-likelihood terms; with a lambda grid, one fit per lambda on the sites'
training rows plus validation sums, then the final fit at the chosen lambda.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from core_stats.design import DesignError, parse_mixed_formula
from core_stats.families import get_family
from core_stats.formula import (
    DesignSchema,
    agree_schema,
    fixed_column_names,
    random_column_names,
)
from core_stats.glmm import ParameterLayout
from core_stats.glmm_fit import GLMMEstimate, fit_glmm, starting_values
from core_stats.inference import (
    auc_from_histograms,
    covariance,
    dispersion_estimate,
    information_criteria,
    random_effect_table,
    wald_fixed_effects,
)
from core_stats.optimize import NewtonStep, SummedTerms
from core_stats.results import GLMMFit
from protocols.errors import ProtocolError
from protocols.stack import PlaintextSum, ProtectedSum
from securefed.audit_keys import TrailKeys
from securefed.audit_trail import AuditTrail, describe_protection
from securefed.coordinator import Coordinator
from securefed.errors import InputError
from securefed.plausibility import (
    check_design_summary,
    check_glmm_terms,
    check_validation_histograms,
    check_validation_loglik,
)
from securefed.plausibility_reml import check_reml_terms
from securefed.robust.runs import check_robust_options, robust_glmm, validator_for
from securefed.site import GLMMSiteDesign, Site
from securefed.vectors import from_upper_triangle, unpack_terms

__all__ = ["GLMMOptions", "run_glmm", "run_glmm_remote"]

AUC_BINS = 4000
SELECT_CHOICES = ("aic", "bic", "heldout")


@dataclass(frozen=True)
class GLMMOptions:
    """Everything a GLMM run needs besides the data."""

    formula: str
    family: str
    site_column: str
    nagq: int = 1
    lam: float = 0.0
    lambda_grid: tuple[float, ...] = ()
    select: str = "aic"
    validation_fraction: float = 0.3
    seed: int | None = None
    tol: float = 1e-8
    na_action: str = "omit"
    weights: str | None = None  # a column of prior weights, as glmer's weights=
    link: str | None = None  # None: the family's canonical link
    robust: bool = False  # bounded influence (securefed.robust): refuse a dominating site
    robust_bound: float = 2.0  # the largest leave-one-out shift allowed, in honest SEs
    reml: bool = False  # Gaussian only: lmer's REML criterion instead of maximum likelihood


def _check_options(opts: GLMMOptions) -> None:
    if not 1 <= opts.nagq <= 25:
        raise InputError(f"--nagq {opts.nagq} is out of range: use 1 (Laplace) to 25")
    if opts.lam < 0 or any(v < 0 for v in opts.lambda_grid):
        raise InputError("lambda must be zero or positive")
    if opts.select not in SELECT_CHOICES:
        raise InputError(f"--select {opts.select!r}: choose aic, bic or heldout")
    if opts.lambda_grid and not 0 < opts.validation_fraction < 1:
        raise InputError("the validation fraction must be between 0 and 1")


def _check_frame(frame: pd.DataFrame, opts: GLMMOptions, sites: list[Site]):
    """The formula, family and agreed design schema; bad input raises InputError."""
    formula, family = _parse_model(opts)
    group_columns = formula.model.group_columns
    for col in (opts.site_column, *group_columns):
        _require_column(frame, col)
    try:
        schema = agree_schema(opts.formula, [s.variable_report(opts.formula) for s in sites])
        checked = [s.outcome_for_checks(schema, opts.na_action, opts.weights) for s in sites]
        outcomes = [y for y, _, _ in checked]
        weighted = any(w is not None for _, w, _ in checked)
        weights = np.concatenate([w for _, w, _ in checked]) if weighted else None
    except DesignError as err:
        raise InputError(str(err)) from None
    for col in (opts.site_column, *group_columns):
        if frame[col].isna().any() and opts.na_action == "fail":
            raise InputError(f"column '{col}' has missing values")
    try:
        family.check_outcome(np.concatenate(outcomes), weights)
    except ValueError as err:
        raise InputError(f"outcome '{formula.outcome}': {err}") from None
    for term in formula.model.random:
        _check_nested(frame, term, opts.site_column)
    omitted = {s.name: n for s, (_, _, n) in zip(sites, checked, strict=True) if n}
    return formula, family, schema, omitted


def _check_nested(frame: pd.DataFrame, term, site_column: str) -> None:
    """Every level of the term's grouping factor lies in one site; there are two or more."""
    columns = list(term.group)
    complete = frame[columns].notna().all(axis=1)
    groups = (frame.loc[complete, columns[0]].astype(str) if len(columns) == 1 else
              frame.loc[complete, columns].astype(str).agg(":".join, axis=1))
    sites = frame.loc[complete, site_column].astype(str)
    per_group = sites.groupby(groups).nunique()
    split = per_group[per_group > 1]
    if len(split):
        first, second = sorted(sites[groups == split.index[0]].unique())[:2]
        raise InputError(f"a level of '{term.group_name}' appears in sites {first} and "
                         f"{second}: grouping factors must be nested within '{site_column}'")
    if per_group.size < 2:
        raise InputError(f"'{term.group_name}' has a single group: a random effect needs at "
                         "least two (lme4 refuses it too)")


def _parse_model(opts: GLMMOptions):
    try:
        formula = parse_mixed_formula(opts.formula, several=True)
        family = get_family(opts.family, opts.link)
    except (DesignError, ValueError) as err:
        raise InputError(str(err)) from None
    weighted = _weighted(opts, formula)
    if weighted and not family.binary and formula.outcome.startswith("cbind("):
        raise InputError("cbind(successes, failures) is a binomial response: use "
                         "--family binomial")
    if weighted and not family.prior_weights:
        raise InputError(f"prior weights are not supported for the {family.name} family yet: "
                         "drop --weights")
    several = len(formula.model.random) > 1 or not formula.model.random[0].correlated
    if opts.reml:
        _check_reml(opts, family, weighted, several)
    if several and not family.several_terms:
        raise InputError(f"the {family.name} family takes one random-effects term for now: "
                         "use a single (... | group) term")
    if weighted and opts.lambda_grid:
        raise InputError("--lambda-grid with weights or cbind() is not supported yet: "
                         "give --lambda")
    return formula, family


def _check_reml(opts: GLMMOptions, family, weighted: bool, several: bool) -> None:
    if not family.reml:
        raise InputError(f"--reml is defined for Gaussian models (lmer's REML), not the "
                         f"{family.name} family: drop --reml")
    if weighted or several or opts.lam or opts.lambda_grid:
        raise InputError("--reml is not available with weights, several random-effects terms "
                         "or a penalty yet: drop --reml or those options")


def _weighted(opts: GLMMOptions, formula) -> bool:
    return opts.weights is not None or formula.outcome.startswith("cbind(")


def _require_column(frame: pd.DataFrame, col: str) -> None:
    if col not in frame.columns:
        raise InputError(f"column '{col}' is not in {frame.attrs.get('source', 'the data')} "
                         f"(its columns: {', '.join(map(str, frame.columns[:12]))})")


def _collinear_columns(xtx: np.ndarray, tol: float = 1e-7) -> list[int]:
    """Columns whose scaled residual variance given earlier kept columns is < tol."""
    scale = np.sqrt(np.clip(np.diag(xtx), 0.0, None))
    dropped, kept = [], []
    for j in range(xtx.shape[0]):
        if scale[j] == 0:
            dropped.append(j)
            continue
        corr = xtx / np.outer(np.where(scale > 0, scale, 1.0), np.where(scale > 0, scale, 1.0))
        resid = corr[j, j]
        if kept:
            k = np.array(kept)
            resid -= corr[j, k] @ np.linalg.solve(corr[np.ix_(k, k)], corr[k, j])
        (dropped if resid < tol else kept).append(j)
    return dropped


def run_glmm(frame: pd.DataFrame, opts: GLMMOptions, *, protection: ProtectedSum | None = None,
             on_step: Callable[[NewtonStep], None] | None = None,
             audit_log: str | Path | None = None,
             audit_keys: TrailKeys | None = None, site_runtime: bool = True) -> GLMMFit:
    """Fit a GLMM federated over the sites named by ``opts.site_column``.

    Every site is simulated in this process. Where the site runtime carries
    the protection (:func:`runtime_supports`) and ``site_runtime`` is true, each
    site answers through the ClientApp handler with its own keys and policy
    (:mod:`securefed.transport.loopback`); otherwise the coordinator applies
    each round's closure to the sites' objects directly (the same rounds and
    results). ``audit_keys``: the consortium identities that sign the trail at
    ``audit_log`` (default: keys made for the run). A protocol abort or a
    refused aggregate is logged (REFUSAL, then a countersigned checkpoint)
    before the error propagates.
    """
    created: list[Coordinator] = []
    try:
        return _run_glmm(frame, opts, protection, on_step, audit_log, created, audit_keys,
                         site_runtime)
    except ProtocolError as err:
        if created:
            created[0].abort_audit(err)
        raise


def _run_glmm(frame, opts, protection, on_step, audit_log, created, audit_keys,
              site_runtime) -> GLMMFit:
    started = time.perf_counter()
    _check_options(opts)
    _parse_model(opts)
    _require_column(frame, opts.site_column)
    sites = [Site(str(name), part) for name, part in frame.groupby(opts.site_column, sort=True)]
    formula, family, schema, omitted = _check_frame(frame, opts, sites)
    several = len(formula.model.random) > 1 or not formula.model.random[0].correlated
    protection = protection or PlaintextSum()
    warnings = [w for s in sites for w in s.warnings()]
    warnings += [f"site {name}: {n} row(s) with missing values omitted"
                 for name, n in omitted.items()]
    source = frame.attrs.get("source")
    if opts.robust and several:
        check_robust_options(True, opts.robust_bound, dp=False, remote=False,
                             unsupported="several random-effects terms")
    audit = None
    if audit_log is not None:
        audit = AuditTrail.start(audit_log, site_names=[s.name for s in sites], model="glmm",
                                 config=asdict(opts), protection=describe_protection(protection),
                                 keys=audit_keys)
    if site_runtime and not opts.robust and runtime_supports(protection) and (
            audit is None or runtime_carries_audit(protection)):
        from securefed.transport.loopback import loopback_rounds

        # the sites answer through the site runtime (its handler, their policy and logs)
        with loopback_rounds({s.name: s for s in sites}, protection, trail=audit) as rounds:
            fit = run_glmm_remote(opts, rounds, [s.name for s in sites],
                                  protection=protection, on_step=on_step, audit=audit,
                                  schema=schema, warnings=warnings, started=started)
        return replace(fit, extra={**fit.extra, "data": Path(source).name}) if source else fit
    coordinator = Coordinator(sites, protection, audit=audit)
    created.append(coordinator)
    if several:  # several random-effects terms: securefed.glmm_multi_run
        from securefed.glmm_multi_run import fit_multi

        design = GLMMSiteDesign(schema, family, 1, opts.na_action, opts.weights)
        fit = fit_multi(coordinator, opts, family, design, fixed_column_names(schema),
                        warnings, started, on_step, _weighted(opts, formula))
        coordinator.finish_audit(fit.to_dict(), "glmm")
    else:
        fixed_names, random_names = _public_design(schema)
        fit = _fit(coordinator, opts, formula, family, schema, fixed_names, random_names,
                   on_step, started, warnings)
    return replace(fit, extra={**fit.extra, "data": Path(source).name}) if source else fit


def runtime_supports(protection: ProtectedSum) -> bool:
    """True if an in-process run with ``protection`` goes through the site runtime.

    The runtime carries ``none``, ``secagg`` (SecAgg+ included), ``ckks`` (a
    simulated key holder), ``dp`` and ``secagg,dp`` (each site noises and
    charges its own ledger), with simulated dropouts (``--drop-sites``) and
    audit trails (not yet for ``ckks``: :func:`runtime_carries_audit`);
    ``secagg,ckks`` and ``ckks,dp`` still run in the coordinator's process.
    The runtime needs no Flower (:mod:`securefed.transport.messages`).
    """
    return getattr(protection, "name", None) in ("none", "secagg", "ckks", "dp", "secagg,dp")


def runtime_carries_audit(protection: ProtectedSum) -> bool:
    """True if the site runtime carries an audit trail under ``protection`` (not ``ckks``
    yet: the trail's registry would need the key holder the simulated sites trust)."""
    return getattr(protection, "name", None) != "ckks"


def run_glmm_remote(opts: GLMMOptions, transport, site_names: list[str], *,
                    protection: ProtectedSum,
                    on_step: Callable[[NewtonStep], None] | None = None,
                    audit: AuditTrail | None = None,
                    schema: DesignSchema | None = None, warnings: list[str] | None = None,
                    started: float | None = None) -> GLMMFit:
    """Fit a GLMM over remote sites (e.g. Flower SuperNodes) through ``transport``.

    The coordinator holds no rows: without ``schema`` it first asks every
    site for its variable report and agrees the factor levels from them
    (:mod:`securefed.remote_levels`); a site whose rows do not fit the
    agreed design refuses the round. ``protection`` gives the layer's public
    parameters (the sites run it). Results equal :func:`run_glmm` on the
    pooled rows of the same sites.
    ``warnings``: the run's warnings so far; ``started``: when the run began.
    """
    started = time.perf_counter() if started is None else started
    _check_options(opts)
    formula, family = _parse_model(opts)
    several = len(formula.model.random) > 1 or not formula.model.random[0].correlated
    if schema is None:  # the factor-levels round: the sites' own reports
        from securefed.remote_levels import remote_schema

        schema = remote_schema(transport, opts.formula, site_names, audit)
    fixed_names, random_names = _public_design(schema) if not several else (
        _public_fixed(schema), ())
    from securefed.coordinator import RemoteSite

    coordinator = Coordinator([RemoteSite(n) for n in site_names], protection,
                              audit=audit, transport=transport)
    try:
        if several:  # several random-effects terms: securefed.glmm_multi_run
            from securefed.glmm_multi_run import fit_multi

            design = GLMMSiteDesign(schema, family, 1, opts.na_action, opts.weights)
            fit = fit_multi(coordinator, opts, family, design, fixed_names,
                            list(warnings or []), started, on_step, _weighted(opts, formula))
            coordinator.finish_audit(fit.to_dict(), "glmm")
            return fit
        return _fit(coordinator, opts, formula, family, schema, fixed_names, random_names,
                    on_step, started, list(warnings or []))
    except ProtocolError as err:
        coordinator.abort_audit(err)
        raise


def _public_fixed(schema: DesignSchema) -> tuple[str, ...]:
    """Fixed-effect column names, from the schema alone."""
    try:
        return fixed_column_names(schema)
    except DesignError as err:
        raise InputError(str(err)) from None


def _public_design(schema: DesignSchema) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Fixed-effect and random-effect column names, from the schema alone."""
    try:
        return fixed_column_names(schema), random_column_names(schema)[0]
    except DesignError as err:
        raise InputError(str(err)) from None


def _fit(coordinator, opts, formula, family, schema, fixed_names, random_names, on_step,
         started, warnings) -> GLMMFit:
    """The federated part: the same rounds whether the sites are here or remote."""
    design = GLMMSiteDesign(schema, family, opts.nagq, opts.na_action, opts.weights)
    seed = opts.seed if opts.seed is not None else int(np.random.default_rng().integers(2**62))

    def prepare(keep: np.ndarray | None, fraction: float) -> None:
        coordinator.setup(lambda s: s.prepare_glmm(design, keep, fraction, seed))

    prepare(None, 0.0)
    check_robust_options(opts.robust, opts.robust_bound, dp=coordinator.privacy is not None,
                         remote=coordinator.transport is not None)
    if coordinator.privacy is not None and opts.reml:
        raise InputError("--reml is not available with differential privacy yet: drop --reml")
    if coordinator.privacy is not None:
        if formula.model.offsets or _weighted(opts, formula) or not family.canonical:
            raise InputError("offset(), weights, cbind() and non-canonical links under "
                             "differential privacy are not supported yet")
        return _run_glmm_dp(opts, coordinator, family, formula, fixed_names, random_names,
                            on_step, started)
    p = len(fixed_names)
    summary = coordinator.secure_sum("design-summary", lambda s: s.design_summary_vector())
    checked = check_design_summary(summary, coordinator, family=family, fixed_names=fixed_names,
                                   weighted=_weighted(opts, formula))
    n_obs, sum_y, sum_y2 = summary[:3]
    xty, xtx = summary[3:3 + p], from_upper_triangle(summary[3 + p:], p)
    dropped_idx = _collinear_columns(xtx)
    keep = np.array([j for j in range(p) if j not in dropped_idx], dtype=int)
    dropped_cols = tuple(fixed_names[j] for j in dropped_idx)
    if dropped_cols:
        warnings.append("dropped collinear or constant column(s): " + ", ".join(dropped_cols))
        fixed_names = tuple(fixed_names[j] for j in keep)
    layout = ParameterLayout.for_family(fixed_names, random_names, formula.group, family)
    keep_arg = keep if dropped_cols else None
    reference = checked.restricted(keep)
    start = starting_values(layout, family, n_obs, sum_y, sum_y2, xty[keep],
                            xtx[np.ix_(keep, keep)])

    def evaluate(lay: ParameterLayout, theta: np.ndarray, derivatives: bool) -> SummedTerms:
        purpose = "glmm-terms" if derivatives else "glmm-loglik"
        key = (purpose, lay, split_state[0], np.asarray(theta).tobytes())
        total = coordinator.secure_sum(
            purpose, lambda s: s.glmm_terms_vector(lay, theta, derivatives), key=key)
        check_glmm_terms(total, reference, lay, theta, derivatives, opts.nagq, purpose=purpose)
        extra = None
        if derivatives and not lay.random_effects:
            total, extra = np.split(total, [len(total) - lay.q * (lay.q + 1) // 2])
            extra = from_upper_triangle(extra, lay.q)
        value, grad, hess = unpack_terms(total, lay.size)
        if opts.reml:
            return _with_reml(coordinator, lay, theta, derivatives,
                              SummedTerms(value, grad, hess, extra), key)
        return SummedTerms(value, grad, hess, extra)

    extra: dict = {}
    lam = opts.lam
    split_state = ["all rows"]  # which rows the sites use: part of every query's key
    fit_glmm_restarting = _restarting(coordinator)
    if opts.lambda_grid:
        prepare(keep_arg, opts.validation_fraction)
        split_state[0] = "training rows"
        lam, extra = _select_lambda(opts, layout, start, evaluate, coordinator, on_step,
                                    fit_glmm_restarting, reference)
        prepare(keep_arg, 0.0)
        split_state[0] = "all rows"
    elif dropped_cols:
        prepare(keep_arg, 0.0)
    estimate = fit_glmm_restarting(evaluate, layout, start, lam=lam, tol=opts.tol,
                                   on_step=on_step)
    if opts.robust:  # the validator bounds each site's influence (securefed.robust)
        extra["robust"] = robust_glmm(coordinator, validator_for(True, opts.robust_bound),
                                      estimate, split_state[0])
    live = coordinator.live_sites
    # the coordinator never reads a site's rows, in-process either: the counts are a sum
    counts = coordinator.secure_sum("glmm-counts", lambda s: s.glmm_counts_vector())
    n_obs, n_groups = int(round(counts[0])), int(round(counts[1]))
    if coordinator.dropped:
        warnings.append("site(s) dropped out and were excluded from the fit: "
                        + ", ".join(coordinator.dropped))
    seconds = time.perf_counter() - started
    extra["factor_levels"] = {k: list(v) for k, v in schema.factors}  # for predict()
    extra["timings"] = coordinator.timings(seconds)
    fit = _make_fit(opts, estimate, family, int(n_obs), n_groups, len(live), coordinator,
                    warnings, dropped_cols, extra, seconds)
    coordinator.finish_audit(fit.to_dict(), "glmm")
    return fit


def _with_reml(coordinator, lay: ParameterLayout, theta: np.ndarray, derivatives: bool,
               ml: SummedTerms, key: tuple) -> SummedTerms:
    """``ml`` plus REML's ``-(1/2) log|X'V^-1 X|`` from one more sum (core_stats.glmm_reml)."""
    from core_stats.glmm_reml import reml_adjustment, reml_boundary_score, unpack_reml

    total = coordinator.secure_sum("glmm-reml", lambda s: s.glmm_reml_vector(lay, theta),
                                   key=("glmm-reml", *key[1:]))
    try:
        terms = unpack_reml(check_reml_terms(total, lay, ml if derivatives else None), lay)
        value, grad, hess = reml_adjustment(terms, lay, derivatives)
    except ValueError as err:
        raise InputError(f"the summed REML terms are not usable: {err}") from None
    if not derivatives:
        return SummedTerms(ml.value + value)
    extra = ml.extra
    if extra is not None and terms.between is not None:
        extra = extra + reml_boundary_score(terms, lay, theta)
    return SummedTerms(ml.value + value, ml.gradient + grad, ml.hessian + hess, extra)


def _run_glmm_dp(opts, coordinator, family, formula, fixed_names, random_names, on_step,
                 started) -> GLMMFit:
    """The budgeted DP fit (:mod:`securefed.glmm_dp`); plausibility checks assume exact sums."""
    from securefed.glmm_dp import fit_glmm_dp

    if opts.lambda_grid or opts.lam:
        raise InputError("--lambda and --lambda-grid are not available with differential "
                         "privacy (each validation sum would spend budget)")
    dp = coordinator.privacy.options
    warnings = []  # not the plaintext warnings: they name exact site sizes, which DP hides
    layout = ParameterLayout.for_family(fixed_names, random_names, formula.group, family)
    result = fit_glmm_dp(coordinator, layout, family, dp, on_step)
    estimate, n_obs, n_groups = result.estimate, result.n_obs, result.n_groups
    live = coordinator.live_sites
    if coordinator.dropped:
        warnings.append("site(s) dropped out and were excluded from the fit: "
                        + ", ".join(coordinator.dropped))
    seconds = time.perf_counter() - started
    privacy = {**coordinator.privacy.report(), "inference": result.report()}
    extra = {"timings": coordinator.timings(seconds), "privacy": privacy}
    fit = _make_fit(opts, estimate, family, int(round(n_obs)), int(round(n_groups)), len(live),
                    coordinator, warnings, (), extra, seconds)
    fit = replace(fit, counts_noisy=True)
    coordinator.finish_audit(fit.to_dict(), "glmm")
    return fit


def _effective_df(est: GLMMEstimate) -> float:
    """``tr(I (I + 2 lambda M)^{-1})`` with ``I`` the unpenalised information."""
    lay = est.layout
    info_pen = -est.terms.hessian
    mask = np.zeros(lay.size)
    mask[lay.beta] = [0.0 if n == "(Intercept)" else 1.0 for n in lay.fixed_names]
    info = info_pen - np.diag(2.0 * est.penalty * mask)
    return float(np.trace(np.linalg.solve(info_pen, info)))


class _SiteSetChanged(Exception):
    def __init__(self, restart: np.ndarray) -> None:
        self.restart = restart


def _expand(layout: ParameterLayout, lay: ParameterLayout, theta: np.ndarray) -> np.ndarray:
    """A point of ``layout`` from one of ``lay`` (a boundary face, its probe, or the GLM)."""
    if lay == layout:
        return np.asarray(theta, dtype=float).copy()
    lam = lay.lambda_matrix(theta)
    unit = lay.unit(theta)
    diagonal = np.diag_indices(layout.q)
    lam[diagonal] = np.maximum(np.abs(lam[diagonal]), 0.05 * unit)
    full = np.zeros(layout.size)
    full[layout.beta] = theta[lay.beta]
    if layout.has_dispersion:
        full[layout.scale_index] = theta[lay.scale_index]
    full[layout.cov] = [np.log(lam[r, c]) if r == c else lam[r, c]
                        for r, c in layout.cholesky_entries()]
    return full


def _restarting(coordinator: Coordinator):
    """``fit_glmm`` that restarts at a new point when a site drops out.

    After a dropout the objective (a sum over live sites) is another function,
    so Newton restarts. It restarts at a point where no sum was taken yet: one
    Newton step from the round that saw the dropout (or, after a value-only
    round, halfway back to the last full round), so the coordinator never holds
    two sums of the same query over different sites.
    """

    def run(evaluate, layout, start, **kwargs) -> GLMMEstimate:
        while True:
            version = coordinator.site_set_version
            last_full: list[np.ndarray] = []

            def guarded(lay, theta, derivatives, version=version, last_full=last_full):
                terms = evaluate(lay, theta, derivatives)
                if coordinator.site_set_version != version:
                    raise _SiteSetChanged(_new_point(layout, lay, theta, terms, last_full))
                if derivatives:
                    last_full[:] = [_expand(layout, lay, theta)]
                return terms

            try:
                return fit_glmm(guarded, layout, start, **kwargs)
            except _SiteSetChanged as changed:
                start = changed.restart

    return run


def _new_point(layout, lay, theta, terms: SummedTerms, last_full) -> np.ndarray:
    here = _expand(layout, lay, theta)
    if terms.gradient is not None:
        from core_stats.optimize import ridge_solve

        step, _ = ridge_solve(-terms.hessian, terms.gradient)
        scale = max(1.0, float(np.max(np.abs(step))))
        return _expand(layout, lay, np.asarray(theta) + step / scale)
    if last_full:
        return 0.5 * (here + last_full[0])
    return here + 1e-3


def _select_lambda(opts, layout, start, evaluate, coordinator, on_step, fit_restarting,
                   reference):
    """Fit each lambda on training rows; score it on the held-out rows."""
    table = []
    best = None
    for lam in opts.lambda_grid:  # each lambda starts where the previous one ended
        est = fit_restarting(evaluate, layout, start, lam=lam, tol=opts.tol, on_step=on_step)
        start = _expand(layout, est.layout, est.theta)
        val = coordinator.secure_sum(
            "validation-loglik", lambda s, e=est: s.validation_loglik_vector(e.layout, e.theta),
            key=("validation-loglik", est.layout.random_effects, est.theta.tobytes()))
        check_validation_loglik(val, reference, est.layout, est.theta)
        df = _effective_df(est)
        loglik_val, n_val = float(val[0]), float(val[1])
        if n_val == 0:
            raise InputError("the validation split is empty: use more rows or a larger fraction")
        row = {"lambda": lam, "heldout_loglik": loglik_val, "effective_df": df,
               "aic": -2 * loglik_val + 2 * df, "bic": -2 * loglik_val + df * np.log(n_val),
               "converged": est.converged}
        table.append(row)
        score = -loglik_val if opts.select == "heldout" else row[opts.select]
        if best is None or score < best[0]:
            best = (score, lam, est)
    _, lam, est = best
    extra = {"lambda_selection": {"criterion": opts.select, "chosen": lam, "table": table}}
    if get_family(opts.family, opts.link).binary:
        hist = coordinator.secure_sum(
            "validation-auc", lambda s: s.validation_histograms(est.layout, est.theta, AUC_BINS))
        check_validation_histograms(hist, reference)
        extra["auc_validation"] = auc_from_histograms(hist[:AUC_BINS], hist[AUC_BINS:])
    return lam, extra


def _conditional_beta(cov: np.ndarray, info: np.ndarray, lay: ParameterLayout) -> np.ndarray:
    """lmer's REML ``vcov``: ``(X'V^-1 X)^-1`` at the estimates (given the variance
    parameters; ``X'V^-1 X`` is the beta block of ``info``), no cross terms."""
    out = cov.copy()
    out[lay.beta, :] = 0.0
    out[:, lay.beta] = 0.0
    out[lay.beta, lay.beta] = covariance(info[lay.beta, lay.beta])
    return out


def _make_fit(opts, est: GLMMEstimate, family, n_obs, n_groups, n_sites, coordinator,
              warnings, dropped_cols, extra, seconds) -> GLMMFit:
    lay = est.layout
    cov = covariance(-est.terms.hessian)
    if opts.reml:
        cov = _conditional_beta(cov, -est.terms.hessian, lay)
    fixed = wald_fixed_effects(lay.fixed_names, est.theta[lay.beta], cov[lay.beta, lay.beta])
    sds, corrs = random_effect_table(lay, est.theta, cov)
    if family.has_dispersion and not family.dispersion.residual_sd:
        extra = {**extra, "dispersion": dispersion_estimate(lay, est.theta, cov,
                                                            family.dispersion.report)}
    full_k = len(lay.fixed_names) + lay.q * (lay.q + 1) // 2 + int(lay.has_dispersion)
    aic, bic = information_criteria(est.loglik, full_k, n_obs)
    if opts.reml:
        extra = {**extra, "reml_criterion": -2.0 * est.loglik}
    if not est.converged:
        warnings = [*warnings, f"the fit did not converge: {est.message}"]
    return GLMMFit(
        formula=opts.formula, family=family.name, link=family.link, nagq=opts.nagq,
        fixed_effects=tuple(fixed), random_effects=tuple(sds), correlations=tuple(corrs),
        loglik=est.loglik, aic=aic, bic=bic, converged=est.converged, singular=est.singular,
        rounds=coordinator.round_id, iterations=est.iterations, n_obs=n_obs, n_groups=n_groups,
        n_sites=n_sites, penalty_lambda=est.penalty, protection=coordinator.protection.name,
        theta=tuple(float(v) for v in est.theta), parameter_names=lay.parameter_names(),
        covariance=tuple(tuple(float(v) for v in row) for row in cov), trace=est.trace,
        message=est.message, warnings=tuple(warnings), dropped_columns=dropped_cols,
        dropped_sites=tuple(coordinator.dropped),
        bytes_sent_per_site=coordinator.mean_bytes_per_site(), seconds=seconds, extra=extra,
        reml=opts.reml,
        n_sites_counted=coordinator.counted_sites(),
    )
