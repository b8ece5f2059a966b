"""A federated GLMM with several random-effects terms nested in sites (Laplace).

``(1 | comm/mom)``, ``(1 | mom) + (1 | comm)``, ``(1 + x || g)``: each site
builds its rows' terms and top-level blocks (:mod:`core_stats.glmm_multi`), so
its Laplace terms are a sum over its own blocks and the federated fit equals
the pooled one. Rounds: the counts (rows, levels of each term), over a
network the level sketch (:mod:`securefed.level_sketch`: no level in two
sites), a design summary, then Newton rounds on summed ``[l, gradient,
upper(Hessian)]``. Every round is a sum, so the same code runs over the
coordinator's own site objects, the in-process site runtime and Flower; the
layout comes from the formula alone (:func:`public_terms`). Laplace only
(lme4 allows adaptive quadrature for a single scalar term only); no lambda
grid and no DP yet.
"""

from __future__ import annotations

import numpy as np

from core_stats.formula import DesignSchema, random_column_names
from core_stats.formula.frame import RandomDesign
from core_stats.glmm_fit import GLMMEstimate
from core_stats.glmm_multi import MultiLayout, RandomTerm, term_layout, terms_from_designs
from core_stats.glmm_multi_fit import fit_glmm_multi, multi_starting_values
from core_stats.glmm_multi_results import n_variance_parameters, variance_components
from core_stats.inference import covariance, information_criteria, wald_fixed_effects
from core_stats.optimize import SummedTerms
from core_stats.results import GLMMFit
from securefed.errors import InputError
from securefed.plausibility import check_design_summary, check_multi_glmm_terms
from securefed.vectors import unpack_terms

__all__ = ["check_multi_options", "fit_multi", "public_terms"]


def check_multi_options(opts, coordinator) -> None:
    if opts.nagq != 1:
        raise InputError("--nagq > 1 needs a single scalar random-effects term (as in lme4): "
                         "several terms are fitted by Laplace (--nagq 1)")
    if opts.lambda_grid:
        raise InputError("--lambda-grid with several random-effects terms is not supported "
                         "yet: give --lambda")
    if coordinator.privacy is not None:  # why: docs/privacy.md, "Several random-effects terms"
        raise InputError("several random-effects terms under differential privacy are refused: "
                         "the DP standard errors would ignore the clustering (see "
                         "docs/privacy.md); fit them without --epsilon")


def public_terms(schema: DesignSchema
                 ) -> tuple[tuple[RandomTerm, ...], tuple[tuple[str, ...], ...]]:
    """The model's terms (names, columns, no rows) and each one's grouping columns, from the
    formula alone: what every site builds for itself (``||`` split as lme4 does)."""
    designs, groups = [], []
    for term, names in zip(schema.parsed.random, random_column_names(schema), strict=True):
        designs.append(RandomDesign(term, tuple(names), np.zeros((0, len(names))),
                                    np.zeros(0, dtype=object)))
        split = 1 if term.correlated or len(names) == 1 else len(names)
        groups += [tuple(term.group)] * split
    return terms_from_designs(designs), tuple(groups)


def fit_multi(coordinator, opts, family, design, fixed_names, started_warnings,
              started_at, on_step, weighted: bool) -> GLMMFit:
    """Fit over the coordinator's sites (here or remote) and build the glmer-style result."""
    import time

    from securefed.glmm_multi_levels import check_levels_apart, check_two_levels

    check_multi_options(opts, coordinator)
    template, groups_of = public_terms(design.schema)
    coordinator.setup(lambda s: s.prepare_glmm_multi(design))
    counts = coordinator.secure_sum("glmm-multi-counts", lambda s: s.multi_counts_vector())
    check_two_levels(template, counts)
    if coordinator.transport is not None:  # nobody here holds the rows: the sites check
        check_levels_apart(coordinator, template, groups_of, counts)
    summary = coordinator.secure_sum("design-summary", lambda s: s.design_summary_vector())
    reference = check_design_summary(summary, coordinator, family=family,
                                     fixed_names=fixed_names, weighted=weighted)
    layout = MultiLayout(tuple(fixed_names), tuple(term_layout(t) for t in template),
                         family.has_dispersion)
    n, sum_y, sum_y2 = (float(v) for v in summary[:3])
    start = multi_starting_values(layout, family, n, sum_y, sum_y2, reference.xty,
                                  reference.xtx)

    def evaluate(lay: MultiLayout, theta: np.ndarray, derivatives: bool) -> SummedTerms:
        purpose = "glmm-terms" if derivatives else "glmm-loglik"
        total = coordinator.secure_sum(
            purpose, lambda s: s.multi_terms_vector(lay, theta, derivatives),
            key=(purpose, lay, np.asarray(theta).tobytes()))
        check_multi_glmm_terms(total, reference, lay, theta, derivatives, purpose=purpose)
        value, grad, hess = unpack_terms(total, lay.size)
        return SummedTerms(value, grad, hess)

    estimate = fit_glmm_multi(evaluate, layout, start, lam=opts.lam, tol=opts.tol,
                              on_step=on_step)
    live = coordinator.live_sites
    n_obs = int(round(float(counts[0])))
    groups = {t.name: int(round(float(c))) for t, c in zip(template, counts[1:], strict=True)}
    warnings = list(started_warnings)
    if coordinator.dropped:
        warnings.append("site(s) dropped out and were excluded from the fit: "
                        + ", ".join(coordinator.dropped) + " (the numbers of observations "
                        "and groups were summed before, and include them)")
    seconds = time.perf_counter() - started_at
    extra = {"timings": coordinator.timings(seconds), "n_groups_by_factor": groups}
    return _result(opts, estimate, family, n_obs, groups, len(live), coordinator, warnings,
                   extra, seconds)


def _result(opts, est: GLMMEstimate, family, n_obs: int, groups: dict[str, int], n_sites: int,
            coordinator, warnings: list[str], extra: dict, seconds: float) -> GLMMFit:
    lay: MultiLayout = est.layout
    cov = covariance(-est.terms.hessian)
    fixed = wald_fixed_effects(lay.fixed_names, est.theta[lay.beta], cov[lay.beta, lay.beta])
    sds, corrs = variance_components(lay, est.theta, cov)
    k = len(lay.fixed_names) + n_variance_parameters(lay)
    aic, bic = information_criteria(est.loglik, k, n_obs)
    if not est.converged:
        warnings = [*warnings, f"the fit did not converge: {est.message}"]
    return GLMMFit(
        formula=opts.formula, family=family.name, link=family.link, nagq=1,
        fixed_effects=tuple(fixed), random_effects=tuple(sds), correlations=tuple(corrs),
        loglik=est.loglik, aic=aic, bic=bic, converged=est.converged, singular=est.singular,
        rounds=coordinator.round_id, iterations=est.iterations, n_obs=n_obs,
        n_groups=sum(groups.values()), n_sites=n_sites, penalty_lambda=est.penalty,
        protection=coordinator.protection.name, theta=tuple(float(v) for v in est.theta),
        parameter_names=lay.parameter_names(),
        covariance=tuple(tuple(float(v) for v in row) for row in cov), trace=est.trace,
        message=est.message, warnings=tuple(warnings), dropped_sites=tuple(coordinator.dropped),
        bytes_sent_per_site=coordinator.mean_bytes_per_site(), seconds=seconds, extra=extra,
        n_sites_counted=coordinator.counted_sites())

