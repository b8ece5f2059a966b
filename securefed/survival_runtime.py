"""In-process survival runs through the one site runtime (:mod:`securefed.transport.loopback`).

``securefed cox`` and ``securefed bfi --family survival`` simulate every site in
one process. Under the stacks the runtime carries (``none``, ``secagg``, ``ckks``:
:func:`securefed.glmm_run.runtime_supports`; survival models have no DP) and without
an audit trail, their rounds go through the site runtime's handler
(:func:`securefed.transport.site_runtime.handle`, the ClientApp's): each site checks
its own rows, applies its policy and computes its own vector, exactly as over
Flower (the site calls: :mod:`securefed.transport.survival_calls`). ``secagg,ckks``
and audited runs keep the direct path.

Before the rounds the sites' checks run once in this process, so an input
error reads as it does on the direct path (the runtime's refusals carry a
code only, never the site's words). A site that cannot compute a later
round (a local fit that fails) is asked again, on the direct path, for its words
(:func:`site_words`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

from protocols.errors import ProtocolError
from securefed.coordinator import Coordinator, RemoteSite
from securefed.errors import InputError
from securefed.site import Site

__all__ = ["audited", "runtime_coordinator", "site_words", "use_runtime"]


Result = TypeVar("Result")


def audited(coordinator: Coordinator, rounds: Callable[[], Result], model: str) -> Result:
    """Run ``rounds``; log a protocol abort (REFUSAL, countersigned checkpoint) before it
    propagates, or the result (its ``to_dict``) when they finish."""
    try:
        result = rounds()
    except ProtocolError as err:
        coordinator.abort_audit(err)
        raise
    coordinator.finish_audit(result.to_dict(), model)
    return result


def use_runtime(protection: Any, audit_log: Any, site_runtime: bool) -> bool:
    """True if this in-process survival run goes through the site runtime."""
    from securefed.glmm_run import runtime_supports

    return site_runtime and audit_log is None and runtime_supports(protection)


@contextmanager
def runtime_coordinator(sites: Sequence[Site], protection: Any, prepare: Callable[[Any], Any],
                        policy: Any = None) -> Iterator[Coordinator]:
    """A coordinator of remote sites served by the loopback runtime, each prepared.

    ``prepare`` is the setup call (``lambda s: s.prepare_cox(spec)``); it runs first
    on the in-process sites (an input error: :class:`InputError`, the site's words).
    ``policy``: every site's policy (default: written from the flags, as for GLMs).
    """
    from securefed.transport.loopback import loopback_rounds

    for site in sites:
        try:
            prepare(site)
        except ValueError as err:
            raise InputError(str(err)) from None
    with loopback_rounds({s.name: s for s in sites}, protection, policy) as rounds:
        coordinator = Coordinator([RemoteSite(s.name) for s in sites], protection,
                                  transport=rounds)
        coordinator.setup(prepare)
        yield coordinator


@contextmanager
def site_words(direct: Callable[[], Any]) -> Iterator[None]:
    """Turn the runtime's ``cannot-compute`` refusal into the failing site's own message.

    In process the CLI holds every site's rows, so the run is repeated on the
    direct path (``direct``), where the site that fails raises its own
    one-line error naming it; the refusal stands if that run passes.
    """
    from securefed.transport.flower_server import RowsCannotServe

    try:
        yield
    except RowsCannotServe:
        direct()
        raise
