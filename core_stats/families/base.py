"""The :class:`Family` base class: what every response distribution provides.

Each family writes the log-density of one row with prior weight ``w`` as

    log p(y | eta, s) = l(y, eta, s) + c_0(y, w)

where ``eta`` is the linear predictor, ``s`` the log-dispersion parameter
(absent for binomial and Poisson), ``c_0`` the terms free of ``eta`` and ``s``
(:meth:`Family.log_normalizer`) and ``l`` the rest. The GLMM needs the
partial derivatives ``d^i l / d eta^i d s^j`` for ``i + j <= 4``, ``j <= 2``
(:meth:`Family.row_partials`): up to fourth order in ``eta`` for exact
Hessians of the Laplace approximation (the conditional mode moves with
``theta``), and the dispersion's own derivatives for the dispersion as a
parameter of ``theta``.

Most families separate as ``l = w a(s) r(y, eta) + c(y, s)`` (a kernel ``r``
with closed-form ``eta``-derivatives, :meth:`Family.kernel_derivatives`);
the negative binomial does not and overrides :meth:`Family.row_partials`.
A subclass declares its names (ours and R's), the links it allows (the
first is canonical), its dispersion, and the hooks the orchestration asks
(plausibility bounds, DP sensitivity, BFI support); see the subclasses in
this package.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from core_stats.links import Link, get_link

__all__ = ["Dispersion", "Family", "inverse_square_scale", "count_summary_problem",
           "check_counts"]


@dataclass(frozen=True)
class Dispersion:
    """A family's dispersion parameter: how ``theta`` holds it and how R reports it.

    Attributes
    ----------
    parameter : str
        Its name in ``theta`` (``log_sigma_residual`` for the Gaussian).
    residual_sd : bool
        True when ``exp(s)`` is a residual SD on the scale of ``eta`` (the
        Gaussian): random-effect SDs are then judged relative to it.
    label : str
        The line R prints for it (``{value}`` is filled in), or ``""`` when
        the residual is a row of the random-effects table (lmer).
    """

    parameter: str
    residual_sd: bool
    label: str = ""

    def report(self, log_dispersion: float) -> float:
        """The value R reports: ``exp(s)`` (sigma, NB2's theta); Gamma overrides it."""
        return float(np.exp(log_dispersion))


@dataclass(frozen=True)
class Family:
    """A response distribution with one link (an instance field; the rest is the class's).

    Class attributes (declared by each subclass)
    --------------------------------------------
    name : str
        Our name (``--family``); ``aliases`` are accepted too.
    r_name : str
        R's name, as ``summary()`` prints it (``Gamma``, ``nbinom2``).
    links : tuple of str
        Links the family allows; the first is canonical.
    dispersion : Dispersion or None
        The dispersion parameter, if any.
    counts : bool
        The outcome is whole counts (so ``sum y^2 >= sum y``).
    density_at_most_one : bool
        ``p(y | eta) <= 1`` for every row (discrete outcomes): the honest
        marginal log-likelihood of a sum of sites is then at most 0.
    t_statistic : bool
        ``summary()`` prints ``t value`` (lmer) instead of ``z value``.
    bfi : bool
        Bayesian Federated Inference supports the family.
    dp_outcome : str or None
        How DP bounds an outcome row (``"unit"``: in [0, 1]; ``"bounded"``:
        ``|y| <= outcome_bound``; ``"count"``: ``0 <= y <= outcome_bound``),
        or None when the sensitivity of the family's terms is not derived.
    several_terms : bool
        The several-term GLMM (:mod:`core_stats.glmm_multi_laplace`) supports it.
    dp_sufficient_statistics : bool
        DP BFI can fit it from noisy sufficient statistics (:mod:`core_stats.bfi_stats`).
    binary : bool
        The outcome is 0/1 (a proportion with trials as weights): AUC applies.
    reml : bool
        REML (lmer's default criterion) is defined: the Gaussian linear mixed model.
    prior_weights : bool
        Prior weights (glmer's ``weights=``) have R's meaning for the family here.
    """

    name: ClassVar[str]
    r_name: ClassVar[str]
    links: ClassVar[tuple[str, ...]]
    aliases: ClassVar[tuple[str, ...]] = ()
    dispersion: ClassVar[Dispersion | None] = None
    counts: ClassVar[bool] = False
    density_at_most_one: ClassVar[bool] = False
    t_statistic: ClassVar[bool] = False
    bfi: ClassVar[bool] = False
    dp_outcome: ClassVar[str | None] = None
    several_terms: ClassVar[bool] = False
    dp_sufficient_statistics: ClassVar[bool] = False
    binary: ClassVar[bool] = False
    reml: ClassVar[bool] = False
    prior_weights: ClassVar[bool] = False

    link: str = ""

    def __post_init__(self) -> None:
        if not self.link:
            object.__setattr__(self, "link", self.links[0])
        if self.link not in self.links:
            raise ValueError(f"link {self.link!r} is not available for the {self.name} family "
                             f"(choose {', '.join(self.links)})")

    # -------------------------------------------------------------- names
    @property
    def has_dispersion(self) -> bool:
        """True when ``theta`` carries the family's dispersion ``s``."""
        return self.dispersion is not None

    @property
    def has_residual_sd(self) -> bool:
        """True when ``theta`` holds a residual SD on the scale of ``eta`` (the Gaussian)."""
        return self.dispersion is not None and self.dispersion.residual_sd

    @property
    def canonical(self) -> bool:
        """Whether the link is the family's canonical one."""
        return self.link == self.links[0]

    @property
    def link_function(self) -> Link:
        return get_link(self.link)

    def dispersion_value(self, log_dispersion: float) -> float:
        """The dispersion as R reports it, from ``s`` in ``theta``."""
        assert self.dispersion is not None
        return self.dispersion.report(log_dispersion)

    # ------------------------------------------------------------- checks
    def check_outcome(self, y: np.ndarray, weights: np.ndarray | None = None) -> None:
        """Raise ``ValueError`` with a one-line reason if ``y`` is not valid.

        With prior ``weights`` (glmer's ``weights=``; binomial trials from
        ``cbind(successes, failures)``) a binomial outcome is a proportion whose
        successes ``w y`` are whole numbers.
        """
        y = np.asarray(y, dtype=float)
        if y.size == 0:
            raise ValueError("the outcome has no rows")
        if not np.all(np.isfinite(y)):
            raise ValueError("the outcome has missing or infinite values")
        if weights is not None:
            weights = np.asarray(weights, dtype=float)
            if not np.all(np.isfinite(weights)) or np.any(weights < 0):
                raise ValueError("weights must be finite and not negative")
        self._check_values(y, weights)
        if np.all(y == y.flat[0]):
            raise ValueError("the outcome is constant: the same value in every row")

    def _check_values(self, y: np.ndarray, weights: np.ndarray | None) -> None:
        """The family's own outcome checks (one-line ``ValueError``, no data values)."""

    # ------------------------------------------------ plausibility bounds
    def information_bounds(self, random_effects: bool, laplace_intercept: bool,
                           sigma: float) -> tuple[float, float | None] | None:
        """Proven ``lower G <= -H_beta,beta <= upper G`` (``G = X'X``) for an honest sum, as
        ``(lower, upper or None)``; None where no bound is proven (canonical links only;
        the proofs are in :func:`securefed.plausibility.check_glmm_terms`)."""
        return None

    def score_bound(self, random_effects: bool, laplace_intercept: bool, n: float,
                    rss_over_sigma4: float) -> float | None:
        """Proven bound on ``g_beta' G^{-1} g_beta`` for an honest sum, or None."""
        return None

    def loglik_upper_per_row(self, log_dispersion: float) -> float | None:
        """Largest log-density of one row (None: unbounded, a continuous density)."""
        return 0.0 if self.density_at_most_one else None

    def summary_problem(self, n: float, sum_y: float, sum_y2: float, weighted: bool,
                        atol: float, rtol: float) -> str | None:
        """Why the summed design summary ``(n, sum y, sum y^2)`` cannot be honest, or None."""
        return None

    # ------------------------------------------------------------ the model
    def mean(self, eta: np.ndarray) -> np.ndarray:
        """Inverse link: the mean ``mu`` for linear predictor ``eta``."""
        return self.link_function.inverse(eta)

    def link_value(self, mu: float) -> float:
        """The link ``g(mu)`` of one mean (clipped into the link's domain; start values)."""
        return self.link_function.value(mu)

    def mean_slope(self, mu: float) -> float:
        """``d mu / d eta`` at ``mu`` (start values: one IRLS step from the null model)."""
        raise NotImplementedError

    def start_dispersion(self, n: float, sum_y: float, sum_y2: float) -> float:
        """A start for ``s`` from the summed moments (families whose ``s`` is not a residual SD)."""
        return 0.0

    def random_sd_start(self, eta0: float, default: float) -> float:
        """Start SD of a random intercept on the scale of ``eta``, given the null ``eta0``."""
        return default

    def kernel_derivatives(self, y: np.ndarray, eta: np.ndarray, order: int) -> list[np.ndarray]:
        """``[r, dr/deta, ..., d^order r / deta^order]`` of a separable family's kernel."""
        raise NotImplementedError(f"the {self.name} family has no separable kernel")

    def log_normalizer(self, y: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        """``c_0(y, w)``: the terms of ``log p`` free of ``eta`` and ``s``."""
        return np.zeros_like(np.asarray(y, dtype=float))

    def scale_partials(self, log_dispersion: float) -> np.ndarray:
        """``[a(s), a'(s), a''(s)]`` of a separable family (1, 0, 0 without a dispersion)."""
        return np.array([1.0, 0.0, 0.0])

    def dispersion_partials(self, y: np.ndarray, log_dispersion: float) -> np.ndarray:
        """``[c, dc/ds, d2c/ds2]`` per row (``3 x n``) of the ``eta``-free terms with ``s``."""
        return np.zeros((3, np.asarray(y).size))

    def row_partials(self, y: np.ndarray, eta: np.ndarray, log_dispersion: float,
                     weights: np.ndarray | None, eta_order: int,
                     s_order: int = 0) -> np.ndarray:
        """``D[i, j] = d^i l / d eta^i d s^j`` per row, ``(eta_order+1) x (s_order+1) x n``.

        Separable families: ``D[i, j] = w a^(j)(s) r^(i)(y, eta) + [i = 0] c^(j)(y, s)``.
        """
        kernel = np.stack(self.kernel_derivatives(y, eta, eta_order))
        if weights is not None:
            kernel = kernel * np.asarray(weights, dtype=float)
        scale = self.scale_partials(log_dispersion)
        out = kernel[:, None, :] * scale[: s_order + 1, None]
        if self.has_dispersion:
            out[0] += self.dispersion_partials(y, log_dispersion)[: s_order + 1]
        return out

    def loglik(self, y: np.ndarray, eta: np.ndarray, log_scale: float = 0.0) -> np.ndarray:
        """Elementwise log-density ``l(y, eta, s) + c_0(y)`` (no prior weights)."""
        y = np.asarray(y, dtype=float)
        eta = np.broadcast_to(np.asarray(eta, dtype=float), y.shape)
        return self.row_partials(y, eta, log_scale, None, 0)[0, 0] + self.log_normalizer(y)


def inverse_square_scale(log_dispersion: float) -> np.ndarray:
    """``[a, a', a'']`` of ``a(s) = exp(-2 s)`` (Gaussian ``1/sigma^2``, Gamma's shape)."""
    a = float(np.exp(-2.0 * log_dispersion))
    return np.array([a, -2.0 * a, 4.0 * a])


def count_summary_problem(sum_y: float, sum_y2: float, atol: float, rtol: float) -> str | None:
    """Whole counts: ``sum y >= 0`` and ``sum y^2 >= sum y`` (``y^2 >= y``)."""
    if sum_y < -atol or sum_y2 < sum_y - atol - rtol * abs(sum_y):
        return f"need sum y >= 0 and sum y^2 >= sum y (sum y = {sum_y:.6g}, " \
               f"sum y^2 = {sum_y2:.6g})"
    return None


def check_counts(y: np.ndarray, family: str) -> None:
    if np.any(y < 0):
        raise ValueError(f"a {family} outcome must be non-negative")
    if not np.all(y == np.round(y)):
        raise ValueError(f"a {family} outcome must be whole counts")
