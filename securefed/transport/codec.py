"""A strict JSON codec for the arguments of a remote site call.

A site must never unpickle what the coordinator sends, so the arguments of a
:class:`~securefed.transport.calls.SiteCall` travel as JSON built from a closed
set of types:

========================  ==================================================
Python value              JSON form
========================  ==================================================
None, bool, int, str      themselves
finite float              a JSON number (``repr`` round-trips exactly)
list                      a JSON list
tuple                     ``{"$tuple": [...]}``
dict with str keys        ``{"$dict": {...}}``
numpy array               ``{"$array": {"dtype": "<f8", "shape": [..], "data": base64}}``
                          (dtype float64, int64, int32 or bool; C order)
numpy.random.Generator    ``{"$pcg64": {"state": int, "inc": int}}`` (PCG64 only;
                          the site continues exactly the coordinator's stream)
registered dataclass      ``{"$dataclass": NAME, "fields": {...}}``
========================  ==================================================

Anything else (sets, dicts with non-string keys, NaN or infinite floats,
object arrays, unregistered classes) raises :class:`CodecError` on encoding,
and any other tag or shape raises it on decoding: nothing is ever imported or
constructed by name except the registered dataclasses.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import math
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["CodecError", "encode_value", "decode_value", "parse_json", "register_dataclass"]

_DTYPES = {"<f8": np.float64, "<i8": np.int64, "<i4": np.int32, "|b1": np.bool_}
_MAX_DEPTH = 32


class CodecError(ValueError):
    """A value cannot travel to a site, or what arrived is not a valid encoding."""


@dataclasses.dataclass(frozen=True)
class _Entry:
    cls: type
    to_fields: Callable[[Any], dict[str, Any]]
    from_fields: Callable[[dict[str, Any]], Any]


_REGISTRY: dict[str, _Entry] = {}


def register_dataclass(name: str, cls: type,
                       to_fields: Callable[[Any], dict[str, Any]] | None = None,
                       from_fields: Callable[[dict[str, Any]], Any] | None = None) -> None:
    """Allow instances of the frozen dataclass ``cls`` to travel under ``name``.

    By default its dataclass fields travel and ``cls(**fields)`` rebuilds it;
    ``to_fields``/``from_fields`` replace that for classes holding a value the
    codec does not carry (for example a design schema read on arrival).
    """
    params = getattr(cls, "__dataclass_params__", None)
    if params is None or not params.frozen:
        raise CodecError(f"{cls.__name__} is not a frozen dataclass")
    _REGISTRY[name] = _Entry(
        cls,
        to_fields or (lambda obj: {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}),
        from_fields or (lambda fields: cls(**fields)),
    )


def _name_of(obj: object) -> str | None:
    for name, entry in _REGISTRY.items():
        if type(obj) is entry.cls:
            return name
    return None


def encode_value(value: Any, depth: int = 0) -> Any:
    """The JSON-safe form of ``value``; :class:`CodecError` for anything not listed above."""
    if depth > _MAX_DEPTH:
        raise CodecError("value nested too deeply")
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, np.integer)) and not isinstance(value, np.bool_):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, (float, np.floating)):
        if not math.isfinite(value):
            raise CodecError(f"a non-finite float ({value}) cannot travel to a site")
        return float(value)
    if isinstance(value, list):
        return [encode_value(v, depth + 1) for v in value]
    if isinstance(value, tuple):
        return {"$tuple": [encode_value(v, depth + 1) for v in value]}
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise CodecError("only dicts with string keys can travel to a site")
        return {"$dict": {k: encode_value(v, depth + 1) for k, v in value.items()}}
    if isinstance(value, np.ndarray):
        return {"$array": _encode_array(value)}
    if isinstance(value, np.random.Generator):
        return {"$pcg64": _encode_generator(value)}
    name = _name_of(value)
    if name is not None:
        fields = _REGISTRY[name].to_fields(value)
        return {"$dataclass": name,
                "fields": {k: encode_value(v, depth + 1) for k, v in fields.items()}}
    raise CodecError(f"a {type(value).__name__} cannot travel to a site "
                     "(register the dataclass in securefed.transport.calls, or pass plain values)")


def _encode_array(array: np.ndarray) -> dict[str, Any]:
    dtype = array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype
    key = dtype.str if dtype.kind != "b" else "|b1"
    if key not in _DTYPES:
        raise CodecError(f"arrays of dtype {array.dtype} cannot travel to a site")
    if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
        raise CodecError("an array with non-finite values cannot travel to a site")
    data = np.ascontiguousarray(array, dtype=_DTYPES[key]).tobytes()
    return {"dtype": key, "shape": list(array.shape), "data": base64.b64encode(data).decode()}


def _encode_generator(rng: np.random.Generator) -> dict[str, int]:
    state = rng.bit_generator.state
    if state.get("bit_generator") != "PCG64" or state.get("has_uint32"):
        raise CodecError("only a fresh-word PCG64 generator can travel to a site")
    return {"state": int(state["state"]["state"]), "inc": int(state["state"]["inc"])}


def decode_value(data: Any, depth: int = 0) -> Any:
    """Rebuild a value from :func:`encode_value`'s output; :class:`CodecError` if malformed."""
    if depth > _MAX_DEPTH:
        raise CodecError("value nested too deeply")
    if data is None or isinstance(data, (bool, int, str)):
        return data
    if isinstance(data, float):
        if not math.isfinite(data):
            raise CodecError("non-finite float in a call")
        return data
    if isinstance(data, list):
        return [decode_value(v, depth + 1) for v in data]
    if not isinstance(data, dict) or len(data) not in (1, 2):
        raise CodecError(f"unexpected {type(data).__name__} in a call")
    if set(data) == {"$tuple"} and isinstance(data["$tuple"], list):
        return tuple(decode_value(v, depth + 1) for v in data["$tuple"])
    if set(data) == {"$dict"} and isinstance(data["$dict"], dict):
        return {str(k): decode_value(v, depth + 1) for k, v in data["$dict"].items()}
    if set(data) == {"$array"}:
        return _decode_array(data["$array"])
    if set(data) == {"$pcg64"}:
        return _decode_generator(data["$pcg64"])
    if set(data) == {"$dataclass", "fields"}:
        entry = _REGISTRY.get(data["$dataclass"]) if isinstance(data["$dataclass"], str) else None
        if entry is None or not isinstance(data["fields"], dict):
            raise CodecError(f"unknown dataclass {data['$dataclass']!r} in a call")
        fields = {str(k): decode_value(v, depth + 1) for k, v in data["fields"].items()}
        try:
            return entry.from_fields(fields)
        except (TypeError, ValueError, KeyError) as exc:
            raise CodecError(f"bad fields for {data['$dataclass']}: {exc}") from None
    raise CodecError(f"unknown tag {sorted(data)} in a call")


