"""Composition of protection layers around one secure sum of flat vectors.

A :class:`ProtectedSum` takes every live site's vector for one round and
returns their sum, with who contributed and what it cost. The plaintext
layer is the reference every other layer is tested against.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from protocols.errors import InvalidMessage

__all__ = ["AggregateResult", "ProtectedSum", "PlaintextSum"]


@dataclass(frozen=True)
class AggregateResult:
    """The sum of the contributors' vectors and the round's bookkeeping."""

    total: np.ndarray
    contributors: tuple[str, ...]
    dropped: tuple[str, ...] = ()
    bytes_sent_per_site: Mapping[str, int] = field(default_factory=dict)
    details: Mapping[str, object] = field(default_factory=dict)


class ProtectedSum(Protocol):
    """What the coordinator needs from a protection stack."""

    name: str

    def aggregate(self, vectors: Mapping[str, np.ndarray], *, round_id: int,
                  purpose: str) -> AggregateResult: ...


def check_vectors(vectors: Mapping[str, np.ndarray]) -> int:
    """All vectors finite float64 of one length; returns that length."""
    lengths = {np.asarray(v).shape for v in vectors.values()}
    if len(lengths) != 1:
        raise InvalidMessage(f"sites sent vectors of different shapes: {sorted(lengths)}")
    for name, vec in vectors.items():
        if not np.all(np.isfinite(vec)):
            raise InvalidMessage(f"site {name} produced a non-finite value")
    (shape,) = lengths
    if len(shape) != 1:
        raise InvalidMessage("a released quantity must be a flat vector")
    return shape[0]


class PlaintextSum:
    """No protection: the coordinator sees each vector. The reference layer."""

    name = "none"

    def aggregate(self, vectors: Mapping[str, np.ndarray], *, round_id: int,
                  purpose: str) -> AggregateResult:
        length = check_vectors(vectors)
        names = tuple(sorted(vectors))
        total = np.zeros(length)
        for name in names:
            total += np.asarray(vectors[name], dtype=float)
        return AggregateResult(total, names, (), {n: 8 * length for n in names})
