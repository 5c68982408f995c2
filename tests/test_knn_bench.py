"""The kNN index benchmark: recall is measured right (exact indexes score 1, approximate ones a
fraction, probing more cells never loses neighbours), self-matches are dropped even among
duplicates, bad requests fail before any work, and the command prints and writes its table."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import hydra_config

from experiments import knn_bench
from metrics import exact_knn
from nebench.data import synthetic
from nebench.errors import InputError

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

ROOT = Path(__file__).resolve().parents[1]
K = 10


@pytest.fixture(scope="module")
def gaussians() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """3,000 x 20 Gaussian clusters, 300 query rows and their exact 10-NN."""
    rng = np.random.default_rng(0)
    X, _ = synthetic.gaussian_clusters(3000, 20, 10, 1.0, 2.0, rng)
    X = np.asarray(X, dtype=np.float32)
    queries = np.sort(rng.choice(len(X), 300, replace=False))
    return X, queries, exact_knn(X, queries, K)


def score(name: str, data: tuple[np.ndarray, np.ndarray, np.ndarray], **params) -> float:
    X, queries, truth = data
    neighbours = knn_bench.build(name, X, K, seed=0, n_jobs=1, **params)
    assert neighbours.shape == (len(X), K) and neighbours.dtype == np.int64
    assert not (neighbours == np.arange(len(X))[:, None]).any()  # self excluded
    return knn_bench.recall(neighbours[queries], truth)


@pytest.mark.parametrize("name", knn_bench.EXACT)
def test_exact_indexes_recall_everything(name, gaussians) -> None:
    assert score(name, gaussians) == 1.0


@pytest.mark.parametrize(
    ("name", "params"),
    [
        pytest.param("pynndescent", {}, marks=pytest.mark.slow),  # numba compiles ~1 min
        ("faiss_hnsw", {"M": 8, "ef_search": 16}),
        ("faiss_ivf", {"nlist": 50, "nprobe": 1}),
        ("annoy", {"n_trees": 2}),
        ("nomad_p1", {"cell_size": 300}),
    ],
)
def test_approximate_indexes_recall_a_fraction(name, params, gaussians) -> None:
    """Settings that cannot be exact: recall strictly between 0.3 and 1."""
    assert 0.3 < score(name, gaussians, **params) < 1.0


def test_probing_more_cells_never_loses_neighbours(gaussians) -> None:
    """The n_probe = 3 candidates contain the n_probe = 1 ones, and the k nearest of a larger
    candidate set hold every true neighbour the smaller set's did."""
    X, queries, truth = gaussians
    one, three = (knn_bench.build(name, X, K, seed=0, n_jobs=1, cell_size=300)[queries]
                  for name in ("nomad_p1", "nomad_p3"))  # fmt: skip
    for found_one, found_three, true in zip(one, three, truth):  # row by row, not on average
        assert set(found_one) & set(true) <= set(found_three)
    assert knn_bench.recall(three, truth) > knn_bench.recall(one, truth)
    assert score("nomad_p1", gaussians, cell_size=len(gaussians[0])) == 1.0  # one cell: exact


def test_recall_counts_shared_neighbours_per_row() -> None:
    exact = np.array([[1, 2, 3, 4], [0, 2, 3, 4]])
    approx = np.array([[4, 3, 9, 9], [4, 3, 2, 0]])
    assert knn_bench.recall(approx, exact) == pytest.approx((2 / 4 + 4 / 4) / 2)


# --- the command -------------------------------------------------------------------------------


def compose_config(overrides: list[str], tmp_path: Path):
    with hydra_config("knn_bench", overrides, tmp_path) as cfg:
        return cfg


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["indexes=[nope]"], "no index nope"),
        (["indexes=[]"], "non-empty"),
        (["indexes=[annoy,annoy]"], "twice"),
        (["k=0"], "k=0"),
        (["n_queries=-1"], "n_queries"),
        (["+params.nope.x=1"], "params.nope"),
        (["pca_dims=0"], "pca_dims"),
    ],
)
def test_bad_requests_fail_before_any_work(overrides, expected, monkeypatch, tmp_path) -> None:
    def loaded(*args: object, **kwargs: object) -> None:
        raise AssertionError("the dataset was loaded before the request was checked")

    monkeypatch.setattr(knn_bench, "load_dataset", loaded)
    cfg = compose_config(overrides, tmp_path)
    with pytest.raises(InputError, match=expected):
        knn_bench.run_knn_benchmark(cfg)


def test_full_config_benchmarks_every_index_at_k15(tmp_path) -> None:
    cfg = compose_config(["dataset=mnist"], tmp_path)
    assert list(cfg.indexes) == list(knn_bench.INDEXES)
    assert (cfg.k, cfg.n_queries, cfg.pca_dims, cfg.isolate) == (15, 2000, 50, True)
    assert cfg.output.endswith("knn_bench_mnist.md")


@pytest.mark.slow
def test_command_prints_and_writes_the_table(tmp_path) -> None:
    """Digits through ``python -m experiments.knn_bench``, each index in its own process
    (pynndescent left out: its numba compilation alone takes a minute)."""
    env = {
        **os.environ,
        "NEBENCH_RESULTS_DIR": str(tmp_path / "results"),
        "NEBENCH_CACHE_DIR": str(tmp_path / "cache"),
        "OMP_NUM_THREADS": "1",
        "NUMBA_NUM_THREADS": "1",
    }
    indexes = "indexes=[exact_torch,nomad_p3,faiss_hnsw,annoy]"
    done = subprocess.run(
        [sys.executable, "-m", "experiments.knn_bench", indexes, "n_jobs=1", "n_queries=500",
         f"hydra.run.dir={tmp_path}/run"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    written = (tmp_path / "results" / "knn_bench_digits.md").read_text()
    assert written.strip() in done.stdout
    assert "- hardware: " in written and "n=1,797" in written
    rows = [line.split(" | ") for line in written.splitlines() if line.startswith("| ")][1:]
    assert [row[0].strip("| ") for row in rows] == indexes[9:-1].split(",")
    recalls = {row[0].strip("| "): float(row[3]) for row in rows}
    assert recalls["exact_torch"] == 1.0
    assert all(0.5 < r <= 1.0 for r in recalls.values()), recalls
    assert all(float(row[4]) > 0 for row in rows)  # peak RSS measured in each process
