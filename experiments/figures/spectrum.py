"""Damrich et al. (tsne-to-umap-contrastive) Fig. 1: the Neg-t-SNE spectrum.

Neg-t-SNE fits ``q_ij = (1 + d_ij^2)^-1 / Z-bar`` with a fixed normaliser Z-bar by negative
sampling (NCE with nu = m Z-bar / n^2; ``nomad.losses.NegTSNE``), Z-bar moved by the spectrum
parameter s from t-SNE's 100 n (s = 0) to UMAP's n^2 / m (s = 1). The embedding's partition
function ``Z = sum_{i != j} (1 + d_ij^2)^-1`` tries to match Z-bar and grows with it, so the
embedding shrinks as Z-bar grows (panels a-e, i). The references sit on the same Z-bar axis
(sec. 4-5 of the paper): t-SNE at its own partition function, NCVis at its learned normaliser
(``n^2 exp(log Z)``: the engine parametrises nu = m exp(log Z)) and UMAP at ``n^2 / m`` (m its
negative sample rate); there Neg-t-SNE should look like them. InfoNC-t-SNE is shown beside
t-SNE and has no Z-bar.

Figure: one panel per embedding coloured by label, and panel (i): Z of each embedding against
Z-bar (log-log) with the diagonal Z = Z-bar. Table: per embedding Z-bar, Z, scale (median
pairwise distance), NP@k to the data, kNN accuracy (``metrics.knn_accuracy``, the dataset's
test split), the fraction of shared k-NN with t-SNE's and with UMAP's embedding (NP@k between
two 2-D embeddings), and the wall time. ``protocol=<name>`` runs the methods of
``figure.protocol_methods`` at that protocol (``_common.method_plan``). The paper starts every
Neg-t-SNE run from the s = 1 layout; the engine starts from PCA (its protocol's EE, 250 epochs at
s = 1 first, stands in for that start).
"""

from __future__ import annotations

import logging
import numbers
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import DictConfig

from experiments.figures._common import (
    Fit,
    check_whole,
    fit,
    markdown_table,
    method_plan,
    pair_statistics,
    panel_grid,
    save_figure,
    scatter,
    write_markdown,
)
from metrics import knn_accuracy, neighborhood_preservation
from nebench.datasets import Dataset, check_data, load_dataset
from nebench.errors import InputError

log = logging.getLogger(__name__)

#: reference methods: key in ``methods`` -> panel name
REFERENCES = {"tsne": "t-SNE", "infonc_tsne": "InfoNC-t-SNE", "ncvis": "NCVis", "umap": "UMAP"}
SPECTRUM = "neg_tsne"
COLUMNS = ["embedding", "method", "s", "Z-bar", "Z", "scale", "NP@k", "kNN acc", "NP@k to t-SNE",
           "NP@k to UMAP", "time (s)"]  # fmt: skip
FORMATS = {"s": "{:g}", "Z-bar": "{:.3g}", "Z": "{:.3g}", "scale": "{:.3g}", "NP@k": "{:.3f}",
           "kNN acc": "{:.3f}", "NP@k to t-SNE": "{:.3f}", "NP@k to UMAP": "{:.3f}",
           "time (s)": "{:.1f}"}  # fmt: skip


def make(cfg: DictConfig) -> pd.DataFrame:
    """Fit the spectrum and the references on ``cfg.dataset``; write ``<name>.png`` and
    ``<name>.md`` into ``cfg.out_dir``; return the table (one row per embedding)."""
    spec = cfg.figure
    s_values = {f"s={s:g}": s for s in _spectrum_values(spec.s)}
    k = spec.k
    check_whole("figure.k", k, least=1)
    check_whole("figure.pair_sample", spec.pair_sample, least=2)
    plans = {name: method_plan(cfg, SPECTRUM, s=s, z_bar=None) for name, s in s_values.items()}
    plans |= {name: method_plan(cfg, key) for key, name in REFERENCES.items()}

    data = load_dataset(cfg.dataset, cfg.paths.data_dir, cfg.seed)
    check_data(data.X, min_points=max(p.min_points for p in plans.values()))
    fits = {name: fit(plan, data.X) for name, plan in plans.items()}

    n, n_eval = len(data.X), cfg.metrics.n_eval
    table = spectrum_table(data, fits, s_values, spec.pair_sample, k, n_eval, cfg.seed)
    pairs = (
        "all pairs" if n <= spec.pair_sample else f"a seeded sample of {spec.pair_sample:,} points"
    )
    evaluated = n if n_eval is None else min(n, n_eval)
    protocol = (cfg.get("protocol") or {}).get("name")
    setting = f", {', '.join(spec.protocol_methods)} at protocol {protocol}" if protocol else ""
    out = Path(cfg.out_dir)
    title = f"{spec.name} on {data.name}" + (f" (protocol {protocol})" if protocol else "")
    _plot(fits, table, data.y, title, out / f"{spec.name}.png")
    shown = table.rename(columns={c: c.replace("@k", f"@{k}") for c in COLUMNS})
    write_markdown(
        out / f"{spec.name}.md",
        f"Neg-t-SNE spectrum on {data.name} (n={n:,}; tsne-to-umap-contrastive Fig. 1){setting}",
        [
            f"![{spec.name}]({spec.name}.png)",
            "",
            markdown_table(shown, {c.replace("@k", f"@{k}"): f for c, f in FORMATS.items()}),
            (
                f"Z and scale from {pairs}; NP@{k} over {evaluated:,} points (metrics.n_eval). "
                "Times are the methods' own phases; engine runs after the first reuse its cached "
                "kNN index (paths.cache_dir)."
            ),
        ],
    )
    return table


