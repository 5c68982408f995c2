"""Side-by-side benchmark: several methods on the same input, one table (issue 5).

    python -m experiments.bench dataset=mnist ['methods=[nomad,opentsne]']
        [+method_overrides.nomad.n_epochs=200] [pca_dims=null] [output=...]

The parent checks every requested method with the runner's :func:`nebench.runner.prepare`, then
loads the dataset once (plus PCA to ``pca_dims`` when the data have more dims) and saves it to a
temporary ``.npy``. Each method runs alone in a fresh spawned process, which memory-maps the
input, builds the method with ``prepare``, runs the runner's untimed warm-up fit
(:func:`nebench.runner.warm_up`: numba's one-off compilation, in umap-learn and in our kernels
alike, is reported in its own column and kept out of every total) and times ``fit_transform`` as
the runner does (from the array to the 2-D embedding, kNN included, metrics excluded;
nomad-projection sec. 4.1), so that the peak RSS is the method's own. The parent scores every
embedding with :func:`metrics.evaluate` (same seed for all) and reports per method: the kNN
search it used and its time, optimisation time (``init`` + ``fit`` phases), total time, peak RSS,
NP@k, RTA, kNN accuracy, the map's scale (median pairwise distance of 5,000 points) and the
total time as a ratio to openTSNE's from the same run, under a header naming the hardware and
the command. A method whose
import fails (an optional peer not installed) is skipped with a note; one that raises is
reported as failed in its row and the benchmark goes on.

Each rival at its best: ``protocols`` maps a method to its paper's protocol
(``conf/protocol/<name>.yaml``), run as a second row beside the method's defaults row, or to
``defaults`` where the method's defaults are its paper's protocol (one row). The ``setting``
column labels every row: ``defaults``, ``defaults = paper`` or ``protocol <name>``, followed by
`` + key=value, ...`` where overrides change the row's settings. A protocol row
is the method's config, then the protocol, then ``protocol_overrides.<method>`` (the
``method_overrides`` belong to the defaults row only).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import platform
import shlex
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import pandas as pd
import psutil
import torch
from hydra import compose
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException, MissingConfigException
from omegaconf import DictConfig, ListConfig, OmegaConf

from metrics import evaluate
from nebench.data.preprocess import pca
from nebench.datasets import Dataset, check_data, load_dataset
from nebench.errors import InputError
from nebench.io import atomic_open
from nebench.memory import PeakMemory
from nebench.results import code_version, timestamp
from nebench.runner import Plan, check_embedding, prepare, warm_up
from nomad.knn import threads

log = logging.getLogger(__name__)

#: every method's total time is divided by this method's, from the same run
REFERENCE = "opentsne"
#: ``timings_`` phases that make up the optimisation column (the kNN phase is ``knn``)
OPTIMISATION_PHASES = ("init", "fit")

KNN, OPTIMISATION, TOTAL, RSS = "kNN/index (s)", "optimisation (s)", "total (s)", "peak RSS (GB)"
METRICS = "metrics (s)"  # metrics.evaluate in the parent, not in the total
WARMUP = "warm-up (s)"  # the untimed warm-up fit (numba compilation etc.), not in the total
KNN_INDEX = "kNN search"
SETTING = "setting"  # defaults, defaults = paper, or protocol <name>; + the overrides
#: ``protocols`` value of a method whose defaults are its paper's protocol (no second row)
PAPER_DEFAULTS = "defaults"
RTA, KNN_ACC, RATIO, NOTE = "RTA", "kNN acc", f"time / {REFERENCE}", "note"
SCALE = "scale"  # the map's median pairwise distance (over SCALE_POINTS points): its size
SCALE_POINTS = 5_000
#: display format of the numeric columns (NP@k columns use the RTA format)
FORMATS = {KNN: "{:.2f}", OPTIMISATION: "{:.2f}", TOTAL: "{:.2f}", RSS: "{:.2f}", WARMUP: "{:.1f}",
           METRICS: "{:.1f}",
           RTA: "{:.3f}", KNN_ACC: "{:.3f}", SCALE: "{:.3g}", RATIO: "{:.2f}"}  # fmt: skip


@dataclass(frozen=True)
class Report:
    """The benchmark's result: header lines (markdown) and one row per method.

    ``table`` holds numbers (NaN where not measured) and a ``note`` for skipped/failed methods.
    """

    header: list[str]
    table: pd.DataFrame

    def markdown(self) -> str:
        """Header and table as markdown (a fixed-width table in a code block without tabulate)."""
        shown, footnotes = _display(self.table)
        try:
            body = shown.to_markdown(index=False)
        except ImportError:  # pandas needs the optional tabulate package for markdown
            body = f"```\n{shown.to_string(index=False)}\n```"
        return "\n".join([*self.header, "", body, "", *footnotes, ""])


@dataclass(frozen=True)
class _Entry:
    """One requested method: its checked plan and resolved config, or why it is skipped."""

    name: str
    plan: Plan | None
    config: dict[str, Any]
    note: str = ""
    setting: str = "defaults"


def run_benchmark(cfg: DictConfig) -> Report:
    """Run ``cfg.methods`` one after another on ``cfg.dataset``; see the module docstring.

    Needs Hydra initialised (inside ``@hydra.main`` or ``initialize``/``compose`` with
    ``HydraConfig`` set): method configs are composed from ``conf/method/``.
    """
    names = _method_names(cfg)
    overrides = _method_overrides(cfg, names)
    protocols = _protocols(cfg)
    protocol_overrides = _method_overrides(cfg, names, "protocol_overrides")
    pca_dims = _pca_dims(cfg.pca_dims)
    entries = []
    for name in names:
        protocol = protocols.get(name)
        label = "defaults = paper" if protocol == PAPER_DEFAULTS else "defaults"
        entries.append(_entry(cfg, name, overrides.get(name, {}), setting=label))
        if protocol not in (None, PAPER_DEFAULTS):
            entries.append(_entry(cfg, name, protocol_overrides.get(name, {}), protocol=protocol))

    data = load_dataset(cfg.dataset, cfg.paths.data_dir, cfg.seed)
    raw_dim = data.X.shape[1]
    X = _project(data.X, pca_dims, cfg.seed)
    check_data(X, min_points=max((e.plan.min_points for e in entries if e.plan), default=2))

    load_before = load_average()
    scratch = Path(cfg.scratch_dir)
    scratch.mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory(dir=scratch, prefix="bench-") as tmp:
        x_path = Path(tmp) / "X.npy"
        np.save(x_path, X)
        for i, entry in enumerate(entries, 1):
            log.info("[%d/%d] %s", i, len(entries), entry.name)
            rows.append(_row(entry, x_path, Path(tmp) / f"Y_{i}.npy", X, data, cfg.seed))

    n, dim = X.shape
    knn = "kNN from the cache where present" if cfg.knn_cache else "kNN built from scratch"
    projected = f"PCA-{dim} of {raw_dim} dims" if dim != raw_dim else f"{dim} dims"
    header = [
        f"# Benchmark on {data.name}: n={n:,}, {projected}, seed {cfg.seed}",
        "",
        f"- command: `{command()}`",
        f"- hardware: {hardware()}",
        f"- code: nebench {code_version()}, {timestamp()}",
        (f"- times: wall seconds of fit_transform, one fresh process per method ({knn}); "
        f"load average {load_before} before, {load_average()} after (2 cores: above 2, other jobs "
        "shared the CPU)"),
    ]
    table = _table(rows)
    table.insert(0, "n", n)
    table.insert(0, "dataset", data.name)
    return Report(header=header, table=table)


def load_average() -> str:
    """The 1-minute load average (how busy the machine was), or "unknown"."""
    try:
        return f"{os.getloadavg()[0]:.1f}"
    except OSError:
        return "unknown"


def command(module: str = "experiments.bench", default_config: str = "bench") -> str:
    """The command line (``python -m <module>``) that reproduces this Hydra run: the config
    name when it is not the module's ``default_config``, the task overrides and any
    ``hydra.searchpath`` (where extra method configs live), shell-quoted."""
    hydra_cfg = HydraConfig.get()
    overrides = hydra_cfg.overrides
    searchpath = [o for o in overrides.hydra if o.startswith("hydra.searchpath")]
    name = hydra_cfg.job.config_name
    config = ["--config-name", name] if name and name != default_config else []
    return shlex.join(["python", "-m", module, *config, *overrides.task, *searchpath])


def hardware() -> str:
    """CPU model, usable cores, memory, torch threads and GPU(s) of this machine, in one line."""
    cores = threads()
    if torch.cuda.is_available():
        gpu = f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
    else:
        gpu = "none"
    return (
        f"{_cpu_model()}, {cores} of {os.cpu_count()} cores usable, "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB RAM, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), GPU: {gpu}"
    )


def report(run: Callable[[DictConfig], Any], cfg: DictConfig, what: str) -> None:
    """Run a benchmark, print its markdown table and write it to ``cfg.output``; a bad
    request is logged in one line and exits non-zero."""
    try:
        result = run(cfg)
    except InputError as exc:
        log.error("%s not run: %s", what, exc)
        sys.exit(1)
    text = result.markdown()
    with atomic_open(cfg.output, "w") as f:
        f.write(text)
    table = getattr(result, "table", None)
    if isinstance(table, pd.DataFrame):  # the numbers, for plots (e.g. experiments.scale)
        with atomic_open(Path(cfg.output).with_suffix(".csv"), "w") as f:
            table.to_csv(f, index=False)
    print(text)  # the benchmark's product, on stdout
    log.info("table written to %s", cfg.output)


@hydra.main(config_path="../conf", config_name="bench", version_base="1.3")
def main(cfg: DictConfig) -> None:
    """Hydra entry point: run the benchmark, print the table and write it to ``cfg.output``."""
    report(run_benchmark, cfg, "benchmark")


# --- checks and method configs (parent, before any heavy work) -------------------------------


def _method_names(cfg: DictConfig) -> list[str]:
    names = cfg.methods
    if isinstance(names, str):
        names = [names]
    elif not isinstance(names, (list, ListConfig)) or not names:
        raise InputError(
            f"methods={names!r} must be a non-empty list, e.g. 'methods=[nomad,opentsne]'."
        )
    names = [str(name) for name in names]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise InputError(
            f"methods lists {', '.join(repeated)} more than once; list each method once."
        )
    return names


def _method_overrides(
    cfg: DictConfig, names: list[str], key: str = "method_overrides"
) -> dict[str, dict[str, Any]]:
    node = cfg.get(key)
    overrides = (OmegaConf.to_container(node, resolve=False) if node is not None else None) or {}
    if not isinstance(overrides, dict):
        raise InputError(
            f"{key}={overrides!r} must map method names to parameters, e.g. "
            f"+{key}.nomad.n_epochs=200."
        )
    for name, values in overrides.items():
        if name not in names:
            raise InputError(
                f"{key}.{name} is given but {name!r} is not in methods "
                f"({', '.join(names)}); add it to methods or drop the override."
            )
        if not isinstance(values, dict):
            raise InputError(
                f"{key}.{name}={values!r} must be a mapping of parameters, e.g. "
                f"+{key}.{name}.<parameter>=<value>."
            )
    return overrides


def _protocols(cfg: DictConfig) -> dict[str, str]:
    """``cfg.protocols``: method -> a ``conf/protocol/`` name or ``defaults`` (null: none). Methods
    listed but not in ``methods`` are ignored (the default lists every method with a paper)."""
    node = cfg.get("protocols")
    protocols = (OmegaConf.to_container(node, resolve=True) if node is not None else None) or {}
    if not isinstance(protocols, dict) or not all(isinstance(v, str) for v in protocols.values()):
        raise InputError(
            f"protocols={protocols!r} must map method names to a protocol (conf/protocol/<name>.yaml) "
            f"or '{PAPER_DEFAULTS}', e.g. 'protocols={{infonc_tsne: damrich_iclr}}'."
        )
    return protocols


def _pca_dims(value: Any) -> int | None:
    if value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        return value
    raise InputError(
        f"pca_dims={value!r} must be a whole number >= 1 or null (no PCA); e.g. pca_dims=50."
    )


def _entry(
    cfg: DictConfig,
    name: str,
    overrides: dict[str, Any],
    *,
    protocol: str | None = None,
    setting: str = "defaults",
) -> _Entry:
    """Compose ``conf/method/<name>.yaml`` (then ``conf/protocol/<protocol>.yaml``), apply the
    overrides and check it with ``prepare``."""
    composed = _compose_method(name, protocol)
    method = OmegaConf.to_container(composed.method, resolve=False)
    if not cfg.knn_cache and "cache_dir" in method:
        method["cache_dir"] = None
    run = {
        "seed": cfg.seed,
        "trainer": cfg.trainer,
        "metrics": cfg.metrics,
        "paths": cfg.paths,
        "method": OmegaConf.merge(method, overrides),
    }
    if protocol is not None:  # its tables, which the method's values interpolate
        run["protocol"] = OmegaConf.to_container(composed.get("protocol") or {}, resolve=False)
        setting = f"protocol {protocol}"
    if overrides:  # a row off its method's defaults or protocol says how far off
        setting += " + " + ", ".join(f"{key}={value}" for key, value in overrides.items())
    run_cfg = OmegaConf.create(run)
    try:
        plan = prepare(run_cfg)
    except InputError as exc:
        failure = _import_failure(exc)
        if failure is None:
            raise
        log.warning("%s skipped: %s", name, failure)
        return _Entry(name, None, {}, f"skipped: {failure}", setting)
    return _Entry(name, plan, OmegaConf.to_container(run_cfg, resolve=True), setting=setting)


def _compose_method(name: str, protocol: str | None = None) -> DictConfig:
    """``conf/method/<name>.yaml`` (or one under ``hydra.searchpath``) with its defaults, then
    ``conf/protocol/<protocol>.yaml`` over it."""
    searchpath = list(HydraConfig.get().searchpath)
    overrides = (
        [f"hydra.searchpath=[{','.join(repr(p) for p in searchpath)}]"] if searchpath else []
    )
    extra = [f"+protocol={protocol}"] if protocol is not None else []
    try:
        return compose(overrides=[*overrides, f"+method={name}", *extra])
    except MissingConfigException as exc:
        group = "protocol" if protocol is not None and "protocol" in str(exc) else "method"
        options = GlobalHydra.instance().config_loader().get_group_options(group)
        missing = protocol if group == "protocol" else name
        raise InputError(
            f"{'protocols' if group == 'protocol' else 'methods'}: there is no {group} {missing!r} "
            f"(no conf/{group}/{missing}.yaml); choose from "
            f"{', '.join(o for o in options if not o.startswith('_'))}."
        ) from exc
    except HydraException as exc:
        raise InputError(f"methods: the config of method {name!r} does not compose: {exc}") from exc


def _import_failure(exc: BaseException) -> str | None:
    """``Type: message`` of the innermost error under an ImportError in the cause chain, if any."""
    failure, seen_import = None, False
    while exc is not None:
        seen_import = seen_import or isinstance(exc, ImportError)
        if seen_import:
            failure = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        exc = exc.__cause__
    return failure


def _project(X: np.ndarray, pca_dims: int | None, seed: int) -> np.ndarray:
    if pca_dims is None or X.shape[1] <= pca_dims:
        return X
    if len(X) < pca_dims:
        raise InputError(
            f"pca_dims={pca_dims} but the data have only {len(X)} points; set pca_dims to at "
            f"most {len(X)}, or pca_dims=null."
        )
    log.info("input: PCA-%d of %d dims", pca_dims, X.shape[1])
    return pca(X, pca_dims, seed)


# --- one method: measured in a child process, scored in the parent ---------------------------


def _row(
    entry: _Entry, x_path: Path, y_path: Path, X: np.ndarray, data: Dataset, seed: int
) -> dict[str, Any]:
    row: dict[str, Any] = {"method": entry.name, SETTING: entry.setting, "device": "", NOTE: ""}
    if entry.plan is None:
        return {**row, NOTE: entry.note}
    plan = entry.plan
    row["device"] = plan.accelerator + (f" x{plan.devices}" if plan.devices > 1 else "")
    try:
        measured = _in_child(entry.config, x_path, y_path)
        Y = check_embedding(np.load(y_path), len(X), entry.name)
        start = time.perf_counter()
        scores = evaluate(X, Y, data.y, data.n_train, **plan.metric_options, seed=seed)
        metrics_time = time.perf_counter() - start
    except ImportError as exc:  # a peer imported only when fitting
        note = f"skipped: {_import_failure(exc)}"
        log.warning("%s %s", entry.name, note)
        return {**row, NOTE: note}
    except BrokenProcessPool as exc:
        log.error("%s: its process died", entry.name, exc_info=exc)
        return {**row, NOTE: "failed: its process died (out of memory, or a crash in native code)"}
    except Exception as exc:
        log.error("%s failed", entry.name, exc_info=exc)
        first_line = str(exc).splitlines()[0] if str(exc) else ""
        return {**row, NOTE: f"failed: {type(exc).__name__}: {first_line}"}
    from experiments.figures._common import pair_statistics  # it imports this module

    phases = measured["timings"]
    optimisation = [phases[p] for p in OPTIMISATION_PHASES if p in phases]
    return {
        **row,
        KNN_INDEX: measured["knn_index"],
        KNN: phases.get("knn", np.nan),
        OPTIMISATION: sum(optimisation) if optimisation else np.nan,
        TOTAL: measured["time_total_s"],
        WARMUP: measured["time_warmup_s"],
        RSS: measured["peak_rss_gb"],
        METRICS: metrics_time,
        **{key.upper(): v for key, v in scores.items() if key.startswith("np@") and "_" not in key},
        RTA: scores["rta"],
        KNN_ACC: scores.get("knn_acc", np.nan),
        SCALE: pair_statistics(Y, SCALE_POINTS, seed)[1],
    }


def _in_child(config: dict[str, Any], x_path: Path, y_path: Path) -> dict[str, Any]:
    """Run :func:`_measure` in a fresh spawned process (its own peak RSS, no inherited state)."""
    context = multiprocessing.get_context("spawn")
    level = logging.getLogger().getEffectiveLevel()
    with ProcessPoolExecutor(
        max_workers=1, mp_context=context, initializer=_child_logging, initargs=(level,)
    ) as pool:
        return pool.submit(_measure, config, str(x_path), str(y_path)).result()


def _child_logging(level: int) -> None:
    logging.basicConfig(level=level, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")


def _measure(config: dict[str, Any], x_path: str, y_path: str) -> dict[str, Any]:
    """Child process: build the method, time ``fit_transform`` on the memory-mapped input, save
    the embedding to ``y_path``; return the total time, the phase times and the peak RSS."""
    plan = prepare(OmegaConf.create(config))
    X = np.load(x_path, mmap_mode="r")
    time_warmup = warm_up(plan, X, config["seed"])
    with PeakMemory() as peak:
        start = time.perf_counter()
        Y = plan.method.fit_transform(X)
        time_total = time.perf_counter() - start
    np.save(y_path, np.asarray(Y))
    return {
        "time_total_s": time_total,
        "timings": dict(getattr(plan.method, "timings_", {})),
        "knn_index": getattr(plan.method, "knn_index_", ""),
        "time_warmup_s": time_warmup,
        "peak_rss_gb": peak.gb,
    }


# --- the table --------------------------------------------------------------------------------


def _table(rows: list[dict[str, Any]]) -> pd.DataFrame:
    table = pd.DataFrame(rows)
    np_columns = sorted(
        (c for c in table.columns if c.startswith("NP@")), key=lambda c: int(c.removeprefix("NP@"))
    )
    columns = ["method", SETTING, "device", KNN_INDEX, KNN, OPTIMISATION, TOTAL, WARMUP, RSS, METRICS,
               *np_columns, RTA, KNN_ACC, SCALE]  # fmt: skip
    table = table.reindex(columns=[*columns, NOTE])
    table[KNN_INDEX] = table[KNN_INDEX].fillna("")
    reference = table.loc[(table["method"] == REFERENCE) & table[SETTING].str.startswith("defaults"), TOTAL]
    if len(reference) and np.isfinite(reference.iloc[0]):
        table.insert(len(columns), RATIO, table[TOTAL] / reference.iloc[0])
    return table


def _display(table: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Numbers formatted per column; each note shortened to its kind ("skipped", "failed") and a
    footnote mark, its text returned as a footnote line."""
    shown = table.drop(columns=["dataset", "n"], errors="ignore")  # in the header
    for column in shown.columns:
        fmt = FORMATS.get(column, FORMATS[RTA] if column.startswith("NP@") else None)
        if fmt is not None:
            shown[column] = [("-" if pd.isna(v) else fmt.format(v)) for v in table[column]]
    footnotes = []
    for i in shown.index[shown[NOTE] != ""]:
        kind, _, text = shown.at[i, NOTE].partition(": ")
        setting = shown.at[i, SETTING]
        who = shown.at[i, "method"] + (f" ({setting})" if setting.startswith("protocol") else "")
        footnotes.append(f"- [{len(footnotes) + 1}] {who} {kind}: {text}")
        shown.at[i, NOTE] = f"{kind} [{len(footnotes)}]"
    return shown, footnotes


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


if __name__ == "__main__":
    main()
