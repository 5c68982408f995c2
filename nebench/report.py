"""Turn the results table into a markdown summary and the two plots of nomad-projection Fig. 3.

    python -m nebench.report [results_file] [--out DIR] [--k 15]

writes ``DIR/summary.md`` (mean ± sd over the seeds of each configuration: runs identical in
everything but the seed, shown by dataset, method and the keys that tell its rows apart),
``DIR/runs.csv`` (every run, one row each), ``DIR/np_vs_time.png`` (NP@k vs wall time) and
``DIR/rta_vs_time.png`` (random triplet accuracy vs wall time): log time axis, one panel per
dataset, one series per method (split by device setup where a method ran on several), its
settings joined in order of their epochs or iterations (nomad-projection sec. 4.1, Fig. 3).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from nebench.errors import InputError
from nebench.io import atomic_open
from nebench.plotting import plot_quality_vs_time
from nebench.results import read_results

log = logging.getLogger(__name__)

DEFAULT_RESULTS = Path(os.environ.get("NEBENCH_RESULTS_DIR", "results")) / "results.jsonl"
#: the device setup of a run
DEVICE_COLUMNS = ("accelerator", "devices")
#: configuration columns besides the prefixed ones (the seed is not one: seeds are averaged);
#: a run whose kNN index came from the cache (no search in its time) and one on another number
#: of cores are not the same measurement
CONFIG_COLUMNS = ("dataset", "method", "n", "dim", "holdout", *DEVICE_COLUMNS, "code_version",
                  "knn_cached", "cpus")
CONFIG_PREFIXES = ("method.", "dataset.", "metrics.", "trainer.")
#: hyperparameters that count a method's optimisation steps, in order of preference
BUDGET_COLUMNS = ("method.n_epochs", "method.n_iter")
#: summary columns that are neither keys nor metrics
SUMMARY_EXTRA = ("seeds", "runs", "budget")
TIME = "time_total_s"
#: quality metrics besides NP@k, in the summary's order
QUALITY = ("rta", "knn_acc", "trustworthiness", "continuity", "distance_spearman")


def config_columns(table: pd.DataFrame) -> list[str]:
    """The columns that describe a run's configuration (``CONFIG_COLUMNS`` and every
    ``method.*``, ``dataset.*``, ``metrics.*`` and ``trainer.*`` key), in table order: two runs
    that agree on all of them differ only in the seed."""
    return [c for c in table.columns if c in CONFIG_COLUMNS or c.startswith(CONFIG_PREFIXES)]


def distinguishing_columns(table: pd.DataFrame) -> list[str]:
    """Configuration columns other than dataset and method that vary within some (dataset,
    method): the keys a reader needs to tell the summary's rows apart."""
    groups = table.groupby(["dataset", "method"], dropna=False)
    return [
        c
        for c in config_columns(table)
        if c not in ("dataset", "method") and (groups[c].nunique(dropna=False) > 1).any()
    ]


def summarize(table: pd.DataFrame, quality: Sequence[str]) -> pd.DataFrame:
    """Mean, sd and seed count of ``quality`` columns and the total time per configuration.

    Only runs identical in every configuration column (``config_columns``) are averaged: runs
    that differ in anything but the seed (``dataset.n``, ``holdout``, a metric option, the code
    version, ...) stay apart. The summary's key columns are dataset, method and the
    ``distinguishing_columns``; ``budget`` (the epochs or iterations, where the method has them)
    orders the points of a Fig. 3 series.
    """
    devices = [c for c in DEVICE_COLUMNS if c in table.columns]  # always shown: Fig. 3's series
    keys = ["dataset", "method", *devices]
    if "knn_cached" in table.columns and table["knn_cached"].eq(True).any():
        keys.append("knn_cached")  # shown, and a Fig. 3 series of its own, even where all are
    keys += [c for c in distinguishing_columns(table) if c not in keys]
    hidden = [c for c in config_columns(table) if c not in keys]
    columns = [c for c in (*quality, TIME) if c in table.columns]
    table = table.assign(budget=_budget(table))
    grouped = table.groupby([*keys, *hidden], dropna=False, sort=False)
    summary = grouped[columns].agg(["mean", "std"])
    summary.columns = [f"{c}_{stat}" for c, stat in summary.columns]
    summary["seeds"] = grouped["seed"].nunique() if "seed" in table.columns else grouped.size()
    summary["runs"] = grouped.size()  # more than seeds where a seed was run again
    summary["budget"] = grouped["budget"].first()
    summary = summary.reset_index().drop(columns=hidden)
    # values of one column may mix types (learning_rate "auto" and 200.0): order as text
    return summary.sort_values(keys, key=lambda c: c.astype(str), ignore_index=True)


