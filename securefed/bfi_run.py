"""A federated BFI fit: standardise, fit locally, sum once, combine.

Rounds: one sum of ``(n_l, 1)`` (rows and sites; the set-up round); (optional)
one sum of ``(n, sum x, sum x^2)`` for pooled standardisation; one sum of the
layout's site vectors; for centre-specific
parameters the shared estimate is then broadcast and every site computes its
own centre estimate. Every released quantity is a sum over sites, except the
centre-specific estimates, which are the output the consortium asked for.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from core_stats import bfi
from core_stats.design import DesignError, parse_mixed_formula
from core_stats.families import Family, get_family
from core_stats.formula import (
    DesignSchema,
    agree_schema,
    deparse,
    fixed_column_names,
    model_data,
    variable_report,
)
from core_stats.standardize import StandardizeLayout
from protocols.errors import ProtocolError
from protocols.stack import PlaintextSum, ProtectedSum
from securefed.audit_keys import TrailKeys
from securefed.audit_trail import AuditTrail, describe_protection
from securefed.bfi_tables import BFITables
from securefed.coordinator import Coordinator
from securefed.data import check_numeric_columns
from securefed.dp_bfi import fit_from_noisy_sums, precision_weighted
from securefed.errors import InputError
from securefed.plausibility import BFIGuard, check_bfi_count
from securefed.plausibility_dp import check_dp_count, check_dp_standardize, check_dp_summary
from securefed.privacy import DpQuery
from securefed.robust.runs import check_robust_options, robust_bfi, validator_for
from securefed.robust.validator import robust_summary_line
from securefed.site import Site

__all__ = ["BFIOptions", "BFIReport", "run_bfi", "run_bfi_remote"]

_DERIVED = DpQuery.derived("BFI terms from the sites' noisy local fits")
# Shares of a BFI run's zCDP budget (standardisation only when asked for; the
# sufficient statistics get the rest).
DP_SHARES = {"count": 0.05, "standardize": 0.15}

SCALE_TERM = bfi.SCALE_NAME
ESTIMATE_ROUNDS = ("bfi-terms", "bfi-sufficient-statistics")  # the sums an estimate holds


@dataclass(frozen=True)
class BFIOptions:
    formula: str
    family: str
    site_column: str
    lam: float = 0.01
    intercept_lam: float | None = None
    scale_lam: float | None = None
    combined_lam: float | None = None  # the combined-data prior; None: the sites' prior
    stratify: tuple[str, ...] = ()
    center_covariate: str | None = None
    center_covariate_kind: str = "categorical"
    standardize: tuple[str, ...] = ()
    compare_pooled: bool = False
    heterogeneity: tuple[str, ...] = ()
    level: float = 0.95
    na_action: str = "omit"
    link: str | None = None  # None: the family's canonical link
    theta_bound: float | None = None  # public |theta_l,j| bound of the linear check; None: 100
    weights: str | None = None  # the column of prior weights (glm's weights=)
    robust: bool = False  # bounded influence (securefed.robust): refuse a dominating site
    robust_bound: float = 2.0  # the largest leave-one-out shift allowed, in honest SEs


@dataclass(frozen=True)
class BFIReport(BFITables):
    """A BFI result with the run's bookkeeping; ``to_dict`` is the JSON contract."""

    options: BFIOptions
    fit: bfi.BFIFit
    term_names: tuple[str, ...]
    estimates: tuple[dict, ...]
    n_sites: int
    protection: str
    n_sites_counted: int | None = None  # sites whose local fits the combination holds
    pooled: tuple[dict, ...] | None = None
    pooled_dispersion: float | None = None
    heterogeneity: dict = field(default_factory=dict)
    centre_regression: dict | None = None
    standardization: dict | None = None
    dropped_sites: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    bytes_sent_per_site: int = 0
    rounds: int = 0
    seconds: float = 0.0
    timings: dict = field(default_factory=dict)
    site_thetas: dict = field(default_factory=dict, repr=False)  # site -> its parameter vector
    pooled_site_thetas: dict = field(default_factory=dict, repr=False)
    parameter_names: tuple[str, ...] = ()
    privacy: dict | None = None
    schema: DesignSchema | None = None  # the agreed design (factor levels) for predictions
    robust: dict | None = None  # the validator's verdict under --robust

    def theta_for(self, site: str | None) -> np.ndarray:
        """The parameter vector that predicts for ``site`` (shared when homogeneous)."""
        if site is not None and str(site) in self.site_thetas:
            return self.site_thetas[str(site)]
        if self.options.stratify or self.options.center_covariate:
            raise InputError(f"no centre-specific estimate for site {site!r}: predictions from "
                             "a stratified fit need the rows' own site")
        return self.fit.estimate

    def to_dict(self) -> dict:
        out = {
            "estimates": list(self.estimates),
            "dispersion": self.fit.dispersion,
            "family": self.fit.family.name,
            "link": self.fit.family.link,
            "weights": self.options.weights,
            "lambda": self.options.lam,
            "n_sites": self.n_sites,
            "n_sites_counted": self.n_sites_counted,
            "n_obs": self.fit.n_obs,
            "formula": self.options.formula,
            "factor_levels": {} if self.schema is None else
            {k: list(v) for k, v in self.schema.factors},
            "stratify": list(self.options.stratify),
            "center_covariate": self.options.center_covariate,
            "protection": self.protection,
            "dropped_sites": list(self.dropped_sites),
            "warnings": list(self.warnings),
            "rounds": self.rounds,
            "bytes_sent_per_site": self.bytes_sent_per_site,
            "seconds": self.seconds,
            "timings": self.timings,
        }
        if self.pooled is not None:
            out["pooled"] = {"estimates": list(self.pooled), "dispersion": self.pooled_dispersion}
        if self.heterogeneity:
            out["heterogeneity"] = self.heterogeneity
        if self.centre_regression is not None:
            out["centre_regression"] = self.centre_regression
        if self.standardization is not None:
            out["standardization"] = self.standardization
        if self.privacy is not None:
            out["privacy"] = self.privacy
        if self.robust is not None:
            out["robust"] = self.robust
        return out

    def summary(self) -> str:
        lines = [f"Bayesian Federated Inference ({self.fit.family.name}), {self.n_sites} sites, "
                 f"protection: {self.protection}", f"Formula: {self.options.formula}",
                 f"Prior precision lambda = {self.options.lam:g}"
                 + (f"; prior weights: {self.options.weights}" if self.options.weights else ""),
                 "",
                 f"{'term':<28} {'estimate':>10} {'sd':>9} {'CI low':>9} {'CI high':>9}"
                 + (f" {'pooled':>9}" if self.pooled else "")]
        pooled = {row["term"]: row for row in self.pooled or ()}
        for row in self.estimates:
            text = (f"{row['term']:<28} {row['estimate']:10.4f} {row['sd']:9.4f} "
                    f"{row['ci_low']:9.4f} {row['ci_high']:9.4f}")
            if row["term"] in pooled:
                text += f" {pooled[row['term']]['estimate']:9.4f}"
            lines.append(text)
        if self.fit.dispersion is not None:
            lines.append(f"dispersion (sigma^2) = {self.fit.dispersion:.4f}")
        inference = (self.privacy or {}).get("inference")
        if inference:
            lines.append(f"Number of obs (noisy): ~{inference['n_obs_noisy']:.0f}; sd and "
                         "intervals carry the privacy noise (parametric bootstrap of the noisy "
                         f"sums): up to {100 * inference['noise_share_of_variance']:.0f}% of "
                         "an estimate's variance is noise")
        for term, table in self.heterogeneity.items():
            flagged = [r["label"] for r in table["leave_one_out"] if r["excludes_zero"]]
            lines.append(f"heterogeneity of {term}: leave-one-out intervals exclude 0 for "
                         f"{len(flagged)} of {self.n_sites} sites"
                         + (f" ({', '.join(flagged)})" if flagged else ""))
        if self.robust is not None:
            lines.append(robust_summary_line(self.robust))
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def _rows(names: tuple[str, ...], fit_like, sd, low, high) -> list[dict]:
    return [{"term": n, "estimate": float(e), "sd": float(s), "ci_low": float(lo),
             "ci_high": float(hi)} for n, e, s, lo, hi in zip(names, fit_like, sd, low, high,
                                                            strict=True)]


