"""Cox partial likelihood of one stratum: value, exact gradient and Hessian.

For a stratum with rows ``i`` (time ``t_i``, event indicator ``d_i``,
covariates ``x_i``), linear predictor ``eta_i = x_i' beta`` and weights
``w_i = exp(eta_i)``, let ``D_j`` be the rows with an event at the ``j``-th
distinct event time ``s_j`` (``m_j = |D_j|`` of them) and ``R_j`` the rows
still at risk (``t_i >= s_j``). With risk-set sums
``S0 = sum_R w``, ``S1 = sum_R w x``, ``S2 = sum_R w x x'`` and the same sums
over the tied events ``E0, E1, E2``:

Breslow::

    l = sum_j [ sum_{D_j} eta - m_j log S0_j ]
    g = sum_j [ sum_{D_j} x   - m_j S1_j / S0_j ]
    H = -sum_j m_j ( S2_j / S0_j - S1_j S1_j' / S0_j^2 )

Efron: for ``r = 0..m_j-1`` replace ``m_j`` copies of ``S_k`` by
``S_k - (r / m_j) E_k`` (``k = 0, 1, 2``) and sum over ``r``.

These are the likelihoods of ``survival::coxph`` (``ties = "breslow"`` and
``"efron"``). Covariates are centred by the stratum's column means and each
risk set's weights scaled by ``exp(-c)``, ``c`` its largest ``eta`` (constant
over segments of times, :func:`_shifts`): both leave ``l``, ``g`` and ``H``
unchanged (the shift cancels between numerator and risk set) and keep every
sum in range, however far apart the linear predictors lie. A stratified
partial likelihood is the sum of these stratum terms, so a federated fit with
one stratum per site needs only their sums.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["TIES", "CoxStratum", "CoxTerms", "cox_stratum", "stratum_terms"]

TIES = ("efron", "breslow")


@dataclass(frozen=True, eq=False)
class CoxStratum:
    """One stratum's rows, grouped by distinct time (ascending).

    ``X`` is centred by its column means; ``time_index[i]`` is the position of
    row ``i``'s time among ``times``; ``event_times`` indexes the distinct
    times with at least one event and ``event_counts`` counts them.
    """

    X: np.ndarray
    event: np.ndarray
    time_index: np.ndarray
    times: np.ndarray
    event_times: np.ndarray
    event_counts: np.ndarray

    @property
    def n_rows(self) -> int:
        return self.X.shape[0]

    @property
    def n_events(self) -> int:
        return int(self.event.sum())


@dataclass(frozen=True)
class CoxTerms:
    """Partial log-likelihood of a stratum with its gradient and Hessian (or None)."""

    loglik: float
    gradient: np.ndarray | None = None
    hessian: np.ndarray | None = None


def cox_stratum(time: np.ndarray, event: np.ndarray, X: np.ndarray) -> CoxStratum:
    """Index one stratum's rows for :func:`stratum_terms`.

    Parameters
    ----------
    time : (n,) array of event or censoring times.
    event : (n,) array, 1 (or True) for an event, 0 for censoring.
    X : (n, p) covariate matrix (no intercept column).
    """
    time = np.asarray(time, dtype=float)
    event = np.asarray(event, dtype=bool)
    X = np.asarray(X, dtype=float).reshape(len(time), -1)
    times, time_index = np.unique(time, return_inverse=True)
    counts = np.bincount(time_index, weights=event.astype(float), minlength=len(times))
    event_times = np.flatnonzero(counts > 0)
    centred = X - X.mean(axis=0) if len(X) else X
    return CoxStratum(np.ascontiguousarray(centred), event, time_index.astype(np.intp), times,
                      event_times, counts[event_times].astype(np.intp))


def _sums_by_time(stratum: CoxStratum, values: np.ndarray, rows: np.ndarray | None = None):
    """``sum`` of ``values`` (leading axis = rows) over the rows at each distinct time."""
    index = stratum.time_index if rows is None else stratum.time_index[rows]
    out = np.zeros((len(stratum.times),) + values.shape[1:])
    np.add.at(out, index, values)
    return out


_SEGMENT = 600.0  # exp(-600) ~ 1e-261: terms that far below a risk set's largest are negligible


def _shifts(stratum: CoxStratum, eta: np.ndarray) -> np.ndarray:
    """A log-scale per distinct time: constant over segments of times, each the largest
    ``eta`` of the segment's first risk set, starting a new segment when the risk sets'
    largest ``eta`` has fallen by ``_SEGMENT`` (so no risk-set sum underflows)."""
    block_max = np.full(len(stratum.times), -np.inf)
    np.maximum.at(block_max, stratum.time_index, eta)
    risk_max = np.maximum.accumulate(block_max[::-1])[::-1]  # non-increasing in time
    shifts = np.empty_like(risk_max)
    start = 0
    while start < len(risk_max):
        stop = int(np.searchsorted(-risk_max, -(risk_max[start] - _SEGMENT), side="right"))
        stop = max(stop, start + 1)
        shifts[start:stop] = risk_max[start]
        start = stop
    return shifts


def _risk_sums(blocks: np.ndarray, shifts: np.ndarray) -> np.ndarray:
    """Reverse cumulative sums of per-time ``blocks`` (each in its time's scale ``shifts``)."""
    out = np.empty_like(blocks)
    carry, carry_shift = np.zeros(blocks.shape[1:]), -np.inf
    edges = np.flatnonzero(np.diff(shifts)) + 1
    for a, b in reversed(list(zip(np.r_[0, edges], np.r_[edges, len(shifts)], strict=True))):
        scale = np.exp(carry_shift - shifts[a]) if np.isfinite(carry_shift) else 0.0
        out[a:b] = np.cumsum(blocks[a:b][::-1], axis=0)[::-1] + scale * carry
        carry, carry_shift = out[a], shifts[a]
    return out


def stratum_terms(stratum: CoxStratum, beta: np.ndarray, ties: str = "efron",
                  derivatives: bool = True) -> CoxTerms:
    """Partial log-likelihood ``l``, gradient ``g`` and Hessian ``H`` (module docstring).

    Weights are scaled per segment of times (:func:`_shifts`), so no risk-set
    sum underflows however far apart the linear predictors lie.
    """
    if ties not in TIES:
        raise ValueError(f"ties must be one of {TIES}, not {ties!r}")
    p = stratum.X.shape[1]
    if stratum.n_events == 0:
        zero = np.zeros(p) if derivatives else None
        return CoxTerms(0.0, zero, np.zeros((p, p)) if derivatives else None)
    X, ev = stratum.X, stratum.event
    eta = X @ np.asarray(beta, dtype=float)
    shifts = _shifts(stratum, eta)
    w = np.exp(eta - shifts[stratum.time_index])
    at = stratum.event_times
    events = np.flatnonzero(ev)
    m = stratum.event_counts.astype(float)
    risk0 = _risk_sums(_sums_by_time(stratum, w), shifts)[at]
    tied0 = _sums_by_time(stratum, w[ev], events)[at]
    if ties == "breslow" or np.all(m == 1):
        per_time, frac = np.arange(len(at)), np.zeros(len(at))
        mult = m
    else:  # Efron: one term per event, fractions r / m_j
        per_time = np.repeat(np.arange(len(at)), stratum.event_counts)
        starts = np.repeat(np.cumsum(stratum.event_counts) - stratum.event_counts,
                           stratum.event_counts)
        frac = (np.arange(len(per_time)) - starts) / m[per_time]
        mult = np.ones(len(per_time))
    s0 = risk0[per_time] - frac * tied0[per_time]
    loglik = float(eta[ev].sum()) - float(mult @ (np.log(s0) + shifts[at][per_time]))
    if not derivatives:
        return CoxTerms(loglik)
    wx = w[:, None] * X
    wxx = wx[:, :, None] * X[:, None, :]
    risk1 = _risk_sums(_sums_by_time(stratum, wx), shifts)[at]
    risk2 = _risk_sums(_sums_by_time(stratum, wxx), shifts)[at]
    tied1 = _sums_by_time(stratum, wx[ev], events)[at]
    tied2 = _sums_by_time(stratum, wxx[ev], events)[at]
    s1 = risk1[per_time] - frac[:, None] * tied1[per_time]
    s2 = risk2[per_time] - frac[:, None, None] * tied2[per_time]
    mean1 = s1 / s0[:, None]
    gradient = X[ev].sum(axis=0) - mult @ mean1
    second = s2 / s0[:, None, None] - mean1[:, :, None] * mean1[:, None, :]
    hessian = -np.einsum("k,kab->ab", mult, second)
    return CoxTerms(loglik, gradient, 0.5 * (hessian + hessian.T))
