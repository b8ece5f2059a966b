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

from securefed.errors import InputError

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

    if not study_file.is_file():  # before securefed.study's imports (pandas, crypto)
        raise InputError(f"cannot read study file {study_file}: "
                         f"{'it is a folder' if study_file.is_dir() else 'no such file'}")
    from securefed.audit_keys import study_trail_keys
    from securefed.preflight import check_output
    from securefed.study import load_study, run_study

    study = load_study(study_file)
    folder = study.output_dir  # checked before any work: the folder is made, then written
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        raise InputError(f"the study's output folder {study.output_dir}: {folder} is a file")
    check_output(folder / "result.json", "the study's output folder")
    study_trail_keys(study, site_keys, expect_fingerprint)  # refused before any progress
    console = Console(stderr=True, quiet=quiet)
    live = not quiet and console.is_terminal  # progress only on a terminal
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, console=console, disable=not live, transient=True) as progress:
        sites = progress.add_task("reading site files", total=len(study.sites))
        rounds = progress.add_task(f"{study.kind} rounds", total=None)

        def note(text: str) -> None:
            if live:
                progress.console.print(text, highlight=False, markup=False)

        def on_site(name: str, rows: int) -> None:
            progress.advance(sites)
            note(f"site {name}: {rows} rows")

        def on_round(round_id: int, purpose: str, contributors: int, dropped: tuple) -> None:
            progress.update(rounds, completed=round_id,
                            description=f"round {round_id}: {purpose} ({contributors} sites)")
            if dropped:
                note(f"round {round_id}: dropped {', '.join(dropped)}")

        def on_step(step) -> None:
            note(f"Newton step {step.iteration}: logLik {step.value:.6f}, "
                 f"max |gradient| {step.max_abs_gradient:.2e}")

        done = run_study(study, on_site=on_site, on_round=on_round, on_step=on_step,
                         site_keys=site_keys, expect_fingerprint=expect_fingerprint)
        note(f"{done.result.get('rounds')} rounds over {done.result.get('n_sites')} sites")
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
    quiet: Annotated[bool, typer.Option("--quiet", help="Print nothing on success.")] = False,
) -> None:
    """An HTML report: coefficients, forest plot, protection, convergence, BFI vs pooled,
    survival curves."""
    from securefed.preflight import check_output

    if not result.is_file():
        raise InputError(f"cannot read {result}: no such file")
    if out.parent.exists():  # a missing folder is created
        check_output(out, "--out")
    from securefed.report import write_report

    written = write_report(result, out, profiles=profile)
    if not quiet:
        count = len(written.figures)
        typer.echo(f"wrote {written.html} ({count} figure{'' if count == 1 else 's'} beside it)")


def register(app: typer.Typer) -> None:
    """Attach ``run`` and ``report`` to the top-level app (idempotent)."""
    names = {command.name for command in app.registered_commands}
    if "run" not in names:
        app.command("run")(run)
    if "report" not in names:
        app.command("report")(report)
