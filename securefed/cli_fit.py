"""``securefed fit`` and ``securefed demo``: federated GLMM from the shell."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from securefed.errors import InputError

FORMULA_HELP = "Model formula, lme4 style: 'y ~ x1 + x2 + (1 | group)'."
PROTECT = typer.Option("none", "--protect", help="Protection: none, secagg or ckks.")
NEIGHBOURS = typer.Option(None, "--secagg-neighbours",
                          help="SecAgg+: each site masks with k random neighbours.")
THRESHOLD = typer.Option(None, "--secagg-threshold", help="Shamir threshold t (default 2n/3+1).")
BOUND = typer.Option(2.0**40, "--bound", help="Public bound on any released value.")
DROP_SITES = typer.Option(None, "--drop-sites", help="Simulate these sites dropping (e.g. 3,17).")
DROP_PHASE = typer.Option(None, "--drop-phase", help="after-key-exchange, after-key-sharing, "
                          "after-masked-input or during-unmask.")
DROP_ROUND = typer.Option(1, "--drop-round", help="The round in which they drop.")
AUDIT_LOG = typer.Option(None, "--audit-log", help="Write a signed audit trail here "
                         "(plus per-site logs and a key registry beside it).")


def protection_options(protect, neighbours, threshold, bound, drop_sites, drop_phase,
                       drop_round):
    from securefed.protection import ProtectionOptions, parse_sites

    return ProtectionOptions(protect=protect, neighbours=neighbours, threshold=threshold,
                             bound=bound, drop_sites=parse_sites(drop_sites),
                             drop_phase=drop_phase, drop_round=drop_round)


def parse_grid(text: str | None) -> tuple[float, ...]:
    """``"0,1,2.5"`` to a tuple of floats (InputError on anything else)."""
    if not text:
        return ()
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise InputError(f"--lambda-grid {text!r}: give numbers separated by commas") from None


def write_json(path: Path, payload: dict) -> None:
    try:
        path.write_text(json.dumps(payload, indent=2, allow_nan=False) + "\n")
    except OSError as err:
        raise InputError(f"cannot write {path}: {err.strerror}") from None


def fit(
    data: Path = typer.Argument(..., help="CSV file with one row per observation."),
    formula: str = typer.Option(..., "--formula", help=FORMULA_HELP),
    family: str = typer.Option("binomial", "--family", help="binomial, poisson or gaussian."),
    site_column: str = typer.Option(..., "--site-column", help="Column naming each row's site."),
    nagq: int = typer.Option(1, "--nagq", help="Gauss-Hermite nodes (1 = Laplace)."),
    lam: float = typer.Option(0.0, "--lambda", help="L2 penalty on non-intercept effects."),
    lambda_grid: str = typer.Option(None, "--lambda-grid", help="e.g. 0,1,2,5,10: choose lambda."),
    select: str = typer.Option("aic", "--select", help="aic, bic or heldout (with a grid)."),
    protect: str = PROTECT,
    secagg_neighbours: int = NEIGHBOURS,
    secagg_threshold: int = THRESHOLD,
    bound: float = BOUND,
    drop_sites: str = DROP_SITES,
    drop_phase: str = DROP_PHASE,
    drop_round: int = DROP_ROUND,
    audit_log: Path = AUDIT_LOG,
    json_out: Path = typer.Option(None, "--json", help="Write the result as JSON here."),
    seed: int = typer.Option(None, "--seed", help="Seed for the validation split."),
    quiet: bool = typer.Option(False, "--quiet", help="Print only the summary."),
) -> None:
    """Fit a GLMM federated over the sites in SITE_COLUMN."""
    from securefed.data import read_table
    from securefed.glmm_run import GLMMOptions
    from securefed.progress import run_with_progress

    frame = read_table(data)
    opts = GLMMOptions(formula=formula, family=family, site_column=site_column, nagq=nagq,
                       lam=lam, lambda_grid=parse_grid(lambda_grid), select=select, seed=seed)
    prot = protection_options(protect, secagg_neighbours, secagg_threshold, bound, drop_sites,
                              drop_phase, drop_round)
    result = run_with_progress(frame, opts, protect=prot, quiet=quiet, audit_log=audit_log)
    typer.echo(result.summary())
    if json_out is not None:
        write_json(json_out, result.to_dict())


def demo(
    sites: int = typer.Option(12, "--sites", help="Number of synthetic hospitals."),
    rows: int = typer.Option(250, "--rows", help="Patients per hospital."),
    protect: str = typer.Option("secagg", "--protect", help="Protection: none, secagg, ckks."),
    json_out: Path = typer.Option(None, "--json", help="Write the result as JSON here."),
    quiet: bool = typer.Option(False, "--quiet"),
) -> None:
    """Fit the built-in multi-hospital example (synthetic, seeded), securely aggregated."""
    from securefed.glmm_run import GLMMOptions
    from securefed.progress import run_with_progress
    from securefed.synthetic import make_hospitals

    if sites < 3 or rows < 5:
        raise InputError("the demo needs at least 3 sites and 5 rows per site")
    frame = make_hospitals(sites, rows)
    terms = " + ".join(f"x{j}" for j in range(2, 11))
    opts = GLMMOptions(formula=f"y ~ {terms} + (1 | hospital)", family="binomial",
                       site_column="hospital", nagq=5)
    prot = protection_options(protect, None, None, 2.0**40, None, None, 1)
    result = run_with_progress(frame, opts, protect=prot, quiet=quiet)
    typer.echo(result.summary())
    if json_out is not None:
        write_json(json_out, result.to_dict())
