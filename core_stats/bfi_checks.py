"""Heterogeneity checks (paper section 3.2), centre-covariate regression, prediction."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from core_stats.bfi_combine import HomogeneousLayout
from core_stats.bfi_local import SCALE_NAME, LocalFit
from core_stats.bfi_results import normal_interval
from core_stats.families import Family

__all__ = [
    "HeterogeneityRow",
    "centre_difference",
    "leave_one_out_row",
    "leave_one_out_table",
    "CentreRegression",
    "regress_centre_effects",
    "predict",
]


@dataclass(frozen=True)
class HeterogeneityRow:
    """One interval for a difference of a parameter between centres.

    ``estimate +/- z sd`` at credible ``level``.
    """

    label: str
    parameter: str
    estimate: float
    sd: float
    lower: float
    upper: float
    level: float

    @property
    def excludes_zero(self) -> bool:
        """True when the interval does not contain 0 (evidence of heterogeneity)."""
        return self.lower > 0.0 or self.upper < 0.0


def _row(label: str, parameter: str, diff: float, var: float, level: float) -> HeterogeneityRow:
    sd = float(np.sqrt(var))
    lower, upper = normal_interval(np.array(diff), np.array(sd), level)
    return HeterogeneityRow(label, parameter, float(diff), sd, float(lower), float(upper), level)


def centre_difference(fit_k: LocalFit, fit_l: LocalFit, parameter: str, *,
                      level: float = 0.95, label: str = "k - l") -> HeterogeneityRow:
    """``beta_k - beta_l +/- z sqrt((A_k^{-1})_jj + (A_l^{-1})_jj)`` (local estimates, independent).

    Needs both centres' own estimate and variance of ``parameter``: two
    individual values per centre, not a sum.
    """
    j = fit_k.names.index(parameter)
    if fit_l.names.index(parameter) != j:
        raise ValueError("the two fits order their parameters differently")
    diff = fit_k.theta[j] - fit_l.theta[j]
    var = fit_k.covariance[j, j] + fit_l.covariance[j, j]
    return _row(label, parameter, diff, var, level)


def leave_one_out_row(layout: HomogeneousLayout, total: np.ndarray, local: LocalFit,
                      parameter: str, *, combined_prior: np.ndarray | None = None,
                      level: float = 0.95, label: str = "-l vs l") -> HeterogeneityRow:
    """``beta_-l - beta_l +/- z sqrt((A_-l^{-1})_jj + (A_l^{-1})_jj)``, computed at site ``l``.

    ``beta_-l`` is eq. (3) applied to ``total - v_l`` (the sum of the other
    sites' vectors). Run this at site ``l`` after the total is broadcast: the
    coordinator then learns nothing new (``total - v_l`` at the coordinator
    would be ``v_l`` itself, i.e. site ``l``'s full release). The site learns
    the sum of the other sites, which the published fit (``theta``, ``A^{-1}``)
    already discloses up to ``n``; with two sites that is the other site's data
    summary, so use it with three or more.
    """
    rest = np.asarray(total, dtype=float) - layout.site_vector(local)
    without = layout.combine(rest, combined_prior, level)
    j = local.names.index(parameter)
    diff = without.estimate[j] - local.theta[j]
    var = without.covariance[j, j] + local.covariance[j, j]
    return _row(label, parameter, diff, var, level)


def leave_one_out_table(layout: HomogeneousLayout, fits: Sequence[LocalFit], parameter: str,
                        *, labels: Sequence[str] | None = None,
                        combined_prior: np.ndarray | None = None,
                        level: float = 0.95) -> tuple[HeterogeneityRow, ...]:
    """All sites' :func:`leave_one_out_row` (each row is computable at its own site)."""
    total = np.sum([layout.site_vector(f) for f in fits], axis=0)
    labels = [str(i) for i in range(len(fits))] if labels is None else list(labels)
    return tuple(leave_one_out_row(layout, total, f, parameter, combined_prior=combined_prior,
                                   level=level, label=lab) for f, lab in zip(fits, labels,
                                                                              strict=True))


@dataclass(frozen=True, eq=False)
class CentreRegression:
    """``theta_b,l = nu_0 + nu_1 z_l + e_l`` fitted by weighted (or generalised) least squares."""

    names: tuple[str, ...]
    estimate: np.ndarray
    covariance: np.ndarray
    level: float

    def __post_init__(self) -> None:
        for name in ("estimate", "covariance"):
            frozen = np.array(getattr(self, name), dtype=float, copy=True)
            frozen.setflags(write=False)
            object.__setattr__(self, name, frozen)

    @property
    def sd(self) -> np.ndarray:
        return np.sqrt(np.diag(self.covariance))

    @property
    def interval(self) -> tuple[np.ndarray, np.ndarray]:
        return normal_interval(self.estimate, self.sd, self.level)


def regress_centre_effects(estimates: np.ndarray, covariance: np.ndarray, covariate: np.ndarray,
                           *, level: float = 0.95) -> CentreRegression:
    """Regress centre intercepts on a continuous centre-level covariate.

    ``nu = (Z' W Z)^{-1} Z' W beta~``, ``Cov(nu) = (Z' W Z)^{-1}`` with
    ``Z = [1, z]``, and ``W = diag(1 / var_l)`` when ``covariance`` is a vector
    of variances (WLS, as the brief asks), or ``W = V^{-1}`` for the full
    joint covariance ``V`` of the intercepts (GLS; see ``centre_covariance``).
    GLS with ``V`` is exactly the constrained quadratic optimum of the
    combined posterior, since profiling out ``theta_a`` leaves ``V^{-1}``.
    The paper fits an unweighted line instead.
    """
    beta = np.asarray(estimates, dtype=float).ravel()
    z = np.asarray(covariate, dtype=float).ravel()
    cov = np.asarray(covariance, dtype=float)
    if beta.size != z.size or beta.size < 3:
        raise ValueError("need one estimate and one covariate value per centre, >= 3 centres")
    weight = np.diag(1.0 / cov) if cov.ndim == 1 else np.linalg.inv(cov)
    design = np.column_stack([np.ones_like(z), z])
    info = design.T @ weight @ design
    nu = np.linalg.solve(info, design.T @ weight @ beta)
    return CentreRegression(("nu0", "nu1"), nu, np.linalg.inv(info), level)


def predict(theta: np.ndarray, names: Sequence[str], X: np.ndarray, family: Family, *,
            response: bool = True, offset: np.ndarray | None = None) -> np.ndarray:
    """Linear predictor ``eta = X beta + o``, or the mean ``mu = g^{-1}(eta)`` if ``response``.

    ``beta`` is ``theta`` without ``log_sigma``; ``o`` the rows' ``offset()`` (as R's
    ``predict.glm``; 0 without).

    For a centre-specific fit pass the centre's ``CentreEstimate.local_theta``;
    for a centre-covariate fit pass ``layout.site_theta(fit, z_row)``.
    """
    keep = [j for j, n in enumerate(names) if n != SCALE_NAME]
    beta = np.asarray(theta, dtype=float)[keep]
    X = np.asarray(X, dtype=float)
    if X.shape[1] != beta.size:
        raise ValueError(f"X has {X.shape[1]} columns for {beta.size} coefficients")
    eta = X @ beta if offset is None else X @ beta + np.asarray(offset, dtype=float)
    return family.mean(eta) if response else eta
