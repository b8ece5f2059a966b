"""The ``securefed`` command line. Sub-commands live in ``cli_*.py`` modules.

Every failure is one line on stderr and an exit code: 2 bad input (the line
says what to fix), 1 a protocol abort or an internal error, 3 a privacy budget.
No traceback is ever printed (it could show local variables, i.e. patient
rows): typer's pretty tracebacks are off here, on the one app, and
:func:`main` turns any unexpected exception into one generic line that holds
only the exception's type. Start-up stays cheap: the sub-command modules
import pandas, scipy and the cryptography inside their commands, after the
checks of :mod:`securefed.preflight`.
"""

from __future__ import annotations

import re
import sys

import typer
import typer.core

# Plain click help: typer's rich help costs ~0.15 s of imports on every call
# (rich is still used for progress, on stderr, while a run works).
typer.core.HAS_RICH = False

EXIT_INPUT, EXIT_PROTOCOL, EXIT_BUDGET = 2, 1, 3
MISSING_EXTRA = {"tenseal": "ckks", "flwr": "flower"}

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    pretty_exceptions_show_locals=False,
    help="Federated GLMM and BFI with secure aggregation and a signed audit log.",
)


def _register() -> None:
    """Attach the sub-command modules (once)."""
    if getattr(_register, "done", False):
        return
    from securefed import cli_bfi, cli_cox, cli_fit
    from securefed.cli_audit import register as register_audit

    app.command("fit")(cli_fit.fit)
    app.command("demo")(cli_fit.demo)
    app.command("bfi")(cli_bfi.bfi)
    app.command("cox")(cli_cox.cox)
    app.command("bfi-holdout")(cli_bfi.bfi_holdout)
    app.command("privacy-curve")(__import__("securefed.cli_privacy").cli_privacy.privacy_curve)
    register_audit(app)
    __import__("securefed.cli_study").cli_study.register(app)
    __import__("securefed.cli_site").cli_site.register(app)
    _register.done = True


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script: every failure is one line and an exit code."""
    from securefed.errors import BudgetExceededError, InputError

    _register()
    try:
        app(args=argv, standalone_mode=False, prog_name="securefed")
    except (InputError, BudgetExceededError) as err:
        _fail(str(err))
        return err.exit_code
    except typer.Exit as done:
        return int(done.exit_code or 0)
    except SystemExit as done:  # click usage errors
        return done.code if isinstance(done.code, int) else EXIT_INPUT
    except KeyboardInterrupt:
        _fail("interrupted; nothing more was written")
        return 130
    except Exception as err:  # the one place every other failure ends
        return _unexpected(err)
    return 0


def _fail(message: str) -> None:
    """``error: message`` on one line of stderr (newlines in a message are flattened)."""
    typer.echo("error: " + " ".join(message.split()), err=True)


def _unexpected(err: Exception) -> int:
    """Protocol failures, usage errors, a missing optional package, or a bug: one line."""
    from protocols.errors import ProtocolError

    if isinstance(err, ProtocolError):
        return _protocol_failure(err)
    if _is_usage_error(err):
        return _usage_failure(err)
    if isinstance(err, ModuleNotFoundError) and err.name:
        package = err.name.split(".")[0]
        extra = MISSING_EXTRA.get(package)
        how = f"pip install 'securefed[{extra}]'" if extra else f"pip install {package}"
        _fail(f"this needs the {package} package, which is not installed: {how}")
        return EXIT_INPUT
    # The exception's text could hold data values: only its type is shown.
    _fail(f"securefed stopped on an internal error ({type(err).__name__}); no result was "
          "written by this step. Please report it with the command you ran.")
    return EXIT_PROTOCOL


def _usage_failure(err: Exception) -> int:
    """A click usage error (bad flag or value): one line naming the help to read."""
    if type(err).__name__ == "NoArgsIsHelpError":  # `securefed` alone: the help, as click does
        err.show()
        return EXIT_INPUT
    ctx = getattr(err, "ctx", None)
    hint = f" (see: {ctx.command_path} --help)" if ctx is not None else ""
    sentences = re.split(r"(?<=[.?!]) ", err.format_message())  # typer and click may both
    _fail(" ".join(dict.fromkeys(sentences)) + hint)  # add "Did you mean ...?": say it once
    return EXIT_INPUT


def _protocol_failure(err: Exception) -> int:
    """A protection layer refused or aborted: one line; exit 2 for bad values, 1 otherwise."""
    from protocols.errors import AbortError, EncodingError, PrivacyBudgetExceeded

    if isinstance(err, PrivacyBudgetExceeded):
        _fail(f"privacy budget: {err}")
        return EXIT_BUDGET
    if isinstance(err, AbortError):
        _fail(f"protocol aborted, nothing was released: {err}")
        return EXIT_PROTOCOL
    _fail(str(err))
    return EXIT_INPUT if isinstance(err, EncodingError) else EXIT_PROTOCOL


def _is_usage_error(err: Exception) -> bool:
    """A click usage error (typer may vendor its own click, so check both)."""
    classes = []
    try:
        from typer._click.exceptions import ClickException as VendoredClickException

        classes.append(VendoredClickException)
    except ImportError:
        pass
    try:
        from click import ClickException

        classes.append(ClickException)
    except ImportError:
        pass
    return isinstance(err, tuple(classes))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
