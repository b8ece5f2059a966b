"""``securefed audit dispute``: re-derive one site's releases from its data (exit 1 if any differ).

Registered on the ``audit`` group by :func:`securefed.cli_audit.register`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from securefed.errors import InputError

__all__ = ["dispute"]


def dispute(
    log: Annotated[Path, typer.Argument(help="The coordinator's audit log of the run.")],
    study: Annotated[Path, typer.Option("--study", help="The run's study file (its model "
                                        "options must hash to the log's RUN_START).")],
    site: Annotated[str, typer.Option("--site", help="The disputed site.")],
    salts: Annotated[Path, typer.Option("--salts", help="The salt file the site reveals "
                                        "(e.g. audit.site-NAME.salts.jsonl).")],
    data: Annotated[Path | None, typer.Option("--data", help="The site's data (default: its "
                                              "file in the study).")] = None,
    result: Annotated[Path | None, typer.Option("--result", help="The run's result.json "
                                                "(default: the study's output one, if any).")
                      ] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the verdicts here.")
                        ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="Print only the releases that differ "
                                        "and the summary line.")] = False,
) -> None:
    """Re-derive a site's releases from its data and open its commitments in the log."""
    from securefed.data import read_table
    from securefed.robust.dispute import dispute_site
    from securefed.study import load_study

    spec = load_study(study)
    entry = next((s for s in spec.sites if s.name == site), None)
    if entry is None and data is None:
        raise InputError(f"site {site!r} is not in {study}; give its data with --data")
    frame = read_table(data if data is not None else entry.data)
    default = spec.output_dir / "result.json"
    path = result if result is not None else (default if default.exists() else None)
    try:
        given = None if path is None else json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise InputError(f"cannot read the result {path}") from None
    report = dispute_site(log, site, frame, spec.options, salts, given)
    for verdict, line in zip((*report.releases, None), report.lines(), strict=True):
        if not quiet or verdict is None or verdict.status == "differs":
            typer.echo(line)
    if json_out is not None:
        json_out.write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
    if report.differs:
        sys.exit(1)
