"""``securefed cox``: a Cox model stratified by site, federated, from the shell."""

from __future__ import annotations

from pathlib import Path

import typer

from securefed.cli_fit import (
    AUDIT_LOG,
    BOUND,
    DROP_PHASE,
    DROP_ROUND,
    DROP_SITES,
    NA_ACTION,
    NEIGHBOURS,
    THRESHOLD,
    check_na_action,
    protection_options,
    write_json,
)

PROTECT = typer.Option("none", "--protect", help="Protection layers: none, secagg, ckks or "
                       "secagg,ckks (no dp: see docs/survival.md).")


def cox(
    data: Path = typer.Argument(..., help="CSV file with one row per patient."),
    formula: str = typer.Option(..., "--formula",
                                help="'Surv(time, status) ~ age + sex + factor(stage)'."),
    site_column: str = typer.Option(..., "--site-column",
                                    help="Column naming each row's site (the strata)."),
    ties: str = typer.Option("efron", "--ties", help="efron (R's default) or breslow."),
    protect: str = PROTECT,
    secagg_neighbours: int = NEIGHBOURS,
    secagg_threshold: int = THRESHOLD,
    bound: float = BOUND,
    drop_sites: str = DROP_SITES,
    drop_phase: str = DROP_PHASE,
    drop_round: int = DROP_ROUND,
    audit_log: Path = AUDIT_LOG,
    na_action: str = NA_ACTION,
    json_out: Path = typer.Option(None, "--json", help="Write the result as JSON here."),
    quiet: bool = typer.Option(False, "--quiet", help="Print only the summary."),
) -> None:
    """Fit coxph(Surv(time, status) ~ ... + strata(site)) federated over the sites."""
    from securefed.errors import InputError
    from securefed.preflight import check_output

    if "dp" in [layer.strip().lower() for layer in protect.split(",")]:
        from securefed.cox_run import DP_REFUSED

        raise InputError(DP_REFUSED)

    for path, flag in ((json_out, "--json"), (audit_log, "--audit-log")):
        if path is not None:
            check_output(path, flag)
    from securefed.cox_run import CoxOptions, run_cox
    from securefed.data import read_table
    from securefed.protection import protection_for

    frame = read_table(data)
    opts = CoxOptions(formula=formula, site_column=site_column, ties=ties.lower(),
                      na_action=check_na_action(na_action))
    prot = protection_options(protect, secagg_neighbours, secagg_threshold, bound, drop_sites,
                              drop_phase, drop_round)
    protection = protection_for(frame, site_column, prot)
    result = run_cox(frame, opts, protection=protection, audit_log=audit_log)
    typer.echo(result.summary())
    if json_out is not None:
        write_json(json_out, result.to_dict())
