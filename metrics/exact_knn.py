"""Exact Euclidean k nearest neighbours of a few query rows among all n rows, in bounded memory.

A candidate pass keeps ``m = 2k + 16`` candidates per query, re-ranked exactly in float64. In up
to ``KDTREE_MAX_DIMS`` dimensions (an embedding) the candidates come from a
``scipy.spatial.cKDTree`` (exact, float64, and in 2-D about a hundred times faster than brute force
at 1M points); otherwise from the brute-force pass below.

Brute force. The reference side is read once, in blocks of ``chunk_size`` rows (np.memmap and
float16 stay on disk / in their dtype until a block is cast to float32); queries are processed in
chunks of ``chunk_size`` against each block, so the largest distance matrix is
``chunk_size x chunk_size`` float32, and a running top-``m`` per query is merged block by block
(``torch.topk``), for the queries that have a row in the block nearer than their current m-th
candidate only. Memory is
O(n_queries * (D + m) + chunk_size * (chunk_size + D)), never O(n^2).

Exactness. The float32 pass ranks by ``||r||^2 - 2 q.r`` (``||q||^2`` is constant per query row, so
it cannot change the ranking) after centring on the queries' mean, which limits cancellation. It
keeps ``m = 2k + 16`` candidates; their distances are recomputed in float64 from the raw rows and
the k nearest are taken ordered by (distance, index). A query is excluded from its own
neighbours by index, never by position, so exact duplicates are handled. The result is therefore
the exact k-NN with ties broken towards lower indices, unless more than ``m`` points tie at the
k-th distance (then the choice among them is arbitrary but deterministic: identical inputs give
identical neighbours).
"""

from __future__ import annotations

import logging

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
    chunk_size: int = 4096,
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
    queries = torch.from_numpy(np.array(data[query_idx], dtype=np.float32))
    if not torch.isfinite(queries).all():
        check_finite(queries.numpy(), name, " (among the evaluation rows)")
    center = queries.mean(dim=0, dtype=torch.float64).float()
    queries -= center
    query_t = torch.from_numpy(query_idx)

    best_d = torch.full((n_q, n_cand), float("inf"))
    best_i = torch.full((n_q, n_cand), -1, dtype=torch.int64)
    tau = torch.full((n_q,), float("inf"))  # each query's n_cand-th best so far
    for start in range(0, n, chunk_size):
        stop = min(start + chunk_size, n)
        ref = torch.from_numpy(np.array(data[start:stop], dtype=np.float32))
        if not torch.isfinite(ref).all():
            check_finite(ref.numpy(), name, f" (rows {start}..{stop - 1})")
        ref -= center
        ref_sq = (ref * ref).sum(dim=1)
        n_top = min(n_cand, stop - start)
        for q0 in range(0, n_q, chunk_size):
            q1 = min(q0 + chunk_size, n_q)
            dist = torch.addmm(ref_sq.unsqueeze(0), queries[q0:q1], ref.T, alpha=-2.0)
            own = query_t[q0:q1]
            rows = torch.nonzero((own >= start) & (own < stop)).squeeze(1)
            dist[rows, own[rows] - start] = float("inf")
            # only queries with a row nearer than their current n_cand-th are merged: after the
            # first blocks that is rare, so the pass costs about the matrix product
            hit = q0 + torch.nonzero(dist.amin(dim=1) < tau[q0:q1]).squeeze(1)
            if len(hit) == 0:
                continue
            blk_d, blk_j = torch.topk(dist[hit - q0], n_top, dim=1, largest=False, sorted=False)
            merged_d = torch.cat([best_d[hit], blk_d], dim=1)
            merged_i = torch.cat([best_i[hit], blk_j + start], dim=1)
            top_d, top_j = torch.topk(merged_d, n_cand, dim=1, largest=False, sorted=False)
            best_d[hit] = top_d
            best_i[hit] = torch.gather(merged_i, 1, top_j)
            tau[hit] = top_d.amax(dim=1)
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
