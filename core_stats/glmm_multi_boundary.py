"""Boundary faces of several random-effects terms: one face per term, one probe for all.

Each term's covariance has the faces of :mod:`core_stats.glmm_boundary` (a set
of zero columns of its ``Lambda_t``; all of them: the term's covariance is 0).
A face of the model fixes a face per term. The log-likelihood is even in each
column of each ``Lambda_t`` (``u_t -> -u_t`` per column), so at a point of a
face its gradient in the zero columns' entries is 0 and its Hessian has no
cross terms between them and the other parameters, nor between two zero
columns (of one term or of two): the face's optimum is a local maximum of the
full model when the Hessian block in the zero entries is negative
semi-definite. The sites compute that block with the ordinary terms,
evaluated with the zero columns present on the linear scale and at 0
(:func:`multi_probe_objective`): no extra round.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np

from core_stats.glmm import ParameterLayout
from core_stats.glmm_boundary import face_after, point_on, restricted_objective
from core_stats.glmm_multi import MultiLayout
from core_stats.optimize import SummedTerms

__all__ = ["on_face", "multi_probe", "multi_probe_objective", "move_term", "term_face"]

Terms = Callable[[MultiLayout, np.ndarray, bool], SummedTerms]


def _zero_columns(term: ParameterLayout) -> tuple[int, ...]:
    return term.zero_columns if term.random_effects else tuple(range(term.q))


def on_face(layout: MultiLayout) -> bool:
    """Whether any term has zero columns (or is fixed at 0)."""
    return any(_zero_columns(term) for term in layout.terms)


def multi_probe(layout: MultiLayout) -> MultiLayout:
    """``layout`` with every zero column present on the linear scale (to be set to 0)."""
    terms = tuple(replace(term, random_effects=True, zero_columns=(),
                          linear_columns=_zero_columns(term)) for term in layout.terms)
    return replace(layout, terms=terms)


def multi_probe_objective(terms: Terms, face: MultiLayout
                          ) -> Callable[[np.ndarray, bool], SummedTerms]:
    """The summed terms of ``face``, with the zero entries' Hessian block as ``extra``."""
    probe = multi_probe(face)
    names = probe.parameter_names()
    kept = set(face.parameter_names())
    free = np.array([k for k, name in enumerate(names) if name in kept])
    zero = np.array([k for k, name in enumerate(names) if name not in kept])
    order = [names.index(name) for name in face.parameter_names()]
    if list(free) != order:
        raise ValueError("the face's parameters are not in the probe's order")
    return restricted_objective(terms, probe, free, zero)


def move_term(layout: MultiLayout, theta: np.ndarray, t: int, term: ParameterLayout,
              values: np.ndarray) -> tuple[MultiLayout, np.ndarray]:
    """The layout with term ``t`` replaced by ``term`` and its parameters by ``values``."""
    new = layout.with_term(t, term)
    out = np.zeros(new.size)
    out[new.beta] = np.asarray(theta)[layout.beta]
    for k in range(len(layout.terms)):
        out[new.term_slice(k)] = values if k == t else np.asarray(theta)[layout.term_slice(k)]
    if layout.has_dispersion:
        out[new.scale_index] = theta[layout.scale_index]
    return new, out


def term_face(layout: MultiLayout, theta: np.ndarray, t: int,
              column: int) -> tuple[MultiLayout, np.ndarray]:
    """The model's face reached when column ``column`` of term ``t`` collapses, and the
    point on it that keeps the rest of that term's covariance (``face_after``)."""
    view, sub = layout.term_view(t), layout.term_theta(theta, t)
    zero, factor = face_after(view, sub, column)
    term = layout.terms[t]
    if len(zero) == term.q:
        return move_term(layout, theta, t, term.without_random_effects(), np.zeros(0))
    face_term = replace(term, zero_columns=zero, linear_columns=())
    face_view = replace(face_term, has_dispersion=layout.has_dispersion)
    values = point_on(face_view, sub, view, factor)[:face_term.n_cov]
    return move_term(layout, theta, t, face_term, values)
