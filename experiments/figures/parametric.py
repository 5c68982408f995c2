"""Parametric vs non-parametric embeddings (tsne-to-umap-contrastive Fig. 3; parametric-umap
sec. 2): quality of UMAP, InfoNC-t-SNE and Neg-t-SNE in both modes, and the time to embed
held-out points by ``transform`` against refitting.

Every method (``methods.<key>``, the engine's ``umap_loss``, ``infonc_tsne`` and ``neg_tsne``)
runs in each mode of ``figure.modes`` (a mode is a set of method parameters: ``parametric:
false``, or ``parametric: true`` plus its own budget). Parametric UMAP is the engine's
``umap_loss`` with ``parametric=true``: UMAP's graph, kernel and cross-entropy trained through an
MLP encoder, as Parametric UMAP does (Sainburg et al., without its optional reconstruction and
global-structure terms); umap-learn's ``ParametricUMAP`` needs TensorFlow, which the harness
does not install. umap-learn's own UMAP (``figure.references``) is shown beside them as the
non-parametric reference, since the engine's ``umap_loss`` is the same loss on different
machinery (PCA start, uniform binary kNN graph instead of fuzzy weights).

Per method and mode:

0. the runner's untimed warm-up (:func:`nebench.runner.warm_up`: every epoch count capped at 2,
   a few rows) fits every method in every mode first, so that no timed fit includes one-off
   compilation;
1. fit on the train rows (MNIST: the first 60,000 = ``dataset.n_train``); NP@k, RTA and kNN
   accuracy (80/20 split of the train rows) of that embedding, and its fit time (the method's
   phases, kNN included; every run builds its own kNN index, ``cache_dir: null``);
2. place the held-out rows (MNIST: the 10,000 test rows). A parametric fit embeds them with
   ``transform`` (a forward pass through the encoder). A non-parametric embedding has no map
   for new points: it is refitted on train + held-out rows (the fit time of that refit is its
   cost), and, where the method has one (the engine's), its own ``transform`` also places
   them in the fixed train map (openTSNE's way: each new point optimised against it), a row
   of its own. The held-out columns score the held-out rows' embedding: NP@k and RTA among
   them, and kNN accuracy of a classifier fitted on the same embedding's train rows.

The speed-up is the non-parametric refit time of the method over the held-out time of the row.
``figure.n_train`` fits on a seeded subsample of the train rows and keeps every held-out row
(more held-out rows, a smaller standard error of their kNN accuracy). The
inputs are the dataset's own preprocessing (MNIST: PCA-50 fitted on all 70,000 rows, as the
figure's published runs had it; the runner's ``holdout=true`` now fits it on the train rows). Where the dataset gives an encoder its own rows
(``dataset.encoder_input=raw``, or a protocol whose ``encoder_input`` table says so for
parametric fits, as ``damrich_iclr`` does: the paper's network reads MNIST's pixels), every
parametric fit and ``transform`` reads those rows and builds its kNN graph from the PCA'd
ones; the metrics always use the PCA'd rows. Without a test split (digits),
``figure.n_test`` rows of a seeded permutation are held out.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from experiments.figures._common import (
    Fit,
    check_whole,
    fit,
    markdown_table,
    method_plan,
    panel_grid,
    save_figure,
    scatter,
    write_markdown,
)
from metrics import evaluate, knn_accuracy
from nebench.data.dataset import Dataset
from nebench.datasets import check_data, load_dataset
from nebench.errors import InputError
from nebench.runner import Plan, check_embedding, warm_up

log = logging.getLogger(__name__)

#: the paper's methods: key in ``methods`` -> name in the table
METHODS = {"umap": "UMAP", "infonc_tsne": "InfoNC-t-SNE", "neg_tsne": "Neg-t-SNE"}
#: how held-out points are placed: the encoder's forward pass (parametric), a refit on all rows,
#: or the free map's own ``transform`` (openTSNE's: new points optimised against the fixed map)
TRANSFORM, REFIT, PLACE = "transform", "refit on train + held-out", "placed in the fixed map"
COLUMNS = ["method", "mode", "fit (s)", "NP@k", "RTA", "kNN acc", "held-out by",
           "held-out (s)", "speed-up", "held-out NP@k", "held-out RTA", "held-out kNN acc"]  # fmt: skip
FORMATS = {"fit (s)": "{:.1f}", "NP@k": "{:.3f}", "RTA": "{:.3f}", "kNN acc": "{:.3f}",
           "held-out (s)": "{:.3g}", "speed-up": "{:.0f}x", "held-out NP@k": "{:.3f}",
           "held-out RTA": "{:.3f}", "held-out kNN acc": "{:.3f}"}  # fmt: skip


@dataclass(frozen=True)
class Split:
    """Train and held-out rows of the data, their labels, and the rows a parametric encoder
    reads where the dataset gives it its own (``Dataset.X_encoder``; else None)."""

    X_train: np.ndarray
    X_test: np.ndarray
    y_train: np.ndarray | None
    y_test: np.ndarray | None
    how: str
    encoder_train: np.ndarray | None = None
    encoder_test: np.ndarray | None = None


@dataclass(frozen=True)
class Run:
    """One method in one mode: its train fit and the held-out rows' embedding."""

    method: str
    mode: str
    train: Fit
    Y_test: np.ndarray
    Y_test_train: np.ndarray  # the train rows of the embedding that placed the held-out rows
    how: str
    seconds: float


