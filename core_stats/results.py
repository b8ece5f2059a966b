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
    counts_noisy: bool = False  # n_obs / n_groups are differentially private (noisy) counts

    def coef(self) -> dict[str, float]:
        """Fixed-effect estimates by term name."""
        return {fe.term: fe.estimate for fe in self.fixed_effects}

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
            "statistic": "t" if self.family == "gaussian" else "z",
            "converged": self.converged,
            "singular": self.singular,
            "rounds": self.rounds,
            "iterations": self.iterations,
            "nagq": self.nagq,
            "n_obs": self.n_obs,
            "n_groups": self.n_groups,
            "n_sites": self.n_sites,
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
