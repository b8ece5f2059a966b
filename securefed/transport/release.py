"""The one place where a site turns a coordinator's call into a released vector.

Over Flower a site's :class:`~securefed.site.Site` runs inside its own
ClientApp; every vector that leaves the site for a sum is produced by
:func:`release`, and nothing else in the transport computes one. The
differential-privacy layer checks the round's DP query and the site's own
budget here (:func:`release`, nothing charged), and charges the site's ledger
and adds its noise share as the vector leaves (:func:`protect`, just before
it is masked, or sent under layer ``none``); see
:mod:`securefed.transport.site_privacy`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from securefed.site import Site, bfi_terms_from_noisy_stats, bfi_terms_length
from securefed.transport.calls import RemoteCallError, SiteCall, apply_call
from securefed.transport.site_privacy import DpRefused, SiteDp

__all__ = ["release", "protect", "local_release", "protect_local"]


def release(site: Site, call: SiteCall, round_id: int, purpose: str,
            dp: SiteDp | None = None) -> np.ndarray:
    """The flat float vector ``site`` contributes to round ``round_id`` (``purpose``).

    With ``dp``, the round's DP terms and the site's budget are checked
    (:meth:`SiteDp.admit`, which keeps the site's receipt in ``dp.receipt``);
    the vector returned is still exact and leaves the site only through
    :func:`protect`.

    Raises
    ------
    RemoteCallError
        ``call`` is not a release call, or its result is not one finite flat vector.
    """
    if not call.releases:
        raise RemoteCallError(f"Site.{call.method} releases nothing; it cannot feed a sum")
    vector = apply_call(site, call)
    if vector is None or vector.ndim != 1 or not np.all(np.isfinite(vector)):
        raise RemoteCallError(f"site {site.name}: {purpose} (round {round_id}) did not give "
                              "one finite flat vector")
    if dp is not None:
        dp.admit(call, len(vector))
    return vector


def local_release(call: SiteCall) -> tuple[int, Callable[[np.ndarray, float], np.ndarray]]:
    """For a vector the site noises for itself and keeps (``DpQuery.local_length``): the
    length of what it releases instead and the function (post-processing) that makes it."""
    if call.method == "dp_bfi_stats_vector":
        spec = call.kwargs["spec"]
        return bfi_terms_length(spec), lambda noisy, sd: bfi_terms_from_noisy_stats(
            spec, noisy, sd)
    raise DpRefused(f"Site.{call.method} has no local post-processing; it is not noised "
                    "at the site for itself")


def protect_local(call: SiteCall, vector: np.ndarray, dp: SiteDp) -> np.ndarray:
    """What leaves the site for a local DP query: the site's ledger charged, its noise (all
    of it, m = 1) added to ``vector``, which it keeps; the function of it the call names."""
    _, post = local_release(call)
    noisy = dp.release(vector)
    return post(noisy, dp.noise_sd(len(vector)))


def protect(vector: np.ndarray, dp: SiteDp | None) -> np.ndarray:
    """``vector`` as it leaves the site: the site's ledger charged and its noise share added
    under a DP query (:meth:`SiteDp.release`), unchanged otherwise."""
    return vector if dp is None else dp.release(vector)
