"""Plausibility checks on decoded aggregates: the coordinator's defence against poisoning.

Under secure aggregation the coordinator sees only the sum over sites of the
vectors the sites release, never one site's vector, so it cannot inspect what a
malicious (or buggy) site sent. What it can do is check every decoded sum,
before using it, against inequalities that hold for **any honest data**, and
refuse the round (:class:`ImplausibleAggregate`, an :class:`AbortError`: the
CLI prints one line and exits 1) when one fails. A crafted vector that keeps
the sum inside the plausible region is not caught; see
``threat_model/poisoning.md`` for what is caught and what is not.

Every check below states the inequality it tests and why honest sums satisfy
it. Notation: the design-summary round gives, summed over the rows of the
contributing sites, ``n``, ``Sy = sum y``, ``Syy = sum y^2``, ``X'y`` and the
Gram matrix ``G = X'X``. Later GLMM rounds may sum over a subset of those rows
(a held-out split, or fewer sites after a dropout), so every GLMM bound is
written so that it also holds for any subset of the rows: ``m <= n`` rows with
``X_m'X_m <= X'X`` in the Loewner order and ``RSS_m <= RSS``.

Tolerances. Decoding a fixed-point sum is off by at most ``L 2^(-f-1)`` per
coordinate (``protocols.encoding``): :class:`Tolerance` carries that bound for
the run's layer and number of sites. Checks of identities of data sums (counts,
Gram matrices) add a relative floating-point tolerance of ``1e-9``; checks of
bounds on GLMM derivatives, which sites compute at numerically converged
conditional modes, use ``1e-6`` relative. Both are many orders of magnitude
below what moves an estimate, so honest rounds pass and gross poisoning fails.
Differential-privacy noise, when added to sums, must be added to these
tolerances (it is not wired into runs yet).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core_stats.bfi_centre import CentreSpecificLayout
from core_stats.bfi_combine import CentreCovariateLayout, HomogeneousLayout
from core_stats.bfi_layout import triu_pack, triu_unpack
from core_stats.bfi_local import SCALE_NAME
from core_stats.families import Family
from core_stats.glmm import ParameterLayout
from protocols.errors import AbortError
from securefed.vectors import from_upper_triangle

__all__ = [
    "BFICount",
    "BFIGuard",
    "DesignSummary",
    "ImplausibleAggregate",
    "Tolerance",
    "check_bfi_count",
    "check_bfi_standardize",
    "check_bfi_terms",
    "check_design_summary",
    "check_glmm_terms",
    "check_validation_histograms",
    "check_validation_loglik",
]

DATA_RTOL = 1e-9
MODEL_RTOL = 1e-6


class ImplausibleAggregate(AbortError):
    """A decoded sum fails a plausibility check: the round is refused, nothing is used.

    Attributes
    ----------
    purpose : str
        The round (``"design-summary"``, ``"glmm-terms"``, ``"bfi-terms"``, ...).
    check : str
        The name of the failed check (as in ``threat_model/poisoning.md``).
    """

    def __init__(self, purpose: str, check: str, detail: str) -> None:
        self.purpose = purpose
        self.check = check
        super().__init__(
            f"round '{purpose}' refused: the decoded sum fails plausibility check '{check}' "
            f"({detail}); a site sent a corrupted or poisoned vector")


@dataclass(frozen=True)
class Tolerance:
    """How far an honest decoded sum may be from the exact sum.

    Attributes
    ----------
    absolute : float
        Decoding error per coordinate, ``L 2^(-f-1)`` for the layer's fixed-point
        encoding (0 without protection).
    """

    absolute: float = 0.0

    @classmethod
    def of(cls, coordinator) -> Tolerance:
        """The tolerance of ``coordinator``'s layer for all sites of the run."""
        bound = getattr(coordinator.protection, "bound", None)
        if bound is None:
            return cls(0.0)
        from protocols.encoding import FixedPointEncoder

        n_sites = max(1, len(coordinator.live_sites) + len(coordinator.dropped))
        encoder = FixedPointEncoder.for_sum(float(bound), n_sites, 1)
        return cls(float(np.max(encoder.error_bound)))

    def close(self, value: float, target: float, rtol: float = DATA_RTOL) -> bool:
        """``|value - target| <= absolute + rtol max(1, |target|)``."""
        return abs(value - target) <= self.absolute + rtol * max(1.0, abs(target))

    def whole(self, value: float) -> bool:
        """``value`` is an integer up to the tolerance."""
        return self.close(value, float(np.round(value)))


