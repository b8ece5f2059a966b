"""Errors the user can fix. The CLI prints their message on one line and exits.

``InputError`` (exit code 2) is for bad data, bad flags and bad study files;
``BudgetExceeded`` (exit code 3) is for a privacy budget a release would break.
"""

from __future__ import annotations

__all__ = ["InputError", "BudgetExceededError"]


class InputError(ValueError):
    """Bad input: the message says what to fix. CLI exit code 2."""

    exit_code = 2


class BudgetExceededError(RuntimeError):
    """A release would exceed a site's privacy budget. CLI exit code 3."""

    exit_code = 3
