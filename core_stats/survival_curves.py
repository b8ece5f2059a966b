"""Survival curves a parametric proportional-hazards fit implies, with pointwise intervals.

For covariates ``x`` and ``theta = (beta, omega_1[, omega_2])`` (see
:mod:`core_stats.bfi_survival`), ``S(t | x) = exp(-H0(t) exp(x' beta))`` and

    log H(t | x) = x' beta + omega_1 + log G(t, omega_2),

with ``log G = log t`` (exponential), ``b log t`` (Weibull, ``b = exp(omega_2)``) or
``log((e^(bt) - 1) / b)`` (Gompertz). The interval is the delta method on
``log H``, whose gradient in ``theta`` is ``(x, 1, d log G / d omega_2)``:
``0`` (exponential, where it is exact), ``b log t`` (Weibull), and
``b t e^(bt) / (e^(bt) - 1) - 1`` (Gompertz). Mapped back through
``S = exp(-e^(log H))`` it stays inside ``[0, 1]``. It carries the combined
posterior's whole covariance, and nothing about the data beyond the fit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

__all__ = ["SurvivalCurve", "survival_curve", "time_grid"]


@dataclass(frozen=True)
class SurvivalCurve:
    times: np.ndarray
    survival: np.ndarray
    lower: np.ndarray
    upper: np.ndarray


def _log_g(times: np.ndarray, baseline: str, omega: np.ndarray):
    """``log G(t)`` and its derivative in ``omega_2`` (0 for the exponential)."""
    if baseline == "exponential":
        return np.log(times), np.zeros_like(times)
    b = float(np.exp(omega[1]))
    if baseline == "weibull":
        return b * np.log(times), b * np.log(times)
    if baseline == "gompertz":
        bt = b * times
        return np.log(np.expm1(bt) / b), bt * np.exp(bt) / np.expm1(bt) - 1.0
    raise ValueError(f"unknown baseline {baseline!r}")


def survival_curve(theta: np.ndarray, covariance: np.ndarray, baseline: str, x: np.ndarray,
                   times: np.ndarray, level: float = 0.95) -> SurvivalCurve:
    """``S(t | x)`` at ``times > 0`` with a pointwise ``level`` interval (module docstring)."""
    theta = np.asarray(theta, dtype=float)
    x = np.asarray(x, dtype=float)
    times = np.asarray(times, dtype=float)
    if np.any(times <= 0):
        raise ValueError("survival curves are drawn at positive times")
    p = x.size
    omega = theta[p:]
    log_g, d_omega2 = _log_g(times, baseline, omega)
    log_h = float(x @ theta[:p]) + omega[0] + log_g
    grad = np.zeros((len(times), theta.size))
    grad[:, :p] = x
    grad[:, p] = 1.0
    if theta.size > p + 1:
        grad[:, p + 1] = d_omega2
    se = np.sqrt(np.maximum(np.einsum("ti,ij,tj->t", grad, covariance, grad), 0.0))
    z = float(stats.norm.ppf(0.5 + level / 2.0))
    surv = np.exp(-np.exp(log_h))
    return SurvivalCurve(times, surv, np.exp(-np.exp(log_h + z * se)),
                         np.exp(-np.exp(log_h - z * se)))


def time_grid(theta: np.ndarray, baseline: str, x: np.ndarray, points: int = 60,
              floor: float = 0.02) -> np.ndarray:
    """``points`` times up to where ``S(t | x)`` falls to ``floor``, from the fit alone
    (no data: the largest observed time is not released)."""
    theta = np.asarray(theta, dtype=float)
    none = np.zeros((theta.size, theta.size))

    def surv(t: float) -> float:
        return float(survival_curve(theta, none, baseline, x, np.array([t])).survival[0])

    low, high = 0.0, 1.0
    for _ in range(200):
        if surv(high) <= floor:
            break
        low, high = high, 2.0 * high
    for _ in range(60):  # bisect S(t) = floor
        mid = 0.5 * (low + high)
        low, high = (mid, high) if surv(mid) > floor else (low, mid)
    return np.linspace(high / points, high, points)