def _refuse(purpose: str, check: str, detail: str) -> None:
    raise ImplausibleAggregate(purpose, check, detail)


def _finite(purpose: str, total: np.ndarray) -> np.ndarray:
    total = np.asarray(total, dtype=float).ravel()
    if not np.all(np.isfinite(total)):
        _refuse(purpose, "finite", "the sum has NaN or infinite entries")
    return total


def _min_scaled_eigenvalue(matrix: np.ndarray, scale: np.ndarray) -> float:
    """``lambda_min(D M D)`` with ``D = diag(1 / scale)`` (``scale > 0``)."""
    inv = 1.0 / scale
    scaled = matrix * np.outer(inv, inv)
    return float(np.min(np.linalg.eigvalsh(0.5 * (scaled + scaled.T))))


def _psd(matrix: np.ndarray, scale: np.ndarray, slack: float) -> bool:
    """``M >= 0`` (Loewner) up to ``slack`` on the ``scale``-normalised matrix."""
    if matrix.size == 0:
        return True
    return _min_scaled_eigenvalue(matrix, scale) >= -slack


def _gram_scale(gram: np.ndarray) -> np.ndarray:
    return np.sqrt(np.maximum(np.diag(gram), 1e-300))


# --------------------------------------------------------------------- GLMM


@dataclass(frozen=True)
class DesignSummary:
    """The checked design-summary sum ``[n, Sy, Syy, X'y, triu(X'X)]``."""

    family: Family
    n: float
    sum_y: float
    sum_y2: float
    xty: np.ndarray
    xtx: np.ndarray
    tolerance: Tolerance
    weighted: bool = False

    def restricted(self, keep: np.ndarray) -> DesignSummary:
        """The summary for the kept columns (collinear ones dropped)."""
        keep = np.asarray(keep, dtype=int)
        return DesignSummary(self.family, self.n, self.sum_y, self.sum_y2, self.xty[keep],
                             self.xtx[np.ix_(keep, keep)], self.tolerance, self.weighted)

    def rss(self, beta: np.ndarray) -> float:
        """``||y - X beta||^2 = Syy - 2 beta'X'y + beta'X'X beta``, never below 0."""
        terms = (self.sum_y2, 2.0 * float(beta @ self.xty), float(beta @ self.xtx @ beta))
        value = terms[0] - terms[1] + terms[2]
        return max(0.0, value) + DATA_RTOL * sum(abs(t) for t in terms)


