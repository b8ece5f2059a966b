"""BFI for survival outcomes: each site fits a parametric hazard model, one sum combines them.

``securefed bfi DATA --formula "Surv(time, status) ~ x1 + x2" --family survival
--baseline exponential|weibull|gompertz|poly|pwexp|unspecified --site-column SITE
--lambda L``.

Rounds: ``bfi-count`` (``[n_l, 1]``); for ``poly`` then ``bfi-poly-order``: each site
chooses its order by R's likelihood-ratio tests and releases it one-hot
(``[1[q_l = 0], ..., 1[q_l = max_order]]``, so the sum counts the sites per order
and the model's order is the largest chosen, as ``bfi(q_ls = ...)`` takes it);
then ``bfi-terms``: every site releases
the homogeneous BFI vector ``[triu(A_l), A_l theta_l, triu(Lambda_l), n_l, 1]``
of its local MAP (:mod:`core_stats.bfi_survival`), through the protection
stack; the coordinator combines the sum,
``theta = (sum A_l + Lambda - sum Lambda_l)^{-1} sum A_l theta_l``.
``A_l`` is the exact curvature at the site's MAP (R BFI 3.1.0 over-counts the
prior in it; see ``docs/survival.md``). Layouts: homogeneous, or centre-specific
parameters of the baseline (``--stratify omega_1[,omega_2]``, Appendix B; each
site computes its own from the broadcast shared estimate). Centre covariates and
DP are refused for this family. A homogeneous run goes through the site runtime
when it carries the stack (:mod:`securefed.survival_runtime`), and over Flower with
:func:`securefed.survival_remote.run_bfi_survival_remote`.
"""

from __future__ import annotations

import time as clock
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from core_stats import bfi
from core_stats.bfi_survival import BASELINES, SURVIVAL
from core_stats.survival_baselines import Baseline
from protocols.stack import PlaintextSum, ProtectedSum
from securefed.audit_trail import AuditTrail, describe_protection
from securefed.coordinator import Coordinator
from securefed.errors import InputError
from securefed.plausibility import check_bfi_count, check_bfi_terms
from securefed.plausibility_linear import check_bfi_linear
from securefed.site import Site
from securefed.survival_runtime import audited, runtime_coordinator, site_words, use_runtime
from securefed.survival_spec import survival_spec

__all__ = ["SURVIVAL_DP_REFUSED", "SurvivalBFIOptions", "SurvivalBFIReport", "run_bfi_survival"]

SURVIVAL_DP_REFUSED = (
    "BFI survival has no differential-privacy mode: its local fits are not functions of "
    "bounded sums (docs/survival.md); use --protect none, secagg, ckks or secagg,ckks")


@dataclass(frozen=True)
class SurvivalBFIOptions:
    formula: str
    site_column: str
    baseline: str
    lam: float = 0.01
    combined_lam: float | None = None
    stratify: tuple[str, ...] = ()  # centre-specific baseline parameters (omega_1, omega_2)
    level: float = 0.95
    max_order: int = 2  # poly: R's max_order
    alpha: float = 0.1  # poly: R's alpha, the level of the order tests
    knots: tuple[float, ...] = ()  # pwexp: 0 = c_0 < ... < c_K (public)


