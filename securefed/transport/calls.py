"""Remote site calls: what the coordinator asks a site to compute, as data.

The in-process coordinator hands every live site a closure such as
``lambda s: s.glmm_terms_vector(layout, theta, True)``. Over a network the
closure cannot travel, so it is applied to a :class:`RecordingSite`, which
records the one whitelisted :class:`~securefed.site.Site` method it calls as a
:class:`SiteCall` (method name and keyword arguments). The call travels as
strict JSON (:mod:`securefed.transport.codec`, never pickle) and the site runs
it against its own :class:`~securefed.site.Site` (:func:`apply_call`).

Two kinds of method are callable remotely:

* setup calls (:data:`SETUP_METHODS`) change the site's state and release
  nothing, e.g. ``prepare_glmm``;
* release calls (:data:`RELEASE_METHODS`) return one flat float vector, a term
  of a sum over sites.
"""

from __future__ import annotations

import functools
import inspect
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from core_stats.families import FAMILY_CLASSES, Family, get_family
from core_stats.formula import DesignSchema
from core_stats.glmm import ParameterLayout
from securefed.site import BFISiteSpec, GLMMSiteDesign, Site
from securefed.transport.codec import (
    decode_value,
    encode_value,
    parse_json,
    register_dataclass,
)
from securefed.transport.survival_calls import SURVIVAL_RELEASE_METHODS, SURVIVAL_SETUP_METHODS

__all__ = ["SiteCall", "RecordingSite", "RemoteCallError", "SETUP_METHODS", "RELEASE_METHODS",
           "record_call", "apply_call", "parsed_call"]

SETUP_METHODS = frozenset({"prepare_glmm", "prepare_glmm_multi"}) | SURVIVAL_SETUP_METHODS
RELEASE_METHODS = frozenset({"count_vector", "glmm_counts_vector", "design_summary_vector",
                             "glmm_terms_vector", "glmm_reml_vector",
                             "validation_loglik_vector",
                             "validation_histograms", "standardize_vector", "bfi_terms_vector",
                             "dp_summary_vector", "dp_terms_vector", "dp_bfi_stats_vector",
                             # several random-effects terms (securefed.transport.calls_multi)
                             "multi_counts_vector", "multi_terms_vector",
                             "level_sketch_vector"}) | SURVIVAL_RELEASE_METHODS


class RemoteCallError(ValueError):
    """A compute closure or a received call is not a whitelisted site call."""


@dataclass(frozen=True, eq=False)
class SiteCall:
    """One whitelisted :class:`Site` method with its keyword arguments."""

    method: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.method not in SETUP_METHODS | RELEASE_METHODS:
            raise RemoteCallError(f"Site.{self.method} is not callable remotely")
        bound = _bind(self.method, (), dict(self.kwargs))
        object.__setattr__(self, "kwargs", dict(bound.arguments))

    @property
    def releases(self) -> bool:
        """True for a call that returns a vector (a term of a sum)."""
        return self.method in RELEASE_METHODS

    def to_json(self) -> str:
        """Canonical JSON text of the call (:class:`CodecError` if an argument cannot travel)."""
        return json.dumps({"method": self.method,
                           "kwargs": {k: encode_value(v) for k, v in self.kwargs.items()}},
                          allow_nan=False, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> SiteCall:
        """Parse and check a received call; :class:`RemoteCallError` or :class:`CodecError`."""
        data = parse_json(text)
        if not isinstance(data, dict) or set(data) != {"method", "kwargs"} or not isinstance(
                data["method"], str) or not isinstance(data["kwargs"], dict):
            raise RemoteCallError('a site call must be {"method": str, "kwargs": {...}}')
        return cls(data["method"], {k: decode_value(v) for k, v in data["kwargs"].items()})

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SiteCall) and self.to_json() == other.to_json()

    def __hash__(self) -> int:
        return hash(self.to_json())

    def __repr__(self) -> str:
        return f"SiteCall({self.method!r}, {sorted(self.kwargs)})"


@functools.cache
def _signature(method: str) -> inspect.Signature:
    return inspect.signature(getattr(Site, method))


@functools.lru_cache(maxsize=64)
def parsed_call(text: str) -> SiteCall:
    """:meth:`SiteCall.from_json`, remembered for texts seen again (setup calls are
    replayed with every message); treat the result as read-only."""
    return SiteCall.from_json(text)


def _bind(method: str, args: tuple, kwargs: dict[str, Any]) -> inspect.BoundArguments:
    signature = _signature(method)
    try:
        bound = signature.bind(None, *args, **kwargs)
    except TypeError as exc:
        raise RemoteCallError(f"bad arguments for Site.{method}: {exc}") from None
    bound.apply_defaults()
    bound.arguments.pop("self")
    return bound