def check_design_summary(total: np.ndarray, coordinator, *, family: Family,
                         fixed_names: tuple[str, ...], weighted: bool = False) -> DesignSummary:
    """Check the design-summary sum ``[n, Sy, Syy, X'y, triu(X'X)]``; return it unpacked.

    Checks (each true for any honest rows, summed over any sites):

    * ``count``: ``n`` is a whole number and ``n >= L`` (every site has a row).
    * ``intercept-count``: with an ``(Intercept)`` column, ``(X'X)_00 = n`` and
      ``(X'y)_0 = Sy`` (the column is all ones).
    * ``gram-psd``: the Gram matrix of ``[X, y]``,
      ``[[X'X, X'y], [y'X, Syy]]``, is positive semi-definite (a sum of Gram
      matrices ``[X_l, y_l]'[X_l, y_l]``); in particular ``diag(X'X) >= 0``,
      ``Syy >= 0`` and ``(X'y)_j^2 <= (X'X)_jj Syy``.
    * ``outcome-moments``: ``n Syy >= Sy^2`` (Cauchy-Schwarz; the Gram matrix
      of ``[1, y]``).
    * ``binomial-outcome``: ``0 <= Sy <= n`` and ``Syy = Sy`` (``y`` in {0, 1}).
    * ``poisson-outcome``: ``Sy >= 0`` and ``Syy >= Sy`` (``y`` a whole count,
      so ``y^2 >= y``).

    With prior weights ``w`` (``weighted``; binomial trials) every sum is
    weighted: ``n = sum w``, ``Sy = sum w y``, ``Syy = sum w y^2``, ``X'WX``.
    The Gram and moment checks hold for ``W^(1/2) [X, y]``; ``count`` asks a
    whole number only of binomial trials; a binomial proportion has
    ``0 <= Syy <= Sy <= n``. The GLMM-round bounds below then hold with ``G =
    X'WX`` and ``n = sum w`` (each row's score and curvature scale by ``w``).
    """
    purpose = "design-summary"
    tol = Tolerance.of(coordinator)
    total = _finite(purpose, total)
    p = len(fixed_names)
    if total.size != 3 + p + p * (p + 1) // 2:
        _refuse(purpose, "length", f"{total.size} values for {p} columns")
    n, sum_y, sum_y2 = (float(v) for v in total[:3])
    xty, xtx = total[3:3 + p], from_upper_triangle(total[3 + p:], p)
    sites = len(coordinator.rounds[-1].contributors) if coordinator.rounds else 1
    whole = tol.whole(n) or (weighted and not family.binary)
    if not whole or (n < sites - tol.absolute and not weighted):
        _refuse(purpose, "count", f"n = {n:.6g} is not a whole number >= {sites} sites")
    if "(Intercept)" in fixed_names:
        j = fixed_names.index("(Intercept)")
        if not tol.close(xtx[j, j], n) or not tol.close(xty[j], sum_y):
            _refuse(purpose, "intercept-count",
                    f"(X'X)_00 = {xtx[j, j]:.6g} and (X'y)_0 = {xty[j]:.6g} must equal "
                    f"n = {n:.6g} and sum y = {sum_y:.6g}")
    gram = np.block([[xtx, xty[:, None]], [xty[None, :], np.array([[sum_y2]])]])
    diag = np.diag(gram)
    if np.any(diag < -tol.absolute):
        _refuse(purpose, "gram-psd", "a diagonal entry of [X y]'[X y] is negative")
    slack = (p + 1) * (DATA_RTOL + tol.absolute / max(float(np.min(np.abs(diag))), 1e-300))
    if not _psd(gram, _gram_scale(gram), min(slack, 1.0)):
        _refuse(purpose, "gram-psd", "the Gram matrix of [X, y] is not positive semi-definite")
    if n * sum_y2 < sum_y**2 - tol.absolute * (n + 2 * abs(sum_y)) - DATA_RTOL * sum_y**2:
        _refuse(purpose, "outcome-moments", f"n sum y^2 = {n * sum_y2:.6g} < (sum y)^2")
    problem = family.summary_problem(n, sum_y, sum_y2, weighted, tol.absolute, DATA_RTOL)
    if problem is not None:
        _refuse(purpose, f"{family.name}-outcome", problem)
    return DesignSummary(family, n, sum_y, sum_y2, xty.copy(), xtx, tol, weighted)


def _sigma(layout: ParameterLayout, theta: np.ndarray) -> float:
    return float(np.exp(theta[layout.scale_index]))


def _loglik_upper(design: DesignSummary, layout: ParameterLayout, theta: np.ndarray) -> float:
    """Largest log-likelihood an honest sum over at most ``n`` rows can have (none is
    known for a weighted Gaussian model: a row's density grows with its weight)."""
    per_row = design.family.loglik_upper_per_row(
        float(theta[layout.scale_index]) if layout.has_dispersion else 0.0)
    if per_row is None or (design.weighted and design.family.has_residual_sd):
        return np.inf
    return float(max(per_row, design.n * per_row))


def _laplace_intercept(layout: ParameterLayout, nagq: int) -> bool:
    return layout.random_effects and nagq == 1 and layout.random_names == ("(Intercept)",)