@dataclass(frozen=True)
class SurvivalBFIReport:
    """The combined fit with the run's bookkeeping; ``to_dict`` keys follow GLM BFI's."""

    options: SurvivalBFIOptions
    fit: bfi.BFIFit
    protection: str
    rounds: int
    releases: tuple[dict, ...]
    bytes_sent_per_site: int
    seconds: float
    timings: dict
    centres: tuple[tuple[str, bfi.CentreEstimate], ...] = ()
    model: Baseline | None = None  # the baseline fitted (poly: at the chosen order)
    order_counts: tuple[int, ...] = ()  # poly: sites per chosen order 0..max_order

    @property
    def baseline(self) -> Baseline:
        return self.model or Baseline(self.options.baseline)

    @property
    def estimates(self) -> list[dict]:
        """Shared parameters, then each site's own (``omega_1[SITE=name]``)."""
        from scipy import stats

        f = self.fit
        rows = [{"term": n, "estimate": float(e), "sd": float(s), "ci_low": float(lo),
                 "ci_high": float(hi)} for n, e, s, lo, hi in
                zip(f.names, f.estimate, f.sd, f.lower, f.upper, strict=True)]
        z = float(stats.norm.ppf(0.5 + self.options.level / 2.0))
        for site, est in self.centres:
            rows += [{"term": f"{n}[{self.options.site_column}={site}]", "estimate": float(e),
                      "sd": float(s), "ci_low": float(e - z * s), "ci_high": float(e + z * s)}
                     for n, e, s in zip(est.names, est.estimate, est.sd, strict=True)]
        return rows

    def to_dict(self) -> dict:
        b = self.baseline
        extra = {}
        if b.kind == "poly":
            extra = {"baseline_order": b.order, "baseline_max_order": self.options.max_order,
                     "baseline_alpha": self.options.alpha,
                     "sites_per_order": list(self.order_counts)}
        if b.kind == "pwexp":
            extra = {"baseline_knots": list(b.knots)}
        return {
            "estimates": self.estimates, "family": "survival",
            "baseline": b.kind, "r_basehaz": b.r_name, "baseline_hazard": b.hazard,
            "baseline_parameters": b.scales, **extra,
            "lambda": self.options.lam, "combined_lambda": self.options.combined_lam,
            "stratify": list(self.options.stratify),
            "n_sites": self.fit.n_sites, "n_obs": self.fit.n_obs, "formula": self.options.formula,
            "covariance": self.fit.covariance.tolist(), "protection": self.protection,
            "rounds": self.rounds, "releases": list(self.releases),
            "bytes_sent_per_site": self.bytes_sent_per_site, "seconds": self.seconds,
            "timings": self.timings,
        }

    def summary(self) -> str:
        o = self.options
        b = self.baseline
        scales = "; ".join(f"{n} = {v}" for n, v in b.scales.items()) or "none"
        lines = [f"Bayesian Federated Inference (survival, {b.kind} baseline: "
                 f"{b.hazard}), {self.fit.n_sites} sites, protection: "
                 f"{self.protection}", f"Formula: {o.formula}",
                 f"Prior precision lambda = {o.lam:g}; baseline parameters: {scales}"]
        if b.kind == "poly":
            lines.append(f"Order {b.order}: the largest any site chose by R's likelihood-ratio "
                         f"tests (alpha = {o.alpha:g}, max order {o.max_order}); sites per "
                         f"order 0..{o.max_order}: {list(self.order_counts)}")
        lines += ["",
                 f"{'term':<28} {'estimate':>10} {'sd':>9} {'CI low':>9} {'CI high':>9}"]
        lines += [f"{r['term']:<28} {r['estimate']:10.4f} {r['sd']:9.4f} {r['ci_low']:9.4f} "
                  f"{r['ci_high']:9.4f}" for r in self.estimates]
        return "\n".join(lines)


def _baseline(opts: SurvivalBFIOptions, order: int = 0) -> Baseline:
    """The model's baseline (InputError, one line, if its settings do not fit)."""
    if opts.baseline not in BASELINES:
        raise InputError(f"--baseline {opts.baseline!r}: choose one of {', '.join(BASELINES)}")
    if opts.baseline == "pwexp" and not opts.knots:
        raise InputError("--baseline pwexp needs --baseline-pieces K and --baseline-max-time T "
                         "(R's grid) or --baseline-knots 0,c1,...,cK")
    if opts.baseline != "pwexp" and opts.knots:
        raise InputError("--baseline-knots, --baseline-pieces and --baseline-max-time are for "
                         "--baseline pwexp")
    if opts.baseline == "poly" and not (1 <= opts.max_order <= 10 and 0 < opts.alpha < 1):
        raise InputError("--baseline-order must be 1 to 10 and --baseline-alpha in (0, 1)")
    try:
        return Baseline(opts.baseline, order=order, knots=opts.knots)
    except ValueError as err:
        raise InputError(str(err)) from None


def _check_options(opts: SurvivalBFIOptions) -> None:
    if opts.lam <= 0 or (opts.combined_lam is not None and opts.combined_lam <= 0):
        raise InputError("--lambda and --combined-lambda must be positive")
    if opts.baseline == "unspecified" and opts.stratify:
        raise InputError("--stratify: the unspecified baseline has no parameters to make "
                         "centre-specific (R's bfi refuses strat_par for it too)")
    allowed = _baseline(opts, opts.max_order).names
    for name in opts.stratify:
        if name not in allowed:
            raise InputError(f"--stratify {name!r}: a survival model's centre-specific "
                             f"parameters are its baseline's ({', '.join(allowed)})")
    if len(set(opts.stratify)) != len(opts.stratify):
        raise InputError("--stratify names a parameter twice")


