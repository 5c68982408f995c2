"""Tests for metrics/: hand-worked tiny cases, identity and random limits, chunking, dtypes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats
from sklearn import manifold
from sklearn.datasets import make_blobs
from sklearn.decomposition import PCA

import metrics.evaluation as evaluation_module
from metrics import (
    distance_spearman,
    evaluate,
    exact_knn,
    knn_accuracy,
    neighborhood_preservation,
    random_triplet_accuracy,
    trustworthiness_continuity,
)
from metrics.triplets import distinct_triplets
from nebench.errors import InputError


def on_line(*xs: float, dims: int = 2) -> np.ndarray:
    """Points at positions xs on the first axis of a `dims`-dimensional space."""
    out = np.zeros((len(xs), dims))
    out[:, 0] = xs
    return out


def brute_knn(data: np.ndarray, query_idx: np.ndarray, k: int) -> np.ndarray:
    """Reference: float64 distances to all points, self excluded, ordered by (distance, index)."""
    data = np.asarray(data, dtype=np.float64)
    dist = ((data[query_idx, None, :] - data[None, :, :]) ** 2).sum(-1)
    dist[np.arange(len(query_idx)), query_idx] = np.inf
    return np.argsort(dist, axis=1, kind="stable")[:, :k]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def blobs() -> tuple[np.ndarray, np.ndarray]:
    X, y = make_blobs(n_samples=2000, n_features=10, centers=4, cluster_std=1.0, random_state=0)
    return X.astype(np.float32), y


# ---------------------------------------------------------------- NP@k, hand-computed


# X on a line at 0, 1, 3, 7, 15 (gaps 1, 2, 4, 8: no ties). Y is the same line with p3 and p4
# swapped (p3 at 15 -> at 7 in Y is p4). Neighbours by hand, nearest first:
#   point  X-neighbours  Y-neighbours   NP@1  NP@2
#   p0     p1, p2        p1, p2         1     1
#   p1     p0, p2        p0, p2         1     1
#   p2     p1, p0        p1, p0         1     1
#   p3     p2, p1        p4, p2         0     1/2
#   p4     p3, p2        p2, p1         0     1/2
# NP@1 = 3/5 = 0.6, sd = sqrt(0.6 * 0.4);  NP@2 = 4/5 = 0.8, sd = sqrt((3*0.2^2 + 2*0.3^2)/5)
X_LINE = on_line(0, 1, 3, 7, 15, dims=3)
Y_SWAP = on_line(0, 1, 3, 15, 7)


@pytest.mark.parametrize("n_eval", [None, 5, 100])
def test_np_hand_computed(n_eval):
    result = neighborhood_preservation(X_LINE, Y_SWAP, ks=(1, 2), n_eval=n_eval)
    assert result[1] == pytest.approx((0.6, 1.96 * np.sqrt(0.24) / np.sqrt(5)))
    assert result[2] == pytest.approx((0.8, 1.96 * np.sqrt(0.06) / np.sqrt(5)))


SEARCHES = ["brute", "kdtree"]  # exact_knn's candidate passes; "auto" takes the k-d tree in <= 3-D


@pytest.mark.parametrize("search", SEARCHES)
def test_knn_is_exact_far_from_the_origin(search):
    # at an offset of 1e4, ||x||^2 ~ 3e8 has a float32 spacing of 32, more than the squared
    # distances between these points: the float32 pass only ranks them right after centring
    X = 1e4 + np.random.default_rng(0).normal(size=(400, 3))
    idx = np.arange(0, 400, 9)
    found = exact_knn(X, idx, 5, chunk_size=64, search=search)
    assert np.array_equal(found, brute_knn(X, idx, 5))
    far = neighborhood_preservation(X_LINE + 1e4, Y_SWAP - 1e4, ks=(1, 2), n_eval=None)
    assert far == neighborhood_preservation(X_LINE, Y_SWAP, ks=(1, 2), n_eval=None)


@pytest.mark.parametrize("search", SEARCHES)
def test_knn_excludes_self_by_index_with_duplicates(search):
    # p0, p1, p2 coincide; a "drop column 0" rule could keep the query itself as a neighbour
    X = on_line(0, 0, 0, 10, 20, 30)
    found = exact_knn(X, np.array([0, 1, 2]), 2, search=search)
    assert found.tolist() == [[1, 2], [0, 2], [0, 1]]
    # 40 copies of one point, more than the 22 candidates kept: which copies is arbitrary
    # (module docstring), but never the query itself
    crowd = np.zeros((60, 2))
    crowd[40:] = np.arange(1, 21)[:, None]
    idx = np.array([0, 17, 39, 45])
    found = exact_knn(crowd, idx, 3, search=search)
    assert (found[:3] < 40).all() and (found != idx[:, None]).all()
    assert found[3].tolist() == brute_knn(crowd, idx, 3)[3].tolist() == [44, 46, 43]
    assert neighborhood_preservation(X, X.copy(), ks=(1, 2), n_eval=None)[2] == (1.0, 0.0)


# ---------------------------------------------------------------- NP@k, limits


def test_np_identity_is_exactly_one_with_ties():
    # a 20 x 20 integer grid: 4-way ties at distances 1, sqrt 2, 2, ... cut by every k
    grid = np.stack(np.meshgrid(np.arange(20), np.arange(20)), -1).reshape(-1, 2).astype(float)
    result = neighborhood_preservation(grid, grid.astype(np.float32), ks=(3, 6, 10), chunk_size=37)
    assert result == {3: (1.0, 0.0), 6: (1.0, 0.0), 10: (1.0, 0.0)}
    idx = np.arange(0, 400, 7)
    for search in SEARCHES:
        found = exact_knn(grid, idx, 10, chunk_size=37, search=search)
        assert np.array_equal(found, brute_knn(grid, idx, 10))


def test_identity_embedding_scores_one():
    X = np.random.default_rng(0).normal(size=(300, 20))
    assert neighborhood_preservation(X, X, ks=(10, 15)) == {10: (1.0, 0.0), 15: (1.0, 0.0)}
    assert random_triplet_accuracy(X, X, n_triplets=10_000) == (1.0, 0.0)


def test_random_embedding_scores_chance_and_pca_beats_it(blobs):
    X, _ = blobs
    n, k = len(X), 10
    Y_random = np.random.default_rng(1).normal(size=(n, 2))
    (np_mean, np_ci) = neighborhood_preservation(X, Y_random, ks=(k,), n_eval=1000)[k]
    rta, rta_ci = random_triplet_accuracy(X, Y_random, n_triplets=20_000)
    # each CI is ~2 standard errors; 3 CIs leaves ~6 sigma for a seeded, deterministic draw
    assert np_ci > 0 and abs(np_mean - k / (n - 1)) < 3 * np_ci
    assert abs(rta - 0.5) < 3 * rta_ci

    Y_pca = PCA(n_components=2, random_state=0).fit_transform(X)
    assert neighborhood_preservation(X, Y_pca, ks=(k,), n_eval=1000)[k][0] > 5 * k / (n - 1)
    assert random_triplet_accuracy(X, Y_pca, n_triplets=20_000)[0] > 0.6


# ---------------------------------------------------------------- NP@k, chunking and memory


def test_chunked_search_matches_single_block_and_brute_force(monkeypatch):
    rng = np.random.default_rng(0)
    n, chunk = 8000, 613
    X = rng.normal(size=(n, 50)).astype(np.float32)
    Y = X[:, :2] + 0.3 * rng.normal(size=(n, 2)).astype(np.float32)

    largest_block = 0
    addmm = torch.addmm

    def spy(*args, **kwargs):
        nonlocal largest_block
        out = addmm(*args, **kwargs)
        largest_block = max(largest_block, out.numel())
        return out

    monkeypatch.setattr(torch, "addmm", spy)
    chunked = neighborhood_preservation(X, Y, ks=(5, 10), n_eval=700, chunk_size=chunk)
    assert largest_block <= chunk * chunk  # never a query x all-points (or n x n) matrix
    monkeypatch.undo()

    assert chunked == neighborhood_preservation(X, Y, ks=(5, 10), n_eval=700, chunk_size=n)
    idx = np.arange(0, n, 400)
    assert np.array_equal(exact_knn(X, idx, 10, chunk_size=chunk), brute_knn(X, idx, 10))


def test_float16_memmap_input_matches_float32_in_memory(tmp_path, blobs):
    X, y = blobs
    X16 = X.astype(np.float16)
    np.save(tmp_path / "x.npy", X16)
    np.save(tmp_path / "y.npy", X16[:, :2])
    X_map = np.load(tmp_path / "x.npy", mmap_mode="r")
    Y_map = np.load(tmp_path / "y.npy", mmap_mode="r")

    X32, Y32 = X16.astype(np.float32), X16[:, :2].astype(np.float32)
    kwargs = {"ks": (10,), "n_eval": 300, "n_triplets": 5000, "n_trust": 300, "n_pairs": 5000}
    assert evaluate(X_map, Y_map, y, **kwargs) == evaluate(X32, Y32, y, **kwargs)


# ---------------------------------------------------------------- triplets


def test_rta_hand_computed():
    # X at 0, 1, 3, 7; Y swaps p0 and p1 (p0 at 1, p1 at 0). The answer does not depend on the
    # order of (b, c), so count the 4 anchors x 3 pairs {b, c}; "<" = first of the pair is nearer:
    #   a=p0: X d(p1,p2,p3) = 1,3,7; Y = 1,2,6           -> all 3 pairs kept
    #   a=p1: X d(p0,p2,p3) = 1,2,6; Y = 1,3,7           -> all 3 kept
    #   a=p2: X d(p0,p1,p3) = 3,2,4; Y = 2,3,4           -> {p0,p1} flips; 2 kept
    #   a=p3: X d(p0,p1,p2) = 7,6,4; Y = 6,7,4           -> {p0,p1} flips; 2 kept
    # accuracy = 10 / 12 = 5/6
    rta, ci = random_triplet_accuracy(on_line(0, 1, 3, 7), on_line(1, 0, 3, 7), n_triplets=100_000)
    assert ci == pytest.approx(1.96 * np.sqrt(rta * (1 - rta) / 100_000))
    assert abs(rta - 5 / 6) < 2 * ci


def test_rta_ties_count_as_failures():
    # p0 at 0 with p1 at 1 and p2 at -1: from anchor p0 the pair {p1, p2} ties (in X and in Y = X)
    # and fails; anchors p1 and p2 see distinct distances and succeed -> accuracy 2/3
    X = on_line(0, 1, -1)
    rta, ci = random_triplet_accuracy(X, X, n_triplets=100_000)
    assert abs(rta - 2 / 3) < 2 * ci


def test_triplets_are_distinct_and_uniform():
    size = 240_000
    a, b, c = distinct_triplets(4, size, seed=0)
    assert np.all((a != b) & (a != c) & (b != c))
    counts = np.unique(a * 16 + b * 4 + c, return_counts=True)[1]
    expected = size / 24  # 4 * 3 * 2 ordered triplets
    assert len(counts) == 24 and np.abs(counts - expected).max() < 5 * np.sqrt(expected)


# ---------------------------------------------------------------- seeds


def test_seeds_reproduce(blobs):
    X, _ = blobs
    Y = X[:, :2]
    assert neighborhood_preservation(X, Y, n_eval=200, seed=3) == neighborhood_preservation(
        X, Y, n_eval=200, seed=3
    )
    assert neighborhood_preservation(X, Y, n_eval=200, seed=3) != neighborhood_preservation(
        X, Y, n_eval=200, seed=4
    )
    assert random_triplet_accuracy(X, Y, 5000, seed=3) == random_triplet_accuracy(X, Y, 5000, 3)
    assert random_triplet_accuracy(X, Y, 5000, seed=3) != random_triplet_accuracy(X, Y, 5000, 4)


# ---------------------------------------------------------------- kNN accuracy


def test_knn_accuracy_separable_vs_shuffled_labels(blobs):
    X, y = blobs
    Y = PCA(n_components=2, random_state=0).fit_transform(X)
    assert knn_accuracy(Y, y, n_train=None) > 0.95
    assert knn_accuracy(Y, y, n_train=1500) > 0.95
    shuffled = np.random.default_rng(0).permutation(y)
    # 4 balanced classes; 400 test points: standard error ~0.02
    assert abs(knn_accuracy(Y, shuffled, n_train=None) - 0.25) < 0.1


def test_knn_accuracy_ignores_unlabelled_and_gives_up_without_classes(blobs):
    X, y = blobs
    Y = X[:, :2]
    partial = y.copy()
    partial[::2] = -1
    assert knn_accuracy(Y, partial, None) == pytest.approx(
        knn_accuracy(Y[1::2], y[1::2], None), abs=0.05
    )
    assert knn_accuracy(Y, np.zeros(len(y)), None) is None  # one class
    no_train_labels = y.copy()
    no_train_labels[:1500] = -1
    assert knn_accuracy(Y, no_train_labels, n_train=1500) is None


# ---------------------------------------------------------------- evaluate


def test_evaluate_keys_and_consistency(blobs):
    X, y = blobs
    Y = PCA(n_components=2, random_state=0).fit_transform(X)
    kwargs = {"ks": (10, 15), "n_eval": 300, "n_triplets": 5000, "seed": 2}
    out = evaluate(X, Y, **kwargs, n_trust=0, n_pairs=0)
    assert set(out) == {"np@10", "np@10_ci95", "np@15", "np@15_ci95", "rta", "rta_ci95"}
    assert all(type(v) is float for v in out.values())
    assert out["np@15"] == neighborhood_preservation(X, Y, (10, 15), 300, seed=2)[15][0]
    assert out["rta"] == random_triplet_accuracy(X, Y, 5000, seed=2)[0]

    labelled = evaluate(X, Y, y, n_train=1500, n_trust=400, n_pairs=5000, **kwargs)
    rank = {f"{m}{s}" for m in ("trustworthiness", "continuity", "distance_spearman")
            for s in ("", "_ci95")}  # fmt: skip
    assert set(labelled) == set(out) | {"knn_acc"} | rank
    assert labelled["knn_acc"] > 0.95 and 0.5 < labelled["trustworthiness"] <= 1.0
    assert 0.5 < labelled["continuity"] <= 1.0 and 0.5 < labelled["distance_spearman"] <= 1.0
    perfect = evaluate(X, X, n_trust=400, n_pairs=5000, **kwargs)
    assert perfect["trustworthiness"] == perfect["continuity"] == pytest.approx(1.0)
    assert perfect["distance_spearman"] == pytest.approx(1.0)
    # too few points for k = 15: skipped (with a warning), the rest still measured
    assert "trustworthiness" not in evaluate(X[:25], Y[:25], ks=(10, 15), n_trust=2000)


def test_trustworthiness_and_continuity_equal_sklearns_on_a_small_case():
    """The per-point values average to sklearn's trustworthiness; continuity is it swapped."""
    rng = np.random.default_rng(4)
    X = rng.normal(size=(120, 6))
    Y = X[:, :2] + 0.5 * rng.normal(size=(120, 2))
    for k in (3, 10):
        got = trustworthiness_continuity(X, Y, k=k, n_points=1000)
        assert got["trustworthiness"][0] == pytest.approx(
            manifold.trustworthiness(X, Y, n_neighbors=k)
        )
        assert got["continuity"][0] == pytest.approx(manifold.trustworthiness(Y, X, n_neighbors=k))
        assert 0 < got["trustworthiness"][1] < 0.1
    shuffled = trustworthiness_continuity(X, rng.permutation(Y), k=10, n_points=1000)
    assert shuffled["trustworthiness"][0] < got["trustworthiness"][0] - 0.1