def check_glmm_terms(total: np.ndarray, design: DesignSummary, layout: ParameterLayout,
                     theta: np.ndarray, derivatives: bool, nagq: int,
                     purpose: str = "glmm-terms") -> None:
    """Check a summed GLMM round ``[l, gradient, triu(Hessian)]`` (or ``[l]``) at public theta.

    ``l`` is the Laplace (``nagq = 1``) or adaptive Gauss-Hermite marginal
    log-likelihood; ``g`` and ``H`` are its exact gradient and Hessian. ``G``
    is ``X'X`` of the kept columns from the design summary, ``n`` its count.
    Checks:

    * ``finite`` and ``length``.
    * ``loglik-upper``. Binomial and Poisson: ``l <= 0``. Each group's term is
      a positive-weight quadrature of ``prod_i p(y_i | b) N(b; 0, Sigma)``
      with ``p <= 1``, so it is at most the same rule applied to
      ``N(b; 0, Sigma)`` alone. The rule is centred at the mode with the scale
      of the curvature ``H_b >= Sigma^{-1}``, so it integrates
      ``e^{-|z|^2} exp(z'Az + c'z)`` with ``A >= 0``; writing
      ``exp(z'Az) = E_xi exp(sqrt(2) xi'A^{1/2} z)`` makes the integrand a
      positive mixture of products of ``exp(c_k z_k)``, whose even
      derivatives are positive, so every 1-D Gauss-Hermite rule (and their
      tensor product) underestimates it: the rule gives at most
      ``int N = 1``. Laplace (``K = 1``) is the case of one node. Gaussian:
      ``l = log N(y; X beta, V)`` exactly (the integrand is Gaussian, AGQ is
      exact) with ``V >= sigma^2 I``, so ``l <= -(m/2) log(2 pi sigma^2)``
      for ``m`` rows, at most ``max over 1 <= m <= n``.
    * ``gradient-bound`` on ``Q = g_beta' G^{-1} g_beta`` (``= max_a (a'g)^2 /
      a'Ga``). Binomial without random effects: ``g = X'(y - mu)``, so
      ``Q <= ||y - mu||^2 <= n``. Binomial Laplace with a random intercept:
      per group ``|a'g_j| <= sum_i |v_i| + max_i |v_i| <= 2 sum_i |v_i|``
      (``v_i = x_i'a``; the score ``sum (y - mu) v`` plus half the derivative
      of ``log H_j``, which is ``sum_i w'_i d_i / H_j`` with ``|w'| <= w``,
      ``|d_i| <= 2 max |v|`` and ``sum w < H_j``), so ``Q <= 4 n`` by
      Cauchy-Schwarz. Gaussian: ``g = X'V^{-1}(y - X beta)``, so
      ``(a'g)^2 <= sigma^{-4} a'Ga RSS(beta)`` and ``Q <= RSS / sigma^4``.
      Not checked for AGQ with ``K > 1``, random slopes, or Poisson with
      random effects (no bound is proven there).
    * ``hessian-bound`` on ``J = -H_beta,beta`` in the Loewner order.
      Binomial without random effects: ``0 <= J = X'WX <= G/4``. Poisson
      without random effects: ``J = X'diag(mu)X >= 0``. Binomial Laplace with a
      random intercept: ``J_j = X_j'WX_j - (X_j'w)(X_j'w)'/H_j + (1/2) D^2 log H_j``
      with the first two terms between 0 and ``X_j'X_j/4`` and
      ``|a' D^2 log H_j a| <= 12 max_i v_i^2``, so ``-6 G <= J <= (25/4) G``.
      Gaussian (any random effects): ``J = X'V^{-1}X``, so
      ``0 <= J <= G / sigma^2``.
    """
    total = _finite(purpose, total)
    size = layout.size
    full = 1 + size + size * (size + 1) // 2
    extra = layout.q * (layout.q + 1) // 2 if derivatives and not layout.random_effects else 0
    expected = full + extra if derivatives else 1
    if total.size != expected:
        _refuse(purpose, "length", f"{total.size} values, expected {expected}")
    tol, family = design.tolerance, design.family
    value = float(total[0])
    upper = _loglik_upper(design, layout, theta)
    if value > upper + tol.absolute + MODEL_RTOL * max(1.0, abs(upper)):
        _refuse(purpose, "loglik-upper",
                f"log-likelihood {value:.6g} above its largest honest value {upper:.6g}")
    if not derivatives:
        return
    p = layout.p
    grad = total[1:1 + p]
    hess = from_upper_triangle(total[1 + size:full], size)[:p, :p]
    gram = design.xtx
    scale = _gram_scale(gram)
    if not family.canonical:
        return  # the score and curvature bounds below are proven for canonical links only
    _check_gradient(purpose, design, layout, theta, grad, nagq)
    sigma = _sigma(layout, theta) if layout.has_dispersion else 1.0
    bounds = family.information_bounds(layout.random_effects,
                                       _laplace_intercept(layout, nagq), sigma)
    if bounds is None:
        return
    lower, upper_factor = bounds
    info = -hess
    slack = p * (MODEL_RTOL * max(1.0, abs(lower), upper_factor or 0.0)
                 + tol.absolute / max(float(np.min(scale)) ** 2, 1e-300))
    if not _psd(info - lower * gram, scale, slack):
        _refuse(purpose, "hessian-bound",
                f"-Hessian of beta is not >= {lower:g} X'X in the Loewner order")
    if upper_factor is not None and not _psd(upper_factor * gram - info, scale, slack):
        _refuse(purpose, "hessian-bound",
                f"-Hessian of beta is not <= {upper_factor:.6g} X'X in the Loewner order")


