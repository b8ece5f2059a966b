"""The GLMM fit under differential privacy: a fixed, budgeted number of rounds.

Every release spends budget, so the DP fit does not iterate to convergence
with line searches (each would be another release). It is budget-aware:

1. one release of the clipped design summary (share ``start_share`` of the
   run's ρ) gives start values — least squares (gaussian) or one IRLS step
   (binomial, poisson) — as in the plaintext fit, from noisy sums;
2. ``rounds`` Newton rounds (the rest of ρ, split evenly) each release the
   gradient and Hessian of the marginal log-likelihood with every group's
   contribution clipped (:mod:`securefed.dp_statistics`). (Releasing the
   Hessian once and reusing it — chord Newton — leaves less noise per round
   but did not converge on the variance parameter from the start values
   even without noise, so every round releases both.) No log-likelihood
   value is released. The noisy information is damped
   (eigenvalues raised above the noise level) and a step is capped at 1 in
   every coordinate (log-SDs included), as the plaintext trust region does.

Fewer rounds leave more budget per round, hence less noise per round: the
default of 3 was chosen on the built-in example (``securefed privacy-curve``).
Standard errors add to the inverse information the known variance that the
last round's noise puts into the estimate, ``H⁻¹ Σ_noise H⁻¹``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from core_stats.families import Family
from core_stats.glmm import ParameterLayout
from core_stats.glmm_fit import GLMMEstimate, starting_values
from core_stats.optimize import NewtonStep, SummedTerms, ridge_solve
from securefed.coordinator import Coordinator
from securefed.dp_statistics import (
    group_clip_units,
    noise_floor,
    positive_definite,
    summary_query,
    terms_query,
)
from securefed.privacy import DPOptions
from securefed.vectors import from_upper_triangle

__all__ = ["fit_glmm_dp", "MIN_LOG_SD"]

MIN_LOG_SD = np.log(1e-3)  # log-Cholesky diagonals are kept above this
MAX_STEP = 1.0
MAX_START = 5.0  # |start beta| on the link scale (noisy sums can suggest absurd ones)


def fit_glmm_dp(coordinator: Coordinator, layout: ParameterLayout, family: Family,
                dp: DPOptions,
                on_step: Callable[[NewtonStep], None] | None = None
                ) -> tuple[GLMMEstimate, float, float]:
    """Run the budgeted DP fit; returns the estimate and the noisy numbers of rows and groups."""
    guard = coordinator.privacy
    rho = dp.run_rho
    rho_start = dp.start_share * rho
    rho_round = (1.0 - dp.start_share) * rho / dp.rounds
    bound = dp.outcome_scale(family.name)
    p = layout.p
    summary = coordinator.secure_sum(
        "dp-design-summary", lambda s: s.dp_summary_vector(dp.clip, bound),
        dp=summary_query("design summary", dp.clip, bound, rho_start))
    n_obs = max(float(summary[0]), p + 2.0)
    xty = summary[3:3 + p]
    noise = float(np.max(guard.sum_noise_sd(len(coordinator.rounds[-1].contributors))))
    xtx = positive_definite(from_upper_triangle(summary[3 + p:-2], p), noise_floor(noise, p))
    guard.clipped_records = float(summary[-2])
    n_groups = max(float(summary[-1]), 1.0)
    theta = starting_values(layout, family, n_obs, float(summary[1]), float(summary[2]),
                            xty, xtx)
    theta[layout.beta] = np.clip(theta[layout.beta], -MAX_START, MAX_START)
    units = group_clip_units(layout, dp.clip, bound, dp.group_clip)
    trace, steps = [], []
    gradient = damped = information = None
    for iteration in range(1, dp.rounds + 1):
        here = theta.copy()
        total = coordinator.secure_sum(
            "dp-glmm-terms", lambda s, at=here: s.dp_terms_vector(layout, at, units),
            dp=terms_query("glmm gradient and Hessian", layout, units, rho_round))
        gradient = total[:layout.size]
        noise = guard.sum_noise_sd(len(coordinator.rounds[-1].contributors))
        released = from_upper_triangle(total[layout.size:], layout.size)
        damped = positive_definite(-released, noise_floor(float(np.max(noise[layout.size:])),
                                                          layout.size))
        information = _information(-released, damped)
        step, ridge = ridge_solve(damped, gradient)
        step = step / max(1.0, float(np.max(np.abs(step))) / MAX_STEP)
        theta = _keep_inside(layout, theta + step)
        steps.append(theta - here)
        record = NewtonStep(iteration, float("nan"), float(np.max(np.abs(gradient))),
                            float(np.max(np.abs(theta - here))), ridge, 1.0)
        trace.append(record)
        if on_step is not None:
            on_step(record)
    contributors = len(coordinator.rounds[-1].contributors)
    noise_sd = guard.sum_noise_sd(contributors)[:layout.size]
    info_inv = np.linalg.inv(information)
    inflated = info_inv + info_inv @ np.diag(noise_sd**2) @ info_inv
    terms = SummedTerms(float("nan"), gradient, -np.linalg.inv(inflated))
    se = np.sqrt(np.diag(inflated))
    settled = bool(np.max(np.abs(steps[-1]) / se) <= 0.5)
    message = (f"differentially private fit: {dp.rounds} budgeted Newton round(s) from DP start "
               f"values; last step {'within' if settled else 'more than'} 0.5 standard errors")
    estimate = GLMMEstimate(layout=layout, theta=theta, loglik=float("nan"), terms=terms,
                            converged=settled, singular=False, rounds=coordinator.round_id,
                            iterations=dp.rounds, trace=tuple(trace), message=message,
                            penalty=0.0)
    return estimate, n_obs, n_groups


def _information(released: np.ndarray, damped: np.ndarray) -> np.ndarray:
    """The released information if positive definite, else the damped one (for SEs)."""
    sym = 0.5 * (released + released.T)
    try:
        np.linalg.cholesky(sym)
        return sym
    except np.linalg.LinAlgError:
        return damped


def _keep_inside(layout: ParameterLayout, theta: np.ndarray) -> np.ndarray:
    """Log-Cholesky diagonals stay above ``MIN_LOG_SD`` (AGQ needs a positive SD)."""
    out = theta.copy()
    start = layout.cov.start
    for k, (r, c) in enumerate(layout.cholesky_entries()):
        if r == c:
            out[start + k] = max(out[start + k], MIN_LOG_SD)
    return out
