"""kNN index benchmark: NOMAD's cell index against pynndescent, faiss and Annoy (issue 5).

    python -m experiments.knn_bench dataset=mnist ['indexes=[nomad_p1,pynndescent]'] [k=15]
        [n_queries=2000] [pca_dims=50] [isolate=false] [output=...]

Every index gets the same input as the benchmark's methods (``experiments.bench``: the dataset
as its config loads it, then PCA to ``pca_dims`` when it has more dims) and builds the k-NN
graph of all n points (self excluded). Per index the table gives:

* build + query wall time: from the array to the (n, k) neighbour table, as a method would
  spend it (numba's one-off compilation of pynndescent is done beforehand on a tiny array and
  not counted, as in ``baselines/umap.py``);
* recall@k: ``|approx_i ∩ exact_i| / k`` averaged over a seeded sample of ``n_queries`` rows,
  the exact neighbours from :func:`metrics.exact_knn` (chunked, float64 re-ranking, ties towards
  lower indices). A tie at the k-th distance can cost an exact method a little recall;
* peak RSS of the process that built it and the part added by the build (peak minus the RSS
  before it), when ``isolate`` runs every index in its own fresh process (the default).

The indexes (:data:`INDEXES`; settings in ``conf/knn_bench.yaml`` under ``params``):

* ``exact_torch``: :func:`metrics.exact_knn` with every row as a query (the ground truth's own
  code; exact by construction);
* ``faiss_flat``: ``faiss.IndexFlatL2``, exact brute force (a second exact reference);
* ``nomad_p1`` / ``nomad_p3``: :func:`nomad.index.build_index` as the engine calls it (cells of
  ``cell_size`` points, split above twice the mean size), ``n_probe`` 1 (the paper; the engine
  on several devices) and 3 (the engine's default on one device with ``knn=cells``);
* ``pynndescent``: ``umap.umap_.nearest_neighbors``, i.e. ``NNDescent`` with the settings
  umap-learn uses (n_trees = min(64, 5 + round(sqrt(n) / 20)), n_iters = max(5, round(log2 n)),
  max_candidates = 60), as in ``baselines/umap.py``;
* ``faiss_hnsw``: ``faiss.IndexHNSWFlat`` (M links per node, efConstruction, efSearch >= k + 1);
* ``faiss_ivf``: ``faiss.IndexIVFFlat`` with ``nlist`` k-means lists (auto = 4 sqrt(n), the low
  end of faiss's guideline of 4-16 sqrt(n)), trained on at most 64 points per list, ``nprobe``
  lists searched: the engine's kNN on one device (:mod:`nomad.knn`);
* ``annoy``: openTSNE's default kNN for n >= 1,000 (``openTSNE.nearest_neighbors.Annoy``,
  50 trees); openTSNE asks it for 3 x perplexity = 90 neighbours, here for k like the others.
"""

from __future__ import annotations

import importlib
import logging
import math
import multiprocessing
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
from omegaconf import DictConfig, ListConfig, OmegaConf

from experiments import bench
from experiments.figures._common import markdown_table
from metrics import exact_knn
from nebench.datasets import check_data, load_dataset
from nebench.errors import InputError
from nebench.memory import PeakMemory
from nebench.results import code_version, timestamp
from nomad.knn import drop_self, ivf_knn, threads

log = logging.getLogger(__name__)

#: an index builder: (X, k, seed, n_jobs, **params) -> (n, k) int64 neighbours, self excluded
Builder = Callable[..., np.ndarray]

TIME, RECALL, RSS, ADDED, NOTE = "time (s)", "recall@k", "peak RSS (GB)", "added RSS (GB)", "note"
FORMATS = {TIME: "{:.2f}", RECALL: "{:.4f}", RSS: "{:.2f}", ADDED: "{:.2f}"}


# --- the indexes -------------------------------------------------------------------------------


def exact_torch(
    X: np.ndarray, k: int, seed: int, n_jobs: int, chunk_size: int = 4096
) -> np.ndarray:
    """All rows' exact k-NN with :func:`metrics.exact_knn`."""
    return exact_knn(X, np.arange(len(X)), k, chunk_size)


def faiss_flat(X: np.ndarray, k: int, seed: int, n_jobs: int) -> np.ndarray:
    """Exact k-NN by ``faiss.IndexFlatL2`` (float32 brute force)."""
    import faiss

    X = _float32(X)
    index = faiss.IndexFlatL2(X.shape[1])
    return _faiss_search(index, X, k, n_jobs)


