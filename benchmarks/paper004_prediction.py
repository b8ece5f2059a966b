"""Paper 004 §4.3: BFI predictions against the pooled fit's, on held-out nurses (Fig. 2).

    python benchmarks/paper004_prediction.py              # 50 repetitions, three settings
    python benchmarks/paper004_prediction.py --quick      # 3 repetitions, to a temp folder

Design (the paper's, §4.3 and Fig. 2): the Nurses data (1000 nurses, 25
hospitals); Gaussian model stress ~ age + gender + experien + wardtype with
age, experience and stress standardised (pooled means/SDs from summed site
statistics), prior precision lambda = 0.1. Each repetition holds out
round(10%) of every hospital's nurses, fits BFI and the pooled MAP (the same
prior) on the rest and predicts the held-out nurses with both
(``securefed.bfi_predict.holdout_study``). Settings:

1. heterogeneous, hospitals as they are, hospital size ignored;
2. heterogeneous, hospital size (3 categories) as a centre covariate (paper
   §3.4 / Appendix C: one intercept per category; the pooled fit likewise);
3. homogeneous: nurses shuffled across hospitals (hospital sizes kept), the
   shuffle redrawn every repetition as the paper does, size ignored.

Settings 1 and 2 use the same 50 held-out splits (seed 0). Setting 3's
repetition r uses seed 1000 + r for its shuffle and split.

Writes benchmarks/results/paper004_prediction.png (the three scatters),
paper004_prediction.csv (per setting: correlation and mean |BFI - pooled| over
all predictions, and mean, SD, min, max over repetitions),
paper004_prediction_repeats.csv (per repetition), paper004_prediction.md and
the README snippet paper004_readme.md.
"""

from __future__ import annotations

import argparse
import sys

import bench_common as bench
import pandas as pd

from securefed.bfi_predict import agreement, holdout_study, plot_holdout
from securefed.bfi_run import BFIOptions
from securefed.data import builtin_path

FORMULA = "stress ~ age + gender + experien + wardtype"
LAMBDA = 0.1
SETTINGS = ("heterogeneous, size ignored", "heterogeneous, with hospital size",
            "homogeneous (nurses shuffled)")


def options(center_covariate: str | None = None) -> BFIOptions:
    return BFIOptions(FORMULA, "gaussian", "hospital", lam=LAMBDA,
                      standardize=("age", "experien", "stress"),
                      center_covariate=center_covariate)


def run_study(frame: pd.DataFrame, repeats: int) -> dict[str, pd.DataFrame]:
    """Every held-out prediction of the three settings, by setting name."""
    panels = {
        SETTINGS[0]: holdout_study(frame, options(), repeats=repeats, seed=0),
        SETTINGS[1]: holdout_study(frame, options("hospsize"), repeats=repeats, seed=0),
    }
    shuffled = [holdout_study(frame, options(), repeats=1, shuffle_sites=True, seed=1000 + r)
                .assign(repeat=r) for r in range(repeats)]
    panels[SETTINGS[2]] = pd.concat(shuffled, ignore_index=True)
    return panels


def per_repeat(panels: dict[str, pd.DataFrame]) -> pd.DataFrame:
    rows = []
    for setting, table in panels.items():
        for rep, part in table.groupby("repeat"):
            stats = agreement(part)
            rows.append({"setting": setting, "repeat": int(rep),
                         "correlation": stats["correlation"],
                         "mean_abs_difference": stats["mean_abs_difference"],
                         "mean_difference": float((part.bfi - part.pooled).mean()),
                         "n_predictions": stats["n_predictions"]})
    return pd.DataFrame(rows)