def test_distance_spearman_matches_a_direct_rank_correlation():
    rng = np.random.default_rng(5)
    X = rng.normal(size=(50, 5))
    Y = X[:, :2] + 0.3 * rng.normal(size=(50, 2))
    rho, ci95 = distance_spearman(X, Y, n_pairs=400, seed=3)
    draws = np.random.default_rng(3)  # the same pairs: i, then j != i
    i = draws.integers(0, 50, 400)
    j = draws.integers(0, 49, 400)
    j += j >= i
    d_x, d_y = np.linalg.norm(X[i] - X[j], axis=1), np.linalg.norm(Y[i] - Y[j], axis=1)
    ranks = [stats.rankdata(d) for d in (d_x, d_y)]
    assert rho == pytest.approx(np.corrcoef(*ranks)[0, 1])
    assert 0 < ci95 < 0.1 and rho > 0.5
    assert abs(distance_spearman(X, rng.permutation(Y), n_pairs=400)[0]) < 0.2


# ---------------------------------------------------------------- bad input

X_OK = np.random.default_rng(0).normal(size=(30, 4))
Y_OK = X_OK[:, :2]
Y_NAN = Y_OK.copy()
Y_NAN[3, 1] = np.nan
X_NAN = X_OK.copy()
X_NAN[7, 0] = np.inf


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: evaluate(X_OK, Y_OK[:-1]), "X has 30 rows but Y has 29"),
        (lambda: evaluate(X_OK, Y_OK[:, 0]), "Y must be a 2-D array"),
        (lambda: evaluate(X_OK.astype(str), Y_OK), "X has dtype"),
        (lambda: evaluate(X_OK, Y_OK, ks=(30,)), "k = 30 needs more than 30 points"),
        (lambda: evaluate(X_OK, Y_OK, ks=()), "ks is empty"),
        (lambda: evaluate(X_OK, Y_OK, ks=(0, 5)), "each k in ks must be >= 1"),
        (lambda: evaluate(X_OK, Y_NAN), "Y contains NaN or inf"),
        (lambda: evaluate(X_OK, Y_OK, n_eval=0), "n_eval must be >= 1"),
        (lambda: evaluate(X_OK, Y_OK, n_triplets=0), "n_triplets must be >= 1"),
        (lambda: evaluate(X_OK, Y_OK, np.zeros(29)), "y must be a 1-D array"),
        (lambda: evaluate(X_OK, Y_OK, np.zeros(30), n_train=31), "n_train = 31 exceeds"),
        (lambda: evaluate(X_OK, Y_OK, n_trust=-1), "n_trust must be >= 0"),
        (lambda: trustworthiness_continuity(X_OK, Y_OK, k=15), "need k = 15 < half"),
        (lambda: distance_spearman(X_OK, Y_OK, n_pairs=2), "4 pairs"),
        (lambda: neighborhood_preservation(X_NAN, Y_OK, ks=(5,)), "X contains NaN or inf"),
        (lambda: random_triplet_accuracy(X_NAN, Y_OK), "X contains NaN or inf"),
        (lambda: random_triplet_accuracy(X_OK[:2], Y_OK[:2]), "at least 3 points"),
        (lambda: knn_accuracy(Y_OK, np.zeros((30, 2)), None), "y must be a 1-D array"),
        (lambda: exact_knn(X_OK, np.arange(3), 2, search="ball"), "search must be auto"),
    ],
)
def test_bad_input_raises_input_error(call, message):
    with pytest.raises(InputError, match=message):
        call()


