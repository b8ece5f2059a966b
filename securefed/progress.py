"""Progress on stderr while a run works: rich's live display on a terminal, else nothing.

Standard output carries only results (the summary), so it can be piped; the
progress display goes to standard error, is transient (it disappears when the
run ends) and is off with ``--quiet`` or when standard error is not a
terminal (a log file, a pipe, CI). Progress text never holds data values.
"""

from __future__ import annotations

from types import TracebackType

__all__ = ["Display", "run_with_progress"]


class Display:
    """A one-line live status on stderr; ``update`` changes it, ``note`` leaves a line.

    Parameters
    ----------
    description : str
        The first status text.
    quiet : bool
        Show nothing at all.
    """

    def __init__(self, description: str, *, quiet: bool = False) -> None:
        self._description = description
        self._quiet = quiet
        self._progress = None
        self._task = None

    @property
    def enabled(self) -> bool:
        return self._progress is not None

    def __enter__(self) -> Display:
        if self._quiet or not _stderr_may_be_terminal():
            return self
        from rich.console import Console

        console = Console(stderr=True)
        if not console.is_terminal:
            return self
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        self._progress = Progress(SpinnerColumn(), TextColumn("{task.description}"),
                                  TimeElapsedColumn(), console=console, transient=True)
        self._progress.start()
        self._task = self._progress.add_task(self._description, total=None)
        return self

    def update(self, text: str) -> None:
        """Replace the status line."""
        if self._progress is not None:
            self._progress.update(self._task, description=text)

    def note(self, text: str) -> None:
        """Print a line that stays above the status (on a terminal only)."""
        if self._progress is not None:
            self._progress.console.print(text, highlight=False, markup=False)

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def _stderr_may_be_terminal() -> bool:
    """False when standard error is surely no terminal (rich, ~0.05 s of imports, not needed)."""
    import os
    import sys

    forced = os.environ.get("FORCE_COLOR") or os.environ.get("TTY_COMPATIBLE")
    return bool(forced) or (hasattr(sys.stderr, "isatty") and sys.stderr.isatty())


def run_with_progress(frame, opts, *, protect, quiet: bool, audit_log=None, audit_keys=None):
    """Run a GLMM fit (:func:`securefed.glmm_run.run_glmm`), showing each Newton step."""
    from securefed.glmm_run import run_glmm
    from securefed.protection import protection_for

    protection = protection_for(frame, opts.site_column, protect, opts.family)
    with Display("GLMM: design summary round...", quiet=quiet) as display:

        def on_step(step) -> None:  # logLik is nan under DP
            display.update(f"GLMM: Newton step {step.iteration}, logLik {step.value:.6f}, "
                           f"max |gradient| {step.max_abs_gradient:.2e}")

        return run_glmm(frame, opts, protection=protection, on_step=on_step,
                        audit_log=audit_log, audit_keys=audit_keys)
