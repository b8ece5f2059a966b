"""Files a site reads with every message, parsed again only when they change.

A SuperNode starts a fresh ClientApp process per message, so there this
cache is always empty; the in-process loopback serves many messages in one
process, and re-parsing the registry, the identity key and the policy for
each was most of its cost. The key is the file's path, size, mode and
modification time, so an edited (or re-permissioned) file is read, and
checked, again.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["load_cached"]

T = TypeVar("T")
_CACHE: dict[tuple, Any] = {}
_LIMIT = 1024


def load_cached(path: str | os.PathLike[str], loader: Callable[..., T], *args: Any) -> T:
    """``loader(path, *args)``, remembered while the file is unchanged."""
    try:
        info = os.stat(path)
    except OSError:
        return loader(path, *args)  # the loader reports the missing file its own way
    key = (loader, os.fspath(path), args, info.st_size, info.st_mode, info.st_mtime_ns,
           info.st_ino)
    if key not in _CACHE:
        if len(_CACHE) >= _LIMIT:
            _CACHE.clear()
        _CACHE[key] = loader(path, *args)
    return _CACHE[key]
