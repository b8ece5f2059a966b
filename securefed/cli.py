"""The ``securefed`` command line. Sub-commands live in ``cli_*.py`` modules."""

from __future__ import annotations

import sys

import typer

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
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
    """Entry point of the console script: user errors exit 2/3 with one line."""
    from protocols.errors import ProtocolError
    from securefed.errors import BudgetExceededError, InputError

    _register()
    try:
        app(args=argv, standalone_mode=False)
    except (InputError, BudgetExceededError) as err:
        typer.echo(f"error: {err}", err=True)
        return err.exit_code
    except ProtocolError as err:
        return _protocol_failure(err)
    except typer.Exit as done:
        return int(done.exit_code or 0)
    except SystemExit as done:  # click usage errors
        return int(done.code or 0)
    except Exception as err:
        if _is_usage_error(err):
            err.show()
            return 2
        raise
    return 0


def _protocol_failure(err: Exception) -> int:
    """A protection layer refused or aborted: one line; exit 2 for bad values, 1 otherwise."""
    from protocols.errors import AbortError, EncodingError, PrivacyBudgetExceeded

    if isinstance(err, PrivacyBudgetExceeded):
        typer.echo(f"error: privacy budget: {err}", err=True)
        return 3
    if isinstance(err, AbortError):
        typer.echo(f"error: protocol aborted, nothing was released: {err}", err=True)
        return 1
    typer.echo(f"error: {err}", err=True)
    return 2 if isinstance(err, EncodingError) else 1


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
