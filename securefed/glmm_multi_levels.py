"""The coordinator's side of the level checks of a model with several random-effects terms.

:func:`check_two_levels` reads the counts round (every term needs two levels,
as lme4 insists). :func:`check_levels_apart` runs the sites' keyed level sketch
(:mod:`securefed.level_sketch`) over a network, where no one holds every
site's levels: a level of a grouping factor found in two sites is refused
(exit 2), naming the factor; under secure aggregation nobody learns which
sites, so the message cannot name them (in process, where the coordinator
holds the rows, :func:`securefed.glmm_run._check_nested` names them).
"""

from __future__ import annotations

import secrets

import numpy as np

from securefed.errors import InputError
from securefed.level_sketch import (
    MAX_STAGES,
    LevelSketchRequest,
    checked_terms,
    first_bins,
    flagged_paths,
)

__all__ = ["check_two_levels", "check_levels_apart"]


def check_two_levels(terms, counts: np.ndarray) -> None:
    """Refuse a term with a single level in all (``counts = [rows, levels per term]``)."""
    for term, levels in zip(terms, np.asarray(counts, dtype=float)[1:], strict=True):
        if levels < 1.5:
            raise InputError(f"'{term.name}' has a single group: a random effect needs at "
                             "least two (lme4 refuses it too)")


def check_levels_apart(coordinator, terms, groups: tuple[tuple[str, ...], ...],
                       counts: np.ndarray) -> int:
    """Run the level sketch over the coordinator's sites; the number of stages it took.

    Raises
    ------
    InputError
        A level of a checked factor lies in two or more sites.
    """
    checked = checked_terms(groups)
    levels = np.asarray(counts, dtype=float)[1:]
    request = LevelSketchRequest(
        checked, tuple(terms[t].name for t in checked),
        tuple(first_bins(int(round(levels[t]))) for t in checked), secrets.token_hex(16))
    for stage in range(MAX_STAGES + 1):
        total = coordinator.secure_sum(
            "level-sketch", lambda s, r=request: s.level_sketch_vector(r),
            key=("level-sketch", request))
        paths = flagged_paths(request, total)
        if not paths:
            return stage + 1
        if stage < MAX_STAGES:
            request = LevelSketchRequest(request.terms, request.names, request.bins,
                                         request.nonce, stage + 1, paths)
    name = request.names[paths[0][0]]
    raise InputError(f"a level of '{name}' appears in two or more sites (the sites' keyed "
                     "level check; which sites is not revealed): grouping factors must be "
                     "nested within sites")