def _parse_model(opts: BFIOptions) -> tuple:
    """The formula and family of ``opts``, checked without any data."""
    try:
        formula = parse_mixed_formula(opts.formula, require_random=False)
        family = get_family(opts.family, opts.link)
    except (DesignError, ValueError) as err:
        raise InputError(str(err)) from None
    if not family.bfi:
        raise InputError(f"BFI does not support the {family.name} family yet: fit it with "
                         "'securefed fit' (the federated GLMM)")
    if opts.lam <= 0:
        raise InputError("--lambda must be positive for BFI (it is the prior precision)")
    return formula, family


def _validate(frame: pd.DataFrame, opts: BFIOptions) -> tuple:
    formula, family = _parse_model(opts)
    if opts.center_covariate_kind not in ("categorical", "continuous"):
        raise InputError("--center-covariate-kind must be categorical or continuous")
    columns = [*opts.standardize] + ([opts.center_covariate] if opts.center_covariate else [])
    weights = [opts.weights] if opts.weights else []
    for col in [opts.site_column, *formula.model.columns, *weights, *columns]:
        if col not in frame.columns:
            raise InputError(f"column '{col}' is not in {frame.attrs.get('source', 'the data')} "
                             f"(its columns: {', '.join(map(str, frame.columns[:12]))})")
    check_numeric_columns(frame, columns)
    return formula, family


def _complete_rows(parts: dict[str, pd.DataFrame], formula, opts: BFIOptions
                   ) -> tuple[dict[str, pd.DataFrame], list[str]]:
    """R's na.omit at each site: rows missing a model value are dropped and counted."""
    used = list(formula.model.columns) + ([opts.weights] if opts.weights else [])
    out, notes = {}, []
    for name, part in parts.items():
        incomplete = part[used].isna().any(axis=1)
        if incomplete.any():
            if opts.na_action == "fail":
                raise InputError(f"site {name}: {int(incomplete.sum())} row(s) have missing "
                                 "values in the model's columns (use --na-action omit)")
            notes.append(f"site {name}: {int(incomplete.sum())} row(s) with missing values "
                         "omitted")
        out[name] = part.loc[~incomplete]
    return out, notes


def _schema(opts: BFIOptions, formula, family, parts: dict[str, pd.DataFrame]) -> DesignSchema:
    """The agreed design (factor levels from every site's own report) and its outcome checks."""
    try:
        schema = agree_schema(opts.formula, [variable_report(formula.model, p)
                                             for p in parts.values()])
        data = [model_data(schema, p, weights_column=opts.weights) for p in parts.values()]
    except DesignError as err:
        raise InputError(str(err)) from None
    outcome = np.concatenate([d.y for d in data])
    weights = None if data[0].weights is None else np.concatenate([d.weights for d in data])
    try:
        family.check_outcome(outcome, weights)
    except ValueError as err:
        raise InputError(f"outcome '{formula.outcome}': {err}") from None
    return schema


