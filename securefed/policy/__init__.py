"""A site's own policy and its enforcement (see ``docs/site_policy.md``)."""

from __future__ import annotations

from securefed.policy.guard import SiteGuard
from securefed.policy.model import DEFAULT_TEXT, PolicyError, SitePolicy, load_policy
from securefed.policy.refusal import PolicyRefused, Refusal

__all__ = ["SiteGuard", "SitePolicy", "PolicyError", "PolicyRefused", "Refusal",
           "DEFAULT_TEXT", "load_policy"]
