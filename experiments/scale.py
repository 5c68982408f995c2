"""Time and quality against n: the NOMAD paper's Fig. 3 claim at scale, on this machine (issue 18).

    python -m experiments.scale                     # mnist1m at 100k, 250k, 1M: nomad, opentsne, umap
    python -m experiments.scale 'ns=[70000,250000]' 'methods=[nomad]'
    python -m experiments.scale plot_only=true      # table and figure again from the saved rows

For each n in ``ns`` (ascending) and each method, :func:`experiments.bench.run_benchmark` measures
the method on a seeded n-row subsample of the dataset exactly as the side-by-side benchmark does
(PCA-50 input, one fresh process per method, the same untimed warm-up, ``fit_transform`` timed
from the array to the 2-D embedding, peak RSS of that process, metrics in the parent and timed
apart). Every measured row is appended to ``table`` (CSV, rewritten atomically after each method),
so a run that dies loses only the method it was running, and ``resume=true`` (the default) skips
the (dataset, n, method) rows already there (a row measured at other settings, its ``setup``
column, stops the run with an error instead): the 1M openTSNE and UMAP fits take an hour or more
here and can be run in the background and picked up again.

From the table it writes the markdown table (``output``; each row's time also as a ratio to
openTSNE's at the same n, and the load average around it) and a figure (``figure``): wall time
against n, log-log, each method's total and NOMAD's phases (kNN/index, optimisation) and the time
of the metrics of its map; NP@10, RTA and kNN accuracy against n.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import hydra
import pandas as pd
from matplotlib.figure import Figure
from omegaconf import DictConfig, OmegaConf

from experiments import bench
from nebench.errors import InputError
from nebench.io import atomic_open
from nebench.results import code_version

log = logging.getLogger(__name__)

KEY = ["dataset", "n", "method"]  # one measured row per key
CODE = "code"  # nebench's version when the row was measured
LOAD = "load"  # the 1-minute load average before / after the row (2 cores: above 2, others ran)
#: the settings a row was measured at besides its key (seed, PCA, the dataset's generation, the
#: devices, the kNN cache, the method's overrides and protocol): a resumed table must not mix
#: rows of other settings
SETUP = "setup"


def run_scale(cfg: DictConfig) -> pd.DataFrame:
    """Measure every (n, method) not yet in ``cfg.table``; return the whole table."""
    ns = _sizes(cfg.ns)
    table = load_table(cfg.table) if cfg.resume else pd.DataFrame()
    methods = bench._method_names(cfg)
    overrides = {key: bench._method_overrides(cfg, methods, key)
                 for key in ("method_overrides", "protocol_overrides")}  # fmt: skip
    setups = {method: _setup(cfg, method, overrides) for method in methods}
    # every saved row is checked before anything is measured: a refusal costs no work
    done = {(n, m) for n in ns for m in methods
            if _measured(table, cfg.dataset.name, n, m, setups[m], cfg.table)}  # fmt: skip
    for n in ns:
        for method in methods:
            if (n, method) in done:
                log.info("%s at n=%d: in %s already (resume=true), skipped", method, n, cfg.table)
                continue
            setup = setups[method]
            log.info("%s at n=%d", method, n)
            run_cfg = cfg.copy()
            run_cfg.methods = [method]
            for key, values in overrides.items():  # this method's own: bench refuses others
                run_cfg[key] = {method: values[method]} if method in values else {}
            run_cfg.dataset.n = n
            load_before = bench.load_average()
            rows = bench.run_benchmark(run_cfg).table
            rows[CODE] = code_version()
            rows[SETUP] = setup
            rows[LOAD] = f"{load_before} / {bench.load_average()}"
            table = pd.concat([table, rows], ignore_index=True)
            save_table(table, cfg.table)
    return table


def load_table(path: str | Path) -> pd.DataFrame:
    """The saved rows, or an empty table when there are none yet."""
    path = Path(path)
    if not path.exists():
        return pd.DataFrame()
    try:
        # text columns stay text: a code version like 24e5681 would otherwise read as a float
        table = pd.read_csv(path, dtype={CODE: str, LOAD: str, SETUP: str, bench.NOTE: str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise InputError(
            f"{path} is not a table experiments.scale wrote ({exc}); move it away or set "
            "table=<another path>."
        ) from exc
    if bench.NOTE in table:
        table[bench.NOTE] = table[bench.NOTE].fillna("")
    return table


def save_table(table: pd.DataFrame, path: str | Path) -> None:
    with atomic_open(path, "w") as f:
        table.to_csv(f, index=False)


def markdown(table: pd.DataFrame, header: list[str]) -> str:
    """The rows sorted by n and method, with each total as a ratio to openTSNE's at that n."""
    shown = table.sort_values(["n", "method"]).reset_index(drop=True)
    reference = shown[shown["method"] == bench.REFERENCE].set_index("n")[bench.TOTAL]
    shown[bench.RATIO] = shown[bench.TOTAL] / shown["n"].map(reference)
    columns = ["n", "method", bench.KNN_INDEX, bench.KNN, bench.OPTIMISATION, bench.TOTAL,
               bench.RSS, bench.METRICS, "NP@10", bench.RTA, bench.KNN_ACC, bench.RATIO, LOAD,
               bench.NOTE]  # fmt: skip
    shown = shown.reindex(columns=columns)
    shown["n"] = [f"{int(n):,}" for n in shown["n"]]
    for column, fmt in {**bench.FORMATS, "NP@10": bench.FORMATS[bench.RTA]}.items():
        if column in shown:
            shown[column] = ["-" if pd.isna(v) else fmt.format(v) for v in shown[column]]
    shown = shown.fillna("")
    try:
        body = shown.to_markdown(index=False)
    except ImportError:
        body = f"```\n{shown.to_string(index=False)}\n```"
    return "\n".join([*header, "", body, ""])