def _standardize(coordinator: Coordinator, parts: dict[str, pd.DataFrame],
                 columns: tuple[str, ...], guard: BFIGuard) -> dict:
    privacy = coordinator.privacy
    if privacy is None:
        layout = StandardizeLayout(len(columns))
        total = coordinator.secure_sum(
            "bfi-standardize", lambda site: layout.site_vector(
                parts[site.name][list(columns)].to_numpy(dtype=float)))
        guard.standardize(total, coordinator)
        std = layout.combine(total)
    else:
        std = _dp_standardize(coordinator, parts, columns)
    for name, part in parts.items():
        parts[name] = part.assign(**dict(zip(columns, std.apply(
            part[list(columns)].to_numpy(dtype=float)).T, strict=True)))
    return {"columns": list(columns), "mean": std.mean.tolist(), "sd": std.sd.tolist()}


def _dp_standardize(coordinator: Coordinator, parts: dict[str, pd.DataFrame],
                    columns: tuple[str, ...]):
    """Standardisation sums under DP (Δ: :mod:`securefed.dp_statistics`).

    Noisy variances are floored at ``(h/100)²`` and means kept inside the range.
    """
    from core_stats.standardize import Standardization
    from securefed.dp_statistics import standardize_sensitivity, standardize_vector

    privacy = coordinator.privacy
    ranges = privacy.options.standardize_range_for(columns)
    low, high = (np.array([r[i] for r in ranges]) for i in (0, 1))
    centre, half = (low + high) / 2.0, (high - low) / 2.0
    total = coordinator.secure_sum(
        "bfi-standardize", lambda site: standardize_vector(
            parts[site.name][list(columns)].to_numpy(dtype=float), low, high),
        dp=DpQuery("standardisation sums", standardize_sensitivity(low, high),
                   DP_SHARES["standardize"] * privacy.options.run_rho))
    contributors = len(coordinator.rounds[-1].contributors)
    check_dp_standardize(total, privacy.sum_noise_sd(contributors), half, contributors)
    m = len(columns)
    n = max(float(total[0]), 2.0)
    s1, s2 = total[1:1 + m], total[1 + m:]
    var = np.maximum((s2 - s1**2 / n) / (n - 1.0), (half / 100.0) ** 2)
    return Standardization(int(round(n)), np.clip(centre + s1 / n, low, high), np.sqrt(var))


def run_bfi(frame: pd.DataFrame, opts: BFIOptions, *, protection: ProtectedSum | None = None,
            audit_log: str | Path | None = None,
            audit_keys: TrailKeys | None = None, site_runtime: bool = True) -> BFIReport:
    """BFI over the sites named by ``opts.site_column`` (see module docstring).

    Every site is simulated in this process. A homogeneous model (no
    stratified or centre-covariate parameters, no heterogeneity table or
    pooled comparison) under ``none`` or ``secagg`` without an audit trail runs,
    with ``site_runtime``, through the site runtime: each site fits itself and
    answers through the ClientApp handler with its own keys and policy
    (:mod:`securefed.transport.loopback`). Otherwise the coordinator fits each
    site's local model from its rows (the same result). ``audit_keys``: the
    consortium identities that sign the trail at ``audit_log`` (default: keys
    made for the run). A protocol abort or a refused aggregate is logged
    (REFUSAL, then a countersigned checkpoint) before the error propagates.
    """
    created: list[Coordinator] = []
    try:
        if site_runtime and _runtime_carries(opts, protection, audit_log is not None):
            return _run_bfi_runtime(frame, opts, protection or PlaintextSum(), audit_log,
                                    audit_keys)
        return _run_bfi(frame, opts, protection, audit_log, created, audit_keys)
    except ProtocolError as err:
        if created:
            created[0].abort_audit(err)
        raise


def _runtime_carries(opts: BFIOptions, protection: ProtectedSum | None,
                     audited: bool = False) -> bool:
    from securefed.glmm_run import runtime_carries_audit, runtime_supports

    per_site = (opts.stratify or opts.center_covariate or opts.heterogeneity
                or opts.compare_pooled or opts.robust)
    if getattr(protection, "privacy", None) is not None and opts.standardize:
        return False  # DP standardisation: not carried by the runtime yet
    protection = protection or PlaintextSum()
    return not per_site and runtime_supports(protection) and (
        not audited or runtime_carries_audit(protection))


def _run_bfi_runtime(frame: pd.DataFrame, opts: BFIOptions, protection,
                     audit_log: str | Path | None = None,
                     audit_keys: TrailKeys | None = None) -> BFIReport:
    """:func:`run_bfi` through the site runtime (see there)."""
    from securefed.transport.loopback import loopback_rounds

    started = time.perf_counter()
    formula, family = _validate(frame, opts)
    parts = {str(k): v for k, v in frame.groupby(opts.site_column, sort=True)}
    if not parts:
        raise InputError("no sites found")
    parts, omitted = _complete_rows(parts, formula, opts)
    schema = _schema(opts, formula, family, parts)
    warnings = [f"site {n} has only {len(p)} rows" for n, p in parts.items() if len(p) < 10]
    audit = None if audit_log is None else _start_trail(audit_log, parts, opts, protection,
                                                        audit_keys)
    with loopback_rounds({n: Site(n, p) for n, p in parts.items()}, protection,
                         trail=audit) as rounds:
        return run_bfi_remote(opts, rounds, list(parts), protection=protection, schema=schema,
                              warnings=warnings + omitted, started=started, audit=audit)


