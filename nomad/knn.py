"""kNN by faiss's inverted-file index (``IndexIVFFlat``), the engine's search on one device.

The IVF index is K-means cells at a finer grain than NOMAD's: ``nlist`` lists (auto =
4 sqrt(n), the low end of faiss's guideline of 4-16 sqrt(n)), a query scanning its ``nprobe``
nearest lists exactly. On one device no cell has to stay whole, and on MNIST-70k (k = 8)
it found 97% of the exact neighbours in 3.7 s where NOMAD's 3-probe cells found 93% in
12.7 s (README, "kNN indexes"). Several devices keep NOMAD's in-cell kNN
(:func:`nomad.index.cell_knn`), since there every kNN edge must stay inside a device.

Lists hold at least 39 points on average (faiss's minimum per centroid), so small sets get
fewer. The lists are trained on a seeded sample of at most ``train_per_list`` points per list
(64, within faiss's guideline of 30-256), with faiss's own K-means seeded by the same seed, so
a seed fixes the graph. Training on 64 rather than 256 a list costs little recall: on mnist1m
(k = 8, 10 probed) recall@8 0.946 against 0.952 at 1M and 0.952 against 0.955 at 10M, where
faiss's training took 93 s against 512 s (README "kNN indexes").
"""

from __future__ import annotations

import math
import os

import numpy as np
from tqdm.auto import tqdm


def drop_self(indices: np.ndarray, k: int) -> np.ndarray:
    """The first k entries of each row other than the row itself (from k + 1 that usually,
    but with duplicate points not always, start with it)."""
    return indices[_keep_mask(indices)].reshape(len(indices), k)


def _keep_mask(indices: np.ndarray) -> np.ndarray:
    rows = np.arange(len(indices))[:, None]
    is_self = indices == rows
    # rows without themselves among the k + 1 drop their last (farthest) entry instead
    is_self[~is_self.any(axis=1), -1] = True
    is_self[np.cumsum(is_self, axis=1) > 1] = False  # only one entry per row
    return ~is_self


def threads() -> int:
    """The cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def ivf_knn(
    X: np.ndarray, k: int, *, metric: str = "euclidean", seed: int = 0, nlist: int | str = "auto",
    nprobe: int = 10, train_per_list: int = 64, n_threads: int | None = None, verbose: bool = False,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """The k approximate nearest neighbours of every row of X among the rows of X (self
    excluded), in ascending distance: ``(neighbors (n, k) int64, distances (n, k) float32)``;
    Euclidean distances, or negative inner products for ``metric="inner_product"``."""
    try:
        import faiss
    except ImportError as err:  # a core dependency, but installs can be partial
        from .errors import InputError

        raise InputError("method.knn=faiss_ivf needs faiss: pip install faiss-cpu, or set "
                         "method.knn=cells for NOMAD's own cell index") from err
    X = np.ascontiguousarray(X, dtype=np.float32)
    n, d = X.shape
    lists = max(1, min(round(4 * math.sqrt(n)), n // 39)) if nlist == "auto" else min(int(nlist), n)
    faiss.omp_set_num_threads(n_threads or threads())
    ip = metric == "inner_product"
    quantizer = faiss.IndexFlatIP(d) if ip else faiss.IndexFlatL2(d)
    index = faiss.IndexIVFFlat(quantizer, d, lists, faiss.METRIC_INNER_PRODUCT if ip else faiss.METRIC_L2)
    index.cp.seed = seed
    rng = np.random.default_rng(seed)
    m = train_per_list * lists
    index.train(X if n <= m else X[np.sort(rng.choice(n, m, replace=False))])
    index.nprobe = min(nprobe, lists)
    index.add(X)
    dist = np.empty((n, min(k + 1, n)), dtype=np.float32)
    idx = np.empty((n, min(k + 1, n)), dtype=np.int64)
    step = 1 << 16
    for lo in tqdm(range(0, n, step), desc="kNN (faiss IVF)", disable=not verbose, leave=False):
        dist[lo:lo + step], idx[lo:lo + step] = index.search(X[lo:lo + step], min(k + 1, n))
    short = np.flatnonzero((idx < 0).any(axis=1))
    if len(short):  # fewer than k + 1 points in the probed lists: scan them all for these rows
        index.nprobe = lists
        dist[short], idx[short] = index.search(X[short], min(k + 1, n))
    keep = _keep_mask(idx.astype(np.int64))
    nbrs = idx[keep].reshape(n, k).astype(np.int64)
    dist = dist[keep].reshape(n, k)
    dist = -dist if ip else np.sqrt(np.maximum(dist, 0.0))
    return nbrs, dist.astype(np.float32)
