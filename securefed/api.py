"""The Python recipe: ``sf.fit_glmm``, ``sf.fit_bfi``, ``sf.run_study``, ``sf.load_data``.

Each takes a table (a pandas DataFrame, or the path of a CSV file) split into
sites by ``site_column`` and runs every site in this process, exactly as the
``securefed fit`` / ``bfi`` / ``run`` commands do. ``protect`` is either the
command line's text (``"secagg"``, ``"ckks"``, ``"secagg,dp"``...) or a
protection layer object (``sf.SecAggSum()``, ``sf.CkksSum()``...).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["fit_glmm", "fit_bfi", "run_study", "load_data"]


def load_data(name: str):
    """A bundled data set as a DataFrame: ``"trauma"`` (mortality of 371 patients in 3
    hospitals) or ``"Nurses"`` (stress of 1,000 nurses in 25 hospitals); see
    ``securefed/data/README.md``."""
    from securefed.data import builtin_path, read_table

    return read_table(builtin_path(name))


def _table(data):
    from securefed.data import read_table

    if isinstance(data, str | Path):
        return read_table(data)
    return data


def _protection(frame, site_column: str, protect, family: str, dp):
    if not isinstance(protect, str):
        if dp is not None:
            raise ValueError("dp= goes with protect given as text (e.g. protect='secagg,dp')")
        return protect
    from securefed.preflight import check_layers
    from securefed.protection import ProtectionOptions, protection_for

    check_layers(protect)
    return protection_for(frame, site_column, ProtectionOptions(protect=protect, dp=dp), family)


def fit_glmm(data, formula: str, *, site_column: str, family: str = "binomial", nagq: int = 1,
             lam: float = 0.0, lambda_grid: tuple[float, ...] = (), select: str = "aic",
             seed: int | None = None, protect: Any = "none", dp=None,
             audit_log: str | Path | None = None,
             on_step: Callable | None = None, link: str | None = None, reml: bool = False):
    """Fit a GLMM federated over the sites of ``data``; returns a :class:`GLMMFit`.

    Parameters
    ----------
    data : DataFrame or path
        One row per observation, with the formula's columns and ``site_column``.
    formula : str
        lme4 style, e.g. ``"y ~ x1 + x2 + (1 | group)"``; groups nest in sites.
    site_column : str
        The column naming each row's site.
    family : str
        ``"binomial"``, ``"poisson"``, ``"gaussian"``, ``"Gamma"`` or
        ``"negative_binomial"`` (``"nbinom2"``, glmmTMB's NB2).
    nagq : int
        Gauss-Hermite nodes per random effect; 1 is the Laplace approximation.
    lam, lambda_grid, select, seed
        L2 penalty, or a grid to choose it from by ``"aic"``, ``"bic"`` or
        ``"heldout"`` (with the split's ``seed``).
    protect : str or protection layer
        ``"none"``, ``"secagg"``, ``"ckks"``, ``"secagg,dp"``... or a layer object.
    dp : DPOptions, optional
        The privacy budget, with ``"dp"`` in ``protect``.
    audit_log : path, optional
        Write a signed audit trail here.
    on_step : callable, optional
        Called with each Newton step (:class:`core_stats.optimize.NewtonStep`).
    link : str, optional
        A link the family allows (default: its canonical link, as R).
    reml : bool
        Gaussian models: REML (lmer's default) instead of maximum likelihood.
    """
    from securefed.glmm_run import GLMMOptions, run_glmm
    from securefed.preflight import check_formula

    check_formula(formula)
    frame = _table(data)
    opts = GLMMOptions(formula=formula, family=family, site_column=site_column, nagq=nagq,
                       lam=lam, lambda_grid=tuple(lambda_grid), select=select, seed=seed,
                       link=link, reml=reml)
    return run_glmm(frame, opts, protection=_protection(frame, site_column, protect, family, dp),
                    on_step=on_step, audit_log=audit_log)


def fit_bfi(data, formula: str, *, site_column: str, family: str = "gaussian",
            lam: float = 0.01, protect: Any = "none", dp=None,
            audit_log: str | Path | None = None, **options):
    """Bayesian Federated Inference of a GLM over the sites of ``data``; returns a ``BFIReport``.

    Parameters
    ----------
    data : DataFrame or path
        One row per observation, with the formula's columns and ``site_column``.
    formula : str
        A GLM formula without random effects, e.g. ``"stress ~ age + gender"``.
    site_column : str
        The column naming each row's centre.
    family : str
        ``"gaussian"``, ``"binomial"`` or ``"poisson"``.
    lam : float
        The prior precision of every parameter.
    protect, dp, audit_log
        As for :func:`fit_glmm`.
    **options
        Any other field of :class:`securefed.bfi_run.BFIOptions` (``stratify``,
        ``center_covariate``, ``standardize``, ``compare_pooled``, ``heterogeneity``...).
    """
    from securefed.bfi_run import BFIOptions, run_bfi
    from securefed.preflight import check_formula

    check_formula(formula, random_effects=False)
    frame = _table(data)
    for name in ("stratify", "standardize", "heterogeneity"):
        if isinstance(options.get(name), str):
            options[name] = (options[name],)
        elif name in options:
            options[name] = tuple(options[name])
    opts = BFIOptions(formula=formula, family=family, site_column=site_column, lam=lam,
                      **options)
    return run_bfi(frame, opts, protection=_protection(frame, site_column, protect, family, dp),
                   audit_log=audit_log)


def run_study(study, **callbacks):
    """Run a study file (path or a loaded :class:`securefed.study.Study`); returns its
    ``StudyRun`` (result dict, summary text, written files). ``callbacks``: ``on_site``,
    ``on_round``, ``on_step`` as in :func:`securefed.study.run_study`."""
    from securefed import study as studies

    if isinstance(study, str | Path):
        study = studies.load_study(study)
    return studies.run_study(study, **callbacks)
