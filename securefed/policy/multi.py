"""What the site's policy reads from a model with several random-effects terms.

A single-term layout (:class:`core_stats.glmm.ParameterLayout`) has one
covariance block; a :class:`core_stats.glmm_multi.MultiLayout` has one per
term. The policy's bounds apply to every term alike: each log-SD (a
log-Cholesky diagonal, and the Gaussian ``log sigma``) must lie in
``[log_sd_min, log_sd_max]``, each off-diagonal Cholesky entry (the
correlations' scale) in ``|v| <= exp(log_sd_max)``, each fixed effect in
``|beta| <= max_abs_beta`` (:func:`securefed.policy.enforce.admit_call`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["MULTI_THETA_METHODS", "MULTI_METHODS", "covariance_parameters", "model_rows",
           "record_text"]

#: release calls of a model with several terms that depend on the coordinator's theta
MULTI_THETA_METHODS = frozenset({"multi_terms_vector"})
#: every release call of such a model (all need ``prepare_glmm_multi`` first)
MULTI_METHODS = MULTI_THETA_METHODS | {"multi_counts_vector", "level_sketch_vector"}


def _blocks(layout: Any) -> list[tuple[Any, slice]]:
    """Each covariance block as ``(single-term layout, its slice of theta)``."""
    if hasattr(layout, "terms"):  # a MultiLayout
        return [(term, layout.term_slice(t)) for t, term in enumerate(layout.terms)]
    return [(layout, layout.cov)]


def covariance_parameters(layout: Any, theta: np.ndarray) -> tuple[list[float], list[float]]:
    """``(log-scale values, linear-scale off-diagonal values)`` of every term's covariance,
    the dispersion's ``log sigma`` among the former."""
    logs: list[float] = []
    off: list[float] = []
    for term, where in _blocks(layout):
        entries = term.cholesky_entries() if term.random_effects else []
        for value, (r, c) in zip(theta[where], entries, strict=True):
            (logs if term.log_scale(r, c) else off).append(float(value))
    if layout.has_dispersion:
        logs.append(float(theta[layout.scale_index]))
    return logs, off


def model_rows(site: Any) -> tuple[Any, Any]:
    """``(rows, family)`` of the site's prepared GLMM, one term or several (rows have
    ``y``, ``X`` and ``n_rows``)."""
    multi = getattr(site, "_multi", None)
    if multi is not None:
        return multi, site._design.family
    return site.glmm_rows, site.glmm_family


def record_text(call: Any, call_text: str) -> str:
    """The call as the release record keys it. A level sketch is keyed without its random
    nonce: asked again over another roster it is refused as differencing, as the counts
    are (a new nonce would otherwise let the bins of two rosters tell one site's number of
    levels)."""
    if call.method != "level_sketch_vector":
        return call_text
    from dataclasses import replace

    from securefed.transport.calls import SiteCall

    request = call.kwargs["request"]
    return SiteCall(call.method, {"request": replace(request, nonce="")}).to_json()
