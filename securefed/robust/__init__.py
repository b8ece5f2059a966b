"""Bounded influence under secure aggregation (``--robust``): see :mod:`.validator`."""

from __future__ import annotations

from securefed.robust.influence import SiteInfluence, bfi_influence, glmm_influence
from securefed.robust.validator import DEFAULT_BOUND, InfluenceRefused, RobustVerdict, Validator

__all__ = ["DEFAULT_BOUND", "InfluenceRefused", "RobustVerdict", "SiteInfluence", "Validator",
           "bfi_influence", "glmm_influence"]