def _start_trail(audit_log: str | Path, parts: dict, opts: BFIOptions, protection,
                 audit_keys: TrailKeys | None) -> AuditTrail:
    return AuditTrail.start(audit_log, site_names=list(parts), model="bfi", config=asdict(opts),
                            protection=describe_protection(protection), keys=audit_keys)


def _run_bfi(frame, opts, protection, audit_log, created, audit_keys) -> BFIReport:
    started = time.perf_counter()
    formula, family = _validate(frame, opts)
    parts = {str(k): v for k, v in frame.groupby(opts.site_column, sort=True)}
    if len(parts) < 1:
        raise InputError("no sites found")
    parts, omitted = _complete_rows(parts, formula, opts)
    schema = _schema(opts, formula, family, parts)
    protection = protection or PlaintextSum()
    audit = None if audit_log is None else _start_trail(audit_log, parts, opts, protection,
                                                        audit_keys)
    coordinator = Coordinator([Site(n, p) for n, p in parts.items()], protection, audit=audit)
    created.append(coordinator)
    # Round 1 counts rows and sites: the protocol's set-up round; a site lost in
    # it takes no part in the sums the estimates are made of.
    privacy = coordinator.privacy
    check_robust_options(opts.robust, opts.robust_bound, dp=privacy is not None, remote=False,
                         unsupported="--stratify or --center-covariate"
                         if opts.stratify or opts.center_covariate else None)
    if privacy is not None:
        _check_dp(opts, family, privacy.options)
    count = _count_round(coordinator)
    parts = {s.name: parts[s.name] for s in coordinator.live_sites}
    names = fixed_column_names(schema)
    prior, combined = _priors(opts, family, names)
    guard = BFIGuard(count, prior, family, opts.theta_bound, *_rows_kind(opts, schema)) \
        if privacy is None else _Unchecked()
    standardization = _standardize(coordinator, parts, opts.standardize, guard) \
        if opts.standardize else None
    data = {n: model_data(schema, p, weights_column=opts.weights) for n, p in parts.items()}
    designs = {n: d.X for n, d in data.items()}
    outcome = {n: d.y for n, d in data.items()}
    inference = None
    if privacy is None:
        locals_ = {}
        for name in parts:
            try:
                locals_[name] = bfi.fit_map(designs[name], outcome[name], family, prior,
                                            names=names, offset=data[name].offset,
                                            weights=data[name].weights)
            except (bfi.MAPConvergenceError, np.linalg.LinAlgError, ValueError) as err:
                raise InputError(f"site {name}: the local fit failed ({err})") from None
        warnings = [f"site {n} has only {len(p)} rows" for n, p in parts.items() if len(p) < 10]
        warnings += omitted
        full_names = locals_[next(iter(locals_))].names
        fit, estimates, extra = _combine(coordinator, opts, family, locals_, parts, full_names,
                                         guard, combined)
    else:
        fit, inference = _dp_pooled(coordinator, designs, outcome,
                                    prior if combined is None else combined, names, family,
                                    opts, bool(opts.standardize), count)
        locals_, warnings, full_names = {}, [], fit.names  # exact site sizes are not private
        estimates = _rows(fit.names, fit.estimate, fit.sd, fit.lower, fit.upper)
        extra = {"site_thetas": {s.name: fit.estimate for s in coordinator.live_sites}}
    site_thetas = extra.pop("site_thetas")
    live = [s.name for s in coordinator.live_sites]
    if coordinator.dropped:
        warnings.append("site(s) dropped out and were excluded: " + ", ".join(coordinator.dropped))
        parts = {n: parts[n] for n in live}
        locals_ = {n: locals_[n] for n in live if n in locals_}
    pooled = pooled_disp = None
    pooled_thetas: dict = {}
    if opts.compare_pooled:
        pooled_fit, pooled_thetas = _pooled(opts, family, names, full_names, data, parts,
                                            prior if combined is None else combined)
        pooled = tuple(_rows(pooled_fit.names, pooled_fit.estimate, pooled_fit.sd,
                             pooled_fit.lower, pooled_fit.upper))
        pooled_disp = pooled_fit.dispersion
    heterogeneity = _heterogeneity(opts, family, locals_, full_names) if opts.heterogeneity else {}
    report = BFIReport(
        options=opts, fit=fit, term_names=tuple(r["term"] for r in estimates),
        estimates=tuple(estimates), n_sites=len(live), protection=coordinator.protection.name,
        n_sites_counted=coordinator.counted_sites(*ESTIMATE_ROUNDS),
        pooled=pooled, pooled_dispersion=pooled_disp, heterogeneity=heterogeneity,
        centre_regression=extra.get("centre_regression"), standardization=standardization,
        dropped_sites=tuple(coordinator.dropped), warnings=tuple(warnings),
        bytes_sent_per_site=coordinator.mean_bytes_per_site(), rounds=coordinator.round_id,
        seconds=time.perf_counter() - started, site_thetas=site_thetas,
        timings=coordinator.timings(time.perf_counter() - started),
        parameter_names=full_names, pooled_site_thetas=pooled_thetas,
        privacy=None if privacy is None else {**privacy.report(), "inference": inference},
        schema=schema, robust=extra.get("robust"))
    coordinator.finish_audit(report.to_dict(), "bfi")
    return report