def make(cfg: DictConfig) -> pd.DataFrame:
    """Fit every method in every mode on the train split, place the held-out rows; write
    ``<name>.png`` and ``<name>.md`` into ``cfg.out_dir``; return the table."""
    spec = cfg.figure
    check_whole("figure.k", spec.k, least=1)
    if spec.n_test is not None:
        check_whole("figure.n_test", spec.n_test, least=1)
    n_train = spec.get("n_train")
    if n_train is not None:
        check_whole("figure.n_train", n_train, least=2)
    modes = _modes(spec.get("modes"))
    compared = _compared(cfg)
    jobs = [(METHODS[key], mode, key, params) for key in compared
            for mode, params in modes.items()]  # fmt: skip
    jobs += [(key, "non-parametric", key, {}) for key in _references(cfg, spec.get("references"))]
    plans = [method_plan(cfg, key, **params) for _, _, key, params in jobs]  # checked up front

    data = load_dataset(_dataset_config(cfg, plans), cfg.paths.data_dir, cfg.seed)
    split = _split(data, spec.n_test, cfg.seed, n_train)
    check_data(split.X_train, min_points=max(p.min_points for p in plans))
    if cfg.trainer.get("warmup", True):  # one-off compilation, untimed, as run.py does
        for plan in plans:
            warm_up(plan, split.X_train, cfg.seed)
    runs = []
    for (name, mode, key, params), plan in zip(jobs, plans):
        runs += _run(name, mode, plan, lambda k=key, p=params: method_plan(cfg, k, **p), split)
    table = parametric_table(runs, split, spec.k, cfg.metrics, cfg.seed)

    k, out = spec.k, Path(cfg.out_dir)
    title = (
        f"{data.name}: fit on {len(split.X_train):,} rows, {len(split.X_test):,} held out "
        f"({split.how})"
    )
    _plot(runs, split, table, title, out / f"{spec.name}.png")
    shown = table.rename(columns={c: c.replace("@k", f"@{k}") for c in COLUMNS})
    write_markdown(
        out / f"{spec.name}.md",
        f"Parametric vs non-parametric on {title}",
        [
            f"![{spec.name}]({spec.name}.png)",
            "",
            markdown_table(shown, {c.replace("@k", f"@{k}"): f for c, f in FORMATS.items()}),
            (
                f"NP@{k}, RTA and kNN accuracy of the train embedding (kNN accuracy: 80/20 split "
                f"of the train rows); held-out columns: the held-out rows' embedding (NP@{k} and "
                "RTA among them; kNN classifier fitted on the same embedding's train rows). "
                "Times are the methods' own phases (kNN index built in every fit); held-out (s) is "
                "the transform's wall time, or the refit's. Speed-up: the method's "
                "non-parametric refit time over its transform time. Parametric UMAP is the "
                "engine's umap_loss with parametric=true (umap-learn's needs TensorFlow)."
            ),
            f"Modes: {OmegaConf.to_container(spec.modes)}",
        ],
    )
    return table


