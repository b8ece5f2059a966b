"""``securefed run STUDY.toml`` and ``securefed report RESULT.json``.

Register in :func:`securefed.cli._register` with ``register(app)`` (idempotent).
Exit codes: 0 done, 2 a bad study file, data file or result file
(:class:`securefed.errors.InputError`, one line naming the line to fix), 1 a
protocol abort.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

__all__ = ["register", "report", "run"]


def run(
    study_file: Annotated[Path, typer.Argument(help="The study file (TOML).")],
    quiet: Annotated[bool, typer.Option(
        "--quiet", help="No progress; print only the summary.")] = False,
    site_keys: Annotated[Path | None, typer.Option(
        "--site-keys", help="Sign the audit trail with securefed keygen's keys: DIR holds "
        "coordinator.key, NAME.key per site and registry.json (replaces [audit] site_keys).")
    ] = None,
    expect_fingerprint: Annotated[str | None, typer.Option(
        "--expect-fingerprint", help="Refuse to run unless the registry has this "
        "fingerprint (as [audit] expect_fingerprint).")] = None,
) -> None:
    """Run a study: every site in-process, then result.json, summary.txt and the audit trail."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from securefed.audit_keys import study_trail_keys
    from securefed.study import load_study, run_study

    study = load_study(study_file)
    study_trail_keys(study, site_keys, expect_fingerprint)  # refused before any progress
    console = Console(stderr=True, quiet=quiet)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, console=console, disable=quiet, transient=True) as progress:
        sites = progress.add_task("reading site files", total=len(study.sites))
        rounds = progress.add_task(f"{study.kind} rounds", total=None)

        def on_site(name: str, rows: int) -> None:
            progress.advance(sites)
            progress.console.print(f"site {name}: {rows} rows", highlight=False)

        def on_round(round_id: int, purpose: str, contributors: int, dropped: tuple) -> None:
            progress.update(rounds, completed=round_id,
                            description=f"round {round_id}: {purpose} ({contributors} sites)")
            if dropped:
                progress.console.print(f"round {round_id}: dropped {', '.join(dropped)}",
                                       highlight=False)

        def on_step(step) -> None:
            progress.console.print(f"Newton step {step.iteration}: logLik {step.value:.6f}, "
                                   f"max |gradient| {step.max_abs_gradient:.2e}", highlight=False)

        done = run_study(study, on_site=on_site, on_round=on_round, on_step=on_step,
                         site_keys=site_keys, expect_fingerprint=expect_fingerprint)
        progress.console.print(f"{done.result.get('rounds')} rounds over "
                               f"{done.result.get('n_sites')} sites", highlight=False)
    typer.echo(done.summary)
    if not quiet:
        log = _shown(done.audit_log)
        site_logs = " ".join(f"--site-log {_shown(p)}" for p in done.site_logs)
        pin = "" if done.registry_fingerprint is None else \
            f" --expect-fingerprint {done.registry_fingerprint}"
        console.print(f"wrote {', '.join(_shown(p) for p in done.files)} and the audit trail "
                      f"{log}\ncheck it: securefed audit verify {log} --keys "
                      f"{_shown(done.audit_log.with_suffix('.registry.json'))}{pin} "
                      f"{site_logs}", highlight=False, soft_wrap=True)


def _shown(path: Path) -> str:
    """``path`` relative to the working folder when it is inside it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def report(
    result: Annotated[Path, typer.Argument(help="result.json of a study (or --json of fit/bfi).")],
    out: Annotated[Path, typer.Option("--out", help="The HTML file; PNG figures go beside it.")
                   ] = Path("report.html"),
    profile: Annotated[list[str] | None, typer.Option(
        "--profile", help="Survival curves for this covariate profile, e.g. 'sex=1,age=60' "
        "(repeatable; BFI survival results).")] = None,
) -> None:
    """An HTML report: coefficients, forest plot, protection, convergence, BFI vs pooled,
    survival curves."""
    from securefed.report import write_report

    written = write_report(result, out, profiles=profile)
    typer.echo(f"wrote {written.html} ({len(written.figures)} figures beside it)")


def register(app: typer.Typer) -> None:
    """Attach ``run`` and ``report`` to the top-level app (idempotent)."""
    names = {command.name for command in app.registered_commands}
    if "run" not in names:
        app.command("run")(run)
    if "report" not in names:
        app.command("report")(report)
