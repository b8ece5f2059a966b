"""Checks on a summed REML round (``X'V^-1 X`` and its derivatives, core_stats.glmm_reml).

* ``finite`` and ``length``;
* ``reml-information``: ``M = sum X_g' V_g^-1 X_g`` is positive definite, and, in a
  round that also released the Gaussian terms at the same ``theta``, equals their
  ``-d2 l / d beta2`` (exactly ``X'V^-1 X`` for a Gaussian model) to ``MODEL_RTOL``
  -- a site cannot shift the REML term without also shifting the likelihood's
  curvature, which :func:`securefed.plausibility.check_glmm_terms` bounds.
"""

from __future__ import annotations

import numpy as np

from core_stats.bfi_layout import triu_unpack
from core_stats.glmm import ParameterLayout
from core_stats.glmm_reml import reml_vector_length
from core_stats.optimize import SummedTerms
from securefed.plausibility import MODEL_RTOL, _finite, _refuse

__all__ = ["check_reml_terms"]


def check_reml_terms(total: np.ndarray, layout: ParameterLayout,
                     ml: SummedTerms | None, purpose: str = "glmm-reml") -> np.ndarray:
    """Refuse an implausible summed REML vector; return it as floats."""
    total = _finite(purpose, total)
    if total.size != reml_vector_length(layout):
        _refuse(purpose, "length", f"{total.size} values, expected "
                f"{reml_vector_length(layout)}")
    p = layout.p
    M = triu_unpack(total[: p * (p + 1) // 2], p)
    scale = np.sqrt(np.maximum(np.abs(np.diag(M)), 1e-300))
    if np.min(np.linalg.eigvalsh(M / np.outer(scale, scale))) <= 0:
        _refuse(purpose, "reml-information", "X'V^-1 X is not positive definite")
    if ml is not None and ml.hessian is not None:
        info = -ml.hessian[layout.beta, layout.beta]
        gap = np.abs(info - M) / np.outer(scale, scale)
        if np.max(gap) > MODEL_RTOL * 10:
            _refuse(purpose, "reml-information",
                    "X'V^-1 X differs from the summed curvature of the fixed effects")
    return total