def _count_round(coordinator: Coordinator, schema: DesignSchema | None = None,
                 weights: str | None = None):
    """Round 1: rows and sites (the protocol's set-up round); the checked count, or under
    DP the noisy one (not checked; it sharpens the sums' own noisy count). With
    ``schema`` (remote sites, whose rows may miss values) the rows the model uses."""
    privacy = coordinator.privacy
    counted = coordinator.secure_sum(
        "bfi-count", lambda site: site.count_vector() if schema is None else
        site.count_vector(schema, weights),
        dp=None if privacy is None else DpQuery("row count", 1.0,
                                                DP_SHARES["count"] * privacy.options.run_rho))
    if privacy is None:
        return check_bfi_count(counted, coordinator)
    contributors = len(coordinator.rounds[-1].contributors)
    check_dp_count(counted, privacy.sum_noise_sd(contributors), contributors)
    return counted


def _priors(opts: BFIOptions, family: Family, names) -> tuple[np.ndarray, np.ndarray | None]:
    """The local prior precision and, with ``combined_lam``, the combined one."""
    intercept = names.index("(Intercept)") if "(Intercept)" in names else None

    def precision(lam: float) -> np.ndarray:
        return bfi.prior_precision(len(names), family, lam=lam, intercept_lam=opts.intercept_lam,
                                   scale_lam=opts.scale_lam, intercept_index=intercept)

    if opts.combined_lam is not None and opts.combined_lam <= 0:
        raise InputError("--combined-lambda must be positive")
    return precision(opts.lam), (None if opts.combined_lam is None
                                 else precision(opts.combined_lam))


def _rows_kind(opts: BFIOptions, schema: DesignSchema) -> tuple[bool, bool]:
    """``(weighted, offset)``: prior weights or cbind() (rows of several records), offset()."""
    model = schema.parsed
    weighted = bool(opts.weights) or deparse(model.response).startswith("cbind(")
    return weighted, bool(model.offsets)


class _Unchecked:
    """Under DP the sums are noisy: the exact-arithmetic checks do not apply; the interval
    checks of :mod:`securefed.plausibility_dp` run on each noisy sum instead."""

    def terms(self, *args, **kwargs) -> None:
        return None


def _check_dp(opts: BFIOptions, family: Family, dp) -> None:
    from core_stats.formula import parse_formula

    model = parse_formula(opts.formula)
    if model.offsets or opts.weights or deparse(model.response).startswith("cbind("):
        raise InputError("offset(), --weights and cbind() are not available for BFI under "
                         "differential privacy: its noise is sized for one unweighted record "
                         "per row (run without dp, or drop them)")
    if not family.canonical:
        raise InputError(f"--link {family.link} is not available for BFI under differential "
                         "privacy: its noisy statistics fit the logit model (use logit)")
    if not family.dp_sufficient_statistics:
        raise InputError("BFI under differential privacy is available for the gaussian and "
                         "binomial families (local fits from noisy sufficient statistics); for "
                         f"{family.name} outcomes use 'securefed fit' with --protect ...,dp")
    if opts.standardize:
        dp.standardize_range_for(opts.standardize)  # InputError naming the flag if missing
    if opts.compare_pooled:
        raise InputError("--compare-pooled releases a non-private pooled fit: run it "
                         "separately, without dp")
    for flag, used in (("--stratify", opts.stratify), ("--center-covariate",
                       opts.center_covariate), ("--heterogeneity", opts.heterogeneity)):
        if used:
            raise InputError(f"{flag} is not available under dp yet: under dp BFI fits the "
                             "homogeneous model from the sites' summed noisy statistics")


def _dp_pooled(coordinator: Coordinator, designs: dict, outcome: dict, prior: np.ndarray,
               names: tuple[str, ...], family: Family, opts: BFIOptions, standardized: bool,
               count: np.ndarray):
    """One noisy secure sum of the sites' clipped sufficient statistics, and the fit from it.

    The noise is sized for the sum (the distributed discrete Gaussian over m
    contributors under ``secagg``/``ckks``); the fit and its noise-aware
    covariance are post-processing (:mod:`securefed.dp_bfi`).
    """
    from securefed.dp_statistics import summary_query, summary_vector

    if family.binary and "(Intercept)" not in names:
        raise InputError("binomial BFI under dp needs an intercept in the formula")
    privacy = coordinator.privacy
    dp = privacy.options
    bound = dp.outcome_scale(family.name)
    spent = DP_SHARES["count"] + (DP_SHARES["standardize"] if standardized else 0.0)
    total = coordinator.secure_sum(
        "bfi-sufficient-statistics",
        lambda s: summary_vector(designs[s.name], outcome[s.name], dp.clip, bound, family.name),
        dp=summary_query("sufficient statistics", dp.clip, bound, (1.0 - spent) * dp.run_rho))
    privacy.clipped_records = float(total[-2])
    return _fit_from_sums(coordinator, total, names, family, prior, opts.level, count)


