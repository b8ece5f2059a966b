"""Differential privacy for several random-effects terms nested in one top-level factor.

The privacy unit is one record, added or removed (as for one term,
:mod:`securefed.dp_statistics`). With terms nested by the formula
(``(1 | hospital/ward/patient)``: every term's grouping columns contain the
top-level factor's) a site's rows fall into blocks that are exactly its
top-level units: two rows are coupled only through a level, and every level
of a nested term lies inside one top-level level. The marginal log-likelihood
and its derivatives are sums over those blocks, and one record belongs to one
block. So, with each block's ``[g_b / C_g, upper(H_b) / C_H]`` clipped to L2
norm ≤ 1 (:func:`securefed.dp_statistics.clipped_sum`):

* replacing a record changes one block's clipped vector: ``Δ ≤ 2``;
* adding or removing one creates, removes or changes one block: ``Δ ≤ 2``
  (1 when it creates or removes the block);
* the design summary's group count (top-level blocks) moves by at most one,

the bounds of one term, so the same machinery (:mod:`securefed.glmm_dp`:
noisy start values, budgeted damped Newton rounds, parametric-bootstrap SEs,
the refusal when the predicted SE is too large) applies unchanged.

Crossed factors within a site break it: a record of mom ``m`` in community
``c`` can join two blocks into one (and its removal split one into up to
``T`` pieces), so one record moves up to ``T + 1`` clipped blocks. Those
models are refused under DP (one line, exit 2). Over a network the sites'
level check (:mod:`securefed.level_sketch`) is an exact release, so DP runs
with several terms only in process (where the coordinator holds the rows and
checks them itself).
"""

from __future__ import annotations

import numpy as np

from core_stats.families import Family
from core_stats.glmm_multi import MultiLayout, MultiRows
from core_stats.glmm_multi_laplace import multi_site_terms
from securefed.dp_statistics import clipped_sum
from securefed.errors import InputError
from securefed.level_sketch import checked_terms

__all__ = ["clipped_multi_terms_vector", "check_dp_multi"]


def clipped_multi_terms_vector(rows: MultiRows, family: Family, layout: MultiLayout,
                               theta: np.ndarray, units: tuple[int, int],
                               start_modes: np.ndarray | None = None, hessian: bool = True):
    """``[gradient, upper(Hessian)]`` summed over the site's blocks, each block clipped;
    and the conditional modes (which stay at the site)."""
    terms = multi_site_terms(rows, family, layout, theta, derivatives=True,
                             start_modes=start_modes, per_block_terms=True)
    return clipped_sum(terms.block_gradients, terms.block_hessians, units, hessian), terms.modes


def check_dp_multi(groups: tuple[tuple[str, ...], ...], coordinator, offsets: bool,
                   weighted: bool, family: Family, opts) -> None:
    """Refuse what the DP bound above does not cover, in one line each."""
    if len(checked_terms(groups)) != 1:
        raise InputError("several random-effects terms under differential privacy need "
                         "factors nested in one top-level factor (e.g. (1 | a/b)): with "
                         "crossed factors one record can join two blocks, and the "
                         "per-block sensitivity bound no longer holds")
    if coordinator.transport is not None:
        raise InputError("several random-effects terms under differential privacy run in "
                         "process only: over a network the sites' level check is an exact "
                         "release")
    if offsets or weighted or not family.canonical:
        raise InputError("offset(), weights, cbind() and non-canonical links under "
                         "differential privacy are not supported yet")
    if opts.lambda_grid or opts.lam:
        raise InputError("--lambda and --lambda-grid are not available with differential "
                         "privacy (each validation sum would spend budget)")
