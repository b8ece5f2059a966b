"""Site calls of a model with several random-effects terms: what travels, and the site's key.

The calls (whitelisted in :mod:`securefed.transport.calls`):

* ``prepare_glmm_multi(design)`` (setup): the site builds its rows, terms and
  top-level blocks;
* ``multi_counts_vector()``: ``[rows, levels of each term]``;
* ``multi_terms_vector(layout, theta, derivatives)``: the Laplace terms
  ``[l, gradient, upper(Hessian)]`` at ``theta`` (a
  :class:`~core_stats.glmm_multi.MultiLayout`), admitted only inside the site
  policy's bounds on every term's log-SDs and correlations
  (:mod:`securefed.policy.multi`);
* ``level_sketch_vector(request)``: one stage of the keyed level sketch
  (:mod:`securefed.level_sketch`), computed with the level key from the
  site's own node config (:func:`attach_level_key`), never from the call.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from core_stats.glmm_multi import MultiLayout
from securefed.level_sketch import LEVEL_KEY, MAX_STAGES, LevelSketchRequest, load_level_key
from securefed.transport.codec import register_dataclass

__all__ = ["attach_level_key"]


def attach_level_key(site: Any, node_config: Mapping[str, Any]) -> None:
    """Give ``site`` the level key its node config names (if any), read once per process."""
    if LEVEL_KEY not in node_config:
        return
    from securefed.transport.file_cache import load_cached

    site.use_level_key(load_cached(str(node_config[LEVEL_KEY]), load_level_key))


def _request_from_fields(fields: dict[str, Any]) -> LevelSketchRequest:
    paths = tuple((int(k), tuple(int(b) for b in path)) for k, path in fields["paths"])
    request = LevelSketchRequest(tuple(int(t) for t in fields["terms"]),
                                 tuple(str(n) for n in fields["names"]),
                                 tuple(int(b) for b in fields["bins"]), str(fields["nonce"]),
                                 int(fields["stage"]), paths)
    if not (len(request.terms) == len(request.names) == len(request.bins)) or any(
            b < 1 or b > 1 << 20 for b in request.bins) or request.length > 1 << 22 or not (
            0 <= request.stage <= MAX_STAGES) or (request.stage == 0) != (not paths) or any(
            not 0 <= k < len(request.terms) or len(path) != request.stage
            for k, path in paths):
        raise ValueError("a level sketch request out of shape")
    return request


register_dataclass("core_stats.glmm_multi.MultiLayout", MultiLayout)
register_dataclass("securefed.level_sketch.LevelSketchRequest", LevelSketchRequest,
                   None, _request_from_fields)