def plot(table: pd.DataFrame, path: str | Path, title: str) -> None:
    """Wall time against n (log-log) and NP@10, RTA, kNN accuracy against n (log n)."""
    fig = Figure(figsize=(16, 4), layout="constrained")
    axes = fig.subplots(1, 4)
    measured = table[table[bench.TOTAL].notna()].sort_values("n")
    for i, (method, rows) in enumerate(measured.groupby("method", sort=True)):
        color = f"C{i}"
        axes[0].plot(rows["n"], rows[bench.TOTAL], "o-", color=color, label=f"{method} total")
        if method == "nomad":
            phases = ((bench.KNN, "s--"), (bench.OPTIMISATION, "^:"), (bench.METRICS, "x-."))
            for column, style in phases:
                axes[0].plot(rows["n"], rows[column], style, color=color, label=f"nomad {column}")
        for ax, column in zip(axes[1:], ("NP@10", bench.RTA, bench.KNN_ACC)):
            ax.plot(rows["n"], rows[column], "o-", color=color, label=method)
    axes[0].set(xscale="log", yscale="log", xlabel="n", ylabel="wall time (s)", title=title)
    for ax, column in zip(axes[1:], ("NP@10", bench.RTA, bench.KNN_ACC)):
        ax.set(xscale="log", xlabel="n", ylabel=column)
    for ax in axes:
        ax.legend(fontsize=7)
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=110)


def _sizes(value) -> list[int]:
    ns = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
    if not isinstance(ns, list) or not ns or not all(
        isinstance(n, int) and not isinstance(n, bool) and n >= 2 for n in ns
    ):
        raise InputError(f"ns={ns!r} must be a list of sizes >= 2, e.g. 'ns=[100000,250000]'.")
    return sorted(set(ns))


def _setup(cfg: DictConfig, method: str, overrides: dict[str, dict]) -> str:
    """The settings of ``method``'s rows besides their key, as sorted JSON."""
    dataset = OmegaConf.to_container(cfg.dataset, resolve=True)
    return json.dumps({
        "seed": cfg.seed, "pca_dims": cfg.pca_dims, "knn_cache": cfg.knn_cache,
        "trainer": OmegaConf.to_container(cfg.trainer, resolve=True),
        "dataset": {k: v for k, v in dataset.items() if k not in ("n", "cache_dir")},
        "protocol": bench._protocols(cfg).get(method),
        **{key: values.get(method, {}) for key, values in overrides.items()},
    }, sort_keys=True, default=str)  # fmt: skip


def _measured(table: pd.DataFrame, dataset: str, n: int, method: str, setup: str, path) -> bool:
    """Whether the row is in ``table`` already; one measured at other settings is refused."""
    if table.empty:
        return False
    rows = table[(table["dataset"] == dataset) & (table["n"] == n) & (table["method"] == method)]
    rows = rows[rows[bench.TOTAL].notna()] if len(rows) else rows  # failed rows do not count
    if not len(rows):
        return False
    other = (set(rows[SETUP].dropna()) if SETUP in rows else set()) - {setup}
    if other:
        raise InputError(
            f"{path} holds {method} at n={n} measured at other settings ({other.pop()}; now "
            f"{setup}): set table=<another path> for these settings (resume=false would start "
            "this table afresh, dropping its rows)."
        )
    return True


@hydra.main(config_path="../conf", config_name="scale", version_base="1.3")
def main(cfg: DictConfig) -> None:
    """Hydra entry point: measure (unless ``plot_only``), then write the table and the figure."""
    try:
        table = load_table(cfg.table) if cfg.plot_only else run_scale(cfg)
        if table.empty:
            raise InputError(f"no rows in {cfg.table} to show; run without plot_only=true first.")
    except InputError as exc:
        log.error("scale benchmark not run: %s", exc)
        sys.exit(1)
    header = [
        f"# Time and quality against n on {cfg.dataset.name} (PCA-{cfg.pca_dims})",
        "",
        f"- command: `{bench.command('experiments.scale', 'scale')}`",
        f"- hardware: {bench.hardware()}",
        (f"- rows measured by code {', '.join(sorted(set(map(str, table[CODE]))))}; "
        "each method in a fresh process, warm-up untimed, one seed"),
    ]
    text = markdown(table, header)
    with atomic_open(cfg.output, "w") as f:
        f.write(text)
    plot(table, cfg.figure, f"{cfg.dataset.name}: time against n")
    print(text)
    log.info("table %s, figure %s", cfg.output, cfg.figure)


if __name__ == "__main__":
    main()
