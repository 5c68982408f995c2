"""Tests for nomad/index.py: LSH-seeded K-means, bounded cells, exact within-cell kNN, cache.

nomad-projection sec. 3.2: K-means cells initialised by a locality-sensitive hash and run
to convergence, exact kNN inside each cell; the index is cached on disk.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from sklearn.datasets import make_blobs
from sklearn.neighbors import NearestNeighbors

from nomad.index import (
    CellIndex,
    assign,
    bound_cells,
    build_index,
    cell_knn,
    data_key,
    kmeans,
    lsh_init,
)
from nomad.transform import query_knn

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def mixture() -> tuple[np.ndarray, np.ndarray]:
    X, y = make_blobs(n_samples=400, n_features=8, centers=4, cluster_std=1.0, random_state=0)
    return X.astype(np.float32), y


@pytest.fixture(scope="module")
def skewed() -> np.ndarray:
    """One Gaussian holding 80% of the 1000 points, three small far-away ones."""
    rng = np.random.default_rng(0)
    big = rng.normal(size=(800, 8))
    centers = np.repeat(20.0 * np.eye(8)[:3], [67, 67, 66], axis=0)
    small = rng.normal(size=(200, 8)) + centers
    return np.concatenate([big, small]).astype(np.float32)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def brute_cell_knn(X: np.ndarray, labels: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Reference: sklearn exact kNN on each cell separately, self dropped, global row ids."""
    nbrs = np.empty((len(X), k), dtype=np.int64)
    dists = np.empty((len(X), k))
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        nn = NearestNeighbors(n_neighbors=k + 1, algorithm="brute").fit(X[rows].astype(np.float64))
        d, i = nn.kneighbors(X[rows].astype(np.float64))
        assert (i[:, 0] == np.arange(len(rows))).all()  # distinct points: self comes first
        nbrs[rows], dists[rows] = rows[i[:, 1:]], d[:, 1:]
    return nbrs, dists


def assert_same_neighbours(nbrs, dists, ref_nbrs, ref_dists, atol=1e-4):
    # same neighbour set per row; the order may differ only between (near-)tied distances
    assert (np.sort(nbrs, 1) == np.sort(ref_nbrs, 1)).all()
    np.testing.assert_allclose(dists, ref_dists, atol=atol, rtol=1e-4)


# -- K-means ---------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kmeans_converges_to_a_lloyd_fixed_point(mixture, seed):
    X = torch.as_tensor(mixture[0])
    C, iters, converged = kmeans(X, 4, max_iter=100, tol=1e-4, gen=gen(seed))
    assert converged and 1 <= iters < 100
    assert C.shape == (4, 8)
    # a converged Lloyd solution: every centroid is the mean of the points assigned to it
    labels = assign(mixture[0], C)
    assert len(np.unique(labels)) == 4
    for c in range(4):
        np.testing.assert_allclose(C[c].numpy(), mixture[0][labels == c].mean(0), atol=1e-3)


def test_kmeans_reports_non_convergence_at_the_iteration_cap(mixture):
    _C, iters, converged = kmeans(torch.as_tensor(mixture[0]), 4, max_iter=3, tol=0.0, gen=gen())
    assert (iters, converged) == (3, False)


def test_kmeans_is_seeded(mixture):
    X = torch.as_tensor(mixture[0])
    a = kmeans(X, 4, gen=gen(5))[0]
    b = kmeans(X, 4, gen=gen(5))[0]
    assert torch.equal(a, b)


def test_lsh_init_uses_bucket_means_then_tops_up_with_data_points(mixture):
    X = torch.as_tensor(mixture[0])
    # one hyperplane: at most two buckets, so 3 of the 5 centroids must be data points
    C = lsh_init(X, 5, n_bits=1, gen=gen()).double()
    assert C.shape == (5, 8)
    # the first two are the means of the two buckets, a partition of the data:
    # n0 c0 + (n - n0) c1 = sum(X) for an integer n0 >= n/2 (most populated bucket first)
    n, total = len(X), X.double().sum(0)
    n0 = float(((total - n * C[1]) @ (C[0] - C[1])) / ((C[0] - C[1]) @ (C[0] - C[1])))
    assert n0 == pytest.approx(round(n0), abs=1e-3) and n / 2 <= round(n0) < n
    n0 = round(n0)
    torch.testing.assert_close(n0 * C[0] + (n - n0) * C[1], total, rtol=1e-5, atol=1e-3)
    for c in C[2:]:
        assert (X.double() == c).all(1).any()


