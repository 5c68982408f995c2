"""What the figure modules share: building methods from the figure config, timing a fit, pair
statistics of an embedding, panels, and writing the figure and its table atomically.

A figure's methods are method configs composed into ``methods.<key>`` of the figure config
(``/method@methods.<key>: <name>`` in its experiment file); :func:`method_plan` checks and builds
one with the runner's :func:`nebench.runner.prepare`, as ``run.py`` and ``experiments.bench`` do.
"""

from __future__ import annotations

import logging
import math
import shlex
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from hydra.core.hydra_config import HydraConfig
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from omegaconf import DictConfig, OmegaConf
from scipy.spatial.distance import pdist

from experiments.bench import hardware
from nebench.errors import InputError
from nebench.io import atomic_open
from nebench.plotting import UNLABELLED_COLOR, class_colors  # the scatter plots' colours
from nebench.results import code_version, timestamp
from nebench.runner import Plan, check_embedding, prepare

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Fit:
    """One fitted embedding: the method object (for its fitted attributes), Y and its time."""

    plan: Plan
    Y: np.ndarray
    seconds: float


def method_plan(cfg: DictConfig, key: str, **params: Any) -> Plan:
    """The method configured at ``methods.<key>`` with ``params`` set, checked and built by
    :func:`nebench.runner.prepare` (seed, trainer and metrics from the figure config).

    Under a protocol (``protocol=<name>``: ``conf/protocol/<name>.yaml`` puts its values at
    ``method`` and its tables at ``protocol``), the methods listed in
    ``figure.protocol_methods`` take the protocol's values over their own, as ``run.py`` does;
    ``params`` (the figure's own variable, e.g. Neg-t-SNE's s) still come last."""
    methods = cfg.get("methods") or {}
    if key not in methods:
        raise InputError(
            f"the figure needs a method at methods.{key}; add `- /method@methods.{key}: <name>` "
            "to the defaults of its conf/experiment/ file."
        )
    layers = [cfg.methods[key]]
    run = {"seed": cfg.seed, "trainer": cfg.trainer, "metrics": cfg.metrics, "paths": cfg.paths}
    protocol = cfg.get("protocol")
    listed = list(cfg.figure.get("protocol_methods") or ())
    unknown = [name for name in listed if name not in methods]
    if protocol is not None and unknown:
        raise InputError(
            f"figure.protocol_methods names {unknown}, which the figure does not run; list some of "
            f"its methods ({', '.join(methods)})."
        )
    if protocol is not None and key in listed:
        # unresolved: the protocol's values look up method.name and its tables in the run config
        layers.append(OmegaConf.to_container(cfg.method, resolve=False))
        run["protocol"] = OmegaConf.to_container(protocol, resolve=False)
    run_cfg = OmegaConf.create({**run, "method": OmegaConf.merge(*layers, params)})
    return prepare(run_cfg)


def fit(plan: Plan, X: np.ndarray, X_knn: np.ndarray | None = None) -> Fit:
    """Run ``plan.method.fit_transform(X)`` (with ``X_knn``, the rows its kNN graph comes from,
    where given: a parametric encoder reading raw rows). Its time is the sum of the method's
    phases (``timings_``: kNN included, nomad-projection sec. 4.1), which leaves out one-off
    work such as numba's compilation in umap-learn; the wall time where a method reports no
    phases."""
    start = time.perf_counter()
    Y = plan.method.fit_transform(X) if X_knn is None else plan.method.fit_transform(X, X_knn=X_knn)
    seconds = sum(getattr(plan.method, "timings_", {}).values()) or time.perf_counter() - start
    log.info("%s: %.1f s", plan.name, seconds)
    return Fit(plan=plan, Y=check_embedding(Y, len(X), plan.name), seconds=seconds)


