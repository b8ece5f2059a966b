"""The GLMM fit under differential privacy: a fixed, budgeted number of rounds.

Every release spends budget, so the DP fit does not iterate to convergence
with line searches (each would be another release). It is budget-aware:

1. one release of the clipped design summary (share ``start_share`` of the
   run's ρ) gives start values — least squares (gaussian) or one IRLS step
   (binomial, poisson) — as in the plaintext fit, from noisy sums;
2. from that release and the plan's public noise, the fit's standard errors
   are *predicted* (:mod:`securefed.dp_inference`); if one fixed effect's
   would exceed ``max_se_ratio`` times its non-private one, the run stops
   there (:class:`~securefed.dp_inference.NotIdentifiable`, exit code 3),
   having spent only the first release;
3. ``rounds`` Newton rounds (the rest of ρ, split evenly) each release the
   gradient and Hessian of the marginal log-likelihood with every group's
   contribution clipped (:mod:`securefed.dp_statistics`). (Releasing the
   Hessian once and reusing it — chord Newton — leaves less noise per round
   but did not converge on the variance parameter from the start values
   even without noise, so every round releases both.) No log-likelihood
   value is released. The noisy information is damped
   (eigenvalues raised above the noise level) and a step is capped at 1 in
   every coordinate (log-SDs included), as the plaintext trust region does.

Standard errors, intervals and p-values come from the parametric bootstrap of
the whole pipeline (:func:`~securefed.dp_inference.noise_aware_covariance`):
they carry the noise of every release and the distance the budgeted rounds
leave from the optimum, plus the sampling variance.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from core_stats.families import Family
from core_stats.glmm import ParameterLayout
from core_stats.glmm_fit import GLMMEstimate
from core_stats.optimize import NewtonStep, SummedTerms
from protocols.dp import zcdp_epsilon
from securefed.coordinator import Coordinator
from securefed.dp_inference import (
    MIN_LOG_SD,
    NoiseAwareCovariance,
    NotIdentifiable,
    StartPoint,
    newton_update,
    noise_aware_covariance,
    start_point,
)
from securefed.dp_statistics import group_clip_units, noise_floor, summary_query, terms_query
from securefed.plausibility_dp import Z, check_dp_summary, check_dp_terms
from securefed.privacy import DPOptions
from securefed.vectors import from_upper_triangle

__all__ = ["fit_glmm_dp", "DpGlmmFit", "MIN_LOG_SD", "ESTIMATOR"]

ESTIMATOR = "budgeted damped Newton (design summary + Newton rounds), parametric-bootstrap SEs"
PREDICTION_REPLICATES = 200


@dataclass(frozen=True)
class DpGlmmFit:
    """The DP fit, its noisy counts and its noise-aware covariance (predicted and realised)."""

    estimate: GLMMEstimate
    n_obs: float
    n_groups: float
    predicted: NoiseAwareCovariance
    realised: NoiseAwareCovariance

    def report(self) -> dict:
        """``privacy.inference`` in the JSON output."""
        lay = self.estimate.layout
        names = list(lay.fixed_names)
        beta = lay.beta
        return {
            "estimator": ESTIMATOR,
            "interval_method": "parametric bootstrap of the whole DP fit (Ferrando, Wang & "
                               "Sheldon 2022) + sampling covariance",
            "replicates": self.realised.replicates,
            "curvature": self.realised.curvature_source,
            "parameters": names,
            "noise_aware_covariance": self.realised.covariance[beta, beta].tolist(),
            "noise_covariance": self.realised.noise[beta, beta].tolist(),
            "predicted_se": dict(zip(names, self.predicted.se[beta].tolist(), strict=True)),
            "realised_se": dict(zip(names, self.realised.se[beta].tolist(), strict=True)),
            "sampling_se": dict(zip(names, self.realised.sampling_se[beta].tolist(),
                                    strict=True)),
            "noise_share_of_variance": float(np.max(np.diag(self.realised.noise)[beta]
                                                    / np.diag(self.realised.covariance)[beta])),
            "n_obs_noisy": self.n_obs, "n_groups_noisy": self.n_groups,
        }


def fit_glmm_dp(coordinator: Coordinator, layout: ParameterLayout, family: Family,
                dp: DPOptions,
                on_step: Callable[[NewtonStep], None] | None = None) -> DpGlmmFit:
    """Run the budgeted DP fit (module docstring)."""
    guard = coordinator.privacy
    rho = dp.run_rho
    rho_start = dp.start_share * rho
    rho_round = (1.0 - dp.start_share) * rho / dp.rounds
    bound = dp.outcome_scale(family.name)
    summary = coordinator.secure_sum(
        "dp-design-summary", lambda s: s.dp_summary_vector(dp.clip, bound),
        dp=summary_query("design summary", dp.clip, bound, rho_start))
    contributors = len(coordinator.rounds[-1].contributors)
    summary_sds = guard.sum_noise_sd(contributors)
    summary_sd = float(np.max(summary_sds))
    n_high = check_dp_summary(summary, summary_sds, p=layout.p, clip=dp.clip,
                              outcome_bound=bound, family=family.name,
                              contributors=contributors, purpose="dp-design-summary")
    groups_high = min(n_high, float(summary[-1]) + Z * float(summary_sds[-1]))
    start = start_point(layout, family, summary, summary_sd)
    guard.clipped_records = float(summary[-2])
    units = group_clip_units(layout, dp.clip, bound, dp.group_clip)
    query = terms_query("glmm gradient and Hessian", layout, units, rho_round)
    length = layout.size + layout.size * (layout.size + 1) // 2
    planned = guard.planned_noise_sd(query, length, len(coordinator.live_sites))
    predicted = noise_aware_covariance(layout, family, summary, summary_sd,
                                       [planned] * dp.rounds, start.theta, start,
                                       replicates=PREDICTION_REPLICATES)
    _refuse_unidentified(layout, family, summary, summary_sd, planned, start, predicted, dp,
                         guard)
    theta = start.theta
    trace, steps, round_sds, informations = [], [], [], []
    for iteration in range(1, dp.rounds + 1):
        here = theta.copy()
        total = coordinator.secure_sum(
            "dp-glmm-terms", lambda s, at=here: s.dp_terms_vector(layout, at, units), dp=query)
        sd = guard.sum_noise_sd(len(coordinator.rounds[-1].contributors))
        check_dp_terms(total, sd, groups_high, layout.size, units)
        released = from_upper_triangle(total[layout.size:], layout.size)
        theta, information, ridge = newton_update(layout, here, total[:layout.size], released,
                                                  float(np.max(sd[layout.size:])))
        round_sds.append(sd)
        informations.append(-released)
        steps.append(theta - here)
        record = NewtonStep(iteration, float("nan"), float(np.max(np.abs(total[:layout.size]))),
                            float(np.max(np.abs(theta - here))), ridge, 1.0)
        trace.append(record)
        if on_step is not None:
            on_step(record)
    realised = noise_aware_covariance(layout, family, summary, summary_sd, round_sds, theta,
                                      start, informations)
    terms = SummedTerms(float("nan"), total[:layout.size], -np.linalg.inv(realised.covariance))
    settled = bool(np.max(np.abs(steps[-1]) / realised.se) <= 0.5)
    message = (f"differentially private fit: {dp.rounds} budgeted Newton round(s) from DP start "
               f"values; last step {'within' if settled else 'more than'} 0.5 standard errors; "
               "standard errors carry the privacy noise")
    estimate = GLMMEstimate(layout=layout, theta=theta, loglik=float("nan"), terms=terms,
                            converged=settled, singular=False, rounds=coordinator.round_id,
                            iterations=dp.rounds, trace=tuple(trace), message=message,
                            penalty=0.0)
    return DpGlmmFit(estimate, start.n_obs, start.n_groups, predicted, realised)


def _refuse_unidentified(layout: ParameterLayout, family: Family, summary: np.ndarray,
                         summary_sd: float, planned: np.ndarray, start: StartPoint,
                         predicted: NoiseAwareCovariance, dp: DPOptions, guard) -> None:
    """Stop after the first release when the noise would swamp a fixed effect.

    The ε named scales the predicted noise variance (∝ 1/ρ) down to the limit;
    step caps make it a lower estimate. When the summary's own X'X is below its
    noise floor the prediction rests on noise, and the message says the ε is a
    rough estimate.
    """
    beta = layout.beta
    ratio = predicted.se[beta] / predicted.sampling_se[beta]
    worst = int(np.argmax(ratio))
    if ratio[worst] <= dp.max_se_ratio:
        return
    # the noise variance scales as 1/rho: the rho that brings the worst ratio to the limit
    noise_ratio2 = float(np.max(np.diag(predicted.noise)[beta] / predicted.sampling_se[beta]**2))
    needed = zcdp_epsilon(dp.run_rho * noise_ratio2 / (dp.max_se_ratio**2 - 1.0), dp.delta)
    p = layout.p
    xtx = from_upper_triangle(summary[3 + p:3 + p + p * (p + 1) // 2], p)
    rough = float(np.linalg.eigvalsh(xtx)[0]) <= noise_floor(summary_sd, p)
    spent = guard.report()["epsilon_spent"]
    raise NotIdentifiable(
        f"the privacy noise would leave the effects unidentified: the predicted standard error "
        f"of '{layout.fixed_names[worst]}' is {ratio[worst]:.3g} times its non-private one "
        f"(limit {dp.max_se_ratio:g}, --dp-max-se-ratio); this fit would need about "
        f"epsilon={needed:.3g} per site at delta={dp.delta:g}"
        + (" (a rough estimate: the design summary itself is mostly noise at this epsilon; "
           "its sensitivity grows as --dp-clip squared)" if rough else "")
        + f". Only the first release (the design summary, epsilon={spent:.3g}) was spent.")
