"""Checks that run before any heavy import and before any work.

A missing file, a column the file does not have, a formula the parser cannot
read (:mod:`core_stats.formula` is pure Python), an unknown family or layer, an
output folder that does not exist, a ``--predict`` file that is not there: each
is reported in one line within a fraction of a second, before pandas, scipy or
the cryptography are imported and long before a fit starts. Only the standard
library and the formula parser are used here; the full checks (values, types,
nesting) still run later, on the data.

Nothing here echoes a data value: messages name files, flags and columns only.
"""

from __future__ import annotations

import csv
import importlib.util
import os
from collections.abc import Iterable
from pathlib import Path

from securefed.errors import InputError

__all__ = ["check_csv", "check_unique_columns", "check_formula", "check_output", "check_family",
           "check_layers", "require_package", "formula_columns"]

# names and aliases of core_stats.families (tested equal; not imported: start-up time)
FAMILIES = ("binomial", "poisson", "gaussian", "gamma", "negative_binomial", "nbinom2")
LAYERS = ("none", "secagg", "ckks", "dp")
EXTRAS = {"tenseal": "ckks", "flwr": "flower"}
_SHOWN_COLUMNS = 12


def _header(path: Path) -> list[str]:
    """The header of a comma-separated file (and that it has a data row)."""
    if not path.exists():
        raise InputError(f"cannot read {path}: no such file")
    if path.is_dir():
        raise InputError(f"{path} is a folder; give the path of a CSV file")
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            rows = csv.reader(handle)
            header = next(rows, None)
            first = next(rows, None)
    except PermissionError:
        raise InputError(f"cannot read {path}: permission denied") from None
    except (UnicodeDecodeError, csv.Error):
        return []  # not plain UTF-8 CSV: the full reader says what is wrong
    if not header:
        raise InputError(f"{path} is empty: it needs a header line and data rows")
    if first is None:
        raise InputError(f"{path} has a header but no data rows")
    check_unique_columns(path, header)
    return header


def check_unique_columns(path: Path, header: list[str]) -> None:
    """Refuse a header that names a column twice."""
    duplicated = sorted({name for name in header if header.count(name) > 1})
    if duplicated:
        raise InputError(f"{path} has more than one column named '{duplicated[0]}': "
                         "rename them so each column name is unique")


def _separator_hint(header: list[str]) -> str:
    if len(header) == 1:
        for sep, name in ((";", "semicolons"), ("\t", "tabs"), ("|", "bars")):
            if sep in header[0]:
                return f"; the file looks separated by {name}: save it comma-separated"
    return ""


def check_csv(path: str | Path, columns: Iterable[str | None] = ()) -> tuple[str, ...]:
    """Check that ``path`` is a readable CSV file with a data row and every named column.

    Parameters
    ----------
    path : str or Path
        The CSV file.
    columns : iterable of str
        Columns the run needs (``None`` entries are skipped).

    Returns
    -------
    tuple of str
        The header's column names (empty if the file is not plain UTF-8 CSV;
        the full reader then reports the problem).

    Raises
    ------
    InputError
        Missing, empty or unreadable file, or a missing column; the message
        lists the columns found (and names a likely wrong separator).
    """
    path = Path(path)
    header = _header(path)
    if not header:
        return ()
    for column in columns:
        if column is not None and column not in header:
            shown = ", ".join(header[:_SHOWN_COLUMNS]) + (", ..." if len(header) >
                                                          _SHOWN_COLUMNS else "")
            raise InputError(f"column '{column}' is not in {path} (its columns: {shown})"
                             f"{_separator_hint(header)}")
    return tuple(header)


def _parsed(formula: str):
    from core_stats.formula import FormulaError, parse_formula

    try:
        return parse_formula(formula)
    except FormulaError as err:
        raise InputError(str(err)) from None


def check_formula(formula: str, *, random_effects: bool = True) -> None:
    """Read the formula with the project's parser (:mod:`core_stats.formula`, pure Python);
    with ``random_effects=False`` (a GLM, as BFI fits) refuse a ``(... | group)`` term.

    Raises
    ------
    InputError
        The parser's one-line reason (with the character position).
    """
    if not random_effects and _parsed(formula).random:
        raise InputError("BFI formulas have no random-effects term: drop the '(... | group)'")
    _parsed(formula)


def formula_columns(formula: str) -> tuple[str, ...]:
    """Every data column the formula reads: outcome, covariates, offsets and groups."""
    return _parsed(formula).columns


def check_output(path: str | Path | None, flag: str) -> None:
    """The file ``path`` (given with ``flag``) can be written: its folder exists and is writable."""
    if path is None:
        return
    path = Path(path)
    folder = path.parent
    if path.is_dir():
        raise InputError(f"{flag} {path} is a folder; give a file name")
    if not folder.exists():
        raise InputError(f"{flag} {path}: folder {folder} does not exist")
    if not folder.is_dir():
        raise InputError(f"{flag} {path}: {folder} is not a folder")
    if not os.access(folder, os.W_OK | os.X_OK) or (path.exists()
                                                    and not os.access(path, os.W_OK)):
        raise InputError(f"{flag} {path}: cannot write there (permission denied)")


def check_family(family: str) -> None:
    if family.lower() not in FAMILIES:
        raise InputError(f"unknown family {family!r}: choose one of {', '.join(FAMILIES)}")


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # ValueError: sys.modules[module] is None
        return False


def require_package(module: str, purpose: str) -> None:
    """InputError telling how to install ``module`` (an optional extra) if it is missing."""
    if not _installed(module):
        extra = EXTRAS.get(module)
        how = f"pip install 'securefed[{extra}]'" if extra else f"pip install {module}"
        raise InputError(f"{purpose} needs the {module} package, which is not installed: {how}")


def check_layers(protect: str) -> None:
    """Every ``--protect`` layer is known, and its optional package is installed."""
    layers = [part.strip().lower() for part in protect.split(",") if part.strip()]
    unknown = [layer for layer in layers if layer not in LAYERS]
    if unknown:
        raise InputError(f"--protect {protect!r}: unknown layer {unknown[0]!r} (layers: "
                         f"{', '.join(LAYERS)}, comma-separated, e.g. secagg,dp)")
    if "ckks" in layers:
        require_package("tenseal", "--protect ckks")
