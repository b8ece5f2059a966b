"""``securefed bfi`` and ``securefed bfi-holdout``: Bayesian Federated Inference."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import typer

from securefed.cli_fit import (
    AUDIT_LOG,
    BOUND,
    DELTA,
    DP_CLIP,
    DP_MIN_CONTRIBUTORS,
    DP_OUTCOME_BOUND,
    DP_RUN_EPSILON,
    DROP_PHASE,
    DROP_ROUND,
    DROP_SITES,
    EPSILON,
    EXPECT_FINGERPRINT,
    LINK,
    NA_ACTION,
    NEIGHBOURS,
    PRIVACY_LEDGER,
    PROTECT,
    SITE_KEYS,
    THRESHOLD,
    check_na_action,
    dp_options,
    echo_trail_note,
    preflight,
    protection_options,
    trail_keys,
    write_json,
)
from securefed.errors import InputError


def _names(text: str | None) -> tuple[str, ...]:
    return tuple(t.strip() for t in text.split(",") if t.strip()) if text else ()


def _options(formula, family, site_column, lam, intercept_lambda, scale_lambda, stratify,
             center_covariate, center_covariate_kind, standardize, compare_pooled=False,
             heterogeneity=None, combined_lambda=None):
    from securefed.bfi_run import BFIOptions

    return BFIOptions(formula=formula, family=family, site_column=site_column, lam=lam,
                      intercept_lam=intercept_lambda, scale_lam=scale_lambda,
                      combined_lam=combined_lambda,
                      stratify=_names(stratify), center_covariate=center_covariate,
                      center_covariate_kind=center_covariate_kind,
                      standardize=_names(standardize), compare_pooled=compare_pooled,
                      heterogeneity=_names(heterogeneity))


def bfi(
    data: Path = typer.Argument(..., help="CSV file with one row per observation."),
    formula: str = typer.Option(..., "--formula", help="GLM formula: 'y ~ x1 + x2'."),
    family: str = typer.Option("gaussian", "--family",
                               help="gaussian, binomial, poisson or survival."),
    site_column: str = typer.Option(..., "--site-column", help="Column naming each row's centre."),
    lam: float = typer.Option(0.01, "--lambda", help="Prior precision of every parameter."),
    baseline: str = typer.Option(None, "--baseline", help="Survival: the baseline hazard, "
                                 "exponential, weibull, gompertz, poly, pwexp or unspecified."),
    baseline_order: int = typer.Option(2, "--baseline-order", help="poly: the largest order "
                                       "(R's max_order)."),
    baseline_alpha: float = typer.Option(0.1, "--baseline-alpha", help="poly: level of the "
                                         "order tests (R's alpha)."),
    baseline_pieces: int = typer.Option(None, "--baseline-pieces", help="pwexp: number of "
                                        "pieces (R's n_intervals)."),
    baseline_max_time: float = typer.Option(None, "--baseline-max-time", help="pwexp: public "
                                            "end of R's grid (R's min_max_times)."),
    baseline_knots: str = typer.Option(None, "--baseline-knots", help="pwexp: the cut points "
                                       "0,c1,...,cK instead of R's grid."),
    intercept_lambda: float = typer.Option(None, "--intercept-lambda"),
    scale_lambda: float = typer.Option(None, "--scale-lambda", help="Prior on log sigma."),
    combined_lambda: float = typer.Option(None, "--combined-lambda", help="Prior precision "
                                          "for the combined data (default: the sites')."),
    stratify: str = typer.Option(None, "--stratify", help="Centre-specific terms, e.g. "
                                 "'(Intercept)',age or sigma."),
    center_covariate: str = typer.Option(None, "--center-covariate",
                                         help="Centre-level covariate column, e.g. hospsize."),
    center_covariate_kind: str = typer.Option("categorical", "--center-covariate-kind",
                                              help="categorical or continuous."),
    standardize: str = typer.Option(None, "--standardize", help="Columns to standardise with "
                                    "pooled means and SDs, e.g. age,experien,stress."),
    compare_pooled: bool = typer.Option(False, "--compare-pooled",
                                        help="Also fit the pooled MAP (reference)."),
    heterogeneity: str = typer.Option(None, "--heterogeneity",
                                      help="Terms to check across centres (section 3.2)."),
    predict: Path = typer.Option(None, "--predict", help="CSV of new rows to predict."),
    predictions_out: Path = typer.Option(None, "--predictions-out",
                                         help="Where to write the predictions (CSV)."),
    protect: str = PROTECT,
    secagg_neighbours: int = NEIGHBOURS,
    secagg_threshold: int = THRESHOLD,
    bound: float = BOUND,
    drop_sites: str = DROP_SITES,
    drop_phase: str = DROP_PHASE,
    drop_round: int = DROP_ROUND,
    epsilon: float = EPSILON,
    delta: float = DELTA,
    dp_clip: float = DP_CLIP,
    dp_outcome_bound: float = DP_OUTCOME_BOUND,
    dp_run_epsilon: float = DP_RUN_EPSILON,
    dp_min_contributors: int = DP_MIN_CONTRIBUTORS,
    dp_standardize_range: str = typer.Option(
        None, "--dp-standardize-range", help="DP: public range of each --standardize column, "
        "e.g. age=18:70,experien=0:50 (values are clipped to it)."),
    privacy_ledger: Path = PRIVACY_LEDGER,
    audit_log: Path = AUDIT_LOG,
    site_keys: Path = SITE_KEYS,
    expect_fingerprint: str = EXPECT_FINGERPRINT,
    json_out: Path = typer.Option(None, "--json", help="Write the result as JSON here."),
    na_action: str = NA_ACTION,
    link: str = LINK,
    weights: str = typer.Option(None, "--weights", help="Column of prior weights (glm's "
                                "weights=; binomial: trials, with y the proportion)."),
    quiet: bool = typer.Option(False, "--quiet"),
) -> None:
    """Combine local MAP fits of a GLM in one shot (BFI)."""
    if predictions_out is not None and predict is None:
        raise InputError("--predictions-out needs --predict NEW.csv")
    target = None
    if predict is not None:
        from securefed.preflight import check_csv, formula_columns

        check_csv(predict, formula_columns(formula)[1:])
        target = predictions_out or predict.with_name(predict.stem + "_predictions.csv")
    outputs = {"--json": json_out, "--audit-log": audit_log, "--predictions-out": target}
    if family.lower() == "survival":  # Surv(...) formulas are read by the survival parser
        from securefed import preflight as pre

        if "dp" in [layer.strip().lower() for layer in protect.split(",")]:
            from securefed.bfi_survival_run import SURVIVAL_DP_REFUSED

            raise InputError(SURVIVAL_DP_REFUSED)
        pre.check_layers(protect)
        for flag, path in outputs.items():
            pre.check_output(path, flag)
        pre.check_csv(data, (site_column,))
    else:
        preflight(data, formula, family, site_column, protect, outputs,
                  (center_covariate, weights, *_names(standardize)), random_effects=False)
    from securefed.bfi_run import run_bfi
    from securefed.data import read_table
    from securefed.progress import Display
    from securefed.protection import protection_for

    keys = trail_keys(audit_log, site_keys, expect_fingerprint)
    frame = read_table(data)
    if family.lower() == "survival":
        if center_covariate is not None:
            raise InputError("--center-covariate is not available with --family survival: "
                             "R BFI's centre covariates act on an intercept, which a hazard "
                             "model has not")
        _survival_only({"--standardize": standardize, "--compare-pooled": compare_pooled or None,
                        "--heterogeneity": heterogeneity, "--predict": predict,
                        "--epsilon": epsilon, "--intercept-lambda": intercept_lambda,
                        "--scale-lambda": scale_lambda})
        from securefed.bfi_survival_run import SurvivalBFIOptions, run_bfi_survival

        if baseline is None:
            raise InputError("--family survival needs --baseline exponential, weibull, "
                             "gompertz, poly, pwexp or unspecified")
        prot = protection_options(protect, secagg_neighbours, secagg_threshold, bound,
                                  drop_sites, drop_phase, drop_round)
        knots = _knots(baseline_knots, baseline_pieces, baseline_max_time)
        report = run_bfi_survival(
            frame, SurvivalBFIOptions(formula, site_column, baseline.lower(), lam,
                                      combined_lambda, _names(stratify),
                                      max_order=baseline_order, alpha=baseline_alpha,
                                      knots=knots),
            protection=protection_for(frame, site_column, prot), audit_log=audit_log)
        typer.echo(report.summary())
        if json_out is not None:
            write_json(json_out, report.to_dict())
        return
    if baseline is not None or baseline_knots or baseline_pieces or baseline_max_time:
        raise InputError("--baseline and its settings are for --family survival")
    opts = _options(formula, family, site_column, lam, intercept_lambda, scale_lambda, stratify,
                    center_covariate, center_covariate_kind, standardize, compare_pooled,
                    heterogeneity, combined_lambda)
    opts = replace(opts, na_action=check_na_action(na_action), link=link, weights=weights)
    dp = dp_options(epsilon, delta, dp_clip, dp_outcome_bound, dp_run_epsilon, 3, 8.0,
                    dp_min_contributors, privacy_ledger, dp_standardize_range)
    prot = protection_options(protect, secagg_neighbours, secagg_threshold, bound, drop_sites,
                              drop_phase, drop_round, dp)
    protection = protection_for(frame, site_column, prot, family)
    with Display(f"BFI over {frame[site_column].nunique()} sites: local fits, one sum...",
                 quiet=quiet):
        report = run_bfi(frame, opts, protection=protection, audit_log=audit_log,
                         audit_keys=keys)
    typer.echo(report.summary())
    echo_trail_note(audit_log, keys)  # with --quiet too: it says what the trail proves
    if json_out is not None:
        write_json(json_out, report.to_dict())
    if predict is not None:
        from securefed.bfi_predict import predict_rows

        new = read_table(predict)
        out = new.assign(prediction=predict_rows(report, new))
        try:
            out.to_csv(target, index=False)
        except OSError as err:
            raise InputError(f"cannot write {target}: {err.strerror}") from None
        if not quiet:
            typer.echo(f"predictions written to {target}")


def _knots(text: str | None, pieces: int | None, max_time: float | None) -> tuple[float, ...]:
    """pwexp's knots: given, or R's grid from --baseline-pieces and --baseline-max-time."""
    from core_stats.survival_baselines import r_knots

    if text and (pieces is not None or max_time is not None):
        raise InputError("give --baseline-knots or --baseline-pieces with --baseline-max-time, "
                         "not both")
    if text:
        try:
            return tuple(float(v) for v in text.split(","))
        except ValueError:
            raise InputError("--baseline-knots must be numbers separated by commas") from None
    if pieces is None and max_time is None:
        return ()
    if pieces is None or max_time is None:
        raise InputError("--baseline-pieces and --baseline-max-time go together (R's "
                         "n_intervals and min_max_times)")
    try:
        return r_knots(pieces, max_time)
    except ValueError as err:
        raise InputError(str(err)) from None


def _survival_only(given: dict) -> None:
    """Refuse, in one line, the GLM BFI options that survival BFI does not have yet."""
    for flag, value in given.items():
        if value is not None:
            raise InputError(f"{flag} is not available with --family survival yet (homogeneous "
                             "BFI only)")


def bfi_holdout(
    data: Path = typer.Argument(..., help="CSV file with one row per observation."),
    formula: str = typer.Option(..., "--formula"),
    family: str = typer.Option("gaussian", "--family"),
    site_column: str = typer.Option(..., "--site-column"),
    lam: float = typer.Option(0.01, "--lambda"),
    center_covariate: str = typer.Option(None, "--center-covariate"),
    standardize: str = typer.Option(None, "--standardize"),
    repeats: int = typer.Option(50, "--repeats", help="Random held-out splits."),
    holdout: float = typer.Option(0.1, "--holdout", help="Fraction of each centre held out."),
    seed: int = typer.Option(0, "--seed"),
    png: Path = typer.Option(..., "--png", help="Where to write the Fig. 2 style scatter."),
    csv: Path = typer.Option(None, "--csv", help="Where to write every prediction."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress display."),
) -> None:
    """BFI vs pooled predictions on held-out rows (BFI paper, Fig. 2): heterogeneous
    as given, and homogeneous with rows shuffled across centres."""
    preflight(data, formula, family, site_column, "none", {"--png": png, "--csv": csv},
              (center_covariate, *_names(standardize)), random_effects=False)
    from securefed.bfi_predict import agreement, holdout_study, plot_holdout
    from securefed.data import read_table
    from securefed.progress import Display

    frame = read_table(data)
    opts = _options(formula, family, site_column, lam, None, None, None, None,
                    "categorical", standardize)
    study = {"repeats": repeats, "fraction": holdout, "seed": seed}
    with Display(f"held-out study: {repeats} splits, centres as given", quiet=quiet) as shown:
        panels = {"heterogeneous (centres as given)": holdout_study(frame, opts, **study)}
        if center_covariate:
            shown.update(f"held-out study: {repeats} splits, with {center_covariate}")
            with_cov = _options(formula, family, site_column, lam, None, None, None,
                                center_covariate, "categorical", standardize)
            panels[f"with {center_covariate}"] = holdout_study(frame, with_cov, **study)
        shown.update(f"held-out study: {repeats} splits, rows shuffled")
        panels["homogeneous (rows shuffled)"] = holdout_study(frame, opts, shuffle_sites=True,
                                                              **study)
    plot_holdout(panels, str(png))
    for title, table in panels.items():
        stats = agreement(table)
        typer.echo(f"{title}: correlation {stats['correlation']:.4f}, mean |BFI - pooled| "
                   f"{stats['mean_abs_difference']:.4f} over {stats['n_predictions']} predictions")
    if csv is not None:
        import pandas as pd

        pd.concat([t.assign(setting=k) for k, t in panels.items()]).to_csv(csv, index=False)
