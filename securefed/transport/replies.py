"""Reading the sites' replies at the coordinator: a malformed reply is a dropout.

A reply is whatever a site (or anyone who can answer for its node) sent back:
a field may be missing, of another type, or of another length than the
round's. The coordinator's stage loops read replies only through these
helpers, which never raise on a bad reply: they set the site aside with the
reason (:class:`Screened`), and the protocol's dropout recovery takes over,
exactly as if the site had not answered. Reasons name the field and what was
wrong with it, never a value from the reply.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["Screened", "byte_field", "json_field", "screen_lengths", "screen_vectors"]


@dataclass
class Screened:
    """The replies that passed, and site → reason for those set aside."""

    replies: dict[str, Any] = field(default_factory=dict)
    rejected: dict[str, str] = field(default_factory=dict)


def byte_field(reply: Any, key: str) -> bytes | None:
    """``reply[key]`` if the reply is a record holding bytes there, else None."""
    try:
        value = reply[key]
    except (KeyError, TypeError, IndexError):
        return None
    return bytes(value) if isinstance(value, bytes | bytearray) else None


def json_field(reply: Any, key: str) -> dict | None:
    """``reply[key]`` parsed as a JSON object, or None if absent or malformed."""
    try:
        value = json.loads(str(reply[key]))
    except (KeyError, TypeError, IndexError, ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def _int_field(reply: Any, key: str) -> int | None:
    try:
        value = reply[key]
    except (KeyError, TypeError, IndexError):
        return None
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
        return None
    return int(value)


def screen_lengths(replies: Mapping[str, Any], key: str = "length") -> tuple[int | None,
                                                                              Screened]:
    """The round's vector length, held by a strict majority of the replies.

    Honest sites compute one length for one call; a reply without a
    non-negative integer ``key``, or with a minority length, is set aside.
    Returns ``(None, ...)`` when no length has a strict majority (nothing
    can then be summed safely).
    """
    screened = Screened()
    lengths: dict[str, int] = {}
    for name, reply in sorted(replies.items()):
        length = _int_field(reply, key)
        if length is None:
            screened.rejected[name] = f"reply has no integer {key!r}"
        else:
            lengths[name] = length
    counts = Counter(lengths.values()).most_common()
    if not counts or (len(counts) > 1 and 2 * counts[0][1] <= len(lengths)):
        screened.rejected.update({n: f"no majority {key!r} among the replies" for n in lengths})
        return None, screened
    length = counts[0][0]
    for name, value in lengths.items():
        if value == length:
            screened.replies[name] = replies[name]
        else:
            screened.rejected[name] = f"{key!r} differs from the other sites'"
    return length, screened


def screen_vectors(replies: Mapping[str, Any], key: str = "vector") -> tuple[dict[str, np.ndarray],
                                                                              dict[str, str]]:
    """Finite float64 vectors of the majority length from ``reply[key]`` (little-endian bytes)."""
    rejected: dict[str, str] = {}
    vectors: dict[str, np.ndarray] = {}
    for name, reply in sorted(replies.items()):
        raw = byte_field(reply, key)
        if raw is None or len(raw) % 8:
            rejected[name] = f"reply has no float64 {key!r}"
            continue
        vector = np.frombuffer(raw, dtype="<f8").astype(np.float64)
        if not np.all(np.isfinite(vector)):
            rejected[name] = f"{key!r} holds a non-finite value"
            continue
        vectors[name] = vector
    _, screened = screen_lengths({n: {"length": len(v)} for n, v in vectors.items()})
    rejected.update({n: why.replace("'length'", f"the length of {key!r}")
                     for n, why in screened.rejected.items()})
    return {n: vectors[n] for n in screened.replies}, rejected
