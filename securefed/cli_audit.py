"""``securefed audit verify|report|dispute`` and ``securefed keygen``.

Register in :func:`securefed.cli._register`::

    from securefed.cli_audit import register
    register(app)

which is ``app.add_typer(audit_app, name="audit")`` and ``app.command("keygen")(keygen)``,
done once even if ``_register`` runs again.

Exit codes (``verify`` and ``report`` alike, in every format): 0 the log verifies,
1 it does not (the first bad entry and why are printed), 2 bad input
(:class:`securefed.errors.InputError`: missing file, not JSON, a malformed
fingerprint). An intact log checked without ``--expect-fingerprint`` exits 0 with
a warning line on stderr: nothing was pinned, so the trail is only self-consistent.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from securefed.errors import InputError

# The audit, key and report modules (cryptography, numpy, rich) are imported
# inside each command, so ``securefed --help`` stays fast.
if TYPE_CHECKING:
    from securefed.audit_verify import VerifyReport
    from securefed.keys import Registry

__all__ = ["audit_app", "keygen", "register"]

audit_app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Check and summarise signed audit logs of protected runs.",
)

_KEYS_FROM_LOG = ("warning: no --keys registry given; keys were taken from the log's own "
                  "RUN_START, which shows integrity but not who signed")


_EXPECT_HELP = ("The registry fingerprint (64 hex) the sites agreed on, obtained out of "
                "band: the log verifies only if the registry and every signature chain to it.")
SiteLogs = Annotated[list[Path] | None, typer.Option(
    "--site-log", help="A site's own log to cross-check (repeatable).")]
Expect = Annotated[str | None, typer.Option("--expect-fingerprint", help=_EXPECT_HELP)]
Quiet = Annotated[bool, typer.Option("--quiet", help="Print only what the command is for: "
                                     "no warnings or 'wrote' lines (failures still print).")]


def _registry(keys: Path | None) -> Registry | None:
    from securefed.keys import Registry

    return None if keys is None else Registry.load(keys)


def _warn(report: VerifyReport) -> None:
    """The warnings of a verification: keys from the log itself, nothing pinned."""
    if report.keys_from == "log":
        typer.echo(_KEYS_FROM_LOG, err=True)
    warning = report.trust_warning() if report.ok else None
    if warning is not None:
        typer.echo(warning, err=True)


@audit_app.command("verify")
def verify(
    log: Annotated[Path, typer.Argument(help="The coordinator's audit log (JSON Lines).")],
    site_log: SiteLogs = None,
    keys: Annotated[Path | None, typer.Option(
        "--keys", help="Consortium registry (registry.json) with every public key.")] = None,
    expect_fingerprint: Expect = None,
    quiet: Quiet = False,
) -> None:
    """Check every hash, link, signature and countersignature; exit 1 at the first bad entry."""
    from securefed.audit_verify import verify_log

    report = verify_log(log, _registry(keys), site_log or (),
                        expect_fingerprint=expect_fingerprint)
    if not quiet:
        _warn(report)
    if not quiet or not report.ok:
        typer.echo(report.summary())
    if not report.ok:
        sys.exit(1)


@audit_app.command("report")
def report(
    log: Annotated[Path, typer.Argument(help="The coordinator's audit log (JSON Lines).")],
    fmt: Annotated[str, typer.Option(
        "--format", help="table, json or html (a self-contained page).")] = "table",
    out: Annotated[Path | None, typer.Option(
        "--out", help="Write here instead of standard output.")] = None,
    keys: Annotated[Path | None, typer.Option(
        "--keys", help="Registry to verify the log against before reporting.")] = None,
    site_log: SiteLogs = None,
    expect_fingerprint: Expect = None,
    quiet: Quiet = False,
) -> None:
    """Per site: releases, their kinds and sizes, dropouts, refusals, ε/δ spent vs budget.

    The log is verified first; the exit code is that of ``audit verify`` (1 if it
    does not verify), whatever the format, and the report marks the bad entries.
    """
    from securefed.audit_report import ReportFormat, build_report, render_report
    from securefed.audit_verify import verify_log
    from securefed.preflight import check_output

    formats = [choice.value for choice in ReportFormat]
    if fmt not in formats:
        raise InputError(f"--format {fmt!r}: choose one of {', '.join(formats)}")
    check_output(out, "--out")
    verification = verify_log(log, _registry(keys), site_log or (),
                              expect_fingerprint=expect_fingerprint)
    try:
        text = render_report(build_report(log, verification), fmt)
    except InputError:
        if verification.ok:
            raise
        typer.echo(f"cannot summarise a log that does not verify: {verification.summary()}")
        sys.exit(1)
    if not quiet:
        _warn(verification)
    if out is None:
        typer.echo(text)
    else:
        try:
            out.write_text(text, encoding="utf-8")
        except OSError as err:
            raise InputError(f"cannot write {out}: {err.strerror}") from None
        if not quiet:
            typer.echo(f"wrote {out}")
    if not verification.ok:
        typer.echo(verification.summary(), err=True)
        sys.exit(1)


@audit_app.command("fingerprint")
def fingerprint(
    registry: Annotated[Path, typer.Argument(help="A registry file (registry.json).")],
    quiet: Annotated[bool, typer.Option(
        "--quiet", help="Print only the registry's fingerprint (64 hex).")] = False,
) -> None:
    """Print a registry's full fingerprint (compare it out of band) and each key's."""
    from securefed.keys import Registry, key_fingerprint

    loaded = Registry.load(registry)
    if quiet:
        typer.echo(loaded.fingerprint)
        return
    typer.echo(f"registry fingerprint: {loaded.fingerprint}")
    for name, key in loaded.parties.items():
        typer.echo(f"  {name}: key fingerprint {key_fingerprint(key)}")


def keygen(
    site: Annotated[str, typer.Option(
        "--site", help="Party name: a site's name, or 'coordinator'.")],
    out: Annotated[Path, typer.Option("--out", help="Directory for NAME.key and NAME.pub.")],
    registry: Annotated[Path | None, typer.Option(
        "--registry", help="Registry file to add the public key to (created if absent).")
    ] = None,
    quiet: Annotated[bool, typer.Option(
        "--quiet", help="Print only the fingerprints (no 'wrote' lines).")] = False,
) -> None:
    """Create a signing key: NAME.key (private, mode 0600) and NAME.pub (public, hex)."""
    from securefed.keys import Identity, Registry, check_party_name

    name = check_party_name(site)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InputError(f"cannot create {out}: {err.strerror}") from None
    if (out / f"{name}.pub").exists():
        raise InputError(f"{out / (name + '.pub')} exists; refusing to replace a key")
    current = None
    if registry is not None:
        current = Registry.load(registry) if registry.exists() else Registry()
        if name in current:
            raise InputError(f"{name!r} is already in {registry}; remove it by hand first")
    identity = Identity.generate(name)
    private = identity.save_private_key(out / f"{name}.key")
    public = identity.save_public_key(out / f"{name}.pub")
    if not quiet:
        typer.echo(f"wrote {private} (private, mode 0600) and {public}")
    typer.echo(f"key fingerprint of {name} (SHA-256 of its public key): {identity.fingerprint}")
    if current is not None and registry is not None:
        updated = current.add(name, identity.public_key_hex)
        updated.save(registry)
        if not quiet:
            typer.echo(f"added {name} to {registry}")
        typer.echo(f"registry fingerprint (SHA-256 of its canonical parties): "
                   f"{updated.fingerprint}")
        if not quiet:
            typer.echo("compare it with every site's copy out of band before a run; pin it with "
                   "audit verify --expect-fingerprint or a study's [audit] expect_fingerprint")


def register(app: typer.Typer) -> None:
    """Attach ``audit`` and ``keygen`` to the top-level app (idempotent)."""
    if not any(c.name == "dispute" for c in audit_app.registered_commands):
        from securefed.robust.cli_dispute import dispute

        audit_app.command("dispute")(dispute)
    if not any(group.name == "audit" for group in app.registered_groups):
        app.add_typer(audit_app, name="audit")
    if not any(command.name == "keygen" for command in app.registered_commands):
        app.command("keygen")(keygen)