def _fit_from_sums(coordinator: Coordinator, total: np.ndarray, names, family, prior, level,
                   count: np.ndarray):
    """The fit from the noisy sums (checked: :mod:`securefed.plausibility_dp`), their row
    count sharpened by the count round's."""
    privacy = coordinator.privacy
    dp = privacy.options
    contributors = len(coordinator.rounds[-1].contributors)
    check_dp_summary(total, privacy.sum_noise_sd(contributors), p=len(names), clip=dp.clip,
                     outcome_bound=dp.outcome_scale(family.name), family=family.name,
                     contributors=contributors, purpose="bfi-sufficient-statistics")
    noise = float(np.max(privacy.sum_noise_sd(len(coordinator.rounds[-1].contributors))))
    count_sd = next(r["noise_sd_units"] for r in privacy.releases if r["purpose"] == "row count")
    total = total.copy()
    total[0] = precision_weighted(total[0], noise, count[0], count_sd)
    try:
        return fit_from_noisy_sums(total, tuple(names), family, prior, noise,
                                   len(coordinator.live_sites), level)
    except (bfi.MAPConvergenceError, np.linalg.LinAlgError) as err:
        raise InputError(f"the fit from the noisy summed statistics failed ({err}); a larger "
                         "--epsilon or a smaller --dp-clip helps") from None


def _site_groups(opts: BFIOptions, parts: dict) -> dict[str, str]:
    """Which block of centre-specific columns each site uses in the pooled model."""
    if opts.center_covariate and opts.center_covariate_kind == "categorical":
        return {s: _level_label(opts.center_covariate, p[opts.center_covariate].iloc[0])
                for s, p in parts.items()}
    return {s: f"{opts.site_column}={s}" for s in parts}


def _level_label(column: str, value) -> str:
    return f"{column}={value:g}" if isinstance(value, int | float) else f"{column}={value}"


def _pooled(opts, family, names, full_names, data, parts, prior):
    """The pooled MAP fit of the same model, with per-centre columns as dummies.

    Centre-specific (or category-specific) coefficients become one column per
    centre (category): ``x_j * 1[row in centre]``. Returns the fit and, per
    site, its parameter vector in the local order (for prediction).
    """
    centre = _indices(opts, full_names)
    if any(full_names[j] == SCALE_TERM for j in centre):
        raise InputError("--compare-pooled cannot stratify the Gaussian scale: the pooled "
                         "model has one residual SD")
    if opts.center_covariate and opts.center_covariate_kind == "continuous":
        centre = ()
    group_of = _site_groups(opts, parts)
    groups = sorted(set(group_of.values()), key=list(group_of.values()).index)
    shared = [j for j in range(len(names)) if j not in centre]
    pooled_names = [names[j] for j in shared]
    sep = ":" if opts.center_covariate else ""
    for j in centre:
        pooled_names += [f"{names[j]}{sep}[{g}]" if not sep else f"{names[j]}{sep}{g}"
                         for g in groups]
    blocks = []
    for site in parts:
        X = data[site].X
        cols = [X[:, shared]]
        for j in centre:
            dummies = np.zeros((X.shape[0], len(groups)))
            dummies[:, groups.index(group_of[site])] = X[:, j]
            cols.append(dummies)
        blocks.append(np.hstack(cols))
    n_pooled = len(pooled_names)
    pooled_prior = np.eye(n_pooled + (len(full_names) - len(names))) * 0.0
    diag = np.diag(prior)
    pooled_diag = [diag[j] for j in shared]
    for j in centre:
        pooled_diag += [diag[j]] * len(groups)
    pooled_diag += list(diag[len(names):])
    pooled_prior = np.diag(pooled_diag)
    fit = bfi.fit_pooled(np.vstack(blocks), np.concatenate([data[s].y for s in parts]), family,
                         pooled_prior, names=tuple(pooled_names), level=opts.level,
                         offset=_stacked(data, parts, "offset"),
                         weights=_stacked(data, parts, "weights"))
    thetas = {}
    for site in parts:
        theta = np.empty(len(full_names))
        for j in range(len(names)):
            if j in centre:
                k = len(shared) + centre.index(j) * len(groups) + groups.index(group_of[site])
            else:
                k = shared.index(j)
            theta[j] = fit.estimate[k]
        theta[len(names):] = fit.estimate[n_pooled:]
        thetas[site] = theta
    return fit, thetas


def _stacked(data: dict, parts, field: str) -> np.ndarray | None:
    """The sites' offsets or weights stacked in ``parts``' order (None if the model has none)."""
    values = [getattr(data[s], field) for s in parts]
    return None if values[0] is None else np.concatenate(values)


def _indices(opts: BFIOptions, names: tuple[str, ...]) -> tuple[int, ...]:
    wanted = opts.stratify or (("(Intercept)",) if opts.center_covariate else ())
    out = []
    for term in wanted:
        term = SCALE_TERM if term in ("sigma", "scale") else term
        if term not in names:
            raise InputError(f"--stratify {term!r}: not a parameter (choose from "
                             f"{', '.join(names)})")
        out.append(names.index(term))
    return tuple(out)


