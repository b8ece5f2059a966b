"""Helpers shared by the study scripts: result paths, markdown tables, README snippets.

Every study writes its results to ``benchmarks/results/`` and, for the README,
a snippet ``benchmarks/results/NAME_readme.md`` that ``benchmarks/update_readme.py``
pastes between ``<!-- begin:NAME -->`` and ``<!-- end:NAME -->``.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

__all__ = ["ROOT", "RESULTS", "results_dir", "markdown_table", "machine_line",
           "write_snippet", "Stopwatch", "record_run", "recorded_run", "run_line"]


def results_dir(quick: bool, out: str | None = None) -> Path:
    """Where a run writes: ``--out`` if given, a temporary folder for ``--quick``, else results/.

    A smoke run (``--quick``) never overwrites the recorded results.
    """
    if out:
        path = Path(out)
    elif quick:
        path = Path(tempfile.gettempdir()) / "securefed-bench-quick"
    else:
        path = RESULTS
    path.mkdir(parents=True, exist_ok=True)
    return path


def _cell(value, digits: int) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if value != value:  # NaN
            return "–"
        return f"{value:.{digits}f}"
    return str(value)


def markdown_table(rows: Iterable[dict], columns: Sequence[str], *, digits: int = 3,
                   headers: Sequence[str] | None = None) -> list[str]:
    """A GitHub markdown table of ``rows`` (dicts) restricted to ``columns``."""
    heads = list(headers or columns)
    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(c), digits) for c in columns) + " |")
    return lines


def machine_line() -> str:
    """One line naming the machine a result was measured on."""
    return (f"Python {platform.python_version()}, {os.cpu_count()} CPUs ({platform.machine()}), "
            f"{time.strftime('%Y-%m-%d', time.gmtime())}")


def write_snippet(out: Path, name: str, lines: Sequence[str]) -> Path:
    """Write the README snippet ``NAME_readme.md`` (pasted by update_readme.py)."""
    path = out / f"{name}_readme.md"
    path.write_text("\n".join(lines).rstrip() + "\n")
    return path


class Stopwatch:
    """Wall-clock seconds since construction (``elapsed``), for the recorded run times."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start


def code_version() -> str:
    """The commit the library code came from, and whether it had uncommitted changes.

    Outside a git checkout (e.g. a ``git archive`` export) the environment
    variable ``SECUREFED_CODE_VERSION`` says it.
    """
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True,
                              check=True).stdout.strip()

    try:
        commit = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--", "core_stats", "protocols", "securefed")
    except (OSError, subprocess.CalledProcessError):
        return os.environ.get("SECUREFED_CODE_VERSION", "unknown")
    return commit + (" with uncommitted library changes" if dirty else "")


def record_run(out: Path, name: str, seconds: float, **details) -> None:
    """Keep a run's wall time, machine and code version in ``NAME_run.json``."""
    info = {"seconds": round(seconds, 1), "machine": machine_line(), "code": code_version(),
            **details}
    (out / f"{name}_run.json").write_text(json.dumps(info, indent=1) + "\n")


def recorded_run(out: Path, name: str) -> dict:
    """What :func:`record_run` kept, or ``{}``."""
    path = out / f"{name}_run.json"
    return json.loads(path.read_text()) if path.exists() else {}


def run_line(out: Path, name: str) -> str:
    """'took 4.2 min; <machine>; code <commit>' from ``NAME_run.json``, for the tables' heads."""
    run = recorded_run(out, name)
    if not run:
        return "run time not recorded"
    took = (f"{run['seconds'] / 60:.1f} min" if run["seconds"] >= 120
            else f"{run['seconds']:.0f} s")
    return f"took {took}; {run['machine']}; code {run.get('code', '?')}"