def summarise(panels: dict[str, pd.DataFrame], repeats: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for setting, table in panels.items():
        overall = agreement(table)
        reps = repeats[repeats.setting == setting]
        row = {"setting": setting, "repetitions": len(reps),
               "predictions": overall["n_predictions"],
               "correlation_all": overall["correlation"],
               "mad_all": overall["mean_abs_difference"],
               "max_abs_difference": overall["max_abs_difference"],
               "mean_difference": float((table.bfi - table.pooled).mean())}
        for metric, short in (("correlation", "corr"), ("mean_abs_difference", "mad")):
            row.update({f"{short}_mean": reps[metric].mean(), f"{short}_sd": reps[metric].std(),
                        f"{short}_min": reps[metric].min(), f"{short}_max": reps[metric].max()})
        rows.append(row)
    return pd.DataFrame(rows)


COLUMNS = ["setting", "repetitions", "predictions", "correlation_all", "corr_mean", "corr_sd",
           "corr_min", "mad_all", "mad_mean", "mad_sd", "mad_max", "mean_difference"]


def write(summary: pd.DataFrame, out, repetitions: int) -> None:
    ran = bench.run_line(out, "paper004")
    lines = [
        "# Paper 004 §4.3: BFI vs pooled predictions on held-out nurses (Fig. 2)", "",
        f"`python benchmarks/paper004_prediction.py` ({repetitions} repetitions, "
        f"{ran}). Design: the script's docstring (Nurses, "
        f"`{FORMULA}`, age/experience/stress standardised, λ = {LAMBDA}, 10% of every "
        "hospital held out per repetition; homogeneous = nurses reshuffled across hospitals "
        "every repetition).", "",
        "Predictions are on the standardised stress scale. `correlation_all`/`mad_all`: over "
        "all held-out predictions of all repetitions (the scatter); `corr_*`/`mad_*`: the "
        "statistic per repetition, then its mean, SD and extreme over repetitions; "
        "`mean_difference` = mean(BFI − pooled).", "",
        *bench.markdown_table(summary.to_dict("records"), COLUMNS, digits=4), "",
        "![BFI vs pooled predictions](paper004_prediction.png)"]
    (out / "paper004_prediction.md").write_text("\n".join(lines) + "\n")
    by = summary.set_index("setting")
    text = "; ".join(f"{name}: correlation {by.loc[name, 'correlation_all']:.3f} "
                     f"(per repetition {by.loc[name, 'corr_mean']:.3f} ± "
                     f"{by.loc[name, 'corr_sd']:.3f}), mean |BFI − pooled| "
                     f"{by.loc[name, 'mad_all']:.3f}" for name in summary.setting)
    shift = [by.loc[name, "mean_difference"] for name in SETTINGS]
    note = (" (BFI predicts higher: the paper's intercept discrepancy under unmodelled "
            "heterogeneity)" if shift[0] > max(abs(shift[1]), abs(shift[2])) else "")
    bench.write_snippet(out, "paper004", [
        "**BFI vs pooled predictions (paper 004 §4.3, Fig. 2; generated).** Held-out "
        f"nurses, {repetitions} repetitions, λ = {LAMBDA}, 10% of each hospital held out "
        "(`python benchmarks/paper004_prediction.py`, "
        f"{ran}; `benchmarks/results/paper004_prediction.md`): {text}. "
        "Mean BFI − pooled prediction (standardised stress): "
        f"{shift[0]:+.3f} ignoring size{note}, {shift[1]:+.3f} with size, {shift[2]:+.3f} "
        "homogeneous.", "",
        "![BFI vs pooled predictions](benchmarks/results/paper004_prediction.png)"])
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 3 repetitions, written to a temp folder")
    parser.add_argument("--out", help="results folder (default benchmarks/results)")
    parser.add_argument("--predictions-csv", help="also write every prediction here")
    args = parser.parse_args()
    repetitions = 3 if args.quick else args.repeats
    out = bench.results_dir(args.quick, args.out)
    clock = bench.Stopwatch()
    frame = pd.read_csv(builtin_path("Nurses"))
    panels = run_study(frame, repetitions)
    repeats = per_repeat(panels)
    summary = summarise(panels, repeats)
    repeats.to_csv(out / "paper004_prediction_repeats.csv", index=False)
    summary.to_csv(out / "paper004_prediction.csv", index=False)
    plot_holdout(panels, str(out / "paper004_prediction.png"))
    if args.predictions_csv:
        pd.concat([t.assign(setting=k) for k, t in panels.items()]).to_csv(
            args.predictions_csv, index=False)
    bench.record_run(out, "paper004", clock.elapsed, repetitions=repetitions)
    write(summary, out, repetitions)
    print(f"wrote {out} in {clock.elapsed:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
