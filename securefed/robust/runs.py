"""``--robust`` in a run: the hooks :mod:`securefed.bfi_run` and :mod:`securefed.glmm_run` call.

See :mod:`securefed.robust.validator` for the protocol and
``threat_model/poisoning.md`` for what it bounds.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from securefed.errors import InputError
from securefed.plausibility import Tolerance
from securefed.robust.influence import (
    NoOtherInformation,
    bfi_influence,
    glmm_influence,
    huber_combination,
    newton_leave_one_out,
)
from securefed.robust.validator import RobustVerdict, Validator

__all__ = ["MIN_SITES", "check_robust_options", "robust_bfi", "robust_glmm", "validator_for"]

MIN_SITES = 2


def check_robust_options(robust: bool, bound: float, *, dp: bool, remote: bool,
                         unsupported: str | None = None) -> None:
    """Refuse (exit 2, one line) what ``--robust`` cannot do yet."""
    if not robust:
        return
    if not np.isfinite(bound) or bound <= 0:
        raise InputError("--robust-bound must be a positive number of standard errors")
    if dp:
        raise InputError("--robust cannot be combined with dp: the validator would see each "
                         "site's un-noised summary")
    if remote:
        raise InputError("--robust is not available over a remote transport yet: the key "
                         "holder's validator service is not wired; run in-process")
    if unsupported:
        raise InputError(f"--robust is not available with {unsupported} yet")


def validator_for(robust: bool, bound: float) -> Validator | None:
    return Validator(bound) if robust else None


def _live_count(coordinator) -> int:
    n = len(coordinator.live_sites)
    if n < MIN_SITES:
        raise InputError(f"--robust needs at least {MIN_SITES} sites (a leave-one-out bound "
                         "needs another site to compare with)")
    return n


def robust_bfi(coordinator, validator: Validator, layout, total: np.ndarray,
               combined_prior: np.ndarray | None, scale_name: str, guard) -> dict:
    """Check a homogeneous BFI ``bfi-terms`` round; the verdict (raises on refusal).

    ``guard``: the run's :class:`~securefed.plausibility.BFIGuard`, whose checks the
    validator applies to every site's vector on its own (each holds for one honest
    site as for a sum), naming the site that fails one.
    """
    purpose = "bfi-terms"
    n_sites = _live_count(coordinator)
    validator.check_sum(purpose, total, Tolerance.of(coordinator),
                        coordinator.rounds[-1].contributors)
    vectors = validator.summaries(purpose)
    for site, vector in vectors.items():
        _check_one_site(validator, purpose, site, vector, layout, guard)
    checked = [j for j, name in enumerate(layout.names) if name != scale_name]
    names = tuple(layout.names[j] for j in checked)
    try:
        influences = bfi_influence(layout, vectors, checked, combined_prior)
    except NoOtherInformation as alone:
        validator.no_other_information(purpose, alone.site)
    largest = validator.bound_influence(purpose, influences, names)
    parts = [layout.spec.split(v) for v in vectors.values()]
    from core_stats.bfi_layout import triu_unpack

    curv = [triu_unpack(p["curvature"], layout.dim) for p in parts]
    priors = [triu_unpack(p["prior"], layout.dim) for p in parts]
    try:
        robust, _ = huber_combination(curv, [p["linear"] for p in parts], priors, checked)
    except np.linalg.LinAlgError:
        validator.robust_gap(purpose, float("inf"))
    fit = layout.combine(np.sum(list(vectors.values()), axis=0), combined_prior=combined_prior)
    idx = np.asarray(checked)
    gap = float(np.max(np.abs(fit.estimate[idx] - robust[idx]) / fit.sd[idx]))
    validator.robust_gap(purpose, gap)
    return RobustVerdict("BFI leave-one-out (exact) and Huber combination", validator.bound,
                         n_sites, largest, gap).to_dict()


def _check_one_site(validator: Validator, purpose: str, site: str, vector: np.ndarray, layout,
                    guard) -> None:
    """The sum checks of ``bfi-terms`` on one site's vector (exact floats: no decoding)."""
    from securefed.coordinator import RoundRecord
    from securefed.plausibility import BFICount, BFIGuard, ImplausibleAggregate

    class _One:  # the one-site view the checks read (contributors, tolerance)
        protection = None
        live_sites = (site,)
        dropped = ()
        rounds = (RoundRecord(0, purpose, len(vector), (site,), ()),)

    parts = layout.spec.split(vector)
    count = BFICount(float(parts["n"][0]), 1, frozenset({site}), Tolerance(0.0))
    try:
        BFIGuard(count, guard.prior, guard.family, guard.theta_bound).terms(vector, _One(),
                                                                            layout)
    except ImplausibleAggregate as failed:
        validator.site_fails(purpose, site, failed.check)


