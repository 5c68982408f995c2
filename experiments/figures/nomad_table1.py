"""nomad-projection Table 1: NP@10 and wall time of NOMAD Projection against openTSNE on the
largest dataset at hand, with the speed-up over openTSNE.

The paper's table is PubMed on 8 GPUs against openTSNE on a 0.5 TB CPU machine (NP@10 6.1 %
vs 6.2 %, 1.5 h vs 8 h). Here the runs come from the side-by-side benchmark
(:func:`experiments.bench.run_benchmark`: every method in a fresh process on the same input,
wall time of ``fit_transform`` with the kNN built from scratch), and the speed-up of a method is
openTSNE's total time divided by its own.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import DictConfig

from experiments import bench
from experiments.figures._common import markdown_table, panel_grid, save_figure, write_markdown
from nebench.errors import InputError

log = logging.getLogger(__name__)

SPEEDUP = f"speed-up vs {bench.REFERENCE}"
COLUMNS = ["method", "device", "NP@10", bench.RTA, bench.TOTAL, SPEEDUP, bench.NOTE]
FORMATS = {"NP@10": "{:.3f}", bench.RTA: "{:.3f}", bench.TOTAL: "{:.1f}", SPEEDUP: "{:.2f}"}


def make(cfg: DictConfig) -> pd.DataFrame:
    """Run ``cfg.methods`` (openTSNE among them) on ``cfg.dataset`` with the benchmark; write
    ``<name>.png`` and ``<name>.md`` into ``cfg.out_dir``; return the table."""
    if bench.REFERENCE not in list(cfg.methods):
        raise InputError(
            f"methods={list(cfg.methods)} must include {bench.REFERENCE}, the reference of the "
            f"speed-up column; e.g. 'methods=[nomad,{bench.REFERENCE}]'."
        )
    if 10 not in list(cfg.metrics.ks):
        raise InputError(f"metrics.ks={list(cfg.metrics.ks)} must include 10 (the table's NP@10).")
    report = bench.run_benchmark(cfg)
    table = speedup_table(report.table)
    name = cfg.figure.name
    out = Path(cfg.out_dir)
    title, times = report.header[0].removeprefix("# "), report.header[-1]  # the run, its timing
    _plot(table, title, out / f"{name}.png")
    write_markdown(
        out / f"{name}.md",
        f"NOMAD Projection vs openTSNE (nomad-projection Table 1). {title}",
        [
            times,
            "",
            f"![{name}]({name}.png)",
            "",
            markdown_table(table, FORMATS),
        ],
    )
    return table


def speedup_table(table: pd.DataFrame) -> pd.DataFrame:
    """The benchmark's table cut to :data:`COLUMNS`, with ``speed-up = t_openTSNE / t``."""
    reference = table.loc[table["method"] == bench.REFERENCE, bench.TOTAL].iloc[0]
    table = table.assign(**{SPEEDUP: reference / table[bench.TOTAL]})
    return table.reindex(columns=COLUMNS)


def _plot(table: pd.DataFrame, title: str, path: Path) -> None:
    ran = table[np.isfinite(table[bench.TOTAL].astype(float))]
    fig, (time_ax, np_ax) = panel_grid(2, columns=2, size=4.0)
    y = np.arange(len(ran))
    time_ax.barh(y, ran[bench.TOTAL], color="tab:blue")
    for i, (seconds, speedup) in enumerate(zip(ran[bench.TOTAL], ran[SPEEDUP])):
        time_ax.text(seconds, i, f" {seconds:.0f} s (x{speedup:.1f})", va="center", fontsize=8)
    np_ax.barh(y, ran["NP@10"], color="tab:green")
    for ax, label in ((time_ax, "wall time (s)"), (np_ax, "NP@10")):
        ax.set_yticks(y, ran["method"] + " (" + ran["device"] + ")")
        ax.set_xlabel(label)
        ax.invert_yaxis()
        ax.margins(x=0.35)
    fig.suptitle(title, fontsize=9)
    save_figure(fig, path)
