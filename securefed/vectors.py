"""Packing the quantities a site releases into one flat float vector."""

from __future__ import annotations

import numpy as np

__all__ = ["upper_triangle", "from_upper_triangle", "pack_terms", "unpack_terms"]


def upper_triangle(matrix: np.ndarray) -> np.ndarray:
    """Row-major upper triangle (diagonal included) of a square matrix."""
    return matrix[np.triu_indices(matrix.shape[0])]


def from_upper_triangle(values: np.ndarray, size: int) -> np.ndarray:
    """The symmetric matrix whose upper triangle is ``values``."""
    out = np.zeros((size, size))
    out[np.triu_indices(size)] = values
    return out + np.triu(out, 1).T


def pack_terms(value: float, gradient: np.ndarray | None, hessian: np.ndarray | None) -> np.ndarray:
    """``[value]`` or ``[value, gradient, upper(Hessian)]``."""
    if gradient is None:
        return np.array([value], dtype=float)
    return np.concatenate([[value], gradient, upper_triangle(hessian)])


def unpack_terms(vector: np.ndarray,
                 size: int) -> tuple[float, np.ndarray | None, np.ndarray | None]:
    """Inverse of :func:`pack_terms` for a parameter vector of length ``size``."""
    if vector.shape[0] == 1:
        return float(vector[0]), None, None
    expected = 1 + size + size * (size + 1) // 2
    if vector.shape[0] != expected:
        raise ValueError(f"a terms vector for {size} parameters has {expected} values, "
                         f"not {vector.shape[0]}")
    return float(vector[0]), vector[1:1 + size], from_upper_triangle(vector[1 + size:], size)