def test_assign_is_the_nearest_centroid_in_any_chunking(mixture):
    X = mixture[0]
    C = torch.as_tensor(X[[0, 50, 100, 150, 200]])
    ref = ((X[:, None, :].astype(np.float64) - C.numpy()[None]) ** 2).sum(-1).argmin(1)
    np.testing.assert_array_equal(assign(X, C), ref)
    np.testing.assert_array_equal(assign(X, C, chunk=13), ref)


# -- bounded cells -----------------------------------------------------------------------------
def test_skewed_mixture_gives_one_giant_cell_without_a_bound(skewed):
    idx, _ = build_index(skewed, 5, n_cells=4, seed=0)
    assert idx.cell_sizes().max() >= 700  # the bound below has work to do


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("max_cell_size", [300, 120])
def test_build_index_respects_the_cell_size_bound(skewed, seed, max_cell_size):
    idx, cached = build_index(skewed, 5, n_cells=4, max_cell_size=max_cell_size, seed=seed)
    sizes = idx.cell_sizes()
    assert not cached
    assert sizes.max() <= max_cell_size
    assert sizes.min() >= 1 and sizes.sum() == len(skewed)  # ids 0..C-1, none empty
    assert idx.n_cells >= int(np.ceil(len(skewed) / max_cell_size))


def test_bound_cells_splits_identical_points():
    X = np.zeros((50, 3), dtype=np.float32)
    labels = bound_cells(X, np.zeros(50, dtype=np.int64), 8, gen())
    sizes = np.bincount(labels)
    assert sizes.max() <= 8 and sizes.min() >= 1 and sizes.sum() == 50


def test_bound_cells_leaves_small_cells_alone(mixture):
    labels = np.arange(len(mixture[0])) % 4
    np.testing.assert_array_equal(bound_cells(mixture[0], labels, 100, gen()), labels)


# -- exact kNN inside each cell -------------------------------------------------------------
@pytest.fixture(scope="module")
def random_cells() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    X = rng.normal(size=(300, 6)).astype(np.float32)
    return X, rng.integers(0, 4, size=300)


def test_cell_knn_equals_brute_force_within_each_cell(random_cells):
    X, labels = random_cells
    nbrs, dists = cell_knn(X, labels, 7)
    assert nbrs.shape == (300, 7) and nbrs.dtype == np.int64 and dists.dtype == np.float32
    assert (nbrs != np.arange(300)[:, None]).all()  # self excluded
    assert (labels[nbrs] == labels[:, None]).all()  # neighbours stay in the cell
    assert (np.diff(dists, axis=1) >= 0).all()  # ascending distance
    assert_same_neighbours(nbrs, dists, *brute_cell_knn(X, labels, 7))


def test_cell_knn_chunking_does_not_change_the_result(random_cells):
    X, labels = random_cells
    nbrs, dists = cell_knn(X, labels, 5)
    nbrs_c, dists_c = cell_knn(X, labels, 5, chunk=7)  # the self mask is offset per chunk
    np.testing.assert_array_equal(nbrs_c, nbrs)
    np.testing.assert_allclose(dists_c, dists, rtol=1e-6)


def test_build_index_knn_equals_brute_force(mixture):
    X = mixture[0]
    idx, _ = build_index(X, 10, n_cells=4, seed=0)
    assert isinstance(idx, CellIndex)
    assert_same_neighbours(idx.neighbors, idx.distances, *brute_cell_knn(X, idx.labels, 10))


def test_cell_knn_pads_cells_smaller_than_k(caplog):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(24, 3)).astype(np.float32)
    labels = np.array([0] * 20 + [1] * 3 + [2])  # cells of 3 points and of 1 point, k=5
    with caplog.at_level("WARNING", logger="nomad.index"):
        nbrs, dists = cell_knn(X, labels, 5)
    assert "2 cells" in caplog.text
    assert (labels[nbrs] == labels[:, None]).all()
    for i in (20, 21, 22):  # the two other points of the cell, repeated
        assert set(nbrs[i]) == {20, 21, 22} - {i}
    assert (nbrs[23] == 23).all()  # a lone point is its own neighbour
    ref = brute_cell_knn(X[:20], labels[:20], 5)
    assert_same_neighbours(nbrs[:20], dists[:20], *ref)


def test_inner_product_metric_on_unit_norm_data(random_cells):
    X, labels = random_cells
    X = X / np.linalg.norm(X, axis=1, keepdims=True)
    nbrs, dists = cell_knn(X, labels, 6, metric="inner_product")
    for c in range(4):
        rows = np.flatnonzero(labels == c)
        sims = X[rows].astype(np.float64) @ X[rows].T.astype(np.float64)
        np.fill_diagonal(sims, -np.inf)
        top = np.argsort(-sims, axis=1, kind="stable")[:, :6]
        assert (np.sort(nbrs[rows], 1) == np.sort(rows[top], 1)).all()
        np.testing.assert_allclose(dists[rows], -np.take_along_axis(sims, top, 1), atol=1e-5)
    # on unit vectors the largest inner products are the smallest Euclidean distances
    nbrs_l2, _ = cell_knn(X, labels, 6)
    assert (np.sort(nbrs, 1) == np.sort(nbrs_l2, 1)).all()
    idx, _ = build_index(X, 6, n_cells=3, metric="inner_product")
    assert (np.diff(idx.distances, axis=1) >= 0).all()