def check_multi_glmm_terms(total: np.ndarray, design: DesignSummary, layout, theta: np.ndarray,
                           derivatives: bool, purpose: str = "glmm-terms") -> None:
    """Check a summed round of a model with several random-effects terms.

    ``finite``, ``length`` and ``loglik-upper``: the multivariate Laplace value
    is the one-node rule of the argument in :func:`check_glmm_terms`, so
    ``l <= 0`` for binomial and Poisson; Gaussian ``l = log N(y; X beta, V)``
    with ``V >= sigma^2 I``. The score and curvature bounds are not proven for
    several terms and are not checked.
    """
    total = _finite(purpose, total)
    size = layout.size
    expected = 1 + size + size * (size + 1) // 2 if derivatives else 1
    if total.size != expected:
        _refuse(purpose, "length", f"{total.size} values, expected {expected}")
    upper = _loglik_upper(design, layout, theta)
    value = float(total[0])
    if value > upper + design.tolerance.absolute + MODEL_RTOL * max(1.0, abs(upper)):
        _refuse(purpose, "loglik-upper",
                f"log-likelihood {value:.6g} above its largest honest value {upper:.6g}")


def _check_gradient(purpose: str, design: DesignSummary, layout: ParameterLayout,
                    theta: np.ndarray, grad: np.ndarray, nagq: int) -> None:
    family = design.family
    rss_over_sigma4 = design.rss(theta[layout.beta]) / _sigma(layout, theta) ** 4 \
        if family.has_residual_sd else 0.0
    bound = family.score_bound(layout.random_effects, _laplace_intercept(layout, nagq),
                               design.n, rss_over_sigma4)
    if bound is None:
        return
    try:
        quad = float(grad @ np.linalg.solve(design.xtx, grad))
    except np.linalg.LinAlgError:
        return  # collinear columns were dropped before any GLMM round; nothing to test
    slack = design.tolerance.absolute * float(np.sum(np.abs(grad))) * len(grad)
    if quad > bound * (1.0 + MODEL_RTOL) + slack + MODEL_RTOL:
        _refuse(purpose, "gradient-bound",
                f"g' (X'X)^-1 g = {quad:.6g} exceeds its honest bound {bound:.6g}")


def check_validation_loglik(total: np.ndarray, design: DesignSummary, layout: ParameterLayout,
                            theta: np.ndarray) -> None:
    """Check ``[l_val, n_val]`` of the held-out rows.

    * ``count``: ``n_val`` is a whole number with ``0 <= n_val <= n``.
    * ``loglik-upper``: as in :func:`check_glmm_terms` (``l_val <= 0`` for
      binomial and Poisson; the Gaussian bound for at most ``n`` rows).
    """
    purpose = "validation-loglik"
    total = _finite(purpose, total)
    if total.size != 2:
        _refuse(purpose, "length", f"{total.size} values, expected 2")
    tol = design.tolerance
    n_val = float(total[1])
    if not tol.whole(n_val) or not -tol.absolute <= n_val <= design.n + tol.absolute:
        _refuse(purpose, "count", f"n_val = {n_val:.6g} is not a whole number in [0, n]")
    check_glmm_terms(total[:1], design, layout, theta, False, 1, purpose=purpose)


def check_validation_histograms(total: np.ndarray, design: DesignSummary) -> None:
    """Check the AUC score histograms ``[positives, negatives]``.

    * ``histogram-counts``: every bin is a whole number ``>= 0`` and all bins
      together count at most ``n`` rows.
    """
    purpose = "validation-auc"
    total = _finite(purpose, total)
    tol = design.tolerance
    rounded = np.round(total)
    slack = tol.absolute + DATA_RTOL * np.maximum(1.0, np.abs(total))
    if np.any(np.abs(total - rounded) > slack) or np.any(total < -slack) \
            or total.sum() > design.n + tol.absolute * total.size:
        _refuse(purpose, "histogram-counts",
                "histogram bins must be whole counts >= 0 that sum to at most n")


