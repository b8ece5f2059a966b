"""The one place where a site turns a coordinator's call into a released vector.

Over Flower a site's :class:`~securefed.site.Site` runs inside its own
ClientApp; every vector that leaves the site for a sum is produced by
:func:`release`, and nothing else in the transport computes one. The
differential-privacy layer adds its noise and charges the site's privacy
ledger here, before the vector is masked or encrypted.
"""

from __future__ import annotations

import numpy as np

from securefed.site import Site
from securefed.transport.calls import RemoteCallError, SiteCall, apply_call

__all__ = ["release"]


def release(site: Site, call: SiteCall, round_id: int, purpose: str) -> np.ndarray:
    """The flat float vector ``site`` contributes to round ``round_id`` (``purpose``).

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
    return vector
