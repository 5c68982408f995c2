"""umap-true-loss Fig. 1 (Damrich & Hamprecht, sec. 4): UMAP contracts a ring even when it
starts at the data, and more so when the ring is one of twenty.

Data: 1,000 points uniform on a 2-D annulus (``dataset=ring``), and twenty such rings spaced so
that no kNN edge joins two of them (``many_rings``, default ``rings20``). UMAP (umap-learn, its
defaults, 10,000 epochs as in the paper) starts from the data itself (umap-learn rescales an
initial layout into [0, 10]^2 per axis), so an optimiser that kept the input would leave the
width unchanged.

Width of a ring: for each point i, P_i is its ``patch`` nearest neighbours in the data (the same
points before and after); with lambda_1 >= lambda_2 the eigenvalues of the covariance of P_i's
positions, ``w_i = sqrt(lambda_2 / lambda_1)`` is the local aspect ratio (about 0.6 for a patch
of the annulus, 0 for a line), and the width is the median of w_i. It is free of scale and
rotation and, unlike the spread of the radius, stays meaningful when the embedded ring opens or
bends. The paper's claim: width after / width before < 0.5, and smaller in the 20-ring set (on
one ring, as the paper shows; the table also gives the median over all rings).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from omegaconf import DictConfig
from sklearn.neighbors import NearestNeighbors

from baselines.umap import UMAP
from experiments.figures._common import (
    Fit,
    check_whole,
    fit,
    markdown_table,
    method_plan,
    panel_grid,
    save_figure,
    write_markdown,
)
from nebench.datasets import Dataset, check_data, load_dataset
from nebench.errors import InputError

log = logging.getLogger(__name__)

COLUMNS = ["dataset", "rings", "n", "epochs", "width before", "width after", "ratio",
           "ratio (median over rings)", "time (s)"]  # fmt: skip
FORMATS = {"width before": "{:.3f}", "width after": "{:.3f}", "ratio": "{:.3f}",
           "ratio (median over rings)": "{:.3f}", "time (s)": "{:.1f}"}  # fmt: skip


def make(cfg: DictConfig) -> pd.DataFrame:
    """Run UMAP from the data on ``cfg.dataset`` (one ring) and ``cfg.many_rings``; write
    ``<name>.png`` and ``<name>.md`` into ``cfg.out_dir``; return the table."""
    spec = cfg.figure
    patch = spec.patch
    check_whole("figure.patch", patch, least=3)
    for key in ("dataset", "many_rings"):
        if cfg[key].get("loader") != "rings":
            raise InputError(
                f"{key}={cfg[key].get('name')!r} is not a ring dataset; this figure measures "
                f"ring widths: use {key}=ring / rings20 (or another config with loader: rings)."
            )
    plans = [method_plan(cfg, "umap") for _ in range(2)]
    if not isinstance(plans[0].method, UMAP):
        raise InputError(
            "methods.umap must be umap-learn (conf/method/umap.yaml): the figure starts it at "
            "the data, an initial layout that only umap-learn's init accepts."
        )

    datasets = [
        load_dataset(cfg[key], cfg.paths.data_dir, cfg.seed) for key in ("dataset", "many_rings")
    ]
    for data in datasets:
        check_data(data.X, min_points=max(plans[0].min_points, patch))
        if data.X.shape[1] != 2:
            raise InputError(f"{data.name} has {data.X.shape[1]} dims; the rings must be 2-D.")
        if np.bincount(data.y).min() < patch:
            raise InputError(f"{data.name}: a ring has fewer than figure.patch={patch} points.")
    fits = []
    for plan, data in zip(plans, datasets):
        plan.method.init = data.X  # umap-learn takes an initial layout as its init array
        fits.append(fit(plan, data.X))

    table = pd.DataFrame([_row(data, result, patch) for data, result in zip(datasets, fits)],
                         columns=COLUMNS)  # fmt: skip
    out = Path(cfg.out_dir)
    _plot(datasets, fits, table, out / f"{spec.name}.png")
    write_markdown(
        out / f"{spec.name}.md",
        "UMAP contracts a ring started at the data (umap-true-loss Fig. 1)",
        [
            f"![{spec.name}]({spec.name}.png)",
            "",
            markdown_table(table, FORMATS),
            (
                f"Width: median local aspect ratio of each point's {patch} nearest data "
                "neighbours (1 = round patch, 0 = a line), on ring 0; ratio = after / before."
            ),
        ],
    )
    return table


def ring_width(X: np.ndarray, Y: np.ndarray, patch: int) -> float:
    """Median over points of ``sqrt(lambda_2 / lambda_1)`` of the positions ``Y`` of each
    point's ``patch`` nearest neighbours in ``X`` (itself included); see the module docstring."""
    neighbours = NearestNeighbors(n_neighbors=patch).fit(X).kneighbors(X, return_distance=False)
    P = np.asarray(Y, dtype=np.float64)[neighbours]
    P -= P.mean(axis=1, keepdims=True)
    eigenvalues = np.linalg.eigvalsh(np.einsum("npi,npj->nij", P, P))
    return float(np.median(np.sqrt(eigenvalues[:, 0] / eigenvalues[:, 1])))


def _row(data: Dataset, result: Fit, patch: int) -> dict:
    rings = np.unique(data.y)
    before = [ring_width(data.X[data.y == r], data.X[data.y == r], patch) for r in rings]
    after = [ring_width(data.X[data.y == r], result.Y[data.y == r], patch) for r in rings]
    ratios = np.asarray(after) / np.asarray(before)
    return {
        "dataset": data.name,
        "rings": len(rings),
        "n": len(data.X),
        "epochs": result.plan.method.n_epochs,
        "width before": before[0],
        "width after": after[0],
        "ratio": ratios[0],
        "ratio (median over rings)": float(np.median(ratios)),
        "time (s)": result.seconds,
    }


def _plot(datasets: list[Dataset], fits: list[Fit], table: pd.DataFrame, path: Path) -> None:
    fig, axes = panel_grid(4, columns=4)
    one, many = datasets
    ring0 = many.y == 0
    panels = [
        (one, one.X, slice(None), f"(a) data: {one.name}, width {table['width before'][0]:.2f}"),
        (one, fits[0].Y, slice(None), f"(b) UMAP, width ratio {table['ratio'][0]:.2f}"),
        (many, fits[1].Y, ring0, f"(c) UMAP on {many.name}: ring 0, ratio {table['ratio'][1]:.2f}"),
        (many, fits[1].Y, slice(None), f"(d) UMAP on {many.name}: all {table['rings'][1]} rings"),
    ]
    for ax, (data, Y, rows, title) in zip(axes, panels):
        _ring_panel(ax, data.X[rows], data.y[rows], Y[rows], title)
    save_figure(fig, path)


def _ring_panel(ax: Axes, X: np.ndarray, y: np.ndarray, Y: np.ndarray, title: str) -> None:
    """Points of ``Y`` coloured by their angle in the data around their ring's centre (shows
    whether the order along each ring survived)."""
    rings, ring = np.unique(y, return_inverse=True)
    centres = np.stack([X[ring == r].mean(axis=0) for r in range(len(rings))])
    offset = X - centres[ring]
    angle = np.arctan2(offset[:, 1], offset[:, 0])
    ax.scatter(Y[:, 0], Y[:, 1], c=angle, cmap="hsv", s=1.5, lw=0, rasterized=True)
    ax.set_title(title, fontsize=8)
    ax.set_aspect("equal", adjustable="datalim")
    ax.set_xticks([])
    ax.set_yticks([])