def _combine(coordinator: Coordinator, opts: BFIOptions, family: Family, locals_: dict,
             parts: dict, names: tuple[str, ...], guard: BFIGuard,
             combined: np.ndarray | None = None):
    """Sum the layout's site vectors and combine (``combined``: the combined-data prior)."""
    level = opts.level
    centre = _indices(opts, names)
    if opts.center_covariate and opts.center_covariate_kind == "categorical":
        return _combine_categorical(coordinator, opts, family, locals_, parts, names, centre,
                                    guard, combined)
    if not centre:
        layout = bfi.HomogeneousLayout(names, family)
        validator = validator_for(opts.robust, opts.robust_bound)
        compute = lambda s: layout.site_vector(locals_[s.name])  # noqa: E731
        total = coordinator.secure_sum("bfi-terms", compute if validator is None
                                       else validator.tee("bfi-terms", compute), dp=_DERIVED)
        robust = None if validator is None else robust_bfi(  # per site first: names it
            coordinator, validator, layout, total, combined, SCALE_TERM, guard)
        guard.terms(total, coordinator, layout)
        fit = layout.combine(total, combined_prior=combined, level=level)
        thetas = {s.name: fit.estimate for s in coordinator.live_sites}
        extra = {"site_thetas": thetas} if robust is None else {"site_thetas": thetas,
                                                                "robust": robust}
        return fit, _rows(fit.names, fit.estimate, fit.sd, fit.lower, fit.upper), extra
    layout = bfi.CentreSpecificLayout(names, family, centre)
    total = coordinator.secure_sum("bfi-terms", lambda s: layout.site_vector(locals_[s.name]),
                                   dp=_DERIVED)
    guard.terms(total, coordinator, layout)
    locals_ = {s.name: locals_[s.name] for s in coordinator.live_sites}
    shared = list(layout.shared_params)
    fit = layout.combine(total, level=level, combined_prior=None if combined is None
                         else combined[np.ix_(shared, shared)])
    centres = {n: layout.centre_estimate(locals_[n], fit) for n in locals_}
    fit = fit.with_centres(tuple(centres.values()))
    rows = _rows(fit.names, fit.estimate, fit.sd, fit.lower, fit.upper)
    z = _z(level)
    for site, est in centres.items():
        for term, e, s in zip(est.names, est.estimate, est.sd, strict=True):
            rows.append({"term": f"{term}[{opts.site_column}={site}]", "estimate": float(e),
                         "sd": float(s), "ci_low": float(e - z * s), "ci_high": float(e + z * s)})
    extra = {"site_thetas": {s: c.local_theta for s, c in centres.items()}}
    if opts.center_covariate:  # continuous: regress the centre intercepts on it
        first = est.names[0]
        values = np.array([c.estimate[0] for c in centres.values()])
        variances = np.array([c.covariance[0, 0] for c in centres.values()])
        covariate = np.array([float(parts[n][opts.center_covariate].iloc[0]) for n in centres])
        reg = bfi.regress_centre_effects(values, variances, covariate, level=level)
        extra["centre_regression"] = {"parameter": first, "covariate": opts.center_covariate,
                                      **_regression_dict(reg)}
    return fit, rows, extra


def _regression_dict(reg) -> dict:
    return {k: (v.tolist() if isinstance(v, np.ndarray) else v)
            for k, v in vars(reg).items() if not k.startswith("_")}


def _z(level: float) -> float:
    from core_stats.special import ndtri

    return float(ndtri(0.5 + level / 2.0))


def _combine_categorical(coordinator, opts, family, locals_, parts, names, centre, guard,
                         combined=None):
    covariate = opts.center_covariate
    values = {}
    for site, part in parts.items():
        column = part[covariate]
        if column.nunique() != 1:
            raise InputError(f"--center-covariate {covariate!r} must be constant within each "
                             f"site; site {site} has {column.nunique()} values")
        values[site] = column.iloc[0]
    levels = sorted(set(values.values()))
    labels = tuple(_level_label(covariate, v) for v in levels)
    layout = bfi.CentreCovariateLayout(names, family, centre, labels)
    rows_for = {s: bfi.categorical_row(levels.index(values[s]), len(levels)) for s in parts}
    total = coordinator.secure_sum(
        "bfi-terms", lambda s: layout.site_vector(locals_[s.name], rows_for[s.name]),
        dp=_DERIVED)
    guard.terms(total, coordinator, layout)
    fit = layout.combine(total, level=opts.level, combined_prior=None if combined is None
                         else layout.default_prior(combined))
    thetas = {s.name: layout.site_theta(fit, rows_for[s.name]) for s in coordinator.live_sites}
    return fit, _rows(fit.names, fit.estimate, fit.sd, fit.lower, fit.upper), \
        {"site_thetas": thetas}


def _heterogeneity(opts: BFIOptions, family: Family, locals_: dict,
                   names: tuple[str, ...]) -> dict:
    """Leave-one-out and pairwise difference intervals (paper section 3.2)."""
    layout = bfi.HomogeneousLayout(names, family)
    fits = list(locals_.values())
    labels = list(locals_)
    out = {}
    for term in opts.heterogeneity:
        if term not in names:
            raise InputError(f"--heterogeneity {term!r}: not a parameter")
        loo = bfi.leave_one_out_table(layout, fits, term, labels=labels, level=opts.level)
        pairs = [bfi.centre_difference(locals_[a], locals_[b], term, level=opts.level,
                                       label=f"{a} - {b}")
                 for i, a in enumerate(labels) for b in labels[i + 1:]]
        out[term] = {"leave_one_out": [_het(r) for r in loo], "pairwise": [_het(r) for r in pairs]}
    return out


def _het(row) -> dict:
    return {"label": row.label, "estimate": row.estimate, "sd": row.sd, "ci_low": row.lower,
            "ci_high": row.upper, "excludes_zero": row.excludes_zero}


