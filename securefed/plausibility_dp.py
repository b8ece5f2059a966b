"""Plausibility checks on *noisy* sums (the DP paths): intervals, not identities.

Under differential privacy each decoded sum is the exact sum plus noise of a
known per-coordinate SD ``sigma_k`` (the distributed discrete Gaussian,
:meth:`securefed.privacy.PrivacyGuard.sum_noise_sd`). The sites clip every
record to public bounds before the sum, so the exact sum obeys public bounds;
the noisy one obeys them up to ``Z sigma_k`` (``Z = 6``: an honest coordinate
fails with probability about ``2e-9``). A malicious site skips its clipping
and the checks catch it when its excess is larger than the noise. Notation as
in :mod:`securefed.dp_statistics`: ``R`` the record clip on ``x`` (intercept
included), ``B`` the outcome bound, ``L`` the contributors, ``n_hi = n +
Z sigma_n`` the upper end of the row count.

=====================  ==========================================================
check                  inequality (each side widened by ``Z sigma``)
=====================  ==========================================================
``noisy-count``        ``n >= L``; the site-count entry of ``[n_l, 1]`` is ``L``
``noisy-outcome``      ``|Sy| <= B n``, ``0 <= Syy <= B^2 n``; binomial
                       ``0 <= Sy <= n`` and ``Syy = Sy``; poisson ``Syy >= Sy``
``noisy-gram``         ``0 <= (X'X)_jj``, ``tr X'X <= R^2 n``, ``|(X'y)_j| <= R B n``
``noisy-clipped``      ``0 <= n_clipped <= n``; ``0 <= n_groups <= n``
``noisy-terms-norm``   GLMM rounds: ``||sum_g v_g|| <= G`` (each group's clipped
                       ``v_g`` has norm <= 1; ``G`` the groups' upper end)
``noisy-standardize``  ``|S1_j| <= h_j n``, ``0 <= S2_j <= h_j^2 n``
=====================  ==========================================================
"""

from __future__ import annotations

import numpy as np

from securefed.plausibility import ImplausibleAggregate

__all__ = ["Z", "check_dp_count", "check_dp_standardize", "check_dp_summary",
           "check_dp_terms"]

Z = 6.0


def _sd(sd, size: int) -> np.ndarray:
    out = np.broadcast_to(np.asarray(sd, dtype=float), (size,)).copy()
    return np.maximum(out, 0.0)


def _within(purpose: str, check: str, value: float, low: float, high: float, slack: float,
            what: str) -> None:
    if not np.isfinite(value) or value < low - Z * slack or value > high + Z * slack:
        raise ImplausibleAggregate(purpose, check, f"{what} is outside its public range even "
                                   "allowing for the privacy noise")


def check_dp_count(total: np.ndarray, sd, contributors: int, purpose: str = "bfi-count"
                   ) -> None:
    """The noisy ``[sum n_l, L]`` of a BFI count round."""
    total = np.asarray(total, dtype=float)
    s = _sd(sd, total.size)
    _within(purpose, "noisy-count", total[0], contributors, np.inf, s[0], "the row count")
    _within(purpose, "noisy-count", total[1], contributors, contributors, s[1], "the site count")


def check_dp_summary(total: np.ndarray, sd, *, p: int, clip: float, outcome_bound: float,
                     family: str, contributors: int, purpose: str) -> float:
    """A noisy :func:`securefed.dp_statistics.summary_vector` sum; returns ``n_hi``."""
    total = np.asarray(total, dtype=float)
    s = _sd(sd, total.size)
    if not np.all(np.isfinite(total)):
        raise ImplausibleAggregate(purpose, "finite", "the sum has NaN or infinite entries")
    n, sy, syy = total[:3]
    _within(purpose, "noisy-count", n, contributors, np.inf, s[0], "the row count")
    n_hi = n + Z * s[0]
    B = float(outcome_bound)
    low_y = 0.0 if family in ("binomial", "poisson") else -B * n_hi
    _within(purpose, "noisy-outcome", sy, low_y, B * n_hi, s[1], "the outcome sum")
    _within(purpose, "noisy-outcome", syy, 0.0, B * B * n_hi, s[2], "the squared-outcome sum")
    pair = float(np.hypot(s[1], s[2]))
    if family == "binomial":
        _within(purpose, "noisy-outcome", syy - sy, 0.0, 0.0, pair, "sum y^2 - sum y")
    if family == "poisson":
        _within(purpose, "noisy-outcome", syy - sy, 0.0, np.inf, pair, "sum y^2 - sum y")
    xy = total[3:3 + p]
    R = float(clip)
    for j in range(p):
        _within(purpose, "noisy-gram", xy[j], -R * B * n_hi, R * B * n_hi, s[3 + j], "X'y")
    start = 3 + p
    diag = [start + j * p - j * (j - 1) // 2 for j in range(p)]  # upper-triangle row order
    for k in diag:
        _within(purpose, "noisy-gram", total[k], 0.0, R * R * n_hi, s[k], "a diagonal of X'X")
    trace_sd = float(np.sqrt(np.sum(s[diag] ** 2)))
    _within(purpose, "noisy-gram", float(np.sum(total[diag])), 0.0, R * R * n_hi, trace_sd,
            "the trace of X'X")
    _within(purpose, "noisy-clipped", total[-2], 0.0, n_hi, s[-2], "the clipped-record count")
    _within(purpose, "noisy-clipped", total[-1], 0.0, n_hi, s[-1], "the group count")
    return float(n_hi)


def check_dp_terms(total: np.ndarray, sd, groups_high: float, size: int,
                   units: tuple[int, int], purpose: str = "dp-glmm-terms") -> None:
    """``||total / C|| <= G + sqrt(sum (sigma / C)^2) + Z max sigma / C`` for clipped group
    terms (``C = 2^units``: the gradient's and the Hessian's, first ``size`` entries the
    gradient; :func:`securefed.dp_statistics.clipped_terms_vector`)."""
    scale = np.concatenate([np.full(size, 2.0 ** -units[0]),
                            np.full(max(np.asarray(total).size - size, 0), 2.0 ** -units[1])])
    total = np.asarray(total, dtype=float) * scale
    s = _sd(sd, total.size) * scale
    if not np.all(np.isfinite(total)):
        raise ImplausibleAggregate(purpose, "finite", "the sum has NaN or infinite entries")
    limit = groups_high + float(np.sqrt(np.sum(s**2))) + Z * float(np.max(s, initial=0.0))
    if float(np.linalg.norm(total)) > limit:
        raise ImplausibleAggregate(purpose, "noisy-terms-norm", "the clipped group terms add "
                                   "up to more than the groups can, even allowing for the "
                                   "privacy noise")


def check_dp_standardize(total: np.ndarray, sd, half: np.ndarray, contributors: int,
                         purpose: str = "bfi-standardize") -> None:
    """A noisy :func:`securefed.dp_statistics.standardize_vector` sum ``[n, S1, S2]``."""
    total = np.asarray(total, dtype=float)
    s = _sd(sd, total.size)
    m = len(half)
    _within(purpose, "noisy-count", total[0], contributors, np.inf, s[0], "the row count")
    n_hi = total[0] + Z * s[0]
    for j, h in enumerate(np.asarray(half, dtype=float)):
        _within(purpose, "noisy-standardize", total[1 + j], -h * n_hi, h * n_hi, s[1 + j],
                "a centred sum")
        _within(purpose, "noisy-standardize", total[1 + m + j], 0.0, h * h * n_hi,
                s[1 + m + j], "a centred sum of squares")