class RecordingSite:
    """Stands in for a :class:`Site`: a whitelisted method call returns a :class:`SiteCall`.

    Only ``name`` and the whitelisted methods exist; any other attribute
    raises :class:`RemoteCallError`, because it would read site data at the
    coordinator.
    """

    def __init__(self, name: str) -> None:
        self.name = str(name)

    def __getattr__(self, attr: str) -> Callable[..., SiteCall]:
        if attr.startswith("__") or attr not in SETUP_METHODS | RELEASE_METHODS:
            raise RemoteCallError(
                f"the compute closure reads Site.{attr}, which is not callable remotely "
                f"(whitelist: {', '.join(sorted(SETUP_METHODS | RELEASE_METHODS))})")

        def record(*args: Any, **kwargs: Any) -> SiteCall:
            return SiteCall(attr, dict(_bind(attr, args, kwargs).arguments))

        return record

    def __repr__(self) -> str:
        return f"RecordingSite({self.name!r})"


def record_call(compute: Callable[[Any], Any], site_names: list[str] | tuple[str, ...]) -> SiteCall:
    """The one :class:`SiteCall` that ``compute`` makes for every site in ``site_names``.

    Raises :class:`RemoteCallError` if the closure does anything but return one
    whitelisted call, or asks different sites different things.
    """
    calls = []
    for name in site_names:
        call = compute(RecordingSite(name))
        if not isinstance(call, SiteCall):
            raise RemoteCallError("the compute closure must return exactly one site call, "
                                  f"not {type(call).__name__} computed at the coordinator")
        calls.append(call)
    if not calls:
        raise RemoteCallError("no sites to call")
    first = calls[0].to_json()  # fails here, at the coordinator, if an argument cannot travel
    if any(not _same_objects(c, calls[0]) and c.to_json() != first for c in calls[1:]):
        raise RemoteCallError("the compute closure asks different sites different things")
    return calls[0]


def _same_objects(call: SiteCall, other: SiteCall) -> bool:
    """True if both calls pass the very same argument objects (then they encode alike;
    a closure asking every site the same thing does, and is not encoded once per site)."""
    return call.method == other.method and call.kwargs.keys() == other.kwargs.keys() and all(
        call.kwargs[k] is other.kwargs[k] for k in call.kwargs)


def apply_call(site: Site, call: SiteCall) -> np.ndarray | None:
    """Run ``call`` on ``site``: a float vector for a release call, None for setup."""
    result = getattr(site, call.method)(**call.kwargs)
    if not call.releases:
        return None
    return np.asarray(result, dtype=float)


# ----------------------------------------------------------------- registry
def _design_fields(design: GLMMSiteDesign) -> dict[str, Any]:
    return {"schema": design.schema, "family": design.family, "nagq": design.nagq,
            "na_action": design.na_action, "weights": design.weights}


def _design_from_fields(fields: dict[str, Any]) -> GLMMSiteDesign:
    if not isinstance(fields["family"], Family):
        raise ValueError("the design's family is not a family")
    weights = fields.get("weights")
    return GLMMSiteDesign(schema=fields["schema"], family=fields["family"],
                          nagq=int(fields["nagq"]), na_action=str(fields["na_action"]),
                          weights=None if weights is None else str(weights))


def _schema_from_fields(fields: dict[str, Any]) -> DesignSchema:
    from core_stats.formula.levels import check_agreed_levels

    schema = DesignSchema.from_fields(fields)
    schema.parsed  # noqa: B018 - read the formula now: a formula that is not data is refused
    check_agreed_levels(schema.factors)  # nor levels reordered to move a reference level
    return schema


register_dataclass("core_stats.formula.DesignSchema", DesignSchema,
                   lambda schema: schema.to_fields(), _schema_from_fields)
register_dataclass("core_stats.glmm.ParameterLayout", ParameterLayout)
for _family_class in FAMILY_CLASSES:  # a family travels as its name and link, read by the site
    register_dataclass(f"core_stats.families.{_family_class.__name__}", _family_class,
                       lambda f: {"name": f.name, "link": f.link},
                       lambda fields: get_family(fields["name"], fields.get("link")))
register_dataclass("securefed.site.GLMMSiteDesign", GLMMSiteDesign, _design_fields,
                   _design_from_fields)
register_dataclass("securefed.site.BFISiteSpec", BFISiteSpec)

from securefed.transport import calls_multi  # noqa: E402,F401 - its dataclasses travel too