def markdown(summary: pd.DataFrame, quality: Sequence[str]) -> str:
    """A markdown table with one ``mean ± sd`` cell per metric."""
    keys = [
        c for c in summary.columns if not c.endswith(("_mean", "_std")) and c not in SUMMARY_EXTRA
    ]
    metrics = [c for c in (*quality, TIME) if f"{c}_mean" in summary.columns]
    repeated = bool((summary["runs"] != summary["seeds"]).any())  # then say how many runs
    header = [*keys, "seeds", *(["runs"] if repeated else []), *(_title(m) for m in metrics)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, row in summary.iterrows():
        cells = [_cell(row[k]) for k in keys] + [str(row["seeds"])]
        cells += [str(row["runs"])] if repeated else []
        for m in metrics:
            digits = 1 if m == TIME else 3
            mean, sd = row[f"{m}_mean"], row[f"{m}_std"]
            cell = "" if pd.isna(mean) else f"{mean:.{digits}f}"
            cells.append(cell if pd.isna(sd) or not cell else f"{cell} ± {sd:.{digits}f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def fig3_points(summary: pd.DataFrame, quality: str) -> pd.DataFrame:
    """The points of one Fig. 3 plot: a series per method, split by device setup where a
    method ran on several (e.g. "nomad (cuda x 4)")."""
    series = summary["method"].astype(str)
    device_columns = [c for c in DEVICE_COLUMNS if c in summary.columns]
    if device_columns:
        setup = summary[device_columns].map(_cell).agg(" x ".join, axis=1)
        several = setup.groupby(summary["method"]).transform("nunique") > 1
        series = series.where(~several, series + " (" + setup + ")")
    if "knn_cached" in summary.columns:  # no kNN search in these times: a series of its own
        series = series.where(~summary["knn_cached"].eq(True), series + " (kNN index cached)")
    return pd.DataFrame(
        {
            "dataset": summary["dataset"],
            "series": series,
            "time": summary[f"{TIME}_mean"],
            "time_sd": summary[f"{TIME}_std"],
            "quality": summary[f"{quality}_mean"],
            "quality_sd": summary[f"{quality}_std"],
            "budget": summary["budget"],
        }
    ).dropna(subset=["time", "quality"])


def write_report(results_file: str | os.PathLike, out: str | os.PathLike, k: int = 15) -> Path:
    """Write ``summary.md``, ``runs.csv``, ``np_vs_time.png`` and ``rta_vs_time.png`` into
    ``out``."""
    results_file = Path(results_file)
    if not results_file.is_file():
        raise InputError(
            f"no results table at {results_file}; run `python run.py ...` first (rows land in "
            "${paths.results_dir}/results.jsonl) or pass the table's path."
        )
    table = read_results(results_file) if results_file.stat().st_size else pd.DataFrame()
    if table.empty:
        raise InputError(
            f"the results table {results_file} has no rows; run some experiments first."
        )
    np_k = f"np@{k}"
    if np_k not in table.columns:
        available = sorted(c for c in table.columns if c.startswith("np@") and "ci95" not in c)
        raise InputError(
            f"the results table has no {np_k} column; pick --k from {', '.join(available)} "
            "(or rerun with metrics.ks including it)."
        )
    quality = [c for c in table.columns if c.startswith("np@") and not c.endswith("_ci95")]
    quality += [c for c in QUALITY if c in table.columns]
    summary = summarize(table, quality)
    out = Path(out)
    with atomic_open(out / "summary.md", "w") as f:
        f.write(f"# Results ({len(table)} runs from {results_file})\n\n")
        f.write(markdown(summary, quality))
    with atomic_open(out / "runs.csv", "w") as f:
        table.to_csv(f, index=False)
    plot_quality_vs_time(fig3_points(summary, np_k), np_k, f"NP@{k}", out / "np_vs_time.png")
    plot_quality_vs_time(
        fig3_points(summary, "rta"), "rta", "random triplet accuracy", out / "rta_vs_time.png"
    )
    log.info("wrote %s, runs.csv, np_vs_time.png and rta_vs_time.png", out / "summary.md")
    return out


def _budget(table: pd.DataFrame) -> pd.Series:
    """Each run's optimisation budget: its ``BUDGET_COLUMNS`` value (a list of stages, such as
    t-SimCNE's, counts as their sum); NaN where it has none (its series is then ordered by time)."""
    budget = pd.Series(float("nan"), index=table.index)
    for column in BUDGET_COLUMNS:
        if column in table.columns:
            budget = budget.fillna(table[column].map(_steps))
    return budget


def _steps(value: object) -> float:
    if isinstance(value, str) and value.startswith("["):
        return float(sum(json.loads(value)))
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def main(argv: Sequence[str] | None = None) -> None:
    """Command line entry point (``python -m nebench.report``)."""
    parser = argparse.ArgumentParser(
        prog="python -m nebench.report", description=__doc__.split("\n")[0]
    )
    parser.add_argument("results_file", nargs="?", default=DEFAULT_RESULTS, type=Path)
    parser.add_argument(
        "--out", type=Path, default=None, help="output dir (default: <table dir>/report)"
    )
    parser.add_argument("--k", type=int, default=15, help="k of the NP@k plot (default 15)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        write_report(args.results_file, args.out or args.results_file.parent / "report", args.k)
    except InputError as exc:
        parser.exit(2, f"error: {exc}\n")


def _title(metric: str) -> str:
    titles = {"rta": "RTA", "knn_acc": "kNN acc", "distance_spearman": "dist. Spearman"}
    return {**titles, TIME: "time (s)"}.get(metric, metric if metric in QUALITY else metric.upper())


def _cell(value: object) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return "" if pd.isna(value) else str(value)


if __name__ == "__main__":
    main()
