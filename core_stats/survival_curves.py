"""Survival curves a parametric proportional-hazards fit implies, with pointwise intervals.

For covariates ``x`` and ``theta = (beta, omega_1[, omega_2])`` (see
:mod:`core_stats.bfi_survival`), ``S(t | x) = exp(-H0(t) exp(x' beta))`` and

    log H(t | x) = x' beta + omega_1 + log G(t, omega_2),

with ``log G = log t`` (exponential), ``b log t`` (Weibull, ``b = exp(omega_2)``) or
``log((e^(bt) - 1) / b)`` (Gompertz). The interval is the delta method on
``log H``, whose gradient in ``theta`` is ``(x, 1, d log G / d omega_2)``:
``0`` (exponential, where it is exact), ``b log t`` (Weibull), and
``b t e^(bt) / (e^(bt) - 1) - 1`` (Gompertz). For ``pwexp``
``H0 = sum_k B_k(t) e^(omega_k)`` (``d log H0 / d omega_k = B_k e^(omega_k) / H0``) and
for ``poly`` ``H0 = I_0(t)`` (``d log H0 / d omega_q = I_q / I_0``,
:mod:`core_stats.survival_poly`). Mapped back through
``S = exp(-e^(log H))`` it stays inside ``[0, 1]``. It carries the combined
posterior's whole covariance, and nothing about the data beyond the fit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

from core_stats.survival_baselines import Baseline, as_baseline

__all__ = ["SurvivalCurve", "survival_curve", "time_grid"]


@dataclass(frozen=True)
class SurvivalCurve:
    times: np.ndarray
    survival: np.ndarray
    lower: np.ndarray
    upper: np.ndarray


def _log_h0(times: np.ndarray, baseline: Baseline, omega: np.ndarray):
    """``log H0(t)`` and its gradient in ``omega`` (times x len(omega))."""
    ones = np.ones((len(times), 1))
    if baseline.kind == "exponential":
        return omega[0] + np.log(times), ones
    b = float(np.exp(omega[1])) if omega.size > 1 else 0.0
    if baseline.kind == "weibull":
        return omega[0] + b * np.log(times), np.hstack([ones, (b * np.log(times))[:, None]])
    if baseline.kind == "gompertz":
        bt = b * times
        d = bt * np.exp(bt) / np.expm1(bt) - 1.0
        return omega[0] + np.log(np.expm1(bt) / b), np.hstack([ones, d[:, None]])
    if baseline.kind == "pwexp":
        from core_stats.survival_pwexp import pwexp_basis

        _, exposure = pwexp_basis(times, baseline.knots)
        part = exposure * np.exp(omega)[None, :]
        total = part.sum(axis=1)
        return np.log(total), part / total[:, None]
    if baseline.kind == "poly":
        from core_stats.survival_poly import poly_integrals

        integrals = poly_integrals(times, omega, baseline.order)
        return np.log(integrals[:, 0]), integrals / integrals[:, :1]
    raise ValueError(f"no survival curve for the {baseline.kind} baseline")


def survival_curve(theta: np.ndarray, covariance: np.ndarray, baseline: str | Baseline,
                   x: np.ndarray, times: np.ndarray, level: float = 0.95) -> SurvivalCurve:
    """``S(t | x)`` at ``times > 0`` with a pointwise ``level`` interval (module docstring)."""
    baseline = as_baseline(baseline)
    theta = np.asarray(theta, dtype=float)
    x = np.asarray(x, dtype=float)
    times = np.asarray(times, dtype=float)
    if np.any(times <= 0):
        raise ValueError("survival curves are drawn at positive times")
    p = x.size
    omega = theta[p:]
    log_h0, d_omega = _log_h0(times, baseline, omega)
    log_h = float(x @ theta[:p]) + log_h0
    grad = np.zeros((len(times), theta.size))
    grad[:, :p] = x
    grad[:, p:] = d_omega
    se = np.sqrt(np.maximum(np.einsum("ti,ij,tj->t", grad, covariance, grad), 0.0))
    z = float(stats.norm.ppf(0.5 + level / 2.0))
    surv = np.exp(-np.exp(log_h))
    return SurvivalCurve(times, surv, np.exp(-np.exp(log_h + z * se)),
                         np.exp(-np.exp(log_h - z * se)))


def time_grid(theta: np.ndarray, baseline: str | Baseline, x: np.ndarray, points: int = 60,
              floor: float = 0.02) -> np.ndarray:
    """``points`` times up to where ``S(t | x)`` falls to ``floor``, from the fit alone
    (no data: the largest observed time is not released); ``pwexp`` stops at its last
    knot (public), and a curve that levels off above ``floor`` at ``2^40``."""
    theta = np.asarray(theta, dtype=float)
    baseline = as_baseline(baseline)
    none = np.zeros((theta.size, theta.size))
    end = baseline.knots[-1] if baseline.kind == "pwexp" else 2.0**40

    def surv(t: float) -> float:
        value = survival_curve(theta, none, baseline, x, np.array([t])).survival[0]
        return float(value) if np.isfinite(value) else 0.0

    low, high = 0.0, min(1.0, end)
    for _ in range(200):
        if surv(high) <= floor:
            break
        if high >= end:
            return np.linspace(high / points, high, points)
        low, high = high, min(2.0 * high, end)
    for _ in range(60):  # bisect S(t) = floor
        mid = 0.5 * (low + high)
        low, high = (mid, high) if surv(mid) > floor else (low, mid)
    return np.linspace(high / points, high, points)
