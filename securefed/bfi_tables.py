"""Tidy tables, intervals and predictions of a BFI result (mixed into ``BFIReport``).

The BFI posterior of the combined parameters is normal, ``N(theta_hat, A^{-1})``,
so an interval at any level is ``theta_hat -/+ z_{(1+level)/2} sd``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["BFITables"]


class BFITables:
    """``to_frame``, ``confint`` and ``predict`` for a class with ``estimates`` rows
    (dicts with ``term``, ``estimate``, ``sd``, ``ci_low``, ``ci_high``)."""

    estimates: tuple[dict, ...]

    def to_frame(self):
        """The estimates as a pandas DataFrame indexed by term (estimate, sd, ci_low, ci_high)."""
        import pandas as pd

        return pd.DataFrame(list(self.estimates)).set_index("term")

    def confint(self, level: float = 0.95):
        """Normal posterior intervals ``estimate -/+ z_{(1+level)/2} sd`` (DataFrame by term)."""
        from core_stats.predict import confint_frame

        return confint_frame([row["term"] for row in self.estimates],
                             [row["estimate"] for row in self.estimates],
                             [row["sd"] for row in self.estimates], level)

    def predict(self, rows, *, response: bool = True) -> np.ndarray:
        """Predicted means (or linear predictors) for new rows; rows of a stratified
        fit need the site column (:func:`securefed.bfi_predict.predict_rows`)."""
        from securefed.bfi_predict import predict_rows

        return predict_rows(self, rows, response=response)