# ---------------------------------------------------------------------- BFI


@dataclass(frozen=True)
class BFICount:
    """The checked set-up round ``[sum n_l, L]`` and who contributed to it."""

    n: float
    sites: int
    contributors: frozenset[str]
    tolerance: Tolerance


def _contributors(coordinator) -> frozenset[str]:
    return frozenset(coordinator.rounds[-1].contributors)


def check_bfi_count(total: np.ndarray, coordinator) -> BFICount:
    """Check the ``bfi-count`` round ``[sum n_l, sum 1]``.

    * ``site-count``: the second entry equals the number of contributors ``L``
      the protocol reports for the round (each honest site adds exactly 1).
    * ``row-count``: ``sum n_l`` is a whole number ``>= L`` (each site has a row).
    """
    purpose = "bfi-count"
    tol = Tolerance.of(coordinator)
    total = _finite(purpose, total)
    if total.size != 2:
        _refuse(purpose, "length", f"{total.size} values, expected 2")
    contributors = _contributors(coordinator)
    _check_counts(purpose, tol, float(total[0]), float(total[1]), len(contributors), None)
    return BFICount(float(total[0]), len(contributors), contributors, tol)


def _check_counts(purpose: str, tol: Tolerance, n: float, sites: float, contributors: int,
                  count: tuple[BFICount, bool] | None) -> None:
    if not tol.close(sites, contributors):
        _refuse(purpose, "site-count",
                f"the site count {sites:.6g} is not the {contributors} contributors")
    if not tol.whole(n) or n < contributors - tol.absolute:
        _refuse(purpose, "row-count", f"n = {n:.6g} is not a whole number >= {contributors}")
    if count is not None:
        first, same_sites = count
        if n > first.n + 2 * tol.absolute or (same_sites and not tol.close(n, first.n)):
            _refuse(purpose, "row-count",
                    f"n = {n:.6g} does not match the {first.n:.6g} rows of the count round")


def check_bfi_standardize(total: np.ndarray, coordinator, count: BFICount) -> None:
    """Check ``[n, sum(x - c) (m), sum((x - c)^2) (m)]`` of the standardisation round.

    * ``row-count``: ``n`` equals the count round's ``sum n_l`` when the same
      sites contributed, and is at most that otherwise.
    * ``moment-inequality``: ``n S2_j >= S1_j^2`` for every column
      (Cauchy-Schwarz), hence ``S2_j >= 0``.
    """
    purpose = "bfi-standardize"
    tol = count.tolerance
    total = _finite(purpose, total)
    if total.size % 2 != 1:
        _refuse(purpose, "length", f"{total.size} values, expected 1 + 2m")
    contributors = _contributors(coordinator)
    n = float(total[0])
    same = contributors == count.contributors
    _check_counts(purpose, tol, n, len(contributors), len(contributors), (count, same))
    m = (total.size - 1) // 2
    s1, s2 = total[1:1 + m], total[1 + m:]
    slack = tol.absolute * (n + 2 * np.abs(s1) + tol.absolute) + DATA_RTOL * s1**2
    if np.any(n * s2 < s1**2 - slack):
        _refuse(purpose, "moment-inequality", "n sum x^2 < (sum x)^2 for a column")


@dataclass(frozen=True)
class BFIGuard:
    """What the BFI coordinator checks later rounds against.

    Attributes
    ----------
    count : BFICount
        The checked set-up round.
    prior : ndarray
        The public per-site prior precision ``Lambda`` every honest site uses.
    family : Family
    theta_bound : float or None
        The public bound on every parameter of a site's MAP used by
        ``linear-consistency`` (:mod:`securefed.plausibility_linear`); None:
        its default.
    weighted, offset : bool
        Prior weights or ``cbind()`` (rows carry several records), an
        ``offset()``: the binomial bound of ``linear-consistency`` then does not
        hold (the public bound is used), and with weights neither does
        ``binomial-intercept``'s ``n / 4`` (``n`` counts rows, not trials).
    """

    count: BFICount
    prior: np.ndarray
    family: Family
    theta_bound: float | None = None
    weighted: bool = False
    offset: bool = False

    def standardize(self, total: np.ndarray, coordinator) -> None:
        """:func:`check_bfi_standardize` against this run's count."""
        check_bfi_standardize(total, coordinator, self.count)

    def terms(self, total: np.ndarray, coordinator, layout) -> None:
        """:func:`check_bfi_terms` against this run's count and prior, then the
        ``linear-consistency`` bound on ``sum A_l theta_l``."""
        from securefed.plausibility_linear import DEFAULT_THETA_BOUND, check_bfi_linear

        check_bfi_terms(total, coordinator, layout, self.count, self.prior,
                        weighted=self.weighted)
        bound = DEFAULT_THETA_BOUND if self.theta_bound is None else self.theta_bound
        check_bfi_linear(total, layout, self.family, self.count.tolerance, bound,
                         unit_rows=not (self.weighted or self.offset))


