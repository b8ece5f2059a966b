"""``securefed privacy-curve``: estimate error and CI coverage against ε, on built-in data."""

from __future__ import annotations

import math
from pathlib import Path

import typer

from securefed.errors import InputError


def privacy_curve(
    out_dir: Path = typer.Option(Path("privacy-curve"), "--out", help="Folder for the CSV/PNG."),
    models: str = typer.Option("glmm,bfi", "--models", help="glmm, bfi or both."),
    epsilons: str = typer.Option("0.25,0.5,1,2,4,8,16,inf", "--epsilons",
                                 help="Comma-separated; inf = the non-private fit."),
    repeats: int = typer.Option(5, "--repeats", help="Repetitions per epsilon."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress; print only the table."),
) -> None:
    """Fit built-in models under secagg,dp over a grid of epsilon; write CSV and PNG."""
    from securefed.preflight import check_output
    from securefed.privacy_curve import MODELS, plot_curve, summarise
    from securefed.privacy_curve import privacy_curve as run_curve
    from securefed.progress import Display

    chosen = [m.strip() for m in models.split(",") if m.strip()]
    unknown = [m for m in chosen if m not in MODELS]
    if unknown or not chosen:
        raise InputError(f"--models: choose from {', '.join(MODELS)}")
    try:
        grid = [math.inf if e.strip().lower() in ("inf", "∞") else float(e)
                for e in epsilons.split(",") if e.strip()]
    except ValueError:
        raise InputError("--epsilons: give numbers (or inf) separated by commas") from None
    if not grid or any(e <= 0 for e in grid):
        raise InputError("--epsilons must be positive")
    if repeats < 1:
        raise InputError("--repeats must be at least 1")
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"--out {out_dir} is a file; give a folder")
    check_output(out_dir / "privacy_curve.csv" if out_dir.is_dir() else out_dir, "--out")
    out_dir.mkdir(exist_ok=True)
    with Display("privacy curve", quiet=quiet) as display:

        def progress(model: str, eps: float, rep: int) -> None:
            display.update(f"privacy curve: {model}, epsilon={eps:g}, repetition {rep + 1}")

        table = run_curve(chosen, grid, repeats, progress)
    summary = summarise(table)
    table.to_csv(out_dir / "privacy_curve_fits.csv", index=False)
    summary.to_csv(out_dir / "privacy_curve.csv", index=False)
    plot_curve(summary, out_dir / "privacy_curve.png")
    typer.echo(summary.to_string(index=False))
    if not quiet:
        typer.echo(f"wrote {out_dir / 'privacy_curve.csv'} and {out_dir / 'privacy_curve.png'}")
