"""A site's policy applied to survival calls (stratified Cox, BFI survival).

The model of a survival release is the ``prepare_cox`` setup call the site
applied: its formula (``Surv(time, status) ~ ...``, compared as written without
spaces), the columns it reads (time, status, covariates) and, for the calls
that take the coordinator's ``beta`` (:data:`SURVIVAL_THETA_METHODS`), the bound
``max_abs_beta`` on every coefficient. Those calls count towards the policy's
releases per model, as a GLMM's terms do.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from securefed.transport.survival_calls import SURVIVAL_RELEASE_METHODS, SURVIVAL_THETA_METHODS

__all__ = ["survival_beta_in_bounds", "survival_model_of"]


def survival_model_of(call: Any, setup: Sequence[Any]
                      ) -> tuple[str | None, str | None, set[str]] | None:
    """``(formula, model key, columns)`` of a survival call; None for any other call."""
    from securefed.policy.enforce import canonical_formula

    if call.method not in SURVIVAL_RELEASE_METHODS:
        return None
    specs = [c.kwargs["spec"] for c in setup if c.method == "prepare_cox"]
    if not specs:
        return None, None, set()  # the site refuses it anyway: no stratum was prepared
    spec = specs[-1]
    formula = canonical_formula(spec.formula.text)
    columns = {spec.formula.time, spec.formula.status, *spec.formula.covariates}
    kind = "cox" if call.method.startswith("cox_") else "bfi-survival"
    return formula, f"{kind}|{formula}|{spec.schema.factors}|{spec.ties}", columns


def survival_beta_in_bounds(policy: Any, call: Any) -> bool:
    """True unless ``call`` takes a ``beta`` that is not finite or above ``max_abs_beta``."""
    if call.method not in SURVIVAL_THETA_METHODS:
        return True
    beta = np.asarray(call.kwargs["beta"], dtype=float)
    return bool(beta.ndim == 1 and np.all(np.isfinite(beta))
                and np.all(np.abs(beta) <= policy.max_abs_beta))
