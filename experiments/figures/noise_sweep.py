"""How close the t-SNE end gets (issue 14 item 3): InfoNC-t-SNE and Neg-t-SNE (s = 0) against
the number of negatives m, beside openTSNE and NOMAD.

InfoNCE with m negatives per head is t-SNE in the limit m -> n (tsne-to-umap-contrastive sec. 4;
NOMAD reaches openTSNE's NP@10 with 10,000). Each method listed in ``figure.sweep`` is fitted at
every m of ``figure.m`` (``n_noise``) on every dataset of ``figure.datasets``, its other settings
as its method config gives them (the engine defaults: ``noise_samples: auto`` = min(m, 32) draws
per head estimate the noise sum of m, each standing for m / S samples; the draws actually used
are read back from the fitted model, ``noise_samples_``). Each reference of
``figure.references`` is fitted once per dataset at its defaults.

Figure: NP@k, RTA, kNN accuracy and the time against m (log x), a line per swept method per
dataset, the references as horizontal lines in the same colour per dataset. Table: one row per
fit with m, the noise draws, the time (the method's own phases, kNN included: every fit builds
its own index), NP@k, RTA, kNN accuracy and NP@k as a fraction of the first reference's
(openTSNE) on the same dataset.
"""

from __future__ import annotations

import logging
import numbers
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import DictConfig

from experiments.figures._common import (
    check_whole,
    fit,
    markdown_table,
    method_plan,
    panel_grid,
    save_figure,
    write_markdown,
)
from metrics import evaluate
from nebench.datasets import check_data, load_dataset
from nebench.errors import InputError
from nebench.runner import warm_up

log = logging.getLogger(__name__)

NAMES = {"infonc_tsne": "InfoNC-t-SNE", "neg_tsne": "Neg-t-SNE", "opentsne": "openTSNE",
         "nomad": "NOMAD"}  # fmt: skip
COLUMNS = ["dataset", "method", "role", "m", "noise draws", "time (s)", "NP@k", "RTA",
           "kNN acc", "NP@k / ref"]  # fmt: skip
FORMATS = {"m": "{:,.0f}", "noise draws": "{:,.0f}", "time (s)": "{:.1f}", "NP@k": "{:.3f}",
           "RTA": "{:.3f}", "kNN acc": "{:.3f}", "NP@k / ref": "{:.2f}"}  # fmt: skip
SWEPT, REFERENCE = "swept", "reference"


def make(cfg: DictConfig) -> pd.DataFrame:
    """Fit the sweep and the references on every dataset; write ``<name>.png`` and ``<name>.md``
    into ``cfg.out_dir``; return the table (one row per fit)."""
    spec = cfg.figure
    k = spec.k
    check_whole("figure.k", k, least=1)
    m_values = _m_values(spec.m)
    datasets = _keys("figure.datasets", spec.datasets, cfg.get("datasets") or {}, "datasets")
    sweep = _keys("figure.sweep", spec.sweep, cfg.get("methods") or {}, "methods")
    references = _keys("figure.references", spec.references, cfg.get("methods") or {}, "methods",
                       empty=True)  # fmt: skip
    # every request is checked (and every method built) before any data is loaded
    plans = {(key, m): method_plan(cfg, key, n_noise=m) for key in sweep for m in m_values}
    plans |= {(key, None): method_plan(cfg, key) for key in references}

    rows, warm = [], set()
    for ds_key in datasets:
        data = load_dataset(cfg.datasets[ds_key], cfg.paths.data_dir, cfg.seed)
        check_data(data.X, min_points=max(p.min_points for p in plans.values()))
        for (key, m), plan in plans.items():
            plan = method_plan(cfg, key, n_noise=m) if m is not None else method_plan(cfg, key)
            if key not in warm and cfg.trainer.get("warmup", True):  # one-off compilation
                warm_up(plan, data.X, cfg.seed)  # untimed, as run.py and the benchmark do
                warm.add(key)
            result = fit(plan, data.X)
            scores = evaluate(
                data.X, result.Y, data.y, data.n_train, ks=(k,), n_eval=cfg.metrics.n_eval,
                n_triplets=cfg.metrics.n_triplets, knn_k=cfg.metrics.knn_k, n_trust=0, n_pairs=0,
                seed=cfg.seed,
            )  # fmt: skip
            method = plan.method
            rows.append(
                {
                    "dataset": f"{data.name} ({len(data.X):,})",
                    "method": NAMES.get(key, key),
                    "role": SWEPT if m is not None else REFERENCE,
                    "m": float(getattr(method, "n_noise", np.nan)),
                    "noise draws": float(getattr(method, "noise_samples_", np.nan)),
                    "time (s)": result.seconds,
                    "NP@k": scores[f"np@{k}"],
                    "RTA": scores["rta"],
                    "kNN acc": scores.get("knn_acc", np.nan),
                }
            )
            log.info("%s", rows[-1])
    table = _relative(pd.DataFrame(rows, columns=COLUMNS[:-1]), references)

    out = Path(cfg.out_dir)
    name = spec.name
    shown = table.rename(columns={c: c.replace("@k", f"@{k}") for c in COLUMNS})
    ref = NAMES.get(references[0], references[0]) if references else None
    _plot(table, k, f"{name}: the t-SNE end against m", out / f"{name}.png")
    write_markdown(
        out / f"{name}.md",
        f"InfoNC-t-SNE and Neg-t-SNE (s = 0) against the number of negatives m ({name})",
        [
            f"![{name}]({name}.png)",
            "",
            markdown_table(shown, {c.replace("@k", f"@{k}"): f for c, f in FORMATS.items()}),
            (
                f"m = n_noise, the negatives per head in the objective; noise draws = the points "
                f"drawn per head to estimate their sum (noise_samples, resolved). NP@{k} over "
                f"{cfg.metrics.n_eval} points (metrics.n_eval), RTA over {cfg.metrics.n_triplets:,} "
                f"triplets, kNN accuracy (k = {cfg.metrics.knn_k}) train split -> test split (a seeded "
                "80/20 split where the data has none). Times are the methods' own "
                "phases (kNN included: every fit builds its own index), after one untimed warm-up "
                "fit per method (one-off compilation; trainer.warmup)"
                + (f"; NP@{k} / ref is the fraction of {ref}'s on the same dataset." if ref else ".")
            ),
        ],
    )
    return table