def pair_statistics(Y: np.ndarray, max_points: int, seed: int) -> tuple[float, float]:
    """Partition function and scale of an embedding: ``(Z, median pairwise distance)``.

    ``Z = sum_{i != j} 1 / (1 + d_ij^2)`` (the Cauchy kernel's normaliser,
    tsne-to-umap-contrastive Fig. 1i). Above ``max_points`` points both come from a seeded
    uniform subsample S of ``max_points`` points; Z is then estimated without bias as
    ``n (n - 1) / (|S| (|S| - 1))`` times the sum over the pairs of S.
    """
    n = len(Y)
    check_whole("max_points", max_points, least=2)
    rows = np.arange(n)
    if n > max_points:
        rows = np.sort(np.random.default_rng(seed).choice(n, max_points, replace=False))
    m = len(rows)
    d = pdist(np.asarray(Y[rows], dtype=np.float64))
    pairs_sum = 2.0 * float(np.sum(1.0 / (1.0 + d * d)))
    return pairs_sum * (n * (n - 1)) / (m * (m - 1)), float(np.median(d))


def check_whole(name: str, value: Any, least: int) -> None:
    """Raise :class:`InputError` unless ``value`` is a whole number >= ``least``."""
    if not isinstance(value, int) or isinstance(value, bool) or value < least:
        raise InputError(f"{name}={value!r} must be a whole number >= {least}.")


def scatter(ax: Axes, Y: np.ndarray, labels: np.ndarray | None, title: str) -> None:
    """One embedding panel: points coloured by label (the harness's class colours), no ticks."""
    size = float(np.clip(2e3 / max(len(Y), 1), 0.05, 4.0))
    order = np.random.default_rng(0).permutation(len(Y))  # no class drawn over all the others
    if labels is None:
        colors = np.tile(UNLABELLED_COLOR, (len(Y), 1))
    else:
        classes, codes = np.unique(labels, return_inverse=True)
        colors = class_colors(len(classes))[codes]
    ax.scatter(Y[order, 0], Y[order, 1], c=colors[order], s=size, lw=0, rasterized=True)
    ax.set_title(title, fontsize=9)
    ax.set_aspect("equal", adjustable="datalim")
    ax.set_xticks([])
    ax.set_yticks([])


def panel_grid(n_panels: int, columns: int, size: float = 3.0) -> tuple[Figure, list[Axes]]:
    """A figure with ``n_panels`` axes in rows of ``columns`` (unused cells hidden)."""
    rows = math.ceil(n_panels / columns)
    fig = Figure(figsize=(size * columns, size * rows), dpi=150)
    axes = list(fig.subplots(rows, columns, squeeze=False).ravel())
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    return fig, axes[:n_panels]


def save_figure(fig: Figure, path: Path) -> None:
    """Save ``fig`` as a PNG, atomically."""
    fig.tight_layout()
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", bbox_inches="tight")
    log.info("wrote %s", path)


def markdown_table(table: pd.DataFrame, formats: Mapping[str, str] | None = None) -> str:
    """``table`` as a markdown table; ``formats`` maps a column to a format such as "{:.3f}"
    (NaN shows as "-")."""
    formats = formats or {}

    def cell(column: str, value: Any) -> str:
        if isinstance(value, float) and np.isnan(value):
            return "-"
        return formats[column].format(value) if column in formats else str(value)

    lines = ["| " + " | ".join(map(str, table.columns)) + " |", "|" + "---|" * table.shape[1]]
    for _, row in table.iterrows():
        lines.append("| " + " | ".join(cell(c, row[c]) for c in table.columns) + " |")
    return "\n".join(lines) + "\n"


def write_markdown(path: Path, title: str, body: Sequence[str]) -> None:
    """Write ``# title``, how it was made (command, hardware, code version) and ``body``."""
    lines = [
        f"# {title}",
        "",
        f"- command: `{command()}`",
        f"- hardware: {hardware()}",
        f"- code: nebench {code_version()}, {timestamp()}",
        "",
        *body,
    ]
    with atomic_open(path, "w") as f:
        f.write("\n".join(lines).rstrip("\n") + "\n")
    log.info("wrote %s", path)


def command() -> str:
    """The command line of this figure run (its task overrides), shell-quoted."""
    overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    return shlex.join(["python", "-m", "experiments.figures", *overrides])
