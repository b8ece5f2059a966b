"""Frozen result objects of Bayesian Federated Inference."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from core_stats.bfi_local import SCALE_NAME
from core_stats.families import Family
from core_stats.special import ndtri

__all__ = ["FitKind", "BFIFit", "CentreEstimate", "normal_interval"]


class FitKind(enum.Enum):
    """How a :class:`BFIFit` was obtained."""

    POOLED = "pooled"
    HOMOGENEOUS = "homogeneous"
    CENTRE_SPECIFIC = "centre_specific"
    CENTRE_COVARIATE = "centre_covariate"


def normal_interval(estimate: np.ndarray, sd: np.ndarray, level: float):
    """``estimate -/+ z sd`` with ``z`` the ``(1 + level) / 2`` normal quantile."""
    if not 0.0 < level < 1.0:
        raise ValueError("level must lie strictly between 0 and 1")
    z = float(ndtri(0.5 + level / 2.0))
    return estimate - z * sd, estimate + z * sd


def _frozen(array: np.ndarray) -> np.ndarray:
    out = np.array(array, dtype=float, copy=True)
    out.setflags(write=False)
    return out


@dataclass(frozen=True, eq=False)
class CentreEstimate:
    """A centre's own parameters ``theta_b,l`` after ``theta_a`` is broadcast.

    Attributes
    ----------
    names : tuple of str
        Names of ``theta_b``.
    estimate : ndarray
        ``theta~_b,l = A~_b,l^{-1} [A_bb,l theta_b,l + A_ab,l' (theta_a,l - theta_a)]``.
    covariance : ndarray
        ``A~_b,l^{-1} + G_l V_a G_l'`` with ``G_l = A~_b,l^{-1} A_ab,l'`` and
        ``V_a`` the covariance of ``theta_a`` (derivation in ``bfi_centre``).
    loading : ndarray
        ``G_l``; the covariance of two centres' estimates is ``G_k V_a G_l'``.
    local_theta : ndarray
        The centre's full parameter vector in its local order, shared part
        taken from the combined fit: usable for prediction.
    local_names : tuple of str
        Names of ``local_theta``.
    """

    names: tuple[str, ...]
    estimate: np.ndarray
    covariance: np.ndarray
    loading: np.ndarray
    local_theta: np.ndarray
    local_names: tuple[str, ...]

    def __post_init__(self) -> None:
        for name in ("estimate", "covariance", "loading", "local_theta"):
            object.__setattr__(self, name, _frozen(getattr(self, name)))

    @property
    def sd(self) -> np.ndarray:
        """Posterior standard deviations of ``theta~_b,l``."""
        return np.sqrt(np.diag(self.covariance))


@dataclass(frozen=True, eq=False)
class BFIFit:
    """A combined (or pooled) fit: ``theta_hat`` and ``A_hat^{-1}``.

    Attributes
    ----------
    kind : FitKind
    family : Family
    names : tuple of str
    estimate : ndarray, shape (d,)
    covariance : ndarray, shape (d, d)
        ``A_hat^{-1}`` (for centre-specific fits: the marginal covariance of
        the shared ``theta_a``).
    prior : ndarray, shape (d, d)
        The combined-data prior precision ``Lambda``.
    n_sites : int
    n_obs : int
    level : float
        Credible level of ``lower`` / ``upper``.
    centres : tuple of CentreEstimate
        Per-centre estimates, when relevant (see ``with_centres``).
    """

    kind: FitKind
    family: Family
    names: tuple[str, ...]
    estimate: np.ndarray
    covariance: np.ndarray
    prior: np.ndarray
    n_sites: int
    n_obs: int
    level: float = 0.95
    centres: tuple[CentreEstimate, ...] = field(default=())

    def __post_init__(self) -> None:
        for name in ("estimate", "covariance", "prior"):
            object.__setattr__(self, name, _frozen(getattr(self, name)))
        if len(self.names) != self.estimate.size:
            raise ValueError("names and estimate differ in length")

    @property
    def sd(self) -> np.ndarray:
        """``sqrt(diag(A_hat^{-1}))``."""
        return np.sqrt(np.diag(self.covariance))

    @property
    def lower(self) -> np.ndarray:
        """Lower credible bound ``theta_hat - z sd``."""
        return normal_interval(self.estimate, self.sd, self.level)[0]

    @property
    def upper(self) -> np.ndarray:
        """Upper credible bound ``theta_hat + z sd``."""
        return normal_interval(self.estimate, self.sd, self.level)[1]

    @property
    def lam(self) -> np.ndarray:
        """Diagonal of the combined prior precision."""
        return np.diag(self.prior).copy()

    def index(self, name: str) -> int:
        """Position of parameter ``name``."""
        return self.names.index(name)

    @property
    def dispersion(self) -> float | None:
        """Gaussian ``sigma^2 = exp(2 s_hat)``; ``None`` without a scale parameter."""
        if SCALE_NAME not in self.names:
            return None
        return float(np.exp(2.0 * self.estimate[self.index(SCALE_NAME)]))

    @property
    def dispersion_sd(self) -> float | None:
        """Delta-method SD of ``sigma^2``: ``2 sigma^2 sd(s)``."""
        if self.dispersion is None:
            return None
        return 2.0 * self.dispersion * float(self.sd[self.index(SCALE_NAME)])

    @property
    def coefficients(self) -> np.ndarray:
        """The estimate without the Gaussian scale (linear-predictor part)."""
        keep = [j for j, n in enumerate(self.names) if n != SCALE_NAME]
        return self.estimate[keep].copy()

    def with_centres(self, centres: tuple[CentreEstimate, ...]) -> BFIFit:
        """A copy holding the per-centre estimates."""
        return BFIFit(self.kind, self.family, self.names, self.estimate, self.covariance,
                      self.prior, self.n_sites, self.n_obs, self.level, tuple(centres))

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python summary (JSON-serialisable)."""
        return {
            "kind": self.kind.value,
            "family": self.family.name,
            "names": list(self.names),
            "estimate": self.estimate.tolist(),
            "sd": self.sd.tolist(),
            "lower": self.lower.tolist(),
            "upper": self.upper.tolist(),
            "level": self.level,
            "covariance": self.covariance.tolist(),
            "lambda": self.lam.tolist(),
            "n_sites": self.n_sites,
            "n_obs": self.n_obs,
            "dispersion": self.dispersion,
            "dispersion_sd": self.dispersion_sd,
            "centres": [
                {"names": list(c.names), "estimate": c.estimate.tolist(), "sd": c.sd.tolist()}
                for c in self.centres
            ],
        }