def nomad_cells(
    X: np.ndarray, k: int, seed: int, n_jobs: int, n_probe: int = 1, cell_size: int = 8192
) -> np.ndarray:
    """NOMAD's K-means cell index, cell count and size bound as in the engine's fit_transform
    (``nomad/engine.py``): n / cell_size cells, cells above 2 n / n_cells split."""
    from nomad.index import auto_n_cells, build_index

    n_cells = auto_n_cells(len(X), cell_size)
    max_cell = 2 * math.ceil(len(X) / n_cells)
    index, _ = build_index(
        X, k, n_cells=n_cells, max_cell_size=max_cell, seed=seed, cache_dir=None, n_probe=n_probe
    )
    return index.neighbors


def pynndescent(X: np.ndarray, k: int, seed: int, n_jobs: int) -> np.ndarray:
    """NN-descent as umap-learn runs it (``umap.umap_.nearest_neighbors``); its k + 1 neighbours
    include the point itself."""
    from umap.umap_ import nearest_neighbors

    indices, _, _ = nearest_neighbors(
        X, k + 1, "euclidean", {}, False, np.random.RandomState(seed), n_jobs=n_jobs
    )
    return drop_self(indices, k)


def faiss_hnsw(
    X: np.ndarray, k: int, seed: int, n_jobs: int, M: int = 32, ef_construction: int = 40,
    ef_search: int = 64,
) -> np.ndarray:  # fmt: skip
    """``faiss.IndexHNSWFlat`` (Malkov & Yashunin): M links per node; efSearch raised to k + 1
    when smaller (a beam narrower than k cannot return k neighbours well)."""
    import faiss

    X = _float32(X)
    index = faiss.IndexHNSWFlat(X.shape[1], M)
    index.hnsw.efConstruction = ef_construction
    index.hnsw.efSearch = max(ef_search, k + 1)
    return _faiss_search(index, X, k, n_jobs)


def faiss_ivf(
    X: np.ndarray, k: int, seed: int, n_jobs: int, nlist: int | str = "auto", nprobe: int = 10,
    train_per_list: int = 64,
) -> np.ndarray:  # fmt: skip
    """``faiss.IndexIVFFlat`` as the engine's ``knn=faiss_ivf`` builds it
    (:func:`nomad.knn.ivf_knn`): ``nlist`` k-means lists (auto = 4 sqrt(n)) trained on at most
    ``train_per_list`` points per list, ``nprobe`` lists searched per query."""
    return ivf_knn(X, k, seed=seed, nlist=nlist, nprobe=nprobe, train_per_list=train_per_list,
                   n_threads=n_jobs)[0]


def annoy(X: np.ndarray, k: int, seed: int, n_jobs: int, n_trees: int = 50) -> np.ndarray:
    """openTSNE's Annoy kNN (its default above 1,000 points), ``n_trees`` random-projection
    trees; returns k neighbours, self excluded."""
    from openTSNE.nearest_neighbors import Annoy

    index = Annoy(
        _float32(X), k, metric="euclidean", n_jobs=n_jobs, random_state=seed,
        knn_kwargs={"n_trees": n_trees},
    )  # fmt: skip
    indices, _ = index.build()
    return np.asarray(indices, dtype=np.int64)


#: name -> (builder, fixed keyword arguments, the library it imports); ``params.<name>`` in the
#: config adds keyword arguments
INDEXES: dict[str, tuple[Builder, dict[str, Any], str]] = {
    "exact_torch": (exact_torch, {}, "metrics.exact_knn"),
    "faiss_flat": (faiss_flat, {}, "faiss"),
    "nomad_p1": (nomad_cells, {"n_probe": 1}, "nomad.index"),
    "nomad_p3": (nomad_cells, {"n_probe": 3}, "nomad.index"),
    "pynndescent": (pynndescent, {}, "umap.umap_"),
    "faiss_hnsw": (faiss_hnsw, {}, "faiss"),
    "faiss_ivf": (faiss_ivf, {}, "faiss"),
    "annoy": (annoy, {}, "openTSNE.nearest_neighbors"),
}
#: indexes that are exact by construction (the rest are approximate)
EXACT = ("exact_torch", "faiss_flat")


def build(
    name: str, X: np.ndarray, k: int, seed: int = 0, n_jobs: int = -1, **params: Any
) -> np.ndarray:
    """The (n, k) int64 neighbour table of ``X`` by index ``name`` (self excluded)."""
    builder, fixed, _ = INDEXES[name]
    neighbours = np.asarray(builder(X, k, seed, _threads(n_jobs), **{**fixed, **params}))
    if neighbours.shape != (len(X), k):
        raise RuntimeError(
            f"{name} returned neighbours of shape {neighbours.shape}, not {(len(X), k)}"
        )
    return neighbours.astype(np.int64, copy=False)


