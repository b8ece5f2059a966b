"""The coordinator's update from summed site terms: damped Newton.

Each round the coordinator holds only sums over sites: the log-likelihood
``l``, its gradient ``g`` and Hessian ``H`` at ``theta``. The update is

    theta_new = theta + t (-H + tau I)^{-1} g

with ``tau = 0`` when ``-H`` is positive definite and otherwise the smallest
of ``tau_0, 10 tau_0, ...`` that makes it so (the adaptive ridge of the
federated-GLMM paper), ``t`` at most what a per-coordinate trust region allows
and halved until ``l`` does not fall (Armijo rule). What costs is the number
of rounds (each is a protected sum), so every trial point is evaluated with
its gradient and Hessian: the accepted trial needs no second round.

The fit has converged when the full, unridged Newton step is below
``tol (1 + |theta|)`` in every coordinate (relative size ``e_k <= tol``), so no
round is spent on a step that changes nothing; or one round earlier, when the
last two full steps show quadratic convergence (``e_k <= e_{k-1} / 10``), the
next step it predicts, ``e_k^3 / e_{k-1}^2``, is below ``tol`` and ``g's`` (twice
the rise it promises) is below ``tol``: that last step is then taken without
evaluating its end point, and the terms returned are those of its start.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = ["SummedTerms", "NewtonStep", "NewtonResult", "newton_maximize", "ridge_solve"]


@dataclass(frozen=True)
class SummedTerms:
    """Objective value with (optionally) its gradient and Hessian."""

    value: float
    gradient: np.ndarray | None = None
    hessian: np.ndarray | None = None
    extra: np.ndarray | None = None  # further summed statistics riding along (kept from self)

    def __add__(self, other: SummedTerms) -> SummedTerms:
        if self.gradient is None or other.gradient is None:
            return SummedTerms(self.value + other.value, extra=self.extra)
        return SummedTerms(self.value + other.value, self.gradient + other.gradient,
                           self.hessian + other.hessian, self.extra)


@dataclass(frozen=True)
class NewtonStep:
    """One accepted iteration, for the convergence trace."""

    iteration: int
    value: float
    max_abs_gradient: float
    max_abs_step: float
    ridge: float
    step_length: float


@dataclass(frozen=True)
class NewtonResult:
    theta: np.ndarray
    terms: SummedTerms  # at theta, or at the start of a last step predicted (module doc)
    converged: bool
    iterations: int
    evaluations: int
    trace: tuple[NewtonStep, ...]
    message: str


def ridge_solve(neg_hessian: np.ndarray, gradient: np.ndarray) -> tuple[np.ndarray, float]:
    """Solve ``(A + tau I) x = g`` with the smallest ``tau`` (0 first) making it PD."""
    size = gradient.shape[0]
    scale = max(float(np.max(np.abs(np.diag(neg_hessian)), initial=0.0)), 1e-12)
    tau = 0.0
    for _ in range(40):
        try:
            chol = np.linalg.cholesky(neg_hessian + tau * np.eye(size))
            x = np.linalg.solve(chol.T, np.linalg.solve(chol, gradient))
            if np.all(np.isfinite(x)):
                return x, tau
        except np.linalg.LinAlgError:
            pass
        tau = 1e-8 * scale if tau == 0.0 else 10.0 * tau
    raise np.linalg.LinAlgError("the summed Hessian could not be regularised")


def newton_maximize(
    evaluate: Callable[[np.ndarray, bool], SummedTerms],
    theta0: np.ndarray,
    *,
    tol: float = 1e-8,
    max_iter: int = 100,
    stop_when: Callable[[np.ndarray, SummedTerms], str | None] | None = None,
    on_step: Callable[[NewtonStep], None] | None = None,
    max_step: np.ndarray | Callable[[np.ndarray, SummedTerms], np.ndarray] | None = None,
) -> NewtonResult:
    """Maximise a function known through ``evaluate(theta, with_derivatives)``.

    ``stop_when(theta, terms)`` may return a reason to stop early (e.g. a
    variance heading to the boundary); the result then has ``converged=False``
    and that reason as its message. ``max_step`` (per coordinate, ``inf`` for
    none; or a function of ``theta`` and the terms there) shrinks a step whose
    change would exceed it: a trust region for coordinates, such as
    log-variances, on which Newton overshoots from far. A step that fails the
    Armijo test is halved (measured on the random-slope problems, halving
    takes fewer rounds than the quadratic interpolation used before).
    """
    theta = np.asarray(theta0, dtype=float).copy()
    terms = evaluate(theta, True)
    evaluations = 1
    trace: list[NewtonStep] = []
    if not np.isfinite(terms.value):
        raise FloatingPointError("the log-likelihood is not finite at the starting values")
    previous = np.inf  # relative size of the last full, unridged Newton step
    for iteration in range(1, max_iter + 1):
        step, tau = ridge_solve(-terms.hessian, terms.gradient)
        size = float(np.max(np.abs(step) / (1.0 + np.abs(theta))))
        if tau == 0.0 and size <= tol:
            return NewtonResult(theta, terms, True, iteration - 1, evaluations, tuple(trace),
                                "converged")
        if tau == 0.0 and size <= 0.1 * previous < np.inf \
                and size**3 <= tol * previous**2 and terms.gradient @ step <= tol:
            return NewtonResult(theta + step, terms, True, iteration - 1, evaluations,
                                tuple(trace), "converged")  # quadratic convergence predicted
        slope = float(terms.gradient @ step)
        t = 1.0
        if max_step is not None:
            cap = max_step(theta, terms) if callable(max_step) else max_step
            ratio = float(np.max(np.abs(step) / cap))
            t = min(1.0, 1.0 / ratio) if ratio > 0 else 1.0
        previous = size if (t == 1.0 and tau == 0.0) else np.inf
        while True:
            candidate = theta + t * step
            trial = evaluate(candidate, True)
            evaluations += 1
            ok = np.isfinite(trial.value) and (
                trial.value >= terms.value + 1e-4 * t * slope - 1e-12 * (1.0 + abs(terms.value)))
            if ok or t < 1e-10:
                break
            t *= 0.5
            previous = np.inf
        if not ok:
            return NewtonResult(theta, terms, False, iteration, evaluations, tuple(trace),
                                "the line search could not increase the log-likelihood")
        theta, terms = candidate, trial
        record = NewtonStep(iteration, terms.value, float(np.max(np.abs(terms.gradient))),
                            float(np.max(np.abs(t * step))), tau, t)
        trace.append(record)
        if on_step is not None:
            on_step(record)
        reason = stop_when(theta, terms) if stop_when is not None else None
        if reason:
            return NewtonResult(theta, terms, False, iteration, evaluations, tuple(trace), reason)
    return NewtonResult(theta, terms, False, max_iter, evaluations, tuple(trace),
                        f"no convergence in {max_iter} iterations")