def check_bfi_terms(total: np.ndarray, coordinator, layout, count: BFICount,
                    prior: np.ndarray, *, one_hot: bool = True, weighted: bool = False) -> None:
    """Check the ``bfi-terms`` sum of a layout's site vectors.

    Honest site ``l`` has ``A_l = -grad^2 log posterior`` at its MAP
    (positive definite: ``fit_map`` refuses otherwise) and the public prior
    ``Lambda`` (diagonal). For binomial and Poisson (canonical links)
    ``A_l - Lambda = X_l'W_l X_l >= 0``; for the Gaussian family the same holds
    on the coefficients (``X_l'X_l / sigma_l^2``), not on the scale. Checks:

    * ``site-count``: the count entry equals the round's contributors ``L``.
    * ``row-count``: ``sum n_l`` equals the count round's total when the same
      sites contributed (at most it otherwise), and is ``>= L``.
    * ``prior-sum``: ``sum Lambda_l = L Lambda`` (the layout's prior slot).
    * ``curvature-pd`` (homogeneous, centre-specific): ``sum A_l`` (resp.
      ``sum (A_aa,l - S_l)``, Schur complements of PD matrices) is positive
      definite.
    * ``curvature-above-prior``: homogeneous ``sum A_l - sum Lambda_l >= 0``;
      centre-specific ``sum S'_l - sum Lambda_a,l >= 0`` with
      ``S'_l = A_aa,l - A_ab,l A_bb,l^{-1} A_ba,l`` (``x_a'S'x_a =
      min_{x_b} x'A_l x >= min_{x_b} x'Lambda x >= x_a'Lambda_a x_a``); centre
      covariate ``sum J_l'(A_l - Lambda_l)J_l >= 0``. For the Gaussian family
      on the coordinates other than the scale, and only when the scale is
      shared; for survival models (homogeneous layout) on the coefficients
      (``sum u x x'``), not on the baseline's ``omega`` parameters; the Schur
      bound of the other layouts needs ``A_l >= Lambda_l`` on every parameter,
      which survival models do not give.
    * ``binomial-intercept``: binomial with an intercept: the intercept's
      entries of ``sum (A_l - Lambda_l)`` add up to at most ``n / 4``
      (``(X_l'W_l X_l)_00 = sum_i mu_i (1 - mu_i) <= n_l / 4``; a Schur
      complement only lowers a diagonal entry). Not checked when ``weighted``
      (prior weights, ``cbind()``): then the bound is the trials' sum, not ``n / 4``.
    * ``category-counts`` (centre covariate with one-hot rows):
      ``sum z_l z_l'`` is diagonal with whole counts ``>= 0`` adding up to ``L``.
    """
    purpose = "bfi-terms"
    tol = count.tolerance
    total = _finite(purpose, total)
    if total.size != layout.length:
        _refuse(purpose, "length", f"{total.size} values, expected {layout.length}")
    parts = layout.spec.split(total)
    contributors = _contributors(coordinator)
    sites = len(contributors)
    n = float(parts["n"][0])
    _check_counts(purpose, tol, n, float(parts["sites"][0]), sites,
                  (count, contributors == count.contributors))
    names, family = layout.names, layout.family
    prior = np.asarray(prior, dtype=float)
    is_centre = isinstance(layout, CentreSpecificLayout)
    centre = tuple(layout.centre_params) if not isinstance(layout, HomogeneousLayout) else ()
    shared = [j for j in range(len(names)) if j not in centre]
    site_prior = prior[np.ix_(shared, shared)] if is_centre else prior
    expected = sites * triu_pack(site_prior)
    got = parts["prior"]
    if np.any(np.abs(got - expected) > tol.absolute + DATA_RTOL * np.maximum(1.0, expected)):
        _refuse(purpose, "prior-sum", f"sum Lambda_l is not {sites} x the public prior")
    scale_shared = SCALE_NAME not in [names[j] for j in centre]
    if isinstance(layout, CentreCovariateLayout):
        dim = len(layout.combined_names)
        above = triu_unpack(parts["curvature"], dim)
        kept = [c for c, name in enumerate(layout.combined_names) if name != SCALE_NAME]
        intercept_cols = _covariate_intercept_columns(layout)
        _check_categories(purpose, tol, layout, parts["zz"], sites, one_hot)
    else:
        slot = "schur" if is_centre else "curvature"
        dim = len(shared) if is_centre else len(names)
        curvature = triu_unpack(parts[slot], dim)
        local = [names[j] for j in shared] if is_centre else list(names)
        diag = np.sqrt(np.maximum(np.abs(np.diag(curvature)), 1e-300))
        slack = dim * (DATA_RTOL + tol.absolute / float(np.min(diag)) ** 2)
        if _min_scaled_eigenvalue(curvature, diag) <= -slack or \
                _cholesky_fails(curvature):
            _refuse(purpose, "curvature-pd", "the summed curvature is not positive definite")
        above = curvature - triu_unpack(got, dim)
        kept = [c for c, name in enumerate(local) if name != SCALE_NAME]
        intercept_cols = [local.index("(Intercept)")] if "(Intercept)" in local else []
        if is_centre and layout.centre_prior is not None:
            kept = []  # A~_b differs from A_bb: the Schur bound is not proven
    if family.has_residual_sd and not scale_shared:
        kept = []
    if not family.has_residual_sd:
        kept = list(range(dim))
    if family.name == "survival":  # concave in beta (sum u x x'), not in the baseline's scales
        kept = [] if not isinstance(layout, HomogeneousLayout) else \
            [c for c, name in enumerate(names) if not name.startswith("omega_")]
    if kept:
        block = above[np.ix_(kept, kept)]
        diag = np.sqrt(np.maximum(np.abs(np.diag(block)), 1e-300))
        slack = len(kept) * (DATA_RTOL * 10 + tol.absolute / float(np.min(diag)) ** 2)
        if not _psd(block, diag, slack):
            _refuse(purpose, "curvature-above-prior",
                    "the summed curvature minus the summed prior is not positive "
                    "semi-definite")
    if family.binary and family.canonical and intercept_cols and not weighted:
        mass = float(sum(above[c, c] for c in intercept_cols))
        if mass > n / 4.0 + tol.absolute * (len(intercept_cols) + 1) \
                + DATA_RTOL * max(1.0, n):
            _refuse(purpose, "binomial-intercept",
                    f"the intercept curvature {mass:.6g} exceeds n/4 = {n / 4:.6g}")


