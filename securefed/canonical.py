"""Canonical JSON and canonical vector bytes: the exact bytes that are hashed and signed.

Canonical JSON
    ``json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
    allow_nan=False)`` encoded as UTF-8. Objects are ``dict`` with ``str`` keys,
    arrays are ``list`` or ``tuple``, scalars are ``str``, ``int``, ``bool`` or
    ``None``. **Floats are refused**: a float's decimal text is not unique across
    encoders, so every float that is hashed or signed is first turned into a string
    with :func:`encode_float` (Python's shortest round-trip ``repr``, e.g. ``"0.1"``,
    ``"-0.0"``, ``"inf"``, ``"nan"``), which :func:`decode_float` reads back bit-exactly
    (except the payload bits of a NaN).

Canonical vector bytes
    A released vector is committed to as its IEEE-754 float64 values, little-endian,
    flattened in C order (:func:`vector_bytes`). The shape is recorded next to the
    commitment, not inside it. ``-0.0`` and ``0.0`` are different bytes, on purpose:
    the commitment is to exactly what was released.
"""

from __future__ import annotations

import enum
import hashlib
import json
from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "ZERO_HASH",
    "canonical_bytes",
    "parse_canonical",
    "encode_float",
    "decode_float",
    "vector_bytes",
    "sha256_hex",
    "to_canonical",
]

#: The ``prev_hash`` of the first entry of every log (genesis): 64 hex zeros.
ZERO_HASH = "0" * 64


def _check(value: Any, where: str) -> None:
    """Refuse anything canonical JSON cannot encode exactly (floats above all)."""
    if value is None or isinstance(value, bool | str):
        return
    if isinstance(value, int):
        return
    if isinstance(value, float):
        raise TypeError(
            f"float at {where}: encode it with canonical.encode_float() so its bits survive"
        )
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"non-string key {key!r} at {where}")
            _check(item, f"{where}.{key}")
        return
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _check(item, f"{where}[{index}]")
        return
    raise TypeError(f"{type(value).__name__} at {where} has no canonical JSON form")


def canonical_bytes(obj: Any) -> bytes:
    """Return the canonical JSON encoding of ``obj`` as UTF-8 bytes.

    Parameters
    ----------
    obj : dict, list, str, int, bool or None (nested)
        The value to encode. Floats anywhere inside raise ``TypeError``.

    Returns
    -------
    bytes
        ``json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)``
        in UTF-8: the same value always gives the same bytes.
    """
    _check(obj, "$")
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False)
    return text.encode("utf-8")


def parse_canonical(data: bytes) -> Any:
    """Parse canonical JSON and check that re-encoding gives back exactly ``data``.

    Raises
    ------
    ValueError
        If ``data`` is not JSON, contains floats, or is not in canonical form
        (other key order, whitespace, escapes): a hand-edited line fails here.
    """
    try:
        value = json.loads(data.decode("utf-8"), parse_float=_refuse_float,
                           parse_constant=_refuse_float)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"not JSON: {err}") from None
    try:
        again = canonical_bytes(value)
    except TypeError as err:
        raise ValueError(str(err)) from None
    if again != data:
        raise ValueError("JSON is not in canonical form (key order, spacing or escapes differ)")
    return value


def _refuse_float(text: str) -> Any:
    raise ValueError(f"float literal {text!r} where only strings may carry floats")


def encode_float(value: float) -> str:
    """Encode a float as its shortest round-trip decimal string (``repr``).

    ``decode_float(encode_float(x))`` has the same bits as ``x`` for every finite
    value, both zeros and both infinities.
    """
    return repr(float(value))


def decode_float(text: str) -> float:
    """Read back a float written by :func:`encode_float`."""
    if not isinstance(text, str):
        raise TypeError(f"expected a float encoded as a string, got {type(text).__name__}")
    return float(text)


def vector_bytes(vector: npt.ArrayLike) -> bytes:
    """Return the canonical bytes of a vector: float64, little-endian, C order.

    Parameters
    ----------
    vector : array_like
        Any real array; it is converted to float64 and flattened.

    Returns
    -------
    bytes
        ``8 * vector.size`` bytes.
    """
    array = np.asarray(vector, dtype=np.float64)
    return np.ascontiguousarray(array.ravel(order="C"), dtype="<f8").tobytes()


def sha256_hex(data: bytes) -> str:
    """SHA-256 of ``data`` as 64 lowercase hex characters."""
    return hashlib.sha256(data).hexdigest()


def to_canonical(value: Any) -> Any:
    """Convert a value into one :func:`canonical_bytes` accepts, losslessly.

    Floats (including numpy floats) become :func:`encode_float` strings, numpy
    integers and arrays become ``int`` and lists, tuples become lists and enum
    members their ``value``. Anything else without an exact JSON form raises
    ``TypeError``.
    """
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, enum.Enum):
        return to_canonical(value.value)
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return encode_float(float(value))
    if isinstance(value, np.ndarray):
        return to_canonical(value.tolist())
    if isinstance(value, Mapping):
        converted = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"non-string key {key!r}")
            converted[key] = to_canonical(item)
        return converted
    if isinstance(value, list | tuple):
        return [to_canonical(item) for item in value]
    raise TypeError(f"{type(value).__name__} has no canonical JSON form")
