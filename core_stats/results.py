"""Frozen result objects with printable summaries and JSON-ready dicts."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from core_stats.families import get_family
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
    counts_noisy: bool = False  # n_obs / n_groups are differentially private (noisy) counts
    reml: bool = False  # a Gaussian fit by lmer's REML criterion (loglik is then the REML one)
    n_sites_counted: int | None = None  # sites whose data the estimate holds (see to_dict)

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
            "deviance": -2.0 * self.loglik,
            "df_resid": self.n_obs - len(self.theta),
            "statistic": "t" if get_family(self.family, self.link).t_statistic else "z",
            "reml": self.reml,
            "converged": self.converged,
            "singular": self.singular,
            "rounds": self.rounds,
            "iterations": self.iterations,
            "nagq": self.nagq,
            "n_obs": self.n_obs,
            "n_groups": self.n_groups,
            "n_sites": self.n_sites,
            "n_sites_counted": self.n_sites_counted,
            "counts_noisy": self.counts_noisy,
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
        """A text summary in the layout of lme4's ``summary(glmer(...))`` (see
        :mod:`core_stats.summary`)."""
        from core_stats.summary import glmm_summary

        return glmm_summary(self)


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