def parametric_table(
    runs: list[Run], split: Split, k: int, metrics: DictConfig, seed: int
) -> pd.DataFrame:
    """One row per run (columns :data:`COLUMNS`): quality of the train embedding and of the
    held-out rows' embedding, fit and held-out times."""
    options = {
        "ks": (k,), "n_eval": metrics.n_eval, "n_triplets": metrics.n_triplets,
        "knn_k": metrics.knn_k, "seed": seed,
    }  # fmt: skip
    refit = {r.method: r.seconds for r in runs if r.how == REFIT}
    speedup = {id(r): refit.get(r.method, np.nan) / r.seconds for r in runs if r.how != REFIT}
    n_train = len(split.X_train)
    rows = []
    for r in runs:
        train = evaluate(split.X_train, r.train.Y, split.y_train, None, **options)
        test = evaluate(split.X_test, r.Y_test, None, None, **options)
        test_acc = np.nan
        if split.y_train is not None:
            both = np.concatenate([r.Y_test_train, r.Y_test])
            labels = np.concatenate([split.y_train, split.y_test])
            test_acc = knn_accuracy(both, labels, n_train, metrics.knn_k, seed)
        rows.append(
            {
                "method": r.method,
                "mode": r.mode,
                "fit (s)": r.train.seconds,
                "NP@k": train[f"np@{k}"],
                "RTA": train["rta"],
                "kNN acc": train.get("knn_acc", np.nan),
                "held-out by": r.how,
                "held-out (s)": r.seconds,
                "speed-up": speedup.get(id(r), np.nan),
                "held-out NP@k": test[f"np@{k}"],
                "held-out RTA": test["rta"],
                "held-out kNN acc": np.nan if test_acc is None else test_acc,
            }
        )
    return pd.DataFrame(rows, columns=COLUMNS)


def _run(name: str, mode: str, plan: Plan, fresh: Callable[[], Plan], split: Split) -> list[Run]:
    """Fit ``plan`` on the train rows and place the held-out rows: by ``transform`` when the
    method is parametric; else by refitting a ``fresh()`` plan on train + held-out rows and,
    where the method has a ``transform``, also by placing them in the fixed train map."""
    log.info("%s (%s): fit on %d rows", name, mode, len(split.X_train))
    parametric = plan.hyperparameters.get("parametric", False)
    encoder_rows = parametric and split.encoder_train is not None
    if encoder_rows:
        train = fit(plan, split.encoder_train, X_knn=split.X_train)
    else:
        train = fit(plan, split.X_train)
    runs = []
    if not parametric:
        log.info("%s (%s): refit on %d rows", name, mode, len(split.X_train) + len(split.X_test))
        refit = fit(fresh(), np.concatenate([split.X_train, split.X_test]))
        n_train = len(split.X_train)
        runs.append(Run(name, mode, train, refit.Y[n_train:], refit.Y[:n_train], REFIT, refit.seconds))
    if parametric or callable(getattr(plan.method, "transform", None)):
        start = time.perf_counter()
        Y_test = plan.method.transform(split.encoder_test if encoder_rows else split.X_test)
        seconds = time.perf_counter() - start
        Y_test = check_embedding(Y_test, len(split.X_test), plan.name)
        runs.append(Run(name, mode, train, Y_test, train.Y, TRANSFORM if parametric else PLACE, seconds))
    return runs


def _dataset_config(cfg: DictConfig, plans: list[Plan]) -> DictConfig | dict:
    """The dataset config, with ``encoder_input`` from the protocol's table for parametric fits
    where a protocol has one and the figure fits some method parametrically."""
    table = (cfg.get("protocol") or {}).get("encoder_input")
    if table is None or not any(p.hyperparameters.get("parametric") for p in plans):
        return cfg.dataset
    dataset = OmegaConf.to_container(cfg.dataset, resolve=True)
    dataset["encoder_input"] = table.get("parametric_True", "pca")
    return dataset