def spectrum_table(
    data: Dataset,
    fits: dict[str, Fit],
    s_values: dict[str, float],
    pair_sample: int,
    k: int,
    n_eval: int | None,
    seed: int,
) -> pd.DataFrame:
    """One row per embedding (columns :data:`COLUMNS`) in the order of ``fits``; ``s_values``
    maps the Neg-t-SNE embeddings' names to their s; kNN accuracy on ``data``'s test split."""
    X = data.X
    n = len(X)
    tsne, umap = fits[REFERENCES["tsne"]].Y, fits[REFERENCES["umap"]].Y
    rows = []
    for name, result in fits.items():
        Z, scale = pair_statistics(result.Y, pair_sample, seed)
        rows.append(
            {
                "embedding": name,
                "method": result.plan.name,
                "s": s_values.get(name, np.nan),
                "Z-bar": _z_bar(name, result, n, Z),
                "Z": Z,
                "scale": scale,
                "NP@k": _np(X, result.Y, k, n_eval, seed),
                "kNN acc": knn_accuracy(result.Y, data.y, data.n_train, seed=seed),
                "NP@k to t-SNE": _np(tsne, result.Y, k, n_eval, seed),
                "NP@k to UMAP": _np(umap, result.Y, k, n_eval, seed),
                "time (s)": result.seconds,
            }
        )
    return pd.DataFrame(rows, columns=COLUMNS)


def _z_bar(name: str, result: Fit, n: int, Z: float) -> float:
    """Where an embedding sits on the Z-bar axis (see the module docstring)."""
    method = result.plan.method
    if name.startswith("s="):
        return float(method.loss_.z_bar)
    if name == REFERENCES["tsne"]:
        return Z
    if name == REFERENCES["ncvis"]:
        return n * n * float(method.loss_.log_z.detach().exp())
    if name == REFERENCES["umap"]:
        return n * n / method.negative_sample_rate
    return np.nan


def _np(reference: np.ndarray, Y: np.ndarray, k: int, n_eval: int | None, seed: int) -> float:
    """NP@k of ``Y`` against ``reference``: the data, or another embedding (then the fraction
    of shared k-NN between the two layouts)."""
    return neighborhood_preservation(reference, Y, ks=(k,), n_eval=n_eval, seed=seed)[k][0]


def _spectrum_values(values: object) -> list[float]:
    s = list(values) if values is not None and not isinstance(values, (str, bytes)) else None
    if not s or not all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in s):
        raise InputError(
            f"figure.s={values!r} must be a non-empty list of numbers, "
            "e.g. 'figure.s=[-0.5,0,0.25,0.5,0.75,1,1.5]'."
        )
    if len(set(s)) != len(s):
        raise InputError(f"figure.s={s} lists a value twice; list each value of s once.")
    return sorted(float(v) for v in s)


def _plot(fits: dict[str, Fit], table: pd.DataFrame, labels, title: str, path: Path) -> None:
    fig, axes = panel_grid(len(fits) + 1, columns=4)
    for ax, (name, row) in zip(axes, table.set_index("embedding").iterrows()):
        z_bar = "" if np.isnan(row["Z-bar"]) else f", Z-bar={row['Z-bar']:.2g}"
        label = f"Neg-t-SNE {name}" if name.startswith("s=") else name
        scatter(ax, fits[name].Y, labels, f"{label}{z_bar}")
    ax = axes[-1]
    spectrum = table[table["embedding"].str.startswith("s=")]
    ax.loglog(spectrum["Z-bar"], spectrum["Z"], "o-", color="k", label="Neg-t-SNE")
    references = table[~table["embedding"].str.startswith("s=") & table["Z-bar"].notna()]
    for (_, row), marker in zip(references.iterrows(), "s^Dv"):
        ax.loglog(row["Z-bar"], row["Z"], marker, label=row["embedding"])
    lo = min(table["Z-bar"].min(), table["Z"].min()) / 2
    hi = max(table["Z-bar"].max(), table["Z"].max()) * 2
    ax.plot([lo, hi], [lo, hi], "--", color="0.6", lw=1, label="Z = Z-bar")
    ax.set_xlabel("Z-bar")
    ax.set_ylabel("partition function Z")
    ax.set_title("(i) partition function vs Z-bar", fontsize=9)
    ax.legend(fontsize=7)
    fig.suptitle(title)
    save_figure(fig, path)
