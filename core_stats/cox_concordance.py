"""Harrell's concordance of a Cox fit from per-stratum sums, as ``survival`` computes it.

Within a stratum, a pair of rows is compared when the shorter time ends in
an event: rows ``i`` and ``j`` with ``t_i < t_j`` and ``d_i = 1``, or equal
times with ``d_i = 1, d_j = 0`` (a row censored at an event time counts as
still at risk). With risk scores ``r = x' beta`` (higher risk, shorter
time), the pair is *concordant* if ``r_i > r_j``, *discordant* if
``r_i < r_j`` and *tied.x* if ``r_i = r_j``; two events at the same time
are *tied.y* (or *tied.xy* when their scores are equal too). Pairs never
cross strata, so the five counts of a stratified fit are sums over strata.

The standard error is ``survival::concordancefit``'s infinitesimal
jackknife: each row's counts ``I_k`` of the pairs of kind ``k`` it belongs
to give ``a = I_conc - I_disc`` and ``b = I_conc + I_disc + I_tied.x``; with
``N`` the comparable pairs and ``s = (C - D) / N`` (Somers' d),

    var(C-index) = sum_i (a_i / N - s b_i / N)^2 / 4
                 = (sum a^2 - 2 s sum ab + s^2 sum b^2) / (4 N^2),

so a stratum needs to release only ``[C, D, tied.x, tied.y, tied.xy,
sum a^2, sum ab, sum b^2]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["CONCORDANCE_LENGTH", "Concordance", "concordance", "concordance_sums"]

CONCORDANCE_LENGTH = 8
_BLOCK = 512


@dataclass(frozen=True)
class Concordance:
    """The pair counts, the C-index and its standard error."""

    concordant: float
    discordant: float
    tied_risk: float
    tied_time: float
    tied_both: float
    concordance: float
    std_error: float


def concordance_sums(time: np.ndarray, event: np.ndarray, risk: np.ndarray) -> np.ndarray:
    """One stratum's ``[C, D, tied.x, tied.y, tied.xy, sum a^2, sum ab, sum b^2]``.

    Pairs are counted in blocks of rows, so memory stays ``O(block * n)``.
    """
    time = np.asarray(time, dtype=float)
    event = np.asarray(event, dtype=bool)
    risk = np.asarray(risk, dtype=float)
    n = len(time)
    per_row = np.zeros((n, 3))  # concordant, discordant, tied.x pairs each row belongs to
    tied_time = tied_both = 0.0
    for start in range(0, n, _BLOCK):
        rows = np.arange(start, min(start + _BLOCK, n))
        ti, di, ri = time[rows, None], event[rows, None], risk[rows, None]
        shorter = di & ((ti < time[None, :]) | ((ti == time[None, :]) & ~event[None, :]))
        kinds = (shorter & (ri > risk[None, :]), shorter & (ri < risk[None, :]),
                 shorter & (ri == risk[None, :]))
        for k, mask in enumerate(kinds):
            per_row[rows, k] += mask.sum(axis=1)
            per_row[:, k] += mask.sum(axis=0)
        both = di & event[None, :] & (ti == time[None, :])
        both[np.arange(len(rows)), rows] = False
        tied_both += float((both & (ri == risk[None, :])).sum()) / 2.0
        tied_time += float((both & (ri != risk[None, :])).sum()) / 2.0
    counts = per_row.sum(axis=0) / 2.0  # each pair was added to both of its rows
    a = per_row[:, 0] - per_row[:, 1]
    b = per_row.sum(axis=1)
    return np.array([*counts, tied_time, tied_both, a @ a, a @ b, b @ b])


def concordance(total: np.ndarray) -> Concordance:
    """The C-index and its standard error from :func:`concordance_sums` summed over strata."""
    conc, disc, tied_x, tied_y, tied_xy, aa, ab, bb = (float(v) for v in total)
    pairs = conc + disc + tied_x
    if pairs <= 0:
        nan = float("nan")
        return Concordance(conc, disc, tied_x, tied_y, tied_xy, nan, nan)
    somers = (conc - disc) / pairs
    var = max(aa - 2.0 * somers * ab + somers**2 * bb, 0.0) / (4.0 * pairs**2)
    return Concordance(conc, disc, tied_x, tied_y, tied_xy, (somers + 1.0) / 2.0,
                       float(np.sqrt(var)))
