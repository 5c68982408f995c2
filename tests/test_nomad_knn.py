"""Tests for nomad/knn.py: the engine's faiss IVF kNN on one device."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import make_blobs
from sklearn.neighbors import NearestNeighbors

from nebench.errors import InputError
from nomad import NOMAD
from nomad.index import build_index
from nomad.knn import drop_self, ivf_knn


@pytest.fixture(scope="module")
def blobs() -> np.ndarray:
    X, _ = make_blobs(n_samples=3000, n_features=16, centers=10, cluster_std=2.0, random_state=0)
    return X.astype(np.float32)


def exact(X: np.ndarray, k: int, metric: str = "euclidean") -> tuple[np.ndarray, np.ndarray]:
    if metric == "inner_product":
        sims = X.astype(np.float64) @ X.T.astype(np.float64)
        np.fill_diagonal(sims, -np.inf)
        top = np.argsort(-sims, axis=1, kind="stable")[:, :k]
        return top, -np.take_along_axis(sims, top, 1)
    d, i = NearestNeighbors(n_neighbors=k + 1).fit(X.astype(np.float64)).kneighbors(X.astype(np.float64))
    return i[:, 1:], d[:, 1:]


@pytest.mark.parametrize("metric", ["euclidean", "inner_product"])
def test_probing_every_list_is_exact(blobs, metric):
    X = blobs / np.linalg.norm(blobs, axis=1, keepdims=True) if metric == "inner_product" else blobs
    nbrs, dists = ivf_knn(X, 7, metric=metric, nlist=20, nprobe=20)
    ref_nbrs, ref_dists = exact(X, 7, metric)
    assert nbrs.dtype == np.int64 and dists.dtype == np.float32
    assert (np.sort(nbrs, 1) == np.sort(ref_nbrs, 1)).mean() > 0.999  # float32 ties aside
    np.testing.assert_allclose(dists, ref_dists, atol=1e-3)


def test_default_search_is_approximate_but_close(blobs):
    nbrs, dists = ivf_knn(blobs, 10)
    ref, _ = exact(blobs, 10)
    recall = np.mean([len(np.intersect1d(a, b)) for a, b in zip(nbrs, ref)]) / 10
    assert 0.9 < recall < 1.0  # 4 sqrt(n) lists, 10 probed: not a full scan, yet close
    assert not (nbrs == np.arange(len(blobs))[:, None]).any()  # self excluded
    assert (np.diff(dists, axis=1) >= 0).all()


def test_a_seed_fixes_the_graph_and_another_seed_changes_it(blobs):
    a, b, c = (ivf_knn(blobs, 8, seed=s, nprobe=2)[0] for s in (0, 0, 1))
    np.testing.assert_array_equal(a, b)
    assert (a != c).any()


def test_rows_short_of_candidates_scan_every_list():
    X = np.random.default_rng(0).normal(size=(200, 4)).astype(np.float32)
    nbrs, dists = ivf_knn(X, 12, nlist=100, nprobe=1)  # about 2 points a list: 1 probe is short
    _, ref_dists = exact(X, 12)
    assert (nbrs >= 0).all()
    np.testing.assert_allclose(dists, ref_dists, atol=1e-4)


def test_drop_self_removes_the_row_wherever_it_is_and_else_the_farthest():
    indices = np.array([[0, 5, 6], [7, 1, 8], [9, 3, 4]])  # row 2: itself not listed (duplicates)
    assert drop_self(indices, 2).tolist() == [[5, 6], [7, 8], [9, 3]]


def test_build_index_takes_the_ivf_graph_and_keeps_the_cells(blobs):
    cells, _ = build_index(blobs, 8, n_cells=4, knn="cells")
    ivf, _ = build_index(blobs, 8, n_cells=4, knn="faiss_ivf")
    np.testing.assert_array_equal(ivf.labels, cells.labels)
    np.testing.assert_array_equal(ivf.neighbors, ivf_knn(blobs, 8)[0])
    assert (ivf.labels[ivf.neighbors] != ivf.labels[:, None]).any()  # edges may cross cells
    with pytest.raises(ValueError, match="knn"):
        build_index(blobs, 8, n_cells=4, knn="hnsw")


def test_engine_uses_ivf_on_one_device_at_every_size_and_cells_on_several():
    one, two = NOMAD().options().index, NOMAD(devices=2).options().index
    assert (one.knn, one.n_probe) == ("faiss_ivf", 3)
    assert (two.knn, two.n_probe) == ("cells", 1)
    assert NOMAD(knn="cells").options().index.knn == "cells"
    with pytest.raises(InputError, match="knn=cells"):
        NOMAD(devices=2, knn="faiss_ivf").options()
    with pytest.raises(InputError, match="method.knn"):
        NOMAD(knn="hnsw").options()
