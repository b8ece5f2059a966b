"""Frozen result objects with printable summaries and JSON-ready dicts."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from core_stats.inference import FixedEffect, RandomEffectCorrelation, RandomEffectSD
from core_stats.optimize import NewtonStep

__all__ = ["GLMMFit"]


@dataclass(frozen=True)
class GLMMFit:
    """A fitted (federated) GLMM, laid out like ``summary(glmer(...))``."""

    formula: str
    family: str
    link: str
    nagq: int
    fixed_effects: tuple[FixedEffect, ...]
    random_effects: tuple[RandomEffectSD, ...]
    correlations: tuple[RandomEffectCorrelation, ...]
    loglik: float
    aic: float
    bic: float
    converged: bool
    singular: bool
    rounds: int
    iterations: int
    n_obs: int
    n_groups: int
    n_sites: int
    penalty_lambda: float = 0.0
    protection: str = "none"
    theta: tuple[float, ...] = ()
    parameter_names: tuple[str, ...] = ()
    covariance: tuple[tuple[float, ...], ...] = field(default=(), repr=False)
    trace: tuple[NewtonStep, ...] = field(default=(), repr=False)
    message: str = ""
    warnings: tuple[str, ...] = ()
    dropped_columns: tuple[str, ...] = ()
    dropped_sites: tuple[str, ...] = ()
    bytes_sent_per_site: int = 0
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)

    def coef(self) -> dict[str, float]:
        """Fixed-effect estimates by term name."""
        return {fe.term: fe.estimate for fe in self.fixed_effects}

    def to_frame(self):
        """The fixed effects as a pandas DataFrame indexed by term: estimate, std_error,
        z_value, p_value, ci_low, ci_high (95% Wald limits)."""
        from core_stats.predict import coefficient_frame

        return coefficient_frame([asdict(fe) for fe in self.fixed_effects], "std_error")

    def confint(self, level: float = 0.95):
        """Wald intervals ``beta -/+ z_{(1+level)/2} se`` of the fixed effects, as R's
        ``confint(fit, method = "Wald")``: a DataFrame indexed by term, columns in percent."""
        from core_stats.predict import confint_frame

        return confint_frame([fe.term for fe in self.fixed_effects],
                             [fe.estimate for fe in self.fixed_effects],
                             [fe.std_error for fe in self.fixed_effects], level)

    def predict(self, rows, *, response: bool = True, modes=None):
        """Predictions for new rows; see :func:`core_stats.predict.predict_glmm`.

        Population level by default (``g^{-1}(X beta + offset)``, as lme4's
        ``predict(fit, newdata, re.form = NA)``); conditional for the groups
        whose modes ``b_g`` are given (``modes``: group label to vector, a
        site's own), ``g^{-1}(X beta + offset + Z b_g)``.
        """
        from core_stats.predict import predict_glmm

        return predict_glmm(self, rows, response=response, modes=modes)

    def to_dict(self) -> dict:
        """JSON-ready dict; the key names are a public contract."""
        out = {
            "formula": self.formula,
            "family": self.family,
            "link": self.link,
            "fixed_effects": [asdict(fe) for fe in self.fixed_effects],
            "random_effects": [asdict(re) for re in self.random_effects],
            "correlations": [asdict(c) for c in self.correlations],
            "loglik": self.loglik,
            "aic": self.aic,
            "bic": self.bic,
            "converged": self.converged,
            "singular": self.singular,
            "rounds": self.rounds,
            "iterations": self.iterations,
            "nagq": self.nagq,
            "n_obs": self.n_obs,
            "n_groups": self.n_groups,
            "n_sites": self.n_sites,
            "lambda": self.penalty_lambda,
            "protection": self.protection,
            "bytes_sent_per_site": self.bytes_sent_per_site,
            "seconds": self.seconds,
            "dropped_columns": list(self.dropped_columns),
            "dropped_sites": list(self.dropped_sites),
            "warnings": list(self.warnings),
            "message": self.message,
            "theta": {n: v for n, v in zip(self.parameter_names, self.theta, strict=True)},
            "trace": [asdict(step) for step in self.trace],
        }
        out.update(self.extra)
        return _clean(out)

    def summary(self) -> str:
        """A text summary in the layout of lme4's ``summary(glmer(...))``."""
        method = ("Laplace Approximation" if self.nagq == 1
                  else f"Adaptive Gauss-Hermite Quadrature (nAGQ = {self.nagq})")
        lines = [
            f"Generalized linear mixed model fit by maximum likelihood ({method})",
            f" Family: {self.family}  ( {self.link} )",
            f"Formula: {self.formula}",
            f"Federated over {self.n_sites} sites; protection: {self.protection}",
        ]
        if self.penalty_lambda:
            lines.append(f"L2 penalty lambda = {self.penalty_lambda:g} (intercept not penalised)")
        lines += ["", f"{'AIC':>10} {'BIC':>10} {'logLik':>10}",
                  f"{self.aic:10.1f} {self.bic:10.1f} {self.loglik:10.1f}", "",
                  "Random effects:",
                  f" {'Groups':<10} {'Name':<14} {'Std.Dev.':>9} {'95% CI':>20}"]
        for re in self.random_effects:
            ci = (f"[{re.ci_low:.4f}, {re.ci_high:.4f}]" if re.ci_low is not None else "")
            lines.append(f" {re.group:<10} {re.term:<14} {re.sd:9.4f} {ci:>20}")
        for c in self.correlations:
            lines.append(f" Corr({c.term1}, {c.term2}) = {c.correlation:.3f}")
        lines.append(f"Number of obs: {self.n_obs}, groups: {self.n_groups}, sites: {self.n_sites}")
        lines += ["", "Fixed effects:",
                  f"{'':<14} {'Estimate':>10} {'Std. Error':>10} {'z value':>8} {'Pr(>|z|)':>10}"
                  f" {'2.5 %':>9} {'97.5 %':>9}"]
        for fe in self.fixed_effects:
            lines.append(f"{fe.term:<14} {fe.estimate:10.5f} {fe.std_error:10.5f} "
                         f"{fe.z_value:8.3f} {_pformat(fe.p_value):>10} {fe.ci_low:9.4f} "
                         f"{fe.ci_high:9.4f}")
        status = "converged" if self.converged else f"NOT converged: {self.message}"
        lines += ["", f"Rounds: {self.rounds} ({self.iterations} Newton steps), {status}"]
        if self.singular:
            lines.append("boundary (singular) fit: the random-effect variance is estimated as 0"
                         if len(self.random_effects) <= 1 + (self.family == "gaussian") else
                         "boundary (singular) fit: the random-effect covariance is singular "
                         "(a variance at 0 or a correlation at ±1)")
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def _pformat(p: float) -> str:
    return "< 2e-16" if p < 2e-16 else f"{p:.3g}"


def _clean(value):
    """NaN/inf to None and numpy scalars to Python, recursively (strict JSON)."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value
