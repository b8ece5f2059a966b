"""Packing of symmetric matrices and vectors into one flat site vector."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["triu_pack", "triu_unpack", "triu_length", "VectorSpec"]


def triu_length(d: int) -> int:
    """Number of entries of the upper triangle (with diagonal) of a d x d matrix."""
    return d * (d + 1) // 2


def triu_pack(matrix: np.ndarray) -> np.ndarray:
    """Row-major upper triangle (diagonal included) of a square matrix."""
    matrix = np.asarray(matrix, dtype=float)
    return matrix[np.triu_indices(matrix.shape[0])]


def triu_unpack(values: np.ndarray, d: int) -> np.ndarray:
    """Symmetric d x d matrix from its packed upper triangle."""
    values = np.asarray(values, dtype=float)
    if values.size != triu_length(d):
        raise ValueError(f"expected {triu_length(d)} values for a {d} x {d} matrix")
    out = np.zeros((d, d))
    out[np.triu_indices(d)] = values
    return out + np.triu(out, 1).T


@dataclass(frozen=True)
class VectorSpec:
    """Named consecutive slots of a flat vector.

    ``parts`` lists ``(name, size)``; :meth:`split` cuts a vector of
    ``length`` entries into a dict of those slots, and :meth:`join` builds one.
    """

    parts: tuple[tuple[str, int], ...]

    @classmethod
    def of(cls, parts: Sequence[tuple[str, int]]) -> VectorSpec:
        return cls(tuple((str(n), int(s)) for n, s in parts))

    @property
    def length(self) -> int:
        return sum(size for _, size in self.parts)

    def join(self, values: dict[str, np.ndarray | float]) -> np.ndarray:
        chunks = []
        for name, size in self.parts:
            chunk = np.atleast_1d(np.asarray(values[name], dtype=float)).ravel()
            if chunk.size != size:
                raise ValueError(f"slot {name!r} needs {size} values, got {chunk.size}")
            chunks.append(chunk)
        return np.concatenate(chunks)

    def split(self, vector: np.ndarray) -> dict[str, np.ndarray]:
        vector = np.asarray(vector, dtype=float).ravel()
        if vector.size != self.length:
            raise ValueError(f"expected a vector of length {self.length}, got {vector.size}")
        if not np.all(np.isfinite(vector)):
            raise ValueError("the summed vector has non-finite entries")
        out, start = {}, 0
        for name, size in self.parts:
            out[name] = vector[start:start + size]
            start += size
        return out