def run_bfi_remote(opts: BFIOptions, transport, site_names: list[str], *,
                   protection: ProtectedSum, audit: AuditTrail | None = None,
                   schema: DesignSchema | None = None, warnings: list[str] | None = None,
                   started: float | None = None) -> BFIReport:
    """Homogeneous BFI over remote sites (e.g. Flower SuperNodes) through ``transport``.

    The same rounds as :func:`run_bfi` (count, optional pooled
    standardisation, the sites' terms), but each site fits its local MAP
    itself (:meth:`securefed.site.Site.bfi_terms_vector`); the coordinator
    holds no rows, so without ``schema`` the factor levels are agreed from
    the sites' own variable reports first (:mod:`securefed.remote_levels`).
    Centre-specific parameters, centre covariates, the pooled comparison and
    heterogeneity tables need per-site estimates or rows at
    the coordinator and are refused here. Results equal :func:`run_bfi`.
    """
    from securefed.coordinator import RemoteSite

    started = time.perf_counter() if started is None else started
    check_robust_options(opts.robust, opts.robust_bound, dp=False, remote=True)
    for flag, used in (("--stratify", opts.stratify), ("--center-covariate",
                       opts.center_covariate), ("--heterogeneity", opts.heterogeneity),
                       ("--compare-pooled", opts.compare_pooled)):
        if used:
            raise InputError(f"{flag} is not available over a remote transport yet: it needs "
                             "per-site estimates or rows at the coordinator")
    formula, family = _parse_model(opts)
    if schema is None:  # the factor-levels round: the sites' own reports
        from securefed.remote_levels import remote_schema

        schema = remote_schema(transport, opts.formula, site_names, audit)
    try:
        names = fixed_column_names(schema)
    except DesignError as err:
        raise InputError(str(err)) from None
    coordinator = Coordinator([RemoteSite(n) for n in site_names], protection,
                              audit=audit, transport=transport)
    if coordinator.privacy is not None:
        _check_dp(opts, family, coordinator.privacy.options)
        if opts.standardize:
            raise InputError("--standardize under dp is not available over a remote transport "
                             "yet: standardise the columns at the sites beforehand")
        if family.binary and "(Intercept)" not in names:
            raise InputError("binomial BFI under dp needs an intercept in the formula")
    try:
        report = _bfi_remote(coordinator, opts, schema, family, names, started,
                             list(warnings or []))
    except ProtocolError as err:
        coordinator.abort_audit(err)
        raise
    coordinator.finish_audit(report.to_dict(), "bfi")
    return report


def _bfi_remote(coordinator, opts, schema, family, names, started, warnings) -> BFIReport:
    from securefed.site import BFISiteSpec

    privacy = coordinator.privacy
    count = _count_round(coordinator, schema, opts.weights)
    prior, combined = _priors(opts, family, names)
    guard = BFIGuard(count, prior, family, opts.theta_bound, *_rows_kind(opts, schema)) \
        if privacy is None else _Unchecked()
    standardization, scaling = None, ()
    if opts.standardize:
        columns = tuple(opts.standardize)
        total = coordinator.secure_sum("bfi-standardize",
                                       lambda s: s.standardize_vector(columns, schema,
                                                                      opts.weights))
        guard.standardize(total, coordinator)
        std = StandardizeLayout(len(columns)).combine(total)
        scaling = tuple((c, float(m), float(sd))
                        for c, m, sd in zip(columns, std.mean, std.sd, strict=True))
        standardization = {"columns": list(columns), "mean": std.mean.tolist(),
                           "sd": std.sd.tolist()}
    spec = BFISiteSpec(schema, family, prior, tuple(names), scaling, opts.weights)
    full_names = tuple(names) + ((SCALE_TERM,) if family.has_dispersion else ())
    layout = bfi.HomogeneousLayout(full_names, family)
    if privacy is None:
        total = coordinator.secure_sum("bfi-terms", lambda s: s.bfi_terms_vector(spec),
                                       dp=_DERIVED)
    else:  # the sites' clipped statistics, noised for the sum (post-processing after)
        from securefed.dp_statistics import summary_query

        dp = privacy.options
        bound = dp.outcome_scale(family.name)
        query = summary_query("sufficient statistics", dp.clip, bound,
                              (1.0 - DP_SHARES["count"]) * dp.run_rho)
        total = coordinator.secure_sum(
            "bfi-sufficient-statistics", lambda s: s.dp_bfi_stats_vector(spec, dp.clip, bound),
            dp=query)
        privacy.clipped_records = float(total[-2])
    inference = None
    if privacy is None:
        guard.terms(total, coordinator, layout)
        fit = layout.combine(total, combined_prior=combined, level=opts.level)
    else:
        fit, inference = _fit_from_sums(coordinator, total, names, family,
                                        prior if combined is None else combined, opts.level,
                                        count)
    live = [s.name for s in coordinator.live_sites]
    if coordinator.dropped:
        warnings.append("site(s) dropped out and were excluded: " + ", ".join(coordinator.dropped))
    return BFIReport(
        options=opts, fit=fit, term_names=fit.names,
        estimates=tuple(_rows(fit.names, fit.estimate, fit.sd, fit.lower, fit.upper)),
        n_sites=len(live), protection=coordinator.protection.name,
        n_sites_counted=coordinator.counted_sites(*ESTIMATE_ROUNDS),
        standardization=standardization, dropped_sites=tuple(coordinator.dropped),
        warnings=tuple(warnings), bytes_sent_per_site=coordinator.mean_bytes_per_site(),
        rounds=coordinator.round_id, seconds=time.perf_counter() - started,
        site_thetas={n: fit.estimate for n in live},
        timings=coordinator.timings(time.perf_counter() - started), parameter_names=fit.names,
        privacy=None if privacy is None else {**privacy.report(), "inference": inference},
        schema=schema)
