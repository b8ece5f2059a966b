"""Plausibility checks on the sums of a stratified Cox fit (see :mod:`securefed.plausibility`).

Each check states an inequality that every honest sum satisfies; a failed
check refuses the round (:class:`~securefed.plausibility.ImplausibleAggregate`).

* ``cox-count``: rows, events, omitted rows and sites are whole numbers with
  ``0 <= events <= rows``, and the site count equals the contributors.
* ``gram-psd``: the within-site centred Gram matrix is positive semi-definite
  (a sum of Gram matrices).
* ``partial-loglik``: ``l <= 0``. Every Breslow term is ``log(w_i / S0)`` with
  ``w_i <= S0``; an Efron term at a time with ``m`` tied events is
  ``log prod_D w - sum_r log(S0 - r E0 / m)`` and, since
  ``S0 - r E0 / m >= E0 / m`` and ``prod_D w <= (E0 / m)^m``, also ``<= 0``.
* ``information-psd``: ``-H`` is positive semi-definite (a weighted sum of
  risk-set covariance matrices).
* ``pair-counts``: the five concordance counts are whole, non-negative, and the
  comparable pairs number at most ``events x rows``; the jackknife sums are
  non-negative where they are sums of squares.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from securefed.plausibility import MODEL_RTOL, Tolerance, _finite, _psd, _refuse
from securefed.vectors import from_upper_triangle

__all__ = ["CoxCounts", "check_cox_concordance", "check_cox_summary", "check_cox_terms"]


@dataclass(frozen=True)
class CoxCounts:
    n_rows: int
    n_events: int
    n_omitted: int
    n_sites: int
    tolerance: Tolerance


def _contributors(coordinator) -> int:
    return len(coordinator.rounds[-1].contributors) if coordinator.rounds else 1


def check_cox_summary(total: np.ndarray, coordinator, p: int) -> CoxCounts:
    """Check ``[rows, events, omitted, sites, upper(Xc'Xc)]``; return the counts."""
    purpose = "cox-summary"
    tol = Tolerance.of(coordinator)
    total = _finite(purpose, total)
    if total.size != 4 + p * (p + 1) // 2:
        _refuse(purpose, "length", f"{total.size} values for {p} columns")
    rows, events, omitted, sites = (float(v) for v in total[:4])
    if not all(tol.whole(v) for v in (rows, events, omitted, sites)) or not \
            (-tol.absolute <= events <= rows + tol.absolute) or omitted < -tol.absolute:
        _refuse(purpose, "cox-count", "rows, events, omitted rows and sites must be whole "
                "numbers with 0 <= events <= rows")
    if round(sites) != _contributors(coordinator):
        _refuse(purpose, "cox-count", f"{round(sites)} sites counted, "
                f"{_contributors(coordinator)} contributed")
    gram = from_upper_triangle(total[4:], p)
    scale = np.sqrt(np.maximum(np.diag(gram), 1e-300))
    if np.any(np.diag(gram) < -tol.absolute) or not _psd(gram, scale, 1e-6):
        _refuse(purpose, "gram-psd", "the centred Gram matrix is not positive semi-definite")
    return CoxCounts(int(round(rows)), int(round(events)), int(round(omitted)),
                     int(round(sites)), tol)


def check_cox_terms(total: np.ndarray, coordinator, counts: CoxCounts, p: int,
                    derivatives: bool) -> None:
    """Check ``[l, g, upper(H)]`` (or ``[l]``) of the summed partial likelihood."""
    purpose = "cox-terms"
    total = _finite(purpose, total)
    expected = 1 + p + p * (p + 1) // 2 if derivatives else 1
    if total.size != expected:
        _refuse(purpose, "length", f"{total.size} values, expected {expected}")
    slack = counts.tolerance.absolute + MODEL_RTOL * max(1.0, abs(float(total[0])))
    if total[0] > slack:
        _refuse(purpose, "partial-loglik", "the partial log-likelihood is positive")
    if derivatives:
        info = -from_upper_triangle(total[1 + p:], p)
        scale = np.sqrt(np.maximum(np.abs(np.diag(info)), 1e-300))
        if not _psd(info, scale, MODEL_RTOL + counts.tolerance.absolute / scale.min() ** 2):
            _refuse(purpose, "information-psd", "the summed information is not positive "
                    "semi-definite")


def check_cox_concordance(total: np.ndarray, coordinator, counts: CoxCounts,
                          length: int) -> None:
    """Check the summed concordance counts and jackknife sums."""
    purpose = "cox-concordance"
    tol = counts.tolerance
    total = _finite(purpose, total)
    if total.size != length:
        _refuse(purpose, "length", f"{total.size} values, expected {length}")
    pair_counts = total[:5]
    if not all(tol.whole(v) for v in pair_counts) or np.any(pair_counts < -tol.absolute):
        _refuse(purpose, "pair-counts", "pair counts must be whole and non-negative")
    if pair_counts[:3].sum() > counts.n_events * counts.n_rows + tol.absolute:
        _refuse(purpose, "pair-counts", "more comparable pairs than events x rows")
    if total[5] < -tol.absolute or total[7] < -tol.absolute:
        _refuse(purpose, "pair-counts", "a sum of squares is negative")
