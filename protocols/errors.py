"""Exceptions raised by the protection layers.

Every layer raises a subclass of ``ProtocolError``; messages say what went
wrong for an operator, and for integrity failures nothing an attacker can use.
Layer modules may define further subclasses next to their code.
"""

from __future__ import annotations

__all__ = [
    "ProtocolError",
    "InvalidMessage",
    "StageError",
    "ReplayError",
    "AbortError",
    "EncodingError",
    "PrivacyBudgetExceeded",
    "DifferencingRefused",
]


class ProtocolError(Exception):
    """Base class of every protection-layer failure."""


class InvalidMessage(ProtocolError):
    """A message failed a check: signature, size, dtype, sender or recipient."""


class StageError(ProtocolError):
    """A message or call arrived in a stage where it is not allowed."""


class ReplayError(InvalidMessage):
    """A message from another session or round, or one seen before."""


class AbortError(ProtocolError):
    """The protocol cannot finish safely (too few sites, inconsistent views)."""


class EncodingError(ProtocolError):
    """A value cannot be encoded: NaN, infinite, or outside its declared bound."""


class PrivacyBudgetExceeded(ProtocolError):
    """A release would exceed the privacy budget; nothing was released."""


class DifferencingRefused(AbortError):
    """The same query over a different set of sites: the difference of the two
    sums would reveal the sites that differ, so it is never answered."""