def recall(approx: np.ndarray, exact: np.ndarray) -> float:
    """Mean over rows of ``|approx_i ∩ exact_i| / k`` (``exact`` has k columns; a neighbour
    listed twice in ``approx`` counts once)."""
    k = exact.shape[1]
    hits = [len(np.intersect1d(a, e)) for a, e in zip(approx, exact)]
    return float(np.mean(hits)) / k


def _float32(X: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(X, dtype=np.float32)


def _threads(n_jobs: int) -> int:
    return threads() if n_jobs == -1 else n_jobs


def _faiss_threads(n_jobs: int) -> None:
    import faiss

    faiss.omp_set_num_threads(n_jobs)


def _faiss_search(index: Any, X: np.ndarray, k: int, n_jobs: int) -> np.ndarray:
    _faiss_threads(n_jobs)
    index.add(X)
    _, indices = index.search(X, k + 1)
    return drop_self(indices, k)


def _warm_up(names: list[str], n_jobs: int) -> None:
    """Compile numba's pynndescent kernels on a tiny array (one-off work, not the index's)."""
    if "pynndescent" in names:
        start = time.perf_counter()
        tiny = np.random.default_rng(0).normal(size=(300, 5)).astype(np.float32)
        pynndescent(tiny, 5, 0, _threads(n_jobs))
        log.info(
            "pynndescent: numba compilation took %.1f s (not timed)", time.perf_counter() - start
        )


# --- the benchmark -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Report:
    """Header lines (markdown) and one row per index."""

    header: list[str]
    table: pd.DataFrame

    def markdown(self) -> str:
        recall_at = next(c for c in self.table.columns if c.startswith("recall@"))
        formats = {**FORMATS, recall_at: FORMATS[RECALL]}
        return "\n".join([*self.header, "", markdown_table(self.table, formats)])


def run_knn_benchmark(cfg: DictConfig) -> Report:
    """Build every index of ``cfg.indexes`` on ``cfg.dataset``; see the module docstring.

    Needs ``HydraConfig`` set for the command line in the header."""
    names = _index_names(cfg.indexes)
    params = _params(cfg.params, names)
    k = _whole("k", cfg.k, 1)
    n_queries = _whole("n_queries", cfg.n_queries, 1)
    pca_dims = bench._pca_dims(cfg.pca_dims)
    n_jobs = _n_jobs(cfg.n_jobs)

    data = load_dataset(cfg.dataset, cfg.paths.data_dir, cfg.seed)
    raw_dim = data.X.shape[1]
    X = _float32(bench._project(data.X, pca_dims, cfg.seed))
    check_data(X, min_points=k + 2)
    n, dim = X.shape
    queries = np.sort(np.random.default_rng(cfg.seed).choice(n, min(n_queries, n), replace=False))
    start = time.perf_counter()
    truth = exact_knn(X, queries, k)
    log.info("exact neighbours of %d queries: %.1f s", len(queries), time.perf_counter() - start)

    rows = []
    with tempfile.TemporaryDirectory(dir=_scratch(cfg), prefix="knn-bench-") as tmp:
        x_path = Path(tmp) / "X.npy"
        if cfg.isolate:
            np.save(x_path, X)
        else:
            _warm_up(names, n_jobs)
        for i, name in enumerate(names, 1):
            log.info("[%d/%d] %s", i, len(names), name)
            args = (name, queries, k, cfg.seed, n_jobs, params[name])
            if cfg.isolate:
                rows.append(_row(name, _in_child, (x_path, *args), truth))
            else:
                rows.append(_row(name, _measure, (X, *args), truth))

    projected = f"PCA-{dim} of {raw_dim} dims" if dim != raw_dim else f"{dim} dims"
    memory = "one fresh process per index" if cfg.isolate else "all in one process (no RSS)"
    header = [
        f"# kNN indexes on {data.name}: n={n:,}, {projected}, k={k}, seed {cfg.seed}",
        "",
        f"- command: `{bench.command('experiments.knn_bench', 'knn_bench')}`",
        f"- hardware: {bench.hardware()}; indexes use {n_jobs} threads",
        f"- code: nebench {code_version()}, {timestamp()}",
        f"- time: wall seconds to the (n, k) neighbour table of all points, {memory}",
        f"- recall@{k}: against exact neighbours (metrics.exact_knn) of {len(queries):,} random rows",
    ]
    table = pd.DataFrame(rows).reindex(columns=["index", "exact", TIME, RECALL, RSS, ADDED, NOTE])
    return Report(header=header, table=table.rename(columns={RECALL: f"recall@{k}"}))


def _row(
    name: str, measure: Callable[..., dict[str, Any]], args: tuple[Any, ...], truth: np.ndarray
) -> dict[str, Any]:
    """One table row: ``measure(*args)`` scored against ``truth``, or why it has no numbers."""
    row: dict[str, Any] = {"index": name, "exact": "yes" if name in EXACT else "no", NOTE: ""}
    try:
        measured = measure(*args)
    except ImportError as exc:
        log.warning("%s skipped: %s", name, exc)
        return {**row, NOTE: f"skipped: {type(exc).__name__}: {exc}"}
    except BrokenProcessPool as exc:
        log.error("%s: its process died", name, exc_info=exc)
        return {**row, NOTE: "failed: its process died (out of memory, or a crash in native code)"}
    except Exception as exc:
        log.error("%s failed", name, exc_info=exc)
        first_line = str(exc).splitlines()[0] if str(exc) else ""
        return {**row, NOTE: f"failed: {type(exc).__name__}: {first_line}"}
    return {
        **row,
        TIME: measured["seconds"],
        RECALL: recall(measured["neighbours"], truth),
        RSS: measured.get("peak_rss_gb", np.nan),
        ADDED: measured.get("added_rss_gb", np.nan),
    }


def _measure(
    X: np.ndarray, name: str, queries: np.ndarray, k: int, seed: int, n_jobs: int,
    params: dict[str, Any],
) -> dict[str, Any]:  # fmt: skip
    start = time.perf_counter()
    neighbours = build(name, X, k, seed, n_jobs, **params)
    return {"seconds": time.perf_counter() - start, "neighbours": neighbours[queries]}


def _in_child(
    x_path: Path, name: str, queries: np.ndarray, k: int, seed: int, n_jobs: int,
    params: dict[str, Any],
) -> dict[str, Any]:  # fmt: skip
    context = multiprocessing.get_context("spawn")
    level = logging.getLogger().getEffectiveLevel()
    with ProcessPoolExecutor(
        max_workers=1, mp_context=context, initializer=bench._child_logging, initargs=(level,)
    ) as pool:
        return pool.submit(_child, str(x_path), name, queries, k, seed, n_jobs, params).result()


def _child(
    x_path: str, name: str, queries: np.ndarray, k: int, seed: int, n_jobs: int,
    params: dict[str, Any],
) -> dict[str, Any]:  # fmt: skip
    """Fresh process: compile what needs it, load X, time the build; the peak RSS during the
    build and what it added to the RSS before it (imports and compilation excluded)."""
    _warm_up([name], n_jobs)
    _import(name)
    X = np.load(x_path)
    before = psutil.Process().memory_info().rss / 1e9
    with PeakMemory() as peak:
        measured = _measure(X, name, queries, k, seed, n_jobs, params)
    return {**measured, "peak_rss_gb": peak.gb, "added_rss_gb": max(peak.gb - before, 0.0)}


def _import(name: str) -> None:
    """Import the index's library, so that its import is not counted as the build's memory."""
    importlib.import_module(INDEXES[name][2])


def _scratch(cfg: DictConfig) -> Path:
    scratch = Path(cfg.scratch_dir)
    scratch.mkdir(parents=True, exist_ok=True)
    return scratch


# --- checks (before any heavy work) ------------------------------------------------------------


def _index_names(value: Any) -> list[str]:
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, (list, ListConfig)) or not names:
        raise InputError(
            f"indexes={value!r} must be a non-empty list, e.g. 'indexes=[nomad_p1,pynndescent]'."
        )
    names = [str(name) for name in names]
    unknown = [name for name in names if name not in INDEXES]
    if unknown:
        raise InputError(
            f"indexes: no index {', '.join(unknown)}; choose from {', '.join(INDEXES)}."
        )
    if len(set(names)) < len(names):
        raise InputError(f"indexes={names} lists an index twice; list each once.")
    return names


def _params(value: Any, names: list[str]) -> dict[str, dict[str, Any]]:
    params = OmegaConf.to_container(value, resolve=True) if value is not None else {}
    unknown = sorted(set(params) - set(INDEXES))
    if unknown:
        raise InputError(f"params.{unknown[0]}: no such index; choose from {', '.join(INDEXES)}.")
    return {name: dict(params.get(name) or {}) for name in names}


def _whole(name: str, value: Any, least: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < least:
        raise InputError(f"{name}={value!r} must be a whole number >= {least}.")
    return value


def _n_jobs(value: Any) -> int:
    if value == -1:
        return _threads(-1)
    return _whole("n_jobs", value, 1)


@hydra.main(config_path="../conf", config_name="knn_bench", version_base="1.3")
def main(cfg: DictConfig) -> None:
    """Hydra entry point: run the benchmark, print the table and write it to ``cfg.output``."""
    bench.report(run_knn_benchmark, cfg, "kNN benchmark")

if __name__ == "__main__":
    main()
