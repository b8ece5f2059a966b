"""A federated Cox model stratified by site, from a table split by site to a :class:`CoxFit`.

The partial likelihood stratified by site is a sum of one term per site, so
Newton's method on the summed gradients and Hessians is exactly
``survival::coxph(Surv(time, status) ~ ... + strata(site))``. What each site
releases, every value a sum over its own stratum, each through the run's
protection stack:

1. ``cox-summary``: ``[rows, events, omitted rows, 1, upper(Xc'Xc)]`` with
   ``Xc`` the site's covariates centred by its own means (counts;
   identifiability).
2. ``cox-terms`` (one per Newton round, the first at ``beta = 0``):
   ``[l, g, upper(H)]``, the site's partial log-likelihood and its exact
   derivatives at the public ``beta``.
3. ``cox-concordance`` (once, at the estimate): five pair counts and three
   jackknife sums (:mod:`core_stats.cox_concordance`).

No event time, risk set or row leaves a site. Differential privacy is not
offered: with clipped covariates one patient can move the gradient by up to
``2B (1 + e^(2B |beta|) H_E)`` (they enter every earlier risk set), a noise
far above the sums (derivation in ``docs/survival.md``). Under ``none`` or
``secagg`` the rounds go through the site runtime (:mod:`securefed.survival_runtime`);
over Flower see :func:`securefed.survival_remote.run_cox_remote`.
"""

from __future__ import annotations

import time as clock
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from core_stats.cox import TIES
from core_stats.cox_concordance import CONCORDANCE_LENGTH, concordance
from core_stats.cox_results import CoxFit, global_tests
from core_stats.inference import covariance, wald_fixed_effects
from core_stats.optimize import SummedTerms, newton_maximize
from protocols.errors import AbortError, ProtocolError
from protocols.stack import PlaintextSum, ProtectedSum
from securefed.audit_trail import AuditTrail, describe_protection
from securefed.coordinator import Coordinator
from securefed.cox_plausibility import check_cox_concordance, check_cox_summary, check_cox_terms
from securefed.errors import InputError
from securefed.glmm_run import _collinear_columns
from securefed.site import Site
from securefed.survival_runtime import runtime_coordinator, site_words, use_runtime
from securefed.survival_spec import CoxSiteSpec, survival_spec
from securefed.vectors import from_upper_triangle, unpack_terms

__all__ = ["CoxOptions", "run_cox"]


DP_REFUSED = ("the Cox model has no differential-privacy mode (with clipped covariates its "
              "sums' sensitivity grows with exp(2 B |beta|) log n and the noise would swamp "
              "them; docs/survival.md): use --protect none, secagg, ckks or secagg,ckks")


@dataclass(frozen=True)
class CoxOptions:
    """Everything a Cox run needs besides the data."""

    formula: str
    site_column: str
    ties: str = "efron"
    na_action: str = "omit"
    tol: float = 1e-10
    max_iter: int = 50


def _check(frame: pd.DataFrame, opts: CoxOptions) -> CoxSiteSpec:
    if opts.ties not in TIES:
        raise InputError(f"--ties {opts.ties!r}: choose efron or breslow")
    return survival_spec(frame, opts.formula, opts.site_column, opts.ties, opts.na_action)


def run_cox(frame: pd.DataFrame, opts: CoxOptions, *, protection: ProtectedSum | None = None,
            audit_log: str | Path | None = None, site_runtime: bool = True) -> CoxFit:
    """Fit the stratified Cox model over the sites named by ``opts.site_column``.

    Under ``none`` or ``secagg`` without an audit trail the rounds go, with
    ``site_runtime``, through the site runtime (:mod:`securefed.survival_runtime`);
    the result is the same. A protocol abort or a refused aggregate is logged
    (REFUSAL, then a countersigned checkpoint) before the error propagates.
    """
    started = clock.perf_counter()
    spec = _check(frame, opts)
    protection = protection or PlaintextSum()
    if getattr(protection, "privacy", None) is not None:
        raise InputError(DP_REFUSED)
    sites = [Site(str(name), part) for name, part in frame.groupby(opts.site_column, sort=True)]
    if use_runtime(protection, audit_log, site_runtime):
        with runtime_coordinator(sites, protection, lambda s: s.prepare_cox(spec)) as remote, \
                site_words(
                lambda: run_cox(frame, opts, protection=protection, site_runtime=False)):
            return _fit(remote, opts, spec, started, [w for s in sites for w in s.warnings()])
    audit = None
    if audit_log is not None:
        audit = AuditTrail.start(audit_log, site_names=[s.name for s in sites], model="cox",
                                 config=asdict(opts), protection=describe_protection(protection))
    coordinator = Coordinator(sites, protection, audit=audit)
    try:
        try:
            coordinator.setup(lambda s: s.prepare_cox(spec))
        except ValueError as err:
            raise InputError(str(err)) from None
        fit = _fit(coordinator, opts, spec, started)
    except ProtocolError as err:
        coordinator.abort_audit(err)
        raise
    coordinator.finish_audit(fit.to_dict(), "cox")
    return fit


