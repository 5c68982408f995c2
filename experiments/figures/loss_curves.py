"""umap-true-loss Fig. 3 (Damrich & Hamprecht, sec. 5): UMAP's sampling optimises its effective
loss (eq. 12), not its purported one (eq. 6).

UMAP's loss and kernel on this engine with umap-learn's sampling (``methods.umap``:
``umap_loss`` with ``sampling=edges``, ``graph=umap``, sum aggregation, negatives not
pushed), logging after every ``figure.log_every`` epochs the purported loss (eq. 6), the
effective loss (eq. 12) and the actual loss of the epoch's sampled pairs (eq. 11), each split
into attraction and repulsion (:mod:`nomad.true_loss`). A second run adds the paper's proposed
correction (sec. 7.3, eq. 18: kNN edges sampled for extra repulsion). The paper used
C. elegans (k = 30, 750 epochs); this figure uses the configured ``dataset`` (default: a
5,000-point MNIST subset) with the same k and budget.

The claims checked (tests/test_figures.py, reduced): the actual loss tracks the effective
one; the purported repulsion is over an order of magnitude larger than the effective one;
the effective loss falls over training.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig

from experiments.figures._common import (
    check_whole,
    fit,
    markdown_table,
    method_plan,
    panel_grid,
    save_figure,
    scatter,
    write_markdown,
)
from nebench.datasets import check_data, load_dataset
from nebench.errors import InputError
from nomad import UMAPLoss

log = logging.getLogger(__name__)

LOSSES = ("purported", "effective", "actual")
COLUMNS = ["run", "epoch", "purported", "purported repulsive", "effective", "effective repulsive",
           "actual", "actual / effective", "purported rep. / effective rep."]  # fmt: skip
FORMATS = {c: "{:.4g}" for c in COLUMNS[2:]}
RUNS = {"UMAP sampling": False, "corrected (eq. 18)": True}


def make(cfg: DictConfig) -> pd.DataFrame:
    """Run ``methods.umap`` without and with the correction on ``cfg.dataset``; write
    ``<name>.png`` (loss curves and embeddings) and ``<name>.md``; return the table."""
    spec = cfg.figure
    check_whole("figure.log_every", spec.log_every, least=1)
    data = load_dataset(cfg.dataset, cfg.paths.data_dir, cfg.seed)
    logs, fits = {}, {}
    for run, correct in RUNS.items():
        plan = method_plan(cfg, "umap", sampling="edges", loss_log_every=spec.log_every,
                           correct_repulsion=correct)
        if not isinstance(plan.method, UMAPLoss):
            raise InputError("methods.umap must be the engine's umap_loss (conf/method/umap_loss.yaml): "
                             "the loss logs come from its edge sampler")
        if run == next(iter(RUNS)):
            check_data(data.X, min_points=plan.min_points)
        fits[run] = fit(plan, data.X)
        logs[run] = pd.DataFrame(plan.method.loss_log_)
    table = pd.concat([_rows(run, log_) for run, log_ in logs.items()], ignore_index=True)
    out = Path(cfg.out_dir)
    _plot(logs, fits, data, out / f"{spec.name}.png")
    for run, log_ in logs.items():
        log_.assign(run=run).to_csv(out / f"{spec.name}_{'corrected' if RUNS[run] else 'umap'}.csv",
                                    index=False)
    write_markdown(
        out / f"{spec.name}.md",
        "UMAP optimises its effective loss, not its purported one (umap-true-loss Fig. 3)",
        [f"![{spec.name}]({spec.name}.png)", "",
         f"{data.name}, n = {len(data.X):,}; losses summed over ordered pairs (eq. 6, 11, 12).", "",
         markdown_table(table, FORMATS)],
    )
    return table


def _rows(run: str, log_: pd.DataFrame) -> pd.DataFrame:
    """First, middle and last logged epoch of one run."""
    picks = log_.iloc[sorted({0, len(log_) // 2, len(log_) - 1})]
    return pd.DataFrame({
        "run": run, "epoch": picks["epoch"].to_numpy(),
        "purported": picks["purported"].to_numpy(),
        "purported repulsive": picks["purported_repulsive"].to_numpy(),
        "effective": picks["effective"].to_numpy(),
        "effective repulsive": picks["effective_repulsive"].to_numpy(),
        "actual": picks["actual"].to_numpy(),
        "actual / effective": (picks["actual"] / picks["effective"]).to_numpy(),
        "purported rep. / effective rep.":
            (picks["purported_repulsive"] / picks["effective_repulsive"]).to_numpy(),
    }, columns=COLUMNS)


def _plot(logs, fits, data, path: Path) -> None:
    fig, axes = panel_grid(2 * len(logs), columns=2, size=4.0)
    colors = {"purported": "tab:red", "effective": "tab:blue", "actual": "tab:green"}
    styles = {"": "-", "_attractive": ":", "_repulsive": "--"}
    for (run, log_), ax in zip(logs.items(), axes[::2]):
        for loss in LOSSES:
            for part, style in styles.items():
                ax.plot(log_["epoch"], log_[loss + part], style, color=colors[loss],
                        label=f"{loss}{part.replace('_', ' ')}", lw=1.2)
        ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_title(f"{run}: losses", fontsize=9)
        ax.legend(fontsize=6, ncol=3)
    for (run, result), ax in zip(fits.items(), axes[1::2]):
        scatter(ax, result.Y, data.y, f"{run}: embedding ({result.seconds:.0f} s)")
    save_figure(fig, path)
