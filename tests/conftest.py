"""Which tests run in which environment (see .ci/run).

The Flower tests need ``securefed[flower]``, whose flwr caps typer and rich
below what a plain ``pip install securefed`` user gets. CI therefore runs
twice: ``SECUREFED_TEST_ENV=user`` with ``.[test]`` (every test except those
below), then ``SECUREFED_TEST_ENV=flower`` with ``.[test,flower]`` (only
those below). Without the variable every test runs, so a developer with all
extras installed runs the whole suite with a plain ``pytest``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

HERE = Path(__file__).parent
FLOWER_TESTS = tuple(HERE / "securefed" / name for name in (
    "flower", "test_ckks_transport.py", "test_flower_engine.py",
    "test_flower_study_loopback.py", "test_site_privacy.py"))
ENVIRONMENTS = ("user", "flower")


# a test module that imports flwr, or a Flower adapter (the modules that import flwr), needs
# the [flower] extra too; the site runtime (site_runtime, loopback, flower_server's engine,
# messages) does not
_FLOWER_IMPORT = re.compile(r"^\s*(?:from|import)\s+(?:flwr\b|securefed\.transport\."
                            r"(?:flower_client|flower_grid|flower_study|flower_smoke|flower)\b"
                            r"|securefed\.transport\s+import\s+(?:flower_client|flower_grid"
                            r"|flower_study|flower_smoke|flower)\b)", re.MULTILINE)
# a test module that imports another test module (``import test_flower_engine``) needs what
# that one needs
_TEST_IMPORT = re.compile(r"^\s*(?:from|import)\s+(test_\w+)\b", re.MULTILINE)


def _needs_flower(path: Path, seen: frozenset[Path] = frozenset()) -> bool:
    if any(path == test or test in path.parents for test in FLOWER_TESTS):
        return True
    if path.suffix == ".py" and path.is_file() and path not in seen:
        text = path.read_text(encoding="utf-8", errors="ignore")
        if _FLOWER_IMPORT.search(text) is not None:
            return True
        return any(_needs_flower(path.parent / f"{name}.py", seen | {path})
                   for name in _TEST_IMPORT.findall(text))
    return False


def pytest_ignore_collect(collection_path: Path, config) -> bool | None:
    env = os.environ.get("SECUREFED_TEST_ENV") or None
    if env is None:
        return None
    if env not in ENVIRONMENTS:
        raise ValueError(f"SECUREFED_TEST_ENV={env!r}: use one of {', '.join(ENVIRONMENTS)}")
    if collection_path.is_dir() and any(collection_path in test.parents or collection_path == test
                                        for test in FLOWER_TESTS):
        return None  # a folder on the way to a Flower test
    if collection_path.suffix != ".py" and not collection_path.is_dir():
        return None
    if env == "user":
        return True if _needs_flower(collection_path) else None
    return None if _needs_flower(collection_path) else True