def _split(data: Dataset, n_test: Any, seed: int, n_train: int | None = None) -> Split:
    """The dataset's train/test split (``n_test`` null), or ``n_test`` rows of a seeded
    permutation held out; with ``n_train``, a seeded subsample of that many train rows (every
    held-out row kept)."""
    n = len(data.X)
    y = data.y
    if n_test is None:
        if data.n_train >= n:
            raise InputError(
                f"dataset {data.name!r} has no test split (n_train = n); hold out rows with "
                "figure.n_test=<count>, or use a dataset with one (mnist)."
            )
        rows_train, rows_test = np.arange(data.n_train), np.arange(data.n_train, n)
        how = "the dataset's test split"
    else:
        check_whole("figure.n_test", n_test, least=1)
        if n_test >= n - 1:
            raise InputError(f"figure.n_test={n_test} leaves no train rows of the {n} points.")
        order = np.random.default_rng(seed).permutation(n)
        rows_train, rows_test = np.sort(order[n_test:]), np.sort(order[:n_test])
        how = f"a seeded random {n_test:,}"
    if n_train is not None:
        if n_train > len(rows_train):
            raise InputError(
                f"figure.n_train={n_train} exceeds the {len(rows_train):,} train rows; give at most "
                f"{len(rows_train)}, or figure.n_train=null for all of them."
            )
        rng = np.random.default_rng([seed, 1])  # apart from the permutation above
        rows_train = np.sort(rng.choice(rows_train, n_train, replace=False))
        how += f", fit on a seeded {n_train:,} of the train rows"
    X = np.asarray(data.X, dtype=np.float32)
    E = data.X_encoder
    if E is not None:
        how += "; parametric encoders read the rows before PCA"
    return Split(
        X_train=X[rows_train],
        X_test=X[rows_test],
        y_train=None if y is None else y[rows_train],
        y_test=None if y is None else y[rows_test],
        how=how,
        encoder_train=None if E is None else E[rows_train],
        encoder_test=None if E is None else E[rows_test],
    )


def _modes(value: Any) -> dict[str, dict[str, Any]]:
    modes = OmegaConf.to_container(value, resolve=True) if value is not None else None
    if not isinstance(modes, dict) or not modes:
        raise InputError(
            f"figure.modes={modes!r} must map mode names to method parameters, e.g. "
            "{non-parametric: {parametric: false}, parametric: {parametric: true}}."
        )
    for mode, params in modes.items():
        if not isinstance(params, dict) or not isinstance(params.get("parametric"), bool):
            raise InputError(f"figure.modes.{mode} must set parametric: true or false.")
    if not any(p["parametric"] for p in modes.values()):
        raise InputError("figure.modes has no parametric mode: nothing would use transform.")
    return modes


def _compared(cfg: DictConfig) -> list[str]:
    """The compared methods (``METHODS``) the experiment configures under ``methods``: all three
    by default; ``'~methods.umap'`` on the command line drops one (a shorter run)."""
    compared = [key for key in METHODS if key in (cfg.get("methods") or {})]
    if not compared:
        raise InputError(
            f"the figure compares none of {', '.join(METHODS)}: keep at least one under methods "
            "(remove the ~methods.<key> overrides, or add `- /method@methods.<key>: <name>` to the "
            "experiment's defaults)."
        )
    return compared


def _references(cfg: DictConfig, value: Any) -> list[str]:
    keys = [str(v) for v in (value or [])]
    missing = [key for key in keys if key not in (cfg.get("methods") or {})]
    if missing:
        raise InputError(
            f"figure.references lists {', '.join(missing)}, which is not under methods; add "
            f"`- /method@methods.{missing[0]}: <name>` to the experiment's defaults."
        )
    clash = [key for key in keys if key in METHODS]
    if clash:
        raise InputError(f"figure.references: {clash[0]} is one of the compared methods.")
    return keys


def _plot(runs: list[Run], split: Split, table: pd.DataFrame, title: str, path: Path) -> None:
    """Per fit a panel of its train embedding, per run one of the held-out rows' (coloured by
    label); a fit whose held-out rows are placed two ways (refit, placed) is drawn once."""
    panels, drawn = [], set()
    for r, (_, row) in zip(runs, table.iterrows()):
        name = f"{r.method}, {r.mode}"
        if id(r.train) not in drawn:
            drawn.add(id(r.train))
            panels.append((r.train.Y, split.y_train, f"{name}\ntrain: NP={row['NP@k']:.2f}"))
        held_out = (f"{name}\nheld-out by {r.how.split()[0]}: {r.seconds:.3g} s, "
                    f"kNN acc={row['held-out kNN acc']:.2f}")  # fmt: skip
        panels.append((r.Y_test, split.y_test, held_out))
    fig, axes = panel_grid(len(panels), columns=4)
    for ax, (Y, labels, label) in zip(axes, panels):
        scatter(ax, Y, labels, label)
    fig.suptitle(title, fontsize=10)
    save_figure(fig, path)
