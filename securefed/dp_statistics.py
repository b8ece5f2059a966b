"""What each statistic releases under differential privacy, and its sensitivity Δ.

Privacy unit: one record, added or removed. Each function here computes a
site's vector with the bound that makes Δ hold *enforced* (clipping), and
the matching :class:`~securefed.privacy.DpQuery` states Δ. The empirical
tests (``tests/securefed/test_dp_sensitivity.py``) add and remove records,
worst-case ones included, and check the vectors move by at most Δ.

Design summary (GLMM round 1, BFI gaussian sufficient statistics)
    one record contributes ``c = [1, y, y², x·y, upper(x xᵀ), 1{clipped}, 1{new group}]``
    with ``x`` scaled to ``‖x‖₂ ≤ R`` (intercept included) and ``y`` clipped to
    ``[-B, B]`` (binomial: B = 1; poisson: [0, B]). Since
    ``‖upper(x xᵀ)‖² ≤ ‖x‖⁴``: ``Δ² = 3 + B² + B⁴ + R²B² + R⁴`` (the
    last entry counts groups: a record changes it by at most one).

GLMM Newton round
    the gradient and Hessian of the marginal log-likelihood are sums over
    groups; one record changes one group's term. Each group's
    ``[g_g / C_g, upper(H_g) / C_H]`` (or ``g_g / C_g`` in gradient-only
    rounds) is scaled to L2 norm ≤ 1, so a record
    changes the sum by at most ``Δ = 2`` in those units (1 when it creates or
    removes its group); ``C_g = 2^⌈log2(G·R·B)⌉`` and ``C_H = 2^⌈log2(G·R²·B²)⌉``
    with ``G`` = ``--dp-group-clip`` (records-equivalent). Groups whose terms
    exceed the bound are shrunk towards zero — that is the bias clipping
    costs.

BFI count
    ``[n, 1]``: Δ = 1.

Standardisation sums (BFI ``--standardize``)
    raw values clipped to their declared public ranges ``[lo, hi]`` and centred
    at ``c = (lo + hi)/2``: one record adds ``[1, x − c, (x − c)²]`` with
    ``|x − c| ≤ h = (hi − lo)/2``, so ``Δ² = 1 + Σ_j (h_j² + h_j⁴)``.
"""

from __future__ import annotations

import math

import numpy as np

from core_stats.design import GroupedRows
from core_stats.families import Family
from core_stats.glmm import ParameterLayout, site_terms
from securefed.privacy import DpQuery
from securefed.vectors import from_upper_triangle, upper_triangle

__all__ = ["positive_definite", "noise_floor", "clip_records", "summary_vector",
           "summary_sensitivity", "summary_query", "summary_length", "group_clip_units",
           "clipped_terms_vector", "terms_query", "standardize_vector",
           "standardize_sensitivity", "local_fit_from_stats"]


def noise_floor(noise_sd: float, size: int) -> float:
    """``3 σ √size``: how far (with high probability) noise moves any eigenvalue of a
    noisy ``size × size`` sum of outer products."""
    return 3.0 * noise_sd * math.sqrt(size)


def positive_definite(matrix: np.ndarray, floor: float) -> np.ndarray:
    """The symmetric part of ``matrix`` with its eigenvalues raised to at least ``floor``.

    A noisy sum of outer products can have eigenvalues near or below zero; raising
    them damps the directions the data do not inform instead of inverting them.
    """
    sym = 0.5 * (matrix + matrix.T)
    values, vectors = np.linalg.eigh(sym)
    return (vectors * np.maximum(values, max(floor, 1e-12))) @ vectors.T


