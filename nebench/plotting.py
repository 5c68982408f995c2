"""Figures: the scatter plot of one embedding, and quality vs wall time (nomad-projection Fig. 3).

Figures are built on ``matplotlib.figure.Figure`` (no pyplot state, safe in worker processes)
and saved atomically.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

from nebench.io import atomic_open

#: above this many points the scatter plot becomes a density image
DENSITY_THRESHOLD = 100_000
#: classes shown with a legend (tab10 up to 10, tab20 up to 20)
MAX_LEGEND_CLASSES = 20
DENSITY_BINS = 512
UNLABELLED_COLOR = (0.75, 0.75, 0.75, 1.0)


def plot_embedding(
    Y: np.ndarray,
    path: str | os.PathLike,
    labels: np.ndarray | None = None,
    label_names: Sequence[str] | None = None,
    title: str = "",
) -> None:
    """Save a 2-D embedding ``Y`` as a PNG: points coloured by label (``-1`` = unlabelled, grey),
    or, above ``DENSITY_THRESHOLD`` points, a 2-D histogram shaded by log density (tinted by the
    labels' colours when there are at most ``MAX_LEGEND_CLASSES`` classes)."""
    labelled = labels is not None and np.any(labels >= 0)
    classes = np.unique(labels[labels >= 0]) if labelled else np.empty(0, dtype=int)
    colors = class_colors(len(classes))
    legend = 0 < len(classes) <= MAX_LEGEND_CLASSES
    fig = Figure(figsize=(7.5, 6) if legend else (6, 6), dpi=150)
    ax = fig.add_subplot()
    if len(Y) > DENSITY_THRESHOLD:
        _density(ax, Y, labels, classes, colors)
    else:
        _scatter(ax, Y, labels, classes, colors)
    if legend:
        names = [_label_name(c, label_names) for c in classes]
        handles = [
            ax.scatter([], [], color=colors[i], s=20, label=name) for i, name in enumerate(names)
        ]
        ax.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    ax.set_title(title, fontsize=9)
    ax.set_aspect("equal", adjustable="datalim")
    ax.set_xticks([])
    ax.set_yticks([])
    fig.tight_layout()
    _save(fig, path)


def plot_quality_vs_time(
    points: pd.DataFrame, quality: str, ylabel: str, path: str | os.PathLike
) -> None:
    """Save quality vs wall time, one panel per dataset, one line per series (nomad-projection
    Fig. 3).

    ``points`` has columns ``dataset``, ``series``, ``time``, ``time_sd``, ``quality`` and
    ``quality_sd`` (means and standard deviations over seeds, one row per configuration) and
    ``budget``; the points of a series are joined in order of their budget (epochs or
    iterations, as the paper joins them), or of time where a series has no budget.
    """
    datasets = sorted(points["dataset"].unique())
    fig = Figure(figsize=(4.5 * len(datasets) + 2, 4), dpi=150)
    axes = fig.subplots(1, len(datasets), squeeze=False)[0]
    series = sorted(points["series"].unique())
    colors = dict(zip(series, class_colors(len(series))))
    for ax, dataset in zip(axes, datasets):
        for name, group in points[points["dataset"] == dataset].groupby("series"):
            group = in_budget_order(group)
            ax.errorbar(
                group["time"],
                group["quality"],
                xerr=group["time_sd"].fillna(0),
                yerr=group["quality_sd"].fillna(0),
                color=colors[name],
                marker="o",
                markersize=4,
                capsize=2,
                label=name,
            )
        ax.set_xscale("log")
        ax.set_xlabel("wall time (s)")
        ax.set_ylabel(ylabel)
        ax.set_title(dataset)
        ax.grid(True, which="both", alpha=0.3)
    handles, names = [], []
    for ax in axes:
        for handle, name in zip(*ax.get_legend_handles_labels()):
            if name not in names:
                handles.append(handle)
                names.append(name)
    fig.legend(handles, names, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    fig.tight_layout()
    _save(fig, path)


def in_budget_order(series: pd.DataFrame) -> pd.DataFrame:
    """A series' points in the order they are joined: by budget (epochs or iterations) where
    every point has one, else by time."""
    return series.sort_values("time" if series["budget"].isna().any() else "budget")


def _scatter(ax, Y, labels, classes, colors) -> None:
    size = float(np.clip(3e4 / max(len(Y), 1), 0.2, 8.0))
    point_colors = np.tile(UNLABELLED_COLOR, (len(Y), 1))
    if len(classes):
        point_colors[labels >= 0] = colors[np.searchsorted(classes, labels[labels >= 0])]
    order = np.random.default_rng(0).permutation(len(Y))  # no class drawn over all the others
    ax.scatter(Y[order, 0], Y[order, 1], c=point_colors[order], s=size, lw=0, rasterized=True)


def _density(ax, Y, labels, classes, colors) -> None:
    extent = [Y[:, 0].min(), Y[:, 0].max(), Y[:, 1].min(), Y[:, 1].max()]
    edges = (np.linspace(*extent[:2], DENSITY_BINS + 1), np.linspace(*extent[2:], DENSITY_BINS + 1))

    def counts(points: np.ndarray) -> np.ndarray:
        return np.histogram2d(points[:, 0], points[:, 1], bins=edges)[0].T

    total = counts(Y)
    if not 0 < len(classes) <= MAX_LEGEND_CLASSES:
        image = ax.imshow(
            np.ma.masked_equal(total, 0), origin="lower", extent=extent, norm=LogNorm()
        )
        ax.figure.colorbar(image, ax=ax, label="points per pixel", shrink=0.8)
        return
    # a pixel's colour: the mean colour of its points (unlabelled grey); opacity ~ log density
    rgb = np.zeros(total.shape + (3,))
    unlabelled = total.copy()
    for c, color in zip(classes, colors):
        class_counts = counts(Y[labels == c])
        rgb += class_counts[..., None] * color[:3]
        unlabelled -= class_counts
    rgb += unlabelled[..., None] * np.asarray(UNLABELLED_COLOR[:3])
    rgba = np.empty(total.shape + (4,))
    rgba[..., :3] = rgb / np.maximum(total, 1)[..., None]
    rgba[..., 3] = np.log1p(total) / np.log1p(total.max())
    ax.imshow(rgba, origin="lower", extent=extent, interpolation="nearest")


def class_colors(n_classes: int) -> np.ndarray:
    """RGBA per class: tab10 / tab20 when they suffice, else an evenly sampled rainbow."""
    if n_classes > 20:
        return colormaps["nipy_spectral"](np.linspace(0.05, 0.95, n_classes))
    base = colormaps["tab10" if n_classes <= 10 else "tab20"].colors
    return np.c_[np.asarray(base)[:n_classes], np.ones(n_classes)]


def _label_name(label: int, label_names: Sequence[str] | None) -> str:
    if label_names is not None and 0 <= label < len(label_names):
        return str(label_names[label])
    return str(label)


def _save(fig: Figure, path: str | os.PathLike) -> None:
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", bbox_inches="tight")
