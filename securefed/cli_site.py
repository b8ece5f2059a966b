"""``securefed site init DIR`` and ``securefed site check DIR``: a site's own policy file.

Exit codes: 0 done, 2 a policy or data file to fix (one line).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

__all__ = ["register", "site_app"]

site_app = typer.Typer(no_args_is_help=True, help="A site's own policy (what it releases).")


@site_app.command("init")
def init(
    folder: Annotated[Path, typer.Argument(help="The site's folder (beside its data and keys).")],
    data: Annotated[Path | None, typer.Option(
        "--data", help="The site's CSV: its header becomes the approved columns.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="Print nothing on success.")] = False,
) -> None:
    """Write the commented default policy to DIR/policy.toml (never overwrites)."""
    from securefed.errors import InputError
    from securefed.policy.model import PolicyError, write_default_policy

    columns: tuple[str, ...] = ()
    if data is not None:
        import csv

        try:
            with open(data, newline="", encoding="utf-8") as handle:
                columns = tuple(next(csv.reader(handle), []))
        except OSError as err:
            raise InputError(f"cannot read {data}: {type(err).__name__}") from None
    try:
        path = write_default_policy(folder, columns)
    except PolicyError as err:
        raise InputError(str(err)) from None
    if not quiet:
        typer.echo(f"wrote {path}; point the SuperNode's node config at it: policy=\"{path}\"")


@site_app.command("check")
def check(
    folder: Annotated[Path, typer.Argument(help="The site's folder, or its policy file.")],
    quiet: Annotated[bool, typer.Option("--quiet", help="Only check; print nothing.")] = False,
) -> None:
    """Read a policy file and print the rules in force."""
    from dataclasses import asdict

    from securefed.errors import InputError
    from securefed.policy.model import POLICY_FILE, PolicyError, load_policy

    path = folder / POLICY_FILE if folder.is_dir() else folder
    try:
        policy = load_policy(path)
    except PolicyError as err:
        raise InputError(str(err)) from None
    for key, value in ({} if quiet else asdict(policy)).items():
        typer.echo(f"{key} = {value}")


def register(app: typer.Typer) -> None:
    """Attach ``site`` to the top-level app (idempotent)."""
    if not any(group.name == "site" for group in app.registered_groups):
        app.add_typer(site_app, name="site")
