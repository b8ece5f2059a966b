"""Federated standardisation: pooled means and SDs from one secure sum.

A site releases, for its ``m`` columns, ``[n, sum(x - c), sum((x - c)^2)]``
(``c`` a public per-column shift, default 0; a shift near the mean limits the
cancellation in ``sum x^2 - n mean^2``). From the sum over sites::

    mean = c + S1 / n,     sd = sqrt((S2 - S1^2 / n) / (n - 1))

the sample SD with ``n - 1``, as R's ``scale()`` and the BFI paper use. The
coordinator learns ``n`` and the pooled first two moments only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Standardization", "StandardizeLayout"]


def _frozen(array: np.ndarray) -> np.ndarray:
    out = np.array(array, dtype=float, copy=True)
    out.setflags(write=False)
    return out


@dataclass(frozen=True, eq=False)
class Standardization:
    """Pooled ``mean`` and ``sd`` (``n - 1``) per column, and the pooled ``n``."""

    n: int
    mean: np.ndarray
    sd: np.ndarray

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", _frozen(self.mean))
        object.__setattr__(self, "sd", _frozen(self.sd))

    def apply(self, X: np.ndarray) -> np.ndarray:
        """``(X - mean) / sd`` column-wise (a new array; ``X`` is unchanged)."""
        X = np.asarray(X, dtype=float)
        if X.ndim == 1:
            X = X[:, None]
        if X.shape[1] != self.mean.size:
            raise ValueError(f"X has {X.shape[1]} columns, the standardisation {self.mean.size}")
        return (X - self.mean) / self.sd

    def invert(self, Z: np.ndarray) -> np.ndarray:
        """``Z * sd + mean``: back to the original units."""
        return np.asarray(Z, dtype=float) * self.sd + self.mean


@dataclass(frozen=True)
class StandardizeLayout:
    """Site vector ``[n, sum(x - c) (m), sum((x - c)^2) (m)]``, length ``1 + 2m``."""

    n_columns: int
    shift: tuple[float, ...] | None = None

    @property
    def length(self) -> int:
        return 1 + 2 * self.n_columns

    def _shift(self) -> np.ndarray:
        if self.shift is None:
            return np.zeros(self.n_columns)
        if len(self.shift) != self.n_columns:
            raise ValueError("shift needs one value per column")
        return np.asarray(self.shift, dtype=float)

    def site_vector(self, X: np.ndarray) -> np.ndarray:
        """``[n_l, sum_i (x_ij - c_j), sum_i (x_ij - c_j)^2]`` for this site's rows."""
        X = np.asarray(X, dtype=float)
        if X.ndim == 1:
            X = X[:, None]
        if X.shape[1] != self.n_columns:
            raise ValueError(f"expected {self.n_columns} columns, got {X.shape[1]}")
        if not np.all(np.isfinite(X)):
            raise ValueError("the columns to standardise have missing or infinite values")
        centred = X - self._shift()
        return np.concatenate([[X.shape[0]], centred.sum(axis=0), (centred**2).sum(axis=0)])

    def combine(self, total: np.ndarray) -> Standardization:
        """Pooled ``mean = c + S1/n`` and ``sd = sqrt((S2 - S1^2/n) / (n - 1))``."""
        total = np.asarray(total, dtype=float).ravel()
        if total.size != self.length:
            raise ValueError(f"expected a vector of length {self.length}, got {total.size}")
        n = float(total[0])
        if n < 2:
            raise ValueError("need at least two rows in total to estimate an SD")
        s1 = total[1:1 + self.n_columns]
        s2 = total[1 + self.n_columns:]
        var = (s2 - s1**2 / n) / (n - 1.0)
        if np.any(var <= 0):
            bad = np.flatnonzero(var <= 0).tolist()
            raise ValueError(f"column(s) {bad} are constant over all sites: cannot standardise")
        return Standardization(int(round(n)), self._shift() + s1 / n, np.sqrt(var))
