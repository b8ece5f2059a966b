"""Reading and checking tabular data before any statistics run.

Every problem a user can fix becomes an :class:`~securefed.errors.InputError`
whose message names the file, the column and the first bad row (rows are
numbered from 1, the header not counted).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from securefed.errors import InputError

__all__ = ["read_table", "check_numeric_columns", "builtin_path"]


def builtin_path(name: str) -> Path:
    """Path of a bundled data set (``Nurses``, ``trauma``)."""
    return Path(__file__).parent / "data" / f"{name}.csv"


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a CSV file; missing, unreadable or empty files raise InputError."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"cannot read {path}: no such file")
    if path.is_dir():
        raise InputError(f"{path} is a folder; give the path of a CSV file")
    try:
        frame = pd.read_csv(path)
    except pd.errors.EmptyDataError:
        raise InputError(f"{path} is empty: it needs a header line and data rows") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        first = str(err).splitlines()[0]
        raise InputError(f"cannot parse {path} as CSV: {first}") from None
    if frame.shape[0] == 0:
        raise InputError(f"{path} has a header but no data rows")
    header = pd.read_csv(path, header=None, nrows=1).iloc[0].astype(str).tolist()
    duplicated = sorted({name for name in header if header.count(name) > 1})
    if duplicated:
        raise InputError(f"{path} has more than one column named '{duplicated[0]}': "
                         "rename them so each column name is unique")
    frame.attrs["source"] = str(path)
    return frame


def check_numeric_columns(frame: pd.DataFrame, columns: Iterable[str]) -> None:
    """Every named column exists, is numeric, and has no missing or infinite value."""
    source = frame.attrs.get("source", "the data")
    for col in columns:
        if col not in frame.columns:
            shown = ", ".join(map(str, frame.columns[:12]))
            raise InputError(f"column '{col}' is not in {source} (its columns: {shown})")
        values = frame[col]
        if not pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
            numeric = pd.to_numeric(values, errors="coerce")
            bad = np.flatnonzero(numeric.isna() & values.notna())
            if bad.size:
                raise InputError(f"column '{col}' of {source} has text where a number is "
                                 f"expected (first in row {bad[0] + 1})")
            values = numeric
        arr = values.to_numpy(dtype=float)
        bad = np.flatnonzero(~np.isfinite(arr))
        if bad.size:
            kind = "missing" if np.isnan(arr[bad[0]]) else "infinite"
            raise InputError(f"column '{col}' of {source} has {bad.size} {kind} or non-finite "
                             f"value(s); the first is in row {bad[0] + 1}")
