"""``securefed fit`` and ``securefed demo``: federated GLMM from the shell."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from securefed.errors import InputError

FORMULA_HELP = "Model formula, lme4 style: 'y ~ x1 + x2 + (1 | group)'."
LINK = typer.Option(None, "--link", help="binomial: logit (default), probit or cloglog; "
                    "Gamma: inverse (default, as R) or log.")
NA_ACTION = typer.Option("omit", "--na-action", help="omit (as R: drop rows with a missing "
                         "model value, counted per site) or fail.")
PROTECT = typer.Option("none", "--protect", help="Protection layers, comma-separated: none, "
                       "secagg or ckks, plus dp (e.g. secagg,dp).")
NEIGHBOURS = typer.Option(None, "--secagg-neighbours",
                          help="SecAgg+: each site masks with k random neighbours.")
THRESHOLD = typer.Option(None, "--secagg-threshold", help="Shamir threshold t (default 2n/3+1).")
BOUND = typer.Option(2.0**40, "--bound", help="Public bound on any released value.")
DROP_SITES = typer.Option(None, "--drop-sites", help="Simulate these sites dropping (e.g. 3,17).")
DROP_PHASE = typer.Option(None, "--drop-phase", help="after-key-exchange, after-key-sharing, "
                          "after-masked-input or during-unmask.")
DROP_ROUND = typer.Option(1, "--drop-round", help="The round in which they drop.")
EPSILON = typer.Option(None, "--epsilon", help="DP: each site's privacy budget epsilon.")
DELTA = typer.Option(1e-6, "--delta", help="DP: each site's delta.")
DP_CLIP = typer.Option(None, "--dp-clip", help="DP: L2 bound R on one record's covariate "
                       "vector (intercept included); longer rows are scaled down to it.")
DP_OUTCOME_BOUND = typer.Option(None, "--dp-outcome-bound",
                                help="DP: bound B on |outcome| (gaussian, poisson).")
DP_RUN_EPSILON = typer.Option(None, "--dp-run-epsilon",
                              help="DP: what this run may spend (default: the whole budget).")
DP_ROUNDS = typer.Option(3, "--dp-rounds", help="DP: Newton rounds of a GLMM fit.")
DP_MAX_SE_RATIO = typer.Option(10.0, "--dp-max-se-ratio", help="DP: refuse a GLMM fit (after "
                               "its first release) whose predicted standard error of a fixed "
                               "effect exceeds this multiple of the non-private one.")
DP_GROUP_CLIP = typer.Option(8.0, "--dp-group-clip", help="DP: bound on one group's GLMM "
                             "terms, in records (see docs/privacy.md).")
DP_MIN_CONTRIBUTORS = typer.Option(None, "--dp-min-contributors", help="DP: smallest number "
                                   "of sites a noisy sum may hold (default 2n/3+1).")
PRIVACY_LEDGER = typer.Option(None, "--privacy-ledger", help="DP: folder of the sites' "
                              "persistent privacy ledgers (earlier runs count).")
ROBUST = typer.Option(False, "--robust", help="Bounded influence: each site also sends its "
                      "summary of the final round to the validator, which refuses the run, "
                      "naming the site, if one site moves a coefficient by more than "
                      "--robust-bound SEs (leave-one-out); threat_model/poisoning.md.")
ROBUST_BOUND = typer.Option(2.0, "--robust-bound", help="With --robust: the largest "
                            "leave-one-out shift of any coefficient allowed, in SEs.")
AUDIT_LOG = typer.Option(None, "--audit-log", help="Write a signed audit trail here "
                         "(plus per-site logs and a key registry beside it).")
SITE_KEYS = typer.Option(None, "--site-keys", help="Sign the audit trail with the keys "
                         "securefed keygen made: DIR holds coordinator.key, NAME.key per site "
                         "and registry.json (without it: keys made for the run, unpinnable).")
EXPECT_FINGERPRINT = typer.Option(None, "--expect-fingerprint", help="Refuse to run unless "
                                  "--site-keys' registry has this fingerprint (64 hex).")


def trail_keys(audit_log: Path | None, site_keys: Path | None, expect: str | None):
    """The --site-keys identities (None without), checked against --expect-fingerprint."""
    from securefed.audit_keys import load_trail_keys

    if site_keys is None:
        if expect is not None:
            raise InputError("--expect-fingerprint pins the registry of --site-keys DIR: "
                             "add --site-keys")
        return None
    if audit_log is None:
        raise InputError("--site-keys signs the audit trail: add --audit-log FILE")
    return load_trail_keys(site_keys, expect_fingerprint=expect)


def echo_trail_note(audit_log: Path | None, keys) -> None:
    """Say which keys signed the trail (and that throwaway keys pin nothing)."""
    from securefed.audit_keys import trail_note

    if audit_log is not None:
        typer.echo(trail_note(keys))


def protection_options(protect, neighbours, threshold, bound, drop_sites, drop_phase,
                       drop_round, dp=None):
    from securefed.protection import ProtectionOptions, parse_sites

    return ProtectionOptions(protect=protect, neighbours=neighbours, threshold=threshold,
                             bound=bound, drop_sites=parse_sites(drop_sites),
                             drop_phase=drop_phase, drop_round=drop_round, dp=dp)


def parse_ranges(text: str | None) -> tuple[tuple[str, float, float], ...]:
    """``"age=18:70,experien=0:50"`` to ``(("age", 18.0, 70.0), ...)`` (InputError otherwise)."""
    out = []
    for part in (text or "").split(","):
        if not part.strip():
            continue
        try:
            name, span = part.split("=")
            low, high = (float(v) for v in span.split(":"))
        except ValueError:
            raise InputError(f"--dp-standardize-range {part.strip()!r}: write COLUMN=LOW:HIGH, "
                             "comma-separated") from None
        out.append((name.strip(), low, high))
    return tuple(out)


def dp_options(epsilon, delta, clip, outcome_bound, run_epsilon, rounds, group_clip,
               min_contributors, ledger, standardize_ranges=None, max_se_ratio=10.0):
    """DPOptions from the --epsilon/--dp-* flags; None when no budget was given."""
    from securefed.privacy import DPOptions

    if epsilon is None:
        given = [flag for flag, value in (("--dp-clip", clip), ("--dp-outcome-bound",
                 outcome_bound), ("--dp-run-epsilon", run_epsilon), ("--privacy-ledger", ledger),
                 ("--dp-standardize-range", standardize_ranges)) if value is not None]
        if given:
            raise InputError(f"{given[0]} needs a privacy budget: add --epsilon E")
        return None
    return DPOptions(epsilon=epsilon, delta=delta, clip=clip, outcome_bound=outcome_bound,
                     run_epsilon=run_epsilon, rounds=rounds, group_clip=group_clip,
                     min_contributors=min_contributors, ledger_dir=ledger,
                     standardize_ranges=parse_ranges(standardize_ranges),
                     max_se_ratio=max_se_ratio)


def parse_grid(text: str | None) -> tuple[float, ...]:
    """``"0,1,2.5"`` to a tuple of floats (InputError on anything else)."""
    if not text:
        return ()
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise InputError(f"--lambda-grid {text!r}: give numbers separated by commas") from None


def preflight(data: Path, formula: str, family: str, site_column: str, protect: str,
              outputs: dict[str, Path | None], columns: tuple[str | None, ...] = (), *,
              random_effects: bool = True) -> None:
    """Everything checkable before pandas, scipy or any work: the data file and its columns,
    the formula's shape, the family, the protection layers and every output path."""
    from securefed import preflight as pre

    pre.check_formula(formula, random_effects=random_effects)
    pre.check_family(family)
    pre.check_layers(protect)
    for flag, path in outputs.items():
        pre.check_output(path, flag)
    pre.check_csv(data, (site_column, *pre.formula_columns(formula), *columns))