def _stop_if_dropped(coordinator: Coordinator) -> None:
    """A site that drops out ends the fit: the model over the others is another model (its
    log-likelihood is not comparable with the rounds so far), and re-running the rounds
    without the site would reveal its sums by difference."""
    if coordinator.dropped:
        raise AbortError(f"site(s) {', '.join(coordinator.dropped)} dropped out during the "
                         "Cox fit; it stops here (rerun without them)")


def _fit(coordinator: Coordinator, opts: CoxOptions, spec: CoxSiteSpec, started: float,
         site_warnings: list[str] | None = None) -> CoxFit:
    p = len(spec.names)
    if p == 0:
        raise InputError("the model has no covariates: name at least one after '~'")
    summary = coordinator.secure_sum("cox-summary", lambda s: s.cox_summary_vector())
    _stop_if_dropped(coordinator)
    counts = check_cox_summary(summary, coordinator, p)
    if counts.n_events == 0:
        raise InputError("no events: the status column marks no row as an event")
    gram = from_upper_triangle(summary[4:], p)
    dropped = [spec.names[j] for j in _collinear_columns(gram)]
    if dropped:
        raise InputError("covariate column(s) " + ", ".join(dropped) + " are constant within "
                         "every site or collinear with others: coxph would give them NA; "
                         "remove them")
    at_zero: list[SummedTerms] = []

    def evaluate(beta: np.ndarray, derivatives: bool) -> SummedTerms:
        total = coordinator.secure_sum(
            "cox-terms", lambda s: s.cox_terms_vector(beta, opts.ties, derivatives),
            key=("cox-terms", derivatives, np.asarray(beta).tobytes()))
        _stop_if_dropped(coordinator)
        check_cox_terms(total, coordinator, counts, p, derivatives)
        value, grad, hess = unpack_terms(total, p)
        terms = SummedTerms(value, grad, hess)
        if not at_zero:
            at_zero.append(terms)
        return terms

    try:
        result = newton_maximize(evaluate, np.zeros(p), tol=opts.tol, max_iter=opts.max_iter)
    except (np.linalg.LinAlgError, FloatingPointError):
        raise InputError("the partial likelihood has no finite maximum (a covariate separates "
                         "events from non-events?): coxph would not converge either") from None
    beta = result.theta
    cov = covariance(-result.terms.hessian)
    fixed = wald_fixed_effects(spec.names, beta, cov)
    conc_total = coordinator.secure_sum("cox-concordance",
                                        lambda s: s.cox_concordance_vector(beta))
    check_cox_concordance(conc_total, coordinator, counts, CONCORDANCE_LENGTH)
    tests = global_tests(at_zero[0].value, result.terms.value, at_zero[0].gradient,
                         -at_zero[0].hessian, beta, cov)
    warnings = list(site_warnings) if site_warnings is not None else [
        w for s in coordinator.live_sites if isinstance(s, Site) for w in s.warnings()]
    if not result.converged:
        warnings.append(f"the fit did not converge: {result.message}")
    seconds = clock.perf_counter() - started
    releases = coordinator.release_list()
    return CoxFit(
        formula=opts.formula, ties=opts.ties, fixed_effects=tuple(fixed),
        covariance=tuple(tuple(float(v) for v in row) for row in cov),
        loglik=float(result.terms.value), loglik_null=float(at_zero[0].value), tests=tests,
        concordance=concordance(conc_total), n_obs=counts.n_rows, n_events=counts.n_events,
        n_sites=counts.n_sites, n_omitted=counts.n_omitted, converged=result.converged,
        iterations=result.iterations,
        rounds=coordinator.round_id, protection=coordinator.protection.name, releases=releases,
        message=result.message, warnings=tuple(warnings),
        extra={"bytes_sent_per_site": coordinator.mean_bytes_per_site(),
               "timings": coordinator.timings(seconds), "seconds": seconds})