def _relative(table: pd.DataFrame, references: list[str]) -> pd.DataFrame:
    """Add ``NP@k / ref``: NP@k over the first reference's on the same dataset (NaN without)."""
    if not references:
        return table.assign(**{"NP@k / ref": np.nan})
    ref = table[table["method"] == NAMES.get(references[0], references[0])]
    base = ref.set_index("dataset")["NP@k"]
    return table.assign(**{"NP@k / ref": table["NP@k"] / table["dataset"].map(base)})


def _m_values(values: object) -> list[float]:
    m = list(values) if values is not None and not isinstance(values, (str, bytes)) else None
    if not m or not all(isinstance(v, numbers.Real) and not isinstance(v, bool) and v > 0
                        for v in m):  # fmt: skip
        raise InputError(
            f"figure.m={values!r} must be a non-empty list of positive numbers of negatives, "
            "e.g. 'figure.m=[5,50,500,5000]'."
        )
    if len(set(m)) != len(m):
        raise InputError(f"figure.m={m} lists a value twice; list each m once.")
    return sorted(int(v) if float(v).is_integer() else float(v) for v in m)


def _keys(name: str, values: object, known, where: str, empty: bool = False) -> list[str]:
    keys = list(values) if values is not None and not isinstance(values, (str, bytes)) else None
    if keys is None or (not keys and not empty):
        raise InputError(f"{name}={values!r} must be a list of keys of {where}.")
    unknown = [key for key in keys if key not in known]
    if unknown:
        raise InputError(
            f"{name} lists {unknown}, not in {where} ({sorted(known)}); add "
            f"`- /{'method' if where == 'methods' else 'dataset'}@{where}.<key>: <name>` to the "
            "defaults of the experiment file."
        )
    if len(set(keys)) != len(keys):
        raise InputError(f"{name}={keys} lists a key twice.")
    return keys


def _plot(table: pd.DataFrame, k: int, title: str, path: Path) -> None:
    metrics = ["NP@k", "RTA", "kNN acc", "time (s)"]
    fig, axes = panel_grid(len(metrics), columns=len(metrics), size=3.6)
    colors = {"InfoNC-t-SNE": "tab:blue", "Neg-t-SNE": "tab:orange", "openTSNE": "k",
              "NOMAD": "tab:green"}  # fmt: skip
    styles = dict(zip(table["dataset"].unique(), ["-", "--", ":", "-."]))
    swept = table[table["role"] == SWEPT]
    refs = table[table["role"] == REFERENCE]
    for ax, metric in zip(axes, metrics):
        for (dataset, method), rows in swept.groupby(["dataset", "method"], sort=False):
            ax.plot(rows["m"], rows[metric], "o", ls=styles[dataset],
                    color=colors.get(method), label=f"{method}, {dataset}")  # fmt: skip
        for _, row in refs.iterrows():
            ax.axhline(row[metric], ls=styles[row["dataset"]], lw=1, alpha=0.7,
                       color=colors.get(row["method"], "0.5"),
                       label=f"{row['method']} (defaults), {row['dataset']}")  # fmt: skip
        ax.set_xscale("log")
        if metric == "time (s)":
            ax.set_yscale("log")
        ax.set_xlabel("m (negatives per head, n_noise)")
        ax.set_title(metric.replace("@k", f"@{k}"), fontsize=9)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=7,
               bbox_to_anchor=(0.5, -0.02 - 0.035 * ((len(labels) + 3) // 4)))  # fmt: skip
    fig.suptitle(title)
    save_figure(fig, path)
