"""Exact Euclidean k nearest neighbours of a few query rows among all n rows, in bounded memory.

A candidate pass keeps ``m = 2k + 16`` candidates per query, re-ranked exactly in float64. In up
to ``KDTREE_MAX_DIMS`` dimensions (an embedding) the candidates come from a
``scipy.spatial.cKDTree`` (exact, float64, and in 2-D about a hundred times faster than brute force
at 1M points); otherwise from the brute-force pass below.

Brute force. The reference side is read once, in blocks of ``chunk_size`` rows (np.memmap and
float16 stay on disk / in their dtype until a block is cast to float32); faiss's exhaustive search
(``faiss.knn``: a BLAS product and a running heap, tiled so that no n_queries x chunk_size matrix is
formed) gives each query's ``m + 1`` nearest rows of the block, its own row is dropped by index, and
a running top-``m`` per query is merged block by block (``torch.topk``). Memory is
O(n_queries * (D + m) + chunk_size * D), never O(n^2). Its time is the product's, 5,000 x n x D
multiply-adds: NP@k's searches at 10M rows of 50 dims took 45-123 s on a 2-core machine, following
its load (README, "At ten million points").

Exactness. The float32 pass ranks by ``||q||^2 + ||r||^2 - 2 q.r`` after centring on the queries'
mean, which limits cancellation. It
keeps ``m = 2k + 16`` candidates; their distances are recomputed in float64 from the raw rows and
the k nearest are taken ordered by (distance, index). A query is excluded from its own
neighbours by index, never by position, so exact duplicates are handled. The result is therefore
the exact k-NN with ties broken towards lower indices, unless more than ``m`` points tie at the
k-th distance (then the choice among them is arbitrary but deterministic: identical inputs give
identical neighbours).
"""

from __future__ import annotations

import logging

import faiss
import numpy as np
import torch
from scipy.spatial import cKDTree

from metrics._checks import check_count, check_finite
from nebench.errors import InputError

log = logging.getLogger(__name__)

_EXTRA_CANDIDATES = 16
_REFINE_ELEMENTS = 2**24  # float64 values gathered at once by the exact re-ranking (128 MiB)
KDTREE_MAX_DIMS = 3


def exact_knn(
    data: np.ndarray,
    query_idx: np.ndarray,
    k: int,
    chunk_size: int = 65536,
    *,
    name: str = "data",
    search: str = "auto",
) -> np.ndarray:
    """Indices (len(query_idx), k) of the k nearest rows of ``data`` to each ``data[query_idx]``.

    Rows are sorted by increasing distance (ties: lower index first); the query itself is excluded.
    ``name`` only labels error messages. ``search``: "auto" (see the module docstring), "kdtree"
    or "brute"; both give the same neighbours.
    """
    n = data.shape[0]
    k = check_count(k, "k")
    chunk_size = check_count(chunk_size, "chunk_size")
    if k >= n:
        raise InputError(f"k = {k} needs more than {k} points in {name}, which has {n}; lower k.")
    query_idx = np.asarray(query_idx, dtype=np.int64)
    n_cand = min(n - 1, 2 * k + _EXTRA_CANDIDATES)
    if search == "auto":
        search = "kdtree" if data.shape[1] <= KDTREE_MAX_DIMS else "brute"
    if search == "kdtree":
        candidates = _kdtree_candidates(data, query_idx, n_cand, name)
    elif search == "brute":
        candidates = _float32_candidates(data, query_idx, n_cand, chunk_size, name)
    else:
        raise InputError(f"search must be auto, kdtree or brute, got {search!r}.")
    return _exact_rerank(data, query_idx, candidates, k)


def _kdtree_candidates(
    data: np.ndarray, query_idx: np.ndarray, n_cand: int, name: str
) -> np.ndarray:
    """The n_cand nearest rows of each query by a k-d tree (float64), itself excluded by index."""
    points = np.asarray(data, dtype=np.float64)
    check_finite(points, name)
    _, found = cKDTree(points).query(points[query_idx], k=n_cand + 1)
    # move the query's own index last (when duplicates crowd it out, the last neighbour goes)
    self_last = np.argsort(found == query_idx[:, None], axis=1, kind="stable")
    return np.take_along_axis(found, self_last, axis=1)[:, :n_cand]


def _float32_candidates(
    data: np.ndarray, query_idx: np.ndarray, n_cand: int, chunk_size: int, name: str
) -> np.ndarray:
    """The n_cand nearest rows of each query by float32 squared distance (unordered)."""
    n, n_q = data.shape[0], len(query_idx)
    queries = np.array(data[query_idx], dtype=np.float32)
    if not np.isfinite(queries).all():
        check_finite(queries, name, " (among the evaluation rows)")
    center = queries.mean(axis=0, dtype=np.float64).astype(np.float32)
    queries -= center
    query_t = torch.from_numpy(query_idx)

    best_d = torch.full((n_q, n_cand), float("inf"))
    best_i = torch.full((n_q, n_cand), -1, dtype=torch.int64)
    for start in range(0, n, chunk_size):
        stop = min(start + chunk_size, n)
        ref = np.array(data[start:stop], dtype=np.float32)
        if not np.isfinite(ref).all():
            check_finite(ref, name, f" (rows {start}..{stop - 1})")
        ref -= center
        # one more than kept, so that the query itself, if it is in this block, can be dropped
        n_top = min(n_cand + 1, stop - start)
        blk_d, blk_j = (torch.from_numpy(a) for a in faiss.knn(queries, ref, n_top))
        blk_j += start
        blk_d[blk_j == query_t[:, None]] = float("inf")
        merged_d = torch.cat([best_d, blk_d], dim=1)
        merged_i = torch.cat([best_i, blk_j], dim=1)
        best_d, top_j = torch.topk(merged_d, n_cand, dim=1, largest=False, sorted=False)
        best_i = torch.gather(merged_i, 1, top_j)
    # With n - 1 >= n_cand finite candidates per query, an inf left here means float32 overflow
    # (the self entry or an unfilled slot could then be among the candidates).
    if not torch.isfinite(best_d).all():
        raise InputError(
            f"squared distances in {name} overflow float32; rescale it (e.g. divide by its "
            "largest absolute value) before evaluating."
        )
    log.debug("%s: %d candidates for %d queries among %d rows", name, n_cand, n_q, n)
    return best_i.numpy()


def _exact_rerank(
    data: np.ndarray, query_idx: np.ndarray, candidates: np.ndarray, k: int
) -> np.ndarray:
    """The k candidates nearest in float64, ordered by (distance, index)."""
    n_q, n_cand = candidates.shape
    step = max(1, _REFINE_ELEMENTS // (n_cand * data.shape[1]))
    neighbours = np.empty((n_q, k), dtype=np.int64)
    for q0 in range(0, n_q, step):
        cand = candidates[q0 : q0 + step]
        query = np.asarray(data[query_idx[q0 : q0 + step]], dtype=np.float64)
        rows = np.asarray(data[cand.ravel()], dtype=np.float64).reshape(*cand.shape, -1)
        dist = ((rows - query[:, None, :]) ** 2).sum(axis=-1)
        order = np.lexsort((cand, dist), axis=-1)[:, :k]
        neighbours[q0 : q0 + step] = np.take_along_axis(cand, order, axis=1)
    return neighbours