def check_na_action(value: str) -> str:
    if value not in ("omit", "fail"):
        raise InputError(f"--na-action {value!r}: choose omit or fail")
    return value


def write_json(path: Path, payload: dict) -> None:
    try:
        path.write_text(json.dumps(payload, indent=2, allow_nan=False) + "\n")
    except OSError as err:
        raise InputError(f"cannot write {path}: {err.strerror}") from None


def fit(
    data: Path = typer.Argument(..., help="CSV file with one row per observation."),
    formula: str = typer.Option(..., "--formula", help=FORMULA_HELP),
    family: str = typer.Option("binomial", "--family", help="binomial, poisson, gaussian, "
                               "Gamma or negative_binomial (nbinom2: glmmTMB's NB2)."),
    link: str = LINK,
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
    epsilon: float = EPSILON,
    delta: float = DELTA,
    dp_clip: float = DP_CLIP,
    dp_outcome_bound: float = DP_OUTCOME_BOUND,
    dp_run_epsilon: float = DP_RUN_EPSILON,
    dp_rounds: int = DP_ROUNDS,
    dp_group_clip: float = DP_GROUP_CLIP,
    dp_max_se_ratio: float = DP_MAX_SE_RATIO,
    dp_min_contributors: int = DP_MIN_CONTRIBUTORS,
    privacy_ledger: Path = PRIVACY_LEDGER,
    robust: bool = ROBUST,
    robust_bound: float = ROBUST_BOUND,
    audit_log: Path = AUDIT_LOG,
    site_keys: Path = SITE_KEYS,
    expect_fingerprint: str = EXPECT_FINGERPRINT,
    json_out: Path = typer.Option(None, "--json", help="Write the result as JSON here."),
    seed: int = typer.Option(None, "--seed", help="Seed for the validation split."),
    na_action: str = NA_ACTION,
    weights: str = typer.Option(None, "--weights", help="Column of prior weights (glmer's "
                                "weights=; binomial: trials, with y the proportion)."),
    reml: bool = typer.Option(False, "--reml", help="Gaussian: fit by REML (lmer's default "
                              "criterion) instead of maximum likelihood."),
    quiet: bool = typer.Option(False, "--quiet", help="Print only the summary."),
) -> None:
    """Fit a GLMM federated over the sites in SITE_COLUMN."""
    preflight(data, formula, family, site_column, protect,
              {"--json": json_out, "--audit-log": audit_log})
    from securefed.data import read_table
    from securefed.glmm_run import GLMMOptions
    from securefed.progress import run_with_progress

    keys = trail_keys(audit_log, site_keys, expect_fingerprint)
    frame = read_table(data)
    opts = GLMMOptions(formula=formula, family=family, site_column=site_column, nagq=nagq,
                       lam=lam, lambda_grid=parse_grid(lambda_grid), select=select, seed=seed,
                       na_action=check_na_action(na_action), weights=weights, link=link,
                       robust=robust, robust_bound=robust_bound, reml=reml)
    dp = dp_options(epsilon, delta, dp_clip, dp_outcome_bound, dp_run_epsilon, dp_rounds,
                    dp_group_clip, dp_min_contributors, privacy_ledger,
                    max_se_ratio=dp_max_se_ratio)
    prot = protection_options(protect, secagg_neighbours, secagg_threshold, bound, drop_sites,
                              drop_phase, drop_round, dp)
    result = run_with_progress(frame, opts, protect=prot, quiet=quiet, audit_log=audit_log,
                               audit_keys=keys)
    typer.echo(result.summary())
    if "robust" in result.extra:
        from securefed.robust.validator import robust_summary_line

        typer.echo(robust_summary_line(result.extra["robust"]))
    echo_trail_note(audit_log, keys)  # with --quiet too: it says what the trail proves
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
    from securefed.preflight import check_layers, check_output

    check_layers(protect)
    check_output(json_out, "--json")
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
