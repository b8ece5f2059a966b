"""Predictions from a BFI fit, and the paper's held-out comparison with the pooled fit.

The held-out study (BFI paper section 4.3, Fig. 2): hold out a fraction of
every centre's rows, fit BFI and the pooled MAP on the rest, predict the
held-out rows with both, repeat; the scatter of BFI against pooled
predictions shows how close the one-shot combination comes to pooling.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd

from core_stats import bfi
from core_stats.families import get_family
from core_stats.formula import DesignSchema, FormulaError, predictor_matrix
from securefed.bfi_run import BFIOptions, BFIReport, run_bfi
from securefed.errors import InputError

__all__ = ["predict_rows", "holdout_study", "plot_holdout"]


def _standardized(report: BFIReport, frame: pd.DataFrame) -> pd.DataFrame:
    std = report.standardization
    if std is None:
        return frame
    cols = [c for c in std["columns"] if c in frame.columns]
    out = frame.copy()
    for col in cols:
        j = std["columns"].index(col)
        out[col] = (out[col].astype(float) - std["mean"][j]) / std["sd"][j]
    return out


def predict_rows(report: BFIReport, frame: pd.DataFrame, *, response: bool = True) -> np.ndarray:
    """Predicted means (or linear predictors) for new rows.

    Rows of a stratified or centre-covariate fit use their own site's
    parameters, so ``frame`` must then hold the site column.
    """
    opts = report.options
    family = get_family(opts.family, opts.link)
    data = _standardized(report, frame)
    schema = report.schema or DesignSchema(opts.formula)
    try:
        X = predictor_matrix(schema, data)
        offset = _offset(schema, data)
    except FormulaError as err:
        raise InputError(f"--predict: {err}") from None
    out = np.empty(len(frame))
    if opts.site_column in frame.columns:
        sites = frame[opts.site_column].astype(str).to_numpy()
    else:
        sites = np.full(len(frame), None, dtype=object)
    for site in pd.unique(sites):
        mask = sites == site
        theta = report.theta_for(site)
        out[mask] = bfi.predict(theta, report.parameter_names, X[mask], family,
                                response=response,
                                offset=None if offset is None else offset[mask])
    return out


def _offset(schema: DesignSchema, frame: pd.DataFrame) -> np.ndarray | None:
    """The new rows' ``offset()`` terms (R's ``predict.glm`` adds them), None without."""
    from core_stats.formula.design import evaluate_numeric

    nodes = schema.parsed.offsets
    if not nodes:
        return None
    missing = sorted(set(_offset_columns(nodes)) - set(frame.columns))
    if missing:
        raise FormulaError(f"column '{missing[0]}' of offset() is not in the new rows")
    offset = sum(evaluate_numeric(node, frame) for node in nodes)
    if not np.all(np.isfinite(offset)):
        raise FormulaError("offset() is missing or infinite in some new rows")
    return offset


def _offset_columns(nodes) -> list[str]:
    from core_stats.formula.terms import _column_names

    return [c for node in nodes for c in _column_names(node)]


def holdout_study(frame: pd.DataFrame, opts: BFIOptions, *, repeats: int = 50,
                  fraction: float = 0.1, shuffle_sites: bool = False,
                  seed: int = 0) -> pd.DataFrame:
    """Held-out predictions of BFI and of the pooled MAP fit, ``repeats`` times.

    ``shuffle_sites`` reassigns rows to sites at random first (the paper's
    homogeneous setting). Returns one row per held-out observation and repeat.
    """
    if not 0 < fraction < 1:
        raise InputError("--holdout must be between 0 and 1")
    if repeats < 1:
        raise InputError("--repeats must be at least 1")
    rng = np.random.default_rng(seed)
    data = frame.reset_index(drop=True)
    if shuffle_sites:
        data = data.assign(**{opts.site_column: rng.permutation(data[opts.site_column].values)})
    opts = replace(opts, compare_pooled=True)
    records = []
    for rep in range(repeats):
        held = np.zeros(len(data), dtype=bool)
        for _, idx in data.groupby(opts.site_column).indices.items():
            k = max(1, int(round(fraction * len(idx))))
            held[rng.choice(idx, size=k, replace=False)] = True
        train, test = data[~held], data[held]
        report = run_bfi(train, opts)
        bfi_pred = predict_rows(report, test)
        pooled_pred = predict_rows(replace(report, site_thetas=report.pooled_site_thetas), test)
        records.append(pd.DataFrame({"repeat": rep, "site": test[opts.site_column].values,
                                     "bfi": bfi_pred, "pooled": pooled_pred}))
    return pd.concat(records, ignore_index=True)


def agreement(table: pd.DataFrame) -> dict:
    """Correlation and mean absolute difference of BFI vs pooled predictions."""
    diff = np.abs(table.bfi - table.pooled)
    return {"correlation": float(np.corrcoef(table.bfi, table.pooled)[0, 1]),
            "mean_abs_difference": float(diff.mean()), "max_abs_difference": float(diff.max()),
            "n_predictions": int(len(table))}


def plot_holdout(panels: dict[str, pd.DataFrame], path: str) -> None:
    """One scatter per setting: BFI against pooled predictions, with the identity line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.2), squeeze=False)
    for ax, (title, table) in zip(axes[0], panels.items(), strict=True):
        stats = agreement(table)
        ax.scatter(table.pooled, table.bfi, s=4, alpha=0.35)
        lo = float(min(table.pooled.min(), table.bfi.min()))
        hi = float(max(table.pooled.max(), table.bfi.max()))
        ax.plot([lo, hi], [lo, hi], color="black", linewidth=0.8)
        ax.set_title(f"{title}\nr = {stats['correlation']:.3f}, "
                     f"MAD = {stats['mean_abs_difference']:.3f}", fontsize=9)
        ax.set_xlabel("pooled prediction")
        ax.set_ylabel("BFI prediction")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
