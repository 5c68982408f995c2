"""NOMAD's ANN index: K-means cells, exact kNN inside each cell (nomad-projection sec. 3.2).

K-means is initialised by a locally sensitive hash (random hyperplanes; the most populated
buckets seed the centroids) and run by Lloyd iterations until the relative centroid shift
falls below ``tol`` (or ``max_iter``). Cells larger than ``max_cell_size`` are split by
2-means until every cell fits, since one giant cell defeats both memory and sharding.
The kNN graph comes from one of three searches. ``knn="cells"`` with ``n_probe=1`` (the
paper's index, and the one several devices use): the k nearest neighbours inside each cell,
exact, so every cell is a component of the kNN graph and can live on its own device. With
``n_probe > 1`` the nearest cells are searched too, and with ``knn="faiss_ivf"`` (the one-device
default) faiss searches all points: neighbours then cross cells, which one
device allows. A precomputed graph (:func:`precomputed_index`) puts every point in one cell.

The index (cell labels, neighbour table, distances) is cached on disk under a key made of
the data's content hash and the parameters, so sweeps and other methods reuse it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .errors import InputError

log = logging.getLogger(__name__)

_INDEX_VERSION = 3  # bumped whenever the same settings give another graph (3: IVF trained on 64 a list)


@dataclass
class CellIndex:
    """Cells and the kNN graph (within cells only under ``knn="cells"``, ``n_probe=1``).

    ``labels[i]`` is the cell of point i; ``neighbors[i]`` its k nearest neighbours in
    ascending distance (global row indices, self excluded), ``distances[i]`` their
    Euclidean distances (or negative inner products for ``metric="inner_product"``).
    """

    labels: np.ndarray  # (n,) int64
    neighbors: np.ndarray  # (n, k) int64
    distances: np.ndarray  # (n, k) float32

    @property
    def n_cells(self) -> int:
        return int(self.labels.max()) + 1

    def cell_sizes(self) -> np.ndarray:
        return np.bincount(self.labels, minlength=self.n_cells)


def _chunks(n: int, size: int):
    for lo in range(0, n, size):
        yield lo, min(n, lo + size)


def _rank_dists(a: torch.Tensor, b: torch.Tensor, b_sq: torch.Tensor) -> torch.Tensor:
    """||b||^2 - 2 a.b for all pairs: ||a - b||^2 less the per-row constant ||a||^2.

    It ranks the b's for each a exactly as the squared distance does, in one fused matrix
    product (no (len(a), len(b)) temporaries); add ||a||^2 back to the few values kept.
    """
    return torch.addmm(b_sq[None, :], a, b.T, alpha=-2.0)


def assign(X: np.ndarray, centroids: torch.Tensor, chunk: int = 65536) -> np.ndarray:
    """Index of the nearest centroid of each row of X (chunked)."""
    c_sq = (centroids * centroids).sum(1)
    out = np.empty(len(X), dtype=np.int64)
    for lo, hi in _chunks(len(X), chunk):
        xb = torch.from_numpy(np.array(X[lo:hi], dtype=np.float32))  # a copy: X may be read-only
        out[lo:hi] = _rank_dists(xb, centroids, c_sq).argmin(1).numpy()
    return out


def lsh_init(X: torch.Tensor, n_clusters: int, n_bits: int, gen: torch.Generator) -> torch.Tensor:
    """Seed centroids with the means of the most populated random-hyperplane hash buckets."""
    n, d = X.shape
    planes = torch.randn(d, n_bits, generator=gen)
    center = X.mean(0, keepdim=True)
    bits = ((X - center) @ planes > 0).long()
    codes = (bits * (2 ** torch.arange(n_bits))).sum(1)
    uniq, inverse, counts = torch.unique(codes, return_inverse=True, return_counts=True)
    order = torch.argsort(counts, descending=True, stable=True)[:n_clusters]
    sums = torch.zeros(len(uniq), d).index_add_(0, inverse, X)
    centroids = sums[order] / counts[order, None].float()
    if len(centroids) < n_clusters:  # fewer buckets than cells: top up with random points
        extra = torch.randperm(n, generator=gen)[: n_clusters - len(centroids)]
        centroids = torch.cat([centroids, X[extra]])
    return centroids


def kmeans(
    X: torch.Tensor,
    n_clusters: int,
    *,
    max_iter: int = 100,
    tol: float = 1e-4,
    n_bits: int = 16,
    gen: torch.Generator,
) -> tuple[torch.Tensor, int, bool]:
    """Lloyd's algorithm from an LSH initialisation.

    Stops when ``||C_t - C_{t-1}||_F / ||C_{t-1}||_F < tol``. Returns the centroids, the
    number of iterations and whether it converged. Empty clusters are re-seeded at the
    point farthest from its centroid.
    """
    C = lsh_init(X, n_clusters, n_bits, gen)
    for it in range(1, max_iter + 1):
        c_sq = (C * C).sum(1)
        labels = torch.empty(len(X), dtype=torch.long)
        best = torch.empty(len(X))
        for lo, hi in _chunks(len(X), 65536):
            d, labels[lo:hi] = _rank_dists(X[lo:hi], C, c_sq).min(1)
            best[lo:hi] = d + (X[lo:hi] * X[lo:hi]).sum(1)
        counts = torch.bincount(labels, minlength=n_clusters)
        sums = torch.zeros_like(C).index_add_(0, labels, X)
        new = sums / counts.clamp(min=1)[:, None].float()
        empty = torch.nonzero(counts == 0).flatten()
        if len(empty):
            far = torch.argsort(best, descending=True)[: len(empty)]
            new[empty] = X[far]
        shift = torch.linalg.norm(new - C) / torch.linalg.norm(C).clamp(min=1e-12)
        C = new
        if shift < tol and len(empty) == 0:
            return C, it, True
    return C, max_iter, False


def bound_cells(X: np.ndarray, labels: np.ndarray, max_cell_size: int, gen: torch.Generator) -> np.ndarray:
    """Split every cell larger than ``max_cell_size`` by 2-means until all fit."""
    labels = labels.copy()
    queue = [c for c, s in enumerate(np.bincount(labels)) if s > max_cell_size]
    next_id = int(labels.max()) + 1
    while queue:
        c = queue.pop()
        rows = np.flatnonzero(labels == c)
        Xc = torch.as_tensor(np.asarray(X[rows], dtype=np.float32))
        C, _, _ = kmeans(Xc, 2, max_iter=50, gen=gen)
        side = assign(Xc.numpy(), C)
        if side.min() == side.max():  # identical points: split by position
            side = (np.arange(len(rows)) >= len(rows) // 2).astype(np.int64)
        labels[rows[side == 1]] = next_id
        for cid, size in ((c, int((side == 0).sum())), (next_id, int((side == 1).sum()))):
            if size > max_cell_size:
                queue.append(cid)
        next_id += 1
    return labels


def probe_lists(X: np.ndarray, labels: np.ndarray, n_probe: int) -> list[np.ndarray]:
    """For every cell, itself and its ``n_probe - 1`` nearest cells (by centroid distance)."""
    C = int(labels.max()) + 1
    sums = np.zeros((C, X.shape[1]))
    for lo, hi in _chunks(len(X), 1 << 16):
        np.add.at(sums, labels[lo:hi], np.asarray(X[lo:hi], dtype=np.float64))
    centroids = torch.as_tensor(sums / np.bincount(labels, minlength=C)[:, None], dtype=torch.float32)
    d = _rank_dists(centroids, centroids, (centroids * centroids).sum(1))
    d.fill_diagonal_(-float("inf"))  # a cell probes itself first
    return list(torch.topk(d, min(n_probe, C), largest=False).indices.numpy())


def cell_knn(
    X: np.ndarray, labels: np.ndarray, k: int, metric: str = "euclidean", chunk: int = 2048,
    n_probe: int = 1, verbose: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest neighbours of every point among the points of its own cell
    (``n_probe=1``, the paper's index) or of its cell and the ``n_probe - 1`` cells with
    the nearest centroids (IVF-style probing: higher recall, neighbours may cross cells).

    Candidate sets smaller than k+1 get their missing neighbours padded with the nearest
    ones repeated, so the table stays rectangular (logged as a warning).
    """
    n = len(X)
    nbrs = np.empty((n, k), dtype=np.int64)
    dists = np.empty((n, k), dtype=np.float32)
    order = np.argsort(labels, kind="stable")
    bounds = np.searchsorted(labels[order], np.arange(labels.max() + 2))
    probes = probe_lists(X, labels, n_probe) if n_probe > 1 else [[c] for c in range(len(bounds) - 1)]
    small = 0
    for c in tqdm(range(len(bounds) - 1), desc="kNN in cells", disable=not verbose, leave=False):
        rows = order[bounds[c] : bounds[c + 1]]
        if len(rows) == 0:
            continue
        cand = np.concatenate([order[bounds[r] : bounds[r + 1]] for r in probes[c]])  # own cell first
        Xc = torch.as_tensor(np.asarray(X[cand], dtype=np.float32))
        kk = min(k, len(cand) - 1)
        if kk < k:
            small += 1
        if kk == 0:  # a cell of one point is its own (only) neighbour
            nbrs[rows], dists[rows] = rows[:, None], 0.0
            continue
        c_sq = (Xc * Xc).sum(1)
        for lo, hi in _chunks(len(rows), chunk):
            if metric == "inner_product":
                d = -(Xc[lo:hi] @ Xc.T)
            else:
                d = _rank_dists(Xc[lo:hi], Xc, c_sq)
            d[torch.arange(hi - lo), torch.arange(lo, hi)] = float("inf")  # self excluded by index
            val, idx = torch.topk(d, kk, dim=1, largest=False, sorted=True)
            if idx.shape[1] < k:
                reps = -(-k // idx.shape[1])
                idx, val = idx.repeat(1, reps)[:, :k], val.repeat(1, reps)[:, :k]
            nbrs[rows[lo:hi]] = cand[idx.numpy()]
            if metric == "euclidean":
                val = (val + c_sq[lo:hi, None]).clamp_(min=0.0).sqrt_()
            dists[rows[lo:hi]] = val.numpy()
    if small:
        log.warning("%d cells have at most k=%d candidates; their neighbour lists repeat entries", small, k)
    return nbrs, dists


def data_key(X: np.ndarray) -> str:
    """Content hash of an array (shape, dtype and bytes, hashed in chunks)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(repr((X.shape, str(X.dtype))).encode())
    for lo, hi in _chunks(len(X), 1 << 16):
        h.update(np.ascontiguousarray(X[lo:hi]).tobytes())
    return h.hexdigest()


def auto_n_cells(n: int, cell_size: int) -> int:
    return max(1, round(n / cell_size))


def build_index(
    X: np.ndarray,
    k: int,
    *,
    n_cells: int,
    max_cell_size: int | None = None,
    metric: str = "euclidean",
    max_iter: int = 100,
    tol: float = 1e-4,
    fit_size: int = 200_000,
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
    n_probe: int = 1,
    knn: str = "cells",
    ivf_nprobe: int = 10,
    verbose: bool = False,
) -> tuple[CellIndex, bool]:
    """Build (or load from the cache) the K-means cell index of X.

    K-means is fit on a seeded subsample of at most ``fit_size`` rows (all of them when
    n is smaller), then every row is assigned. The neighbours come from the searched cells
    (``knn="cells"``, :func:`cell_knn` with ``n_probe``) or from faiss's IVF index over all
    rows (``knn="faiss_ivf"``, :func:`nomad.knn.ivf_knn` with ``ivf_nprobe``; they may then
    cross cells). Returns the index and whether it came from the cache. ``verbose``: progress
    bars over the cells and the searched points, a log line per phase.
    """
    if metric not in ("euclidean", "inner_product"):
        raise ValueError(f"metric must be 'euclidean' or 'inner_product', got {metric!r}")
    if knn not in ("cells", "faiss_ivf"):
        raise ValueError(f"knn must be 'cells' or 'faiss_ivf', got {knn!r}")
    n = len(X)
    max_cell_size = max_cell_size or n
    path = None
    if cache_dir is not None:
        search = (n_probe,) if knn == "cells" else (knn, ivf_nprobe)
        params = (_INDEX_VERSION, k, n_cells, max_cell_size, metric, max_iter, tol, fit_size, seed, *search)
        key = hashlib.blake2b(f"{data_key(X)}{params}".encode(), digest_size=12).hexdigest()
        path = Path(cache_dir) / "nomad_index" / f"{key}.npz"
        if path.exists():
            try:
                with np.load(path) as z:
                    idx = CellIndex(z["labels"], z["neighbors"], z["distances"])
                log.info("cell index loaded from cache %s", path)
                return idx, True
            except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:  # corrupt: rebuild
                log.warning("ignoring unreadable cache entry %s (%s)", path, err)
    gen = torch.Generator().manual_seed(seed)
    if n_cells > 1:
        fit_rows = np.sort(torch.randperm(n, generator=gen)[:fit_size].numpy()) if n > fit_size else None
        Xfit = torch.from_numpy(np.array(X if fit_rows is None else X[fit_rows], dtype=np.float32))
        if verbose:
            log.info("k-means: %d cells from %d points", n_cells, len(Xfit))
        C, iters, converged = kmeans(Xfit, n_cells, max_iter=max_iter, tol=tol, gen=gen)
        log.info("k-means: %d cells, %d iterations, converged=%s", n_cells, iters, converged)
        labels = assign(X, C)
        labels = np.unique(labels, return_inverse=True)[1].astype(np.int64)  # drop empty ids
    else:
        labels = np.zeros(n, dtype=np.int64)
    if labels.max() >= 0 and np.bincount(labels).max() > max_cell_size:
        labels = bound_cells(X, labels, max_cell_size, gen)
    if knn == "cells":
        nbrs, dists = cell_knn(X, labels, k, metric, n_probe=n_probe, verbose=verbose)
    else:
        from .knn import ivf_knn

        nbrs, dists = ivf_knn(X, k, metric=metric, seed=seed, nprobe=ivf_nprobe, verbose=verbose)
    idx = CellIndex(labels, nbrs, dists)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz.tmp")
        with os.fdopen(fd, "wb") as f:
            np.savez(f, labels=labels, neighbors=nbrs, distances=dists)
        os.replace(tmp, path)
    return idx, False


def precomputed_index(graph, n: int, k: int) -> CellIndex:
    """A :class:`CellIndex` of one cell from a kNN graph computed elsewhere (openTSNE's
    ``PrecomputedNeighbors``): ``(indices, distances)`` of shape (n, >= k), or a sparse
    (n, n) matrix whose stored entries in row i are i's neighbours and their distances.
    Entries of a point to itself are dropped; of the rest, the k nearest are kept."""
    from scipy import sparse

    if sparse.issparse(graph):
        csr = sparse.csr_matrix(graph)
        if csr.shape != (n, n):
            raise InputError(f"knn_graph is a sparse matrix of shape {csr.shape}; it must be (n, n) = "
                             f"({n}, {n}), row i holding the distances to i's neighbours")
        csr.sum_duplicates()
        counts = np.diff(csr.indptr)
        width = int(counts.max()) if n else 0
        idx = np.full((n, width), -1, dtype=np.int64)
        dist = np.full((n, width), np.inf, dtype=np.float64)
        slot = np.arange(csr.nnz) - np.repeat(csr.indptr[:-1], counts)
        row = np.repeat(np.arange(n), counts)
        idx[row, slot], dist[row, slot] = csr.indices, csr.data
    else:
        try:
            indices, distances = graph
        except (TypeError, ValueError):
            raise InputError("knn_graph must be (indices, distances) arrays or a scipy sparse "
                             "matrix of distances") from None
        idx, dist = np.asarray(indices), np.asarray(distances, dtype=np.float64)
        if idx.ndim != 2 or idx.shape != dist.shape or len(idx) != n:
            raise InputError(f"knn_graph indices {idx.shape} and distances {dist.shape} must both be "
                             f"(n, k') with n={n} rows, one per point")
        if not np.issubdtype(idx.dtype, np.integer):
            raise InputError(f"knn_graph indices have dtype {idx.dtype}: give integer row numbers")
        idx = idx.astype(np.int64)
        if len(idx) and (idx.min() < 0 or idx.max() >= n):
            raise InputError(f"knn_graph indices must lie in [0, {n}); got [{idx.min()}, {idx.max()}]")
    valid = (idx >= 0) & (idx != np.arange(n)[:, None])
    if np.isnan(dist[valid]).any():
        raise InputError("knn_graph distances contain NaN: give finite distances")
    short = np.flatnonzero(valid.sum(1) < k)
    if len(short):
        raise InputError(f"{len(short)} points (first: row {short[0]}) have fewer than k={k} neighbours "
                         "other than themselves in knn_graph: give at least k per point, or lower "
                         "n_neighbors")
    dist = np.where(valid, dist, np.inf)
    order = np.argsort(dist, axis=1, kind="stable")[:, :k]
    nbrs = np.take_along_axis(idx, order, 1)
    return CellIndex(np.zeros(n, dtype=np.int64), nbrs, np.take_along_axis(dist, order, 1).astype(np.float32))
