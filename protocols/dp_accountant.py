"""zCDP accounting: noise releases as records, a ledger that checks before it commits.

Every release is ρ-zCDP (Bun & Steinke 2016); ρ adds up under composition,
:math:`\\rho_{tot} = \\sum_r \\rho_r`. The total is reported as (ε, δ)-DP with
the conversion of Canonne, Kamath & Steinke (2020, Corollary 13),

.. math::
    \\varepsilon(\\rho, \\delta) = \\min_{\\alpha > 1}\\; \\alpha\\rho
    + \\frac{\\log(1/\\delta) + (\\alpha-1)\\log(1 - 1/\\alpha) - \\log\\alpha}{\\alpha - 1},

never worse than the classical :math:`\\rho + 2\\sqrt{\\rho\\log(1/\\delta)}`
(we return the smaller of the two; both are valid).
"""

from __future__ import annotations

import enum
import math
import threading
from collections.abc import Iterable
from dataclasses import dataclass

from protocols.dp_discrete import ddg_rho
from protocols.dp_mechanism import DpConfigError
from protocols.errors import PrivacyBudgetExceeded

__all__ = [
    "Mechanism",
    "NoiseRelease",
    "LedgerEntry",
    "PrivacyLedger",
    "zcdp_epsilon",
    "zcdp_epsilon_classical",
    "zcdp_rho_for_epsilon",
    "total_rho",
]


class Mechanism(enum.Enum):
    """How the noise of a release was produced."""

    GAUSSIAN = "gaussian"  # N(0, σ²) on the sum (central or distributed shares)
    DISTRIBUTED_DISCRETE_GAUSSIAN = "distributed_discrete_gaussian"  # KLS 2021


@dataclass(frozen=True)
class NoiseRelease:
    """One noisy release, or ``count`` identical ones.

    Parameters
    ----------
    mechanism : Mechanism
    sigma : float
        GAUSSIAN: std of the noise on the released sum. DISTRIBUTED_DISCRETE_GAUSSIAN:
        per-site std of the integer noise, in encoded units.
    sensitivity : float
        L2 sensitivity Δ₂ of the released sum (add/remove one record), in the
        same units as ``sigma``.
    count : int
        Number of releases with these parameters (self-composition).
    purpose : str
        What was released, for the ledger (e.g. ``"glmm round 3 gradient"``).
    n_contributors, dimension, l1_sensitivity
        Discrete mechanism only: min_contributors m, vector length d and
        L1 sensitivity Δ₁ (default :math:`\\Delta_2\\sqrt d`).
    """

    mechanism: Mechanism
    sigma: float
    sensitivity: float
    count: int = 1
    purpose: str = ""
    n_contributors: int = 1
    dimension: int = 1
    l1_sensitivity: float | None = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.sigma) and self.sigma > 0):
            raise DpConfigError("sigma must be positive and finite")
        if not (math.isfinite(self.sensitivity) and self.sensitivity > 0):
            raise DpConfigError("sensitivity must be positive and finite")
        if self.count < 1 or self.n_contributors < 1 or self.dimension < 1:
            raise DpConfigError("count, n_contributors and dimension must be >= 1")

    @property
    def rho(self) -> float:
        """zCDP cost: count · Δ²/(2σ²) (Gaussian) or count · KLS ρ (discrete)."""
        if self.mechanism is Mechanism.GAUSSIAN:
            return self.count * self.sensitivity**2 / (2.0 * self.sigma**2)
        return self.count * ddg_rho(
            self.sigma, self.n_contributors, self.sensitivity, self.dimension, self.l1_sensitivity
        )


def total_rho(releases: Iterable[NoiseRelease]) -> float:
    """Composition: :math:`\\sum_r \\rho_r`."""
    return math.fsum(release.rho for release in releases)


def _check_delta(delta: float) -> None:
    if not 0 < delta < 1:
        raise DpConfigError("delta must be in (0, 1)")


def zcdp_epsilon_classical(rho: float, delta: float) -> float:
    """Classical conversion (Bun & Steinke 2016, Prop. 1.3).

    :math:`\\varepsilon = \\rho + 2\\sqrt{\\rho \\log(1/\\delta)}`.
    """
    _check_delta(delta)
    return rho + 2.0 * math.sqrt(rho * math.log(1.0 / delta))