def test_evaluate_validates_before_heavy_work(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("heavy work started before validation")

    monkeypatch.setattr(evaluation_module, "neighborhood_preservation", fail)
    with pytest.raises(InputError, match="n_train"):
        evaluate(X_OK, Y_OK, np.zeros(30), n_train=99, ks=(5,))


def test_np_at_k_and_knn_accuracy_against_torchdr():
    """TorchDR 0.5's neighborhood_preservation is the same |N_X ∩ N_Y| / k (over all points,
    exact backend); its knn_label_accuracy is neighbourhood hit, not a held-out classifier."""
    eval_module = pytest.importorskip("torchdr.eval")
    rng = np.random.default_rng(6)
    X = rng.normal(size=(300, 8))
    Y = X[:, :2] + 0.3 * rng.normal(size=(300, 2))
    ours = neighborhood_preservation(X, Y, (10,), n_eval=None)[10][0]
    theirs = float(eval_module.neighborhood_preservation(X, Y, K=10, backend=None))
    assert ours == pytest.approx(theirs, abs=1e-6)  # TorchDR counts in float32
    y = (X[:, 0] > 0).astype(np.int64)
    hit = float(eval_module.knn_label_accuracy(Y, y, k=10, backend=None))
    neighbours = exact_knn(Y, np.arange(300), 10)
    assert hit == pytest.approx((y[neighbours] == y[:, None]).mean(), abs=1e-6)


def test_np_over_given_rows_searches_all_points():
    # p3 and p4 alone: NP@1 0 for both, NP@2 1/2 each; their neighbours still among all five
    result = neighborhood_preservation(X_LINE, Y_SWAP, ks=(1, 2), rows=np.array([3, 4]))
    assert result[1] == (0.0, 0.0)
    assert result[2][0] == pytest.approx(0.5)
    assert neighborhood_preservation(X_LINE, Y_SWAP, ks=(1,), rows=[0, 1, 2])[1][0] == 1.0


@pytest.mark.parametrize(
    "rows, message",
    [([], "non-empty 1-D array"), ([0.5], "non-empty 1-D array"), ([0, 5], r"index the 5 points \(0..4\)"),
     ([1, 1], "repeats a point")],
)
def test_np_rows_checked(rows, message):
    with pytest.raises(InputError, match=message):
        neighborhood_preservation(X_LINE, Y_SWAP, ks=(1,), rows=np.array(rows))