def clip_records(X: np.ndarray, y: np.ndarray, clip: float, outcome_bound: float,
                 family: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows scaled to ‖x‖ ≤ R and outcomes clipped to the family's range; which were."""
    norms = np.linalg.norm(X, axis=1)
    over = norms > clip
    Xc = X * np.where(over, clip / np.where(over, norms, 1.0), 1.0)[:, None]
    low = 0.0 if _family(family).dp_outcome in ("unit", "count") else -outcome_bound
    yc = np.clip(y, low, outcome_bound)
    return Xc, yc, over | (yc != y)


def summary_vector(X: np.ndarray, y: np.ndarray, clip: float, outcome_bound: float,
                   family: str, n_groups: int = 0) -> np.ndarray:
    """``[n, Σy, Σy², X'y, upper(X'X), n_clipped, n_groups]`` over clipped records."""
    Xc, yc, clipped = clip_records(X, y, clip, outcome_bound, family)
    return np.concatenate([[len(yc), yc.sum(), yc @ yc], Xc.T @ yc,
                           upper_triangle(Xc.T @ Xc), [clipped.sum(), n_groups]])


def summary_length(p: int) -> int:
    """Length of :func:`summary_vector` for ``p`` design columns."""
    return 3 + p + p * (p + 1) // 2 + 2


def local_fit_from_stats(vec: np.ndarray, names: tuple[str, ...], family: Family,
                         prior: np.ndarray, noise_sd: float):
    """The BFI MAP fit from a noisy :func:`summary_vector` — the sites' sum under DP
    (:mod:`securefed.dp_bfi`), or one site's own (post-processing either way).

    Gaussian fits are exact given the sums; binomial fits use the PASS-GLM
    quadratic approximation (:mod:`core_stats.bfi_stats`). ``noise_sd`` (the
    largest per-coordinate noise SD) floors X'X's eigenvalues and the RSS.
    Raises ``MAPConvergenceError`` / ``LinAlgError`` when the noisy
    statistics admit no fit.
    """
    from core_stats.bfi_stats import fit_map_binomial_stats, fit_map_gaussian_stats

    p = len(names)
    n, yy, xy = max(vec[0], p + 2.0), max(vec[2], 0.0), vec[3:3 + p]
    xx = positive_definite(from_upper_triangle(vec[3 + p:-2], p), noise_sd)
    if family.has_residual_sd:
        return fit_map_gaussian_stats(n, yy, xy, xx, prior, names=names,
                                      rss_floor=3.0 * noise_sd)
    return fit_map_binomial_stats(n, xy, xx, prior, names=names,
                                  intercept=names.index("(Intercept)"))


def summary_sensitivity(clip: float, outcome_bound: float) -> float:
    """Δ₂ of :func:`summary_vector` for add/remove one record."""
    R, B = float(clip), float(outcome_bound)
    return math.sqrt(3.0 + B**2 + B**4 + R**2 * B**2 + R**4)


def summary_query(purpose: str, clip: float, outcome_bound: float, rho: float) -> DpQuery:
    return DpQuery(purpose, summary_sensitivity(clip, outcome_bound), rho)


def group_clip_units(layout: ParameterLayout, clip: float, outcome_bound: float,
                     group_clip: float) -> tuple[int, int]:
    """``(log2 C_g, log2 C_H)``: the powers of two one group's terms are bounded by."""
    R, B, G = float(clip), float(outcome_bound), float(group_clip)
    return math.ceil(math.log2(G * R * B)), math.ceil(math.log2(G * R * R * B * B))


def clipped_terms_vector(rows: GroupedRows, family: Family, layout: ParameterLayout,
                         theta: np.ndarray, nagq: int, units: tuple[int, int],
                         start_modes: np.ndarray | None = None, hessian: bool = True):
    """``[gradient, upper(Hessian)]`` (or the gradient alone) summed over groups, each
    group clipped; and the conditional modes.

    How many groups were clipped stays at the site (a plain count is not
    private); the clipped *records* are counted, with noise, in the summary.
    """
    terms = site_terms(rows, family, layout, theta, nagq=nagq, start_modes=start_modes,
                       derivatives=True, per_group=True)
    iu = np.triu_indices(layout.size)
    grads = np.ldexp(terms.group_gradients, -units[0])
    if hessian:
        hess = np.ldexp(terms.group_hessians[:, iu[0], iu[1]], -units[1])
        scaled = np.concatenate([grads, hess], axis=1)
    else:
        scaled = grads
    norms = np.linalg.norm(scaled, axis=1)
    over = norms > 1.0
    scaled *= np.where(over, 1.0 / np.where(over, norms, 1.0), 1.0)[:, None]
    total = scaled.sum(axis=0)
    P = layout.size
    vector = np.concatenate([np.ldexp(total[:P], units[0]), np.ldexp(total[P:], units[1])])
    # (with hessian=False, total[P:] is empty)
    return vector, terms.modes


def terms_query(purpose: str, layout: ParameterLayout, units: tuple[int, int],
                rho: float, hessian: bool = True) -> DpQuery:
    P = layout.size
    log2_units = np.concatenate([np.full(P, units[0]),
                                 np.full(P * (P + 1) // 2 if hessian else 0, units[1])])
    return DpQuery(purpose, 2.0, rho, log2_units.astype(np.int64))


def standardize_vector(X: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """``[n, Σ(x − c), Σ(x − c)²]`` per column over values clipped to ``[low, high]``."""
    from core_stats.standardize import StandardizeLayout

    centre = (np.asarray(low) + np.asarray(high)) / 2.0
    layout = StandardizeLayout(len(centre), tuple(centre))
    return layout.site_vector(np.clip(np.asarray(X, dtype=float), low, high))


def standardize_sensitivity(low: np.ndarray, high: np.ndarray) -> float:
    """Δ₂ of :func:`standardize_vector` for add/remove one record."""
    half = (np.asarray(high, dtype=float) - np.asarray(low, dtype=float)) / 2.0
    return float(np.sqrt(1.0 + np.sum(half**2 + half**4)))


def _family(name: str) -> Family:
    from core_stats.families import get_family

    return get_family(name)