def _decode_array(spec: Any) -> np.ndarray:
    if not isinstance(spec, dict) or set(spec) != {"dtype", "shape", "data"}:
        raise CodecError("malformed array in a call")
    dtype = _DTYPES.get(spec["dtype"]) if isinstance(spec["dtype"], str) else None
    shape = spec["shape"]
    if dtype is None or not isinstance(shape, list) or not all(
            isinstance(n, int) and n >= 0 for n in shape):
        raise CodecError("malformed array in a call")
    try:
        raw = base64.b64decode(spec["data"], validate=True)
        array = np.frombuffer(raw, dtype=dtype).reshape(shape).copy()
    except (ValueError, TypeError) as exc:
        raise CodecError(f"malformed array in a call: {exc}") from None
    if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
        raise CodecError("non-finite values in an array in a call")
    return array


def _decode_generator(spec: Any) -> np.random.Generator:
    if not isinstance(spec, dict) or set(spec) != {"state", "inc"} or not all(
            isinstance(v, int) and 0 <= v < 2**128 for v in spec.values()):
        raise CodecError("malformed generator state in a call")
    bit_generator = np.random.PCG64()
    bit_generator.state = {"bit_generator": "PCG64",
                           "state": {"state": spec["state"], "inc": spec["inc"]},
                           "has_uint32": 0, "uinteger": 0}
    return np.random.Generator(bit_generator)


def parse_json(text: str | bytes) -> Any:
    """Parse JSON text, rejecting NaN/Infinity literals (:class:`CodecError`)."""

    def no_constants(name: str) -> None:
        raise CodecError(f"{name} is not valid in a call")

    try:
        return json.loads(text, parse_constant=no_constants)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CodecError(f"a call is not valid JSON: {exc}") from None