def zcdp_epsilon(rho: float, delta: float) -> float:
    """Tight ε for ρ-zCDP at δ (CKS 2020, Cor. 13; module formula), min'd with the classical one."""
    _check_delta(delta)
    if rho < 0 or not math.isfinite(rho):
        raise DpConfigError("rho must be finite and >= 0")
    if rho == 0:
        return 0.0
    log_inv_delta = math.log(1.0 / delta)

    def eps_at(log_alpha_minus_one: float) -> float:
        am1 = math.exp(log_alpha_minus_one)  # α - 1 > 0
        alpha = 1.0 + am1
        return alpha * rho + (log_inv_delta + am1 * math.log(am1 / alpha) - math.log(alpha)) / am1

    from scipy.optimize import minimize_scalar  # here: scipy.optimize costs ~0.2 s to import

    # the optimum is near α ≈ 1 + sqrt(log(1/δ)/ρ); search around it
    centre = 0.5 * math.log(log_inv_delta / rho)
    best = minimize_scalar(
        eps_at, bounds=(centre - 12.0, centre + 12.0), method="bounded", options={"xatol": 1e-10}
    )
    return max(0.0, min(float(best.fun), zcdp_epsilon_classical(rho, delta)))


def zcdp_rho_for_epsilon(epsilon: float, delta: float) -> float:
    """Largest ρ with :func:`zcdp_epsilon` (ρ, δ) ≤ ε (bisection; ε is increasing in ρ)."""
    _check_delta(delta)
    if not (math.isfinite(epsilon) and epsilon > 0):
        raise DpConfigError("epsilon must be positive and finite")
    low, high = 0.0, epsilon
    while zcdp_epsilon(high, delta) <= epsilon:
        low, high = high, 2.0 * high
    for _ in range(200):
        mid = 0.5 * (low + high)
        low, high = (mid, high) if zcdp_epsilon(mid, delta) <= epsilon else (low, mid)
        if high - low <= 1e-13 * high:
            break
    return low


@dataclass(frozen=True)
class LedgerEntry:
    """A committed release and the ledger totals right after it."""

    index: int
    release: NoiseRelease
    rho_total: float
    epsilon_total: float


class PrivacyLedger:
    """A site's (ε, δ) budget and the ordered record of what it spent.

    :meth:`spend` checks first and commits second: a release whose composed
    cost would exceed ε raises :class:`PrivacyBudgetExceeded` and leaves the
    ledger exactly as it was. A lock makes check-and-commit atomic.
    """

    def __init__(self, epsilon: float, delta: float) -> None:
        _check_delta(delta)
        if not (math.isfinite(epsilon) and epsilon > 0):
            raise DpConfigError("epsilon must be positive and finite")
        self._epsilon = float(epsilon)
        self._delta = float(delta)
        self._entries: tuple[LedgerEntry, ...] = ()
        self._lock = threading.Lock()

    @property
    def budget(self) -> tuple[float, float]:
        """The (ε, δ) budget."""
        return self._epsilon, self._delta

    @property
    def entries(self) -> tuple[LedgerEntry, ...]:
        """Committed releases, oldest first."""
        return self._entries

    @property
    def rho_spent(self) -> float:
        """:math:`\\sum_r \\rho_r` over committed releases."""
        return self._entries[-1].rho_total if self._entries else 0.0

    @property
    def epsilon_spent(self) -> float:
        """ε of the composition so far, at the budget's δ."""
        return self._entries[-1].epsilon_total if self._entries else 0.0

    @property
    def rho_remaining(self) -> float:
        """zCDP budget left: :math:`\\rho(\\varepsilon, \\delta) - \\rho_{spent}` (≥ 0)."""
        return max(0.0, zcdp_rho_for_epsilon(self._epsilon, self._delta) - self.rho_spent)

    def epsilon_if(self, release: NoiseRelease) -> float:
        """ε the ledger would report after ``release`` (no state change)."""
        return zcdp_epsilon(self.rho_spent + release.rho, self._delta)

    def can_spend(self, release: NoiseRelease) -> bool:
        """Whether :meth:`spend` would accept ``release``."""
        return self.epsilon_if(release) <= self._epsilon

    def spend(self, release: NoiseRelease) -> LedgerEntry:
        """Charge ``release`` if it fits the budget; otherwise raise and change nothing.

        Raises
        ------
        PrivacyBudgetExceeded
            With the ε the composition would need, the budget, ε spent so far
            and the zCDP ρ still available.
        """
        with self._lock:
            rho_total = self.rho_spent + release.rho
            epsilon_total = zcdp_epsilon(rho_total, self._delta)
            if epsilon_total > self._epsilon:
                raise PrivacyBudgetExceeded(
                    f"release {release.purpose or release.mechanism.value!r} would bring the "
                    f"composition to epsilon={epsilon_total:.6g} (delta={self._delta:g}), over "
                    f"the budget epsilon={self._epsilon:g}; spent so far "
                    f"epsilon={self.epsilon_spent:.6g}, remaining rho={self.rho_remaining:.6g} "
                    f"(this release costs rho={release.rho:.6g})"
                )
            entry = LedgerEntry(len(self._entries), release, rho_total, epsilon_total)
            self._entries = (*self._entries, entry)
            return entry