def run_bfi_survival(frame: pd.DataFrame, opts: SurvivalBFIOptions, *,
                     protection: ProtectedSum | None = None,
                     audit_log: str | Path | None = None,
                     site_runtime: bool = True) -> SurvivalBFIReport:
    """BFI of a survival model over the sites of ``opts.site_column``.

    A homogeneous model under ``none`` or ``secagg`` without an audit trail goes, with
    ``site_runtime``, through the site runtime (:mod:`securefed.survival_runtime`); the
    result is the same.
    """
    started = clock.perf_counter()
    model = _baseline(opts)
    _check_options(opts)
    spec = survival_spec(frame, opts.formula, opts.site_column)
    protection = protection or PlaintextSum()
    if getattr(protection, "privacy", None) is not None:
        raise InputError(SURVIVAL_DP_REFUSED)
    sites = [Site(str(name), part) for name, part in frame.groupby(opts.site_column, sort=True)]
    if not opts.stratify and use_runtime(protection, audit_log, site_runtime):
        with runtime_coordinator(sites, protection, lambda s: s.prepare_cox(spec)) as remote, \
                site_words(
                lambda: run_bfi_survival(frame, opts, protection=protection, site_runtime=False)):
            return _rounds(remote, opts, spec, model, started)
    audit = None
    if audit_log is not None:
        audit = AuditTrail.start(audit_log, site_names=[s.name for s in sites], model="bfi",
                                 config=asdict(opts), protection=describe_protection(protection))
    coordinator = Coordinator(sites, protection, audit=audit)

    def rounds() -> SurvivalBFIReport:
        try:
            coordinator.setup(lambda s: s.prepare_cox(spec))
        except ValueError as err:
            raise InputError(str(err)) from None
        return _rounds(coordinator, opts, spec, model, started)

    return audited(coordinator, rounds, "bfi")


def _rounds(coordinator: Coordinator, opts: SurvivalBFIOptions, spec, model: Baseline,
            started: float) -> SurvivalBFIReport:
    """The count round, the polynomial's order round, the terms round; the combination."""
    order_counts: tuple[int, ...] = ()
    count = check_bfi_count(coordinator.secure_sum("bfi-count", lambda s: s.count_vector()),
                            coordinator)
    if model.kind == "poly":
        order_counts = _poly_order(coordinator, opts)
        model = _baseline(opts, max(q for q, c in enumerate(order_counts) if c > 0))
    names = spec.names + model.names
    absent = [n for n in opts.stratify if n not in names]
    if absent:
        raise InputError(f"--stratify {absent[0]}: the sites chose order {model.order}, so the "
                         f"baseline's parameters are {', '.join(model.names)}")
    prior = opts.lam * np.eye(len(names))
    combined = None if opts.combined_lam is None else opts.combined_lam * np.eye(len(names))
    centre = tuple(names.index(n) for n in opts.stratify)
    layout = bfi.CentreSpecificLayout(names, SURVIVAL, centre) if centre else \
        bfi.HomogeneousLayout(names, SURVIVAL)
    if centre and combined is not None:
        shared = list(layout.shared_params)
        combined = combined[np.ix_(shared, shared)]
    try:
        total = coordinator.secure_sum(
            "bfi-terms", lambda s: s.bfi_survival_vector(layout, model, prior))
    except (ValueError, bfi.MAPConvergenceError) as err:
        raise InputError(str(err)) from None
    check_bfi_terms(total, coordinator, layout, count, prior)
    check_bfi_linear(total, layout, SURVIVAL, count.tolerance)
    try:
        fit = layout.combine(total, combined, opts.level)
    except ValueError as err:
        raise InputError(str(err)) from None
    centres = () if not centre else tuple(  # each site's own, from the broadcast fit
        (s.name, s.bfi_survival_centre(layout, fit)) for s in coordinator.live_sites)
    seconds = clock.perf_counter() - started
    return SurvivalBFIReport(
        opts, fit, coordinator.protection.name, coordinator.round_id,
        coordinator.release_list(), coordinator.mean_bytes_per_site(), seconds,
        coordinator.timings(seconds), centres, model, order_counts)


def _poly_order(coordinator: Coordinator, opts: SurvivalBFIOptions) -> tuple[int, ...]:
    """The ``bfi-poly-order`` round: the number of sites that chose each order 0..max_order
    (checked: whole, non-negative, one order per contributing site)."""
    from securefed.plausibility import ImplausibleAggregate, Tolerance

    total = np.asarray(coordinator.secure_sum(
        "bfi-poly-order", lambda s: s.poly_order_vector(opts.max_order, opts.alpha)), float)
    tol = Tolerance.of(coordinator)
    counts = np.rint(total).astype(int)
    if not all(tol.whole(float(v)) for v in total) or np.any(counts < 0) \
            or int(counts.sum()) != len(coordinator.rounds[-1].contributors):
        raise ImplausibleAggregate("bfi-poly-order", "order-counts", "the counts are not "
                                   "whole, non-negative and one per site")
    return tuple(int(c) for c in counts)
