"""Variance components of several random-effects terms, one table row per term and effect.

Each term's SDs and correlations are those of :func:`core_stats.inference.random_effect_table`
applied to the term's own covariance parameters and their block of ``Cov(theta)``; the
residual SD (Gaussian family) comes last, as lme4's ``VarCorr`` prints it. Groups are
named as lme4 names them (``BROOD:LOCATION``, ``LOCATION``; ``g``, ``g.1`` for ``||``).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from core_stats.glmm_multi import MultiLayout
from core_stats.inference import RandomEffectCorrelation, RandomEffectSD, random_effect_table

__all__ = ["variance_components", "n_variance_parameters"]


def variance_components(layout: MultiLayout, theta: np.ndarray, cov_theta: np.ndarray,
                        level: float = 0.95) -> tuple[list[RandomEffectSD],
                                                      list[RandomEffectCorrelation]]:
    """SDs and correlations per term (a term fixed at 0: SDs 0, no CI), then the residual SD."""
    theta = np.asarray(theta, dtype=float)
    sds: list[RandomEffectSD] = []
    corrs: list[RandomEffectCorrelation] = []
    for t, term in enumerate(layout.terms):
        part = layout.term_slice(t)
        view = replace(term, has_dispersion=False)
        term_sds, term_corrs = random_effect_table(view, theta[part], cov_theta[part, part], level)
        sds += term_sds
        corrs += term_corrs
    if layout.has_dispersion:
        k = np.array([layout.scale_index])
        view = replace(layout.terms[0], random_effects=False, has_dispersion=True)
        sds += [sd for sd in random_effect_table(view, np.concatenate([theta[k]]),
                                                 cov_theta[np.ix_(k, k)], level)[0]
                if sd.group == "Residual"]
    return sds, corrs


def n_variance_parameters(layout: MultiLayout) -> int:
    """lme4's count of covariance parameters (every term at full rank, plus sigma)."""
    return sum(term.q * (term.q + 1) // 2 for term in layout.terms) + int(layout.has_dispersion)
