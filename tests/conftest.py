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
    "test_flower_study_loopback.py", "test_site_privacy.py",
    "test_poisoning.py"))  # its BFI attacks poison the sites, which only the site runtime asks
ENVIRONMENTS = ("user", "flower")


# a test module that imports flwr, or a module that imports it, needs the [flower] extra too
_FLOWER_IMPORT = re.compile(r"^\s*(?:from|import)\s+(?:flwr\b|securefed\.transport\."
                            r"(?:flower_client|flower_server|flower_study|flower_smoke|flower"
                            r"|loopback)\b|securefed\.transport\s+import\s+(?:flower|loopback))",
                            re.MULTILINE)


def _needs_flower(path: Path) -> bool:
    if any(path == test or test in path.parents for test in FLOWER_TESTS):
        return True
    if path.suffix == ".py" and path.is_file():
        text = path.read_text(encoding="utf-8", errors="ignore")
        return _FLOWER_IMPORT.search(text) is not None
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