def robust_glmm(coordinator, validator: Validator, estimate, split_state: str) -> dict:
    """One more ``glmm-terms`` round at the estimate, its summaries to the validator;
    the verdict (raises on refusal). ``estimate``: a :class:`GLMMEstimate`."""
    from securefed.vectors import unpack_terms

    purpose = "glmm-terms"
    n_sites = _live_count(coordinator)
    lay, theta = estimate.layout, np.asarray(estimate.theta, dtype=float)
    compute: Callable = validator.tee(purpose, lambda s: s.glmm_terms_vector(lay, theta, True))
    key = ("robust-summary", lay, split_state, theta.tobytes())
    total = coordinator.secure_sum(purpose, compute, key=key)
    validator.check_sum(purpose, total, Tolerance.of(coordinator),
                        coordinator.rounds[-1].contributors)
    full = 1 + lay.size + lay.size * (lay.size + 1) // 2
    site_terms = {}
    for site, vector in validator.summaries(purpose).items():
        _, grad, hess = unpack_terms(vector[:full], lay.size)
        site_terms[site] = (grad, -hess)
    checked = np.arange(lay.size)[lay.beta]
    names = tuple(lay.fixed_names)
    try:
        influences = glmm_influence(estimate.terms.gradient, -estimate.terms.hessian,
                                    site_terms, checked)
    except NoOtherInformation as alone:
        influences = ()
        flagged = {alone.site}
    else:
        flagged = {i.site for i in influences if i.largest > validator.bound}
    if flagged:  # refit without each flagged site before refusing (the validator only)
        others_at = _others_at(coordinator, estimate, site_terms)
        try:
            refined = {name: newton_leave_one_out(name, others_at(name), theta, checked)
                       for name in sorted(flagged)}
        except NoOtherInformation as alone:
            validator.no_other_information(purpose, alone.site)
        influences = tuple(refined.get(i.site, i) for i in influences) or tuple(
            refined.values())
    largest = validator.bound_influence(purpose, influences, names)
    return RobustVerdict("GLMM leave-one-out (one Newton step; refitted where above the "
                         "bound)", validator.bound, n_sites, largest).to_dict()


def _others_at(coordinator, estimate, site_terms: dict):
    """``others_at(site)(point)``: the other sites' summed objective, gradient and
    information at ``point`` (each evaluates its terms there for the validator), with the fit's
    quadratic penalty (the estimate's terms minus the sites' sum at the estimate)."""
    from securefed.vectors import unpack_terms

    lay, theta = estimate.layout, np.asarray(estimate.theta, dtype=float)
    full = 1 + lay.size + lay.size * (lay.size + 1) // 2
    pen_grad = estimate.terms.gradient - sum(g for g, _ in site_terms.values())
    pen_info = -estimate.terms.hessian - sum(j for _, j in site_terms.values())

    def for_site(left_out: str):
        others = [s for s in coordinator.live_sites if s.name != left_out]

        def at(point: np.ndarray):
            shift = point - theta
            value = float(pen_grad @ shift - 0.5 * shift @ pen_info @ shift)
            grad = pen_grad - pen_info @ shift
            info = pen_info.copy()
            for site in others:
                v, g, h = unpack_terms(np.asarray(site.glmm_terms_vector(lay, point, True))[:full],
                                       lay.size)
                value, grad, info = value + v, grad + g, info - h
            return value, grad, info

        return at

    return for_site
