"""The logistic function, normal tails and quantiles, and log-gamma, without importing scipy.

Importing :mod:`scipy.special` costs ~0.3 s (its array-API layer imports ``numpy.testing``
and ``numpy.f2py``), more than a whole small fit. The fits need

* ``expit(x) = 1 / (1 + e^{-x})`` on every row (the logit link): numpy, in scipy's own
  overflow-free form, ``e^x / (1 + e^x)`` for ``x < 0`` and ``1 / (1 + e^{-x})`` otherwise;
* ``ndtr(x) = Phi(x) = erfc(-x / sqrt 2) / 2`` and ``ndtri(p) = Phi^{-1}(p)`` on a handful
  of values (Wald p-values, interval quantiles): the C library's ``erfc`` (:func:`math.erfc`,
  relative error below 1e-15 in both tails) and Wichura's AS 241 algorithm
  (:meth:`statistics.NormalDist.inv_cdf`, relative error ~1e-16);
* ``gammaln`` (Poisson and binomial-coefficient constants) on every row.

Arrays longer than :data:`SMALL` and ``gammaln`` always go to :mod:`scipy.special`, imported
on first use, so large problems keep its vectorised code.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np

__all__ = ["SMALL", "digamma", "expit", "gammaln", "log_ndtr", "ndtr", "ndtri", "polygamma"]

SMALL = 256  # arrays up to this size are evaluated element by element in Python
_STANDARD_NORMAL = NormalDist()
_SQRT_HALF = math.sqrt(0.5)


def _scipy_special():
    import scipy.special

    return scipy.special


def expit(x):
    """The logistic function ``1 / (1 + exp(-x))``, without overflow for any finite ``x``."""
    x = np.asarray(x, dtype=float)
    with np.errstate(under="ignore"):  # e^{-|x|} in [0, 1]: never overflows
        e = np.exp(-np.abs(x))
    out = np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
    return out if out.ndim else out[()]


def _ndtr_scalar(x: float) -> float:
    return 0.5 * math.erfc(-x * _SQRT_HALF)


def _ndtri_scalar(p: float) -> float:
    if p == 0.0:
        return -math.inf
    if p == 1.0:
        return math.inf
    if not 0.0 < p < 1.0:  # NaN or outside [0, 1], as scipy: NaN
        return math.nan
    return _STANDARD_NORMAL.inv_cdf(p)


def _elementwise(function, name: str, x):
    arr = np.asarray(x, dtype=float)
    if arr.size > SMALL:
        return getattr(_scipy_special(), name)(arr)
    out = np.array([function(float(v)) for v in arr.ravel()], dtype=float).reshape(arr.shape)
    return out if out.ndim else out[()]


def ndtr(x):
    """The standard normal distribution function ``Phi(x)``."""
    return _elementwise(_ndtr_scalar, "ndtr", x)


def ndtri(p):
    """The standard normal quantile ``Phi^{-1}(p)`` (``-inf`` at 0, ``inf`` at 1)."""
    return _elementwise(_ndtri_scalar, "ndtri", p)


def gammaln(x):
    """``log |Gamma(x)|`` (:func:`scipy.special.gammaln`, imported on first use)."""
    return _scipy_special().gammaln(x)


def digamma(x):
    """:func:`scipy.special.digamma` (imported on first use; NB2 and Gamma dispersions)."""
    return _scipy_special().digamma(x)


def polygamma(n, x):
    """:func:`scipy.special.polygamma` (imported on first use)."""
    return _scipy_special().polygamma(n, x)


def log_ndtr(x):
    """``log Phi(x)`` (:func:`scipy.special.log_ndtr`, imported on first use; the probit)."""
    return _scipy_special().log_ndtr(x)