def _cholesky_fails(matrix: np.ndarray) -> bool:
    try:
        np.linalg.cholesky(0.5 * (matrix + matrix.T))
    except np.linalg.LinAlgError:
        return True
    return False


def _covariate_intercept_columns(layout: CentreCovariateLayout) -> list[int]:
    if "(Intercept)" not in layout.names:
        return []
    jac = layout.jacobian(np.ones(len(layout.covariate_names)))
    return [int(c) for c in np.flatnonzero(jac[layout.names.index("(Intercept)")])]


def _check_categories(purpose: str, tol: Tolerance, layout: CentreCovariateLayout,
                      packed: np.ndarray, sites: int, one_hot: bool) -> None:
    m = len(layout.covariate_names)
    zz = triu_unpack(packed, m)
    if one_hot:
        off = zz - np.diag(np.diag(zz))
        counts = np.diag(zz)
        if np.any(np.abs(off) > tol.absolute) or not all(tol.whole(c) for c in counts) \
                or np.any(counts < -tol.absolute) or not tol.close(float(counts.sum()), sites):
            _refuse(purpose, "category-counts",
                    f"sum z z' is not a diagonal of whole counts adding up to {sites} sites")
    elif not _psd(zz, np.sqrt(np.maximum(np.diag(zz), 1e-300)), m * DATA_RTOL):
        _refuse(purpose, "category-counts", "sum z z' is not positive semi-definite")
