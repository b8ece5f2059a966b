"""Checks that run before any heavy import and before any work.

A missing file, a column the file does not have, a formula with an unclosed
parenthesis, an unknown family or layer, an output folder that does not exist,
a ``--predict`` file that is not there: each is reported in one line within a
fraction of a second, before pandas, scipy or the cryptography are imported and
long before a fit starts. Only the standard library is used here; the full
checks (values, types, nesting) still run later, on the data.

Nothing here echoes a data value: messages name files, flags and columns only.
"""

from __future__ import annotations

import csv
import importlib.util
import os
import re
from collections.abc import Iterable
from pathlib import Path

from securefed.errors import InputError

__all__ = ["check_csv", "check_formula", "check_output", "check_family", "check_layers",
           "require_package", "formula_columns"]

FAMILIES = ("binomial", "poisson", "gaussian")
LAYERS = ("none", "secagg", "ckks", "dp")
EXTRAS = {"tenseal": "ckks", "flwr": "flower"}
_SHOWN_COLUMNS = 12
_IDENTIFIER = re.compile(r"[A-Za-z_.][\w.]*")
_NUMBER = re.compile(r"(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
_OPERATORS = ("**", "||", "+", "-", "*", ":", "/", "^", "|", "%in%")


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
    return header


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


def _tokens(text: str, start: int = 0) -> list[tuple[str, str, int]]:
    """``(kind, text, position)`` tokens of ``text`` from character ``start``.

    Kinds: name, number, quoted, op, ``(``, ``)``, ``~``, ``,`` and other.
    """
    out, i = [], start
    while i < len(text):
        char = text[i]
        if char.isspace():
            i += 1
            continue
        if char in "()~,":
            out.append((char, char, i))
            i += 1
            continue
        if char in "\"'`":
            end = text.find(char, i + 1)
            if end < 0:
                raise InputError(f"the formula has an unclosed {char} (character {i + 1})")
            out.append(("quoted", text[i:end + 1], i))
            i = end + 1
            continue
        number = _NUMBER.match(text, i)
        if number:
            out.append(("number", number.group(), i))
            i = number.end()
            continue
        name = _IDENTIFIER.match(text, i)
        if name:
            out.append(("name", name.group(), i))
            i = name.end()
            continue
        op = next((o for o in _OPERATORS if text.startswith(o, i)), None)
        if op is None:
            out.append(("other", char, i))
            i += 1
            continue
        out.append(("op", op, i))
        i += len(op)
    return out


def _check_parentheses(tokens: list[tuple[str, str, int]]) -> None:
    opened: list[int] = []
    for kind, _, pos in tokens:
        if kind == "(":
            opened.append(pos)
        elif kind == ")":
            if not opened:
                raise InputError(f"the formula has a ')' with no '(' before it "
                                 f"(character {pos + 1})")
            opened.pop()
    if opened:
        raise InputError(f"the formula has an unclosed '(' (character {opened[-1] + 1}): "
                         "close it, e.g. (1 | hospital)")


def _calls(tokens: list[tuple[str, str, int]]) -> bool:
    """Whether the tokens call a function (a name right before ``(``)."""
    return any(kind == "name" and following[0] == "("
               for (kind, *_), following in zip(tokens, tokens[1:], strict=False))


def _check_operators(tokens: list[tuple[str, str, int]]) -> None:
    """No operator without a term on each side, no two terms without an operator."""
    operand = ("name", "number", "quoted", ")")
    strict = not _calls(tokens)  # a function's arguments may hold any literal
    previous = "~"
    for kind, text, pos in tokens:
        if kind == ")" and previous == "(":
            raise InputError(f"the formula has empty parentheses (character {pos})")
        if kind == "op" and text != "-" and previous in ("~", "(", "op", ","):
            raise InputError(f"the formula has '{text}' with no term before it "
                             f"(character {pos + 1})")
        if kind in (")", "~", ",") and previous == "op":
            raise InputError(f"the formula has an operator with no term after it "
                             f"(character {pos + 1})")
        if kind in ("name", "number", "quoted") and previous in operand:
            raise InputError(f"the formula has two terms with no operator between them "
                             f"(character {pos + 1}): join them with '+'")
        if kind == "other" and strict:
            raise InputError(f"the formula has a character it cannot read (character {pos + 1})")
        previous = "op" if kind == "op" else kind
    if previous == "op":
        raise InputError("the formula ends with an operator: a term is missing")


def check_formula(formula: str, *, random_effects: bool = True) -> None:
    """Check the shape of an R-style formula without building anything from it.

    One ``~`` with a single outcome name before it, balanced parentheses,
    every operator between two terms; with ``random_effects=False`` (a GLM,
    as BFI fits) no ``(... | group)`` term. The formula is only scanned, never run.

    Raises
    ------
    InputError
        Naming the first problem and its character position.
    """
    if formula.count("~") != 1:
        raise InputError("the formula needs exactly one '~': write it as "
                         "'y ~ x1 + x2 + (1 | group)'")
    lhs = formula.split("~")[0]
    if not _IDENTIFIER.fullmatch(lhs.strip()):
        raise InputError("the outcome (left of '~') must be a single column name")
    tokens = _tokens(formula, len(lhs) + 1)
    if not tokens:
        raise InputError("the formula has no terms after '~' (write '~ 1' for an intercept)")
    _check_parentheses(tokens)
    _check_operators(tokens)
    if not random_effects and any(text in ("|", "||") for _, text, _ in tokens):
        raise InputError("BFI formulas have no random-effects term: drop the '(... | group)'")


def formula_columns(formula: str) -> tuple[str, ...]:
    """Column names a formula plainly uses: every name, when it calls no function.

    A formula with a function call (``log(x)``, ``C(ward, Sum)``) or a quoted
    name gives only its outcome: what such a formula needs is the full parser's
    call.
    """
    lhs = formula.partition("~")[0]
    tokens = _tokens(formula, len(lhs) + 1)
    names = [lhs.strip()]
    if not _calls(tokens) and not any(kind in ("quoted", ",") for kind, *_ in tokens):
        names += [text for kind, text, _ in tokens if kind == "name" and text != "."]
    return tuple(dict.fromkeys(names))


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