def test_build_index_rejects_an_unknown_metric(mixture):
    with pytest.raises(ValueError, match="metric"):
        build_index(mixture[0], 5, n_cells=2, metric="cosine")


def test_single_cell_is_exact_knn_over_all_points(mixture):
    X = mixture[0]
    idx, _ = build_index(X, 8, n_cells=1)
    assert idx.n_cells == 1
    ref = brute_cell_knn(X, np.zeros(len(X), dtype=np.int64), 8)
    assert_same_neighbours(idx.neighbors, idx.distances, *ref)


# -- cache ---------------------------------------------------------------------------------------
def cache_files(tmp_path):
    return sorted((tmp_path / "nomad_index").iterdir())


def assert_same_index(a: CellIndex, b: CellIndex):
    for name in ("labels", "neighbors", "distances"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype
        np.testing.assert_array_equal(x, y)


def test_cache_hit_returns_identical_arrays(mixture, tmp_path):
    X = mixture[0]
    first, cached1 = build_index(X, 5, n_cells=4, cache_dir=tmp_path)
    second, cached2 = build_index(X.copy(), 5, n_cells=4, cache_dir=tmp_path)
    assert (cached1, cached2) == (False, True)
    assert_same_index(first, second)
    files = cache_files(tmp_path)
    assert len(files) == 1 and files[0].suffix == ".npz"  # no temp files left behind


@pytest.mark.parametrize("change", ["k", "data", "n_cells", "seed", "dtype", "knn"])
def test_cache_misses_when_data_or_parameters_change(mixture, tmp_path, change):
    X = mixture[0]
    build_index(X, 5, n_cells=4, cache_dir=tmp_path)
    kwargs = {"k": 5, "n_cells": 4, "seed": 0}
    if change == "data":
        X = X.copy()
        X[17, 3] += 0.5
    elif change == "dtype":
        X = X.astype(np.float64)
    elif change == "k":
        kwargs["k"] = 6
    elif change == "n_cells":
        kwargs["n_cells"] = 3
    elif change == "knn":
        kwargs["knn"] = "faiss_ivf"
    else:
        kwargs["seed"] = 1
    k = kwargs.pop("k")
    idx, cached = build_index(X, k, cache_dir=tmp_path, **kwargs)
    assert not cached
    assert idx.neighbors.shape == (len(X), k)
    assert len(cache_files(tmp_path)) == 2


def corrupt(path, how: str) -> None:
    data = path.read_bytes()
    if how == "garbage":
        path.write_bytes(b"not an npz file" * 10)
    elif how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    else:
        path.write_bytes(b"")


@pytest.mark.parametrize("how", ["garbage", "truncated", "empty"])
def test_corrupt_cache_entry_is_rebuilt(mixture, tmp_path, how):
    X = mixture[0]
    ref, _ = build_index(X, 5, n_cells=4, cache_dir=tmp_path)
    (path,) = cache_files(tmp_path)
    corrupt(path, how)
    rebuilt, cached = build_index(X, 5, n_cells=4, cache_dir=tmp_path)
    assert not cached
    assert_same_index(rebuilt, ref)
    again, cached = build_index(X, 5, n_cells=4, cache_dir=tmp_path)  # the entry was repaired
    assert cached
    assert_same_index(again, ref)


def test_data_key_depends_on_content_shape_and_dtype():
    a = np.arange(12, dtype=np.float32)
    assert data_key(a) == data_key(a.copy())
    assert data_key(a) != data_key(a.reshape(3, 4))
    assert data_key(a) != data_key(a.view(np.int32))
    b = a.copy()
    b[5] = -1
    assert data_key(a) != data_key(b)


def test_read_only_input_is_read_without_a_warning():
    """A memory-mapped dataset opened read-only: the chunked searches copy each chunk instead of
    wrapping it, which torch warns about for non-writable arrays."""
    X = np.random.default_rng(0).standard_normal((300, 5)).astype(np.float32)
    X.setflags(write=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        labels = assign(X, torch.from_numpy(X[:4].copy()), chunk=64)
        idx, _ = query_knn(X, X[:10], 3, chunk=4)
    assert labels[:4].tolist() == [0, 1, 2, 3]
    assert idx[:, 0].tolist() == list(range(10))
