"""UMAP (McInnes, Healy & Melville, arXiv:1802.03426, 2018) from umap-learn, as a harness method.

With ρ_i the distance from x_i to its nearest neighbour and σ_i set so that
Σ_j exp(-(d_ij - ρ_i) / σ_i) = log2(k) over its k = ``n_neighbors`` neighbours,

    w_j|i = exp(-(d_ij - ρ_i) / σ_i),      w_ij = w_j|i + w_i|j - w_j|i · w_i|j,
    q_ij = 1 / (1 + a ||y_i - y_j||^(2b))  (a, b fitted to ``min_dist``),

and the embedding minimises the fuzzy-set cross-entropy between w and q by SGD that samples
edges in proportion to w_ij and ``negative_sample_rate`` uniform negatives per edge, the step
decaying linearly from ``learning_rate`` to 0 over ``n_epochs`` (None: 500 below 10,000
points, 200 above), starting from a spectral layout of the graph.

Phases: ``"knn"`` is ``umap.umap_.nearest_neighbors`` (pynndescent, the settings umap-learn
uses for more than 4,096 points); ``"fit"`` is ``umap.UMAP(precomputed_knn=...)``: graph
weights, initialisation and optimisation. Unlike umap-learn below 4,096 points, the kNN is
always approximate, so the graph does not depend on n crossing that threshold.

numba compiles pynndescent's and umap-learn's kernels on their first call in a process,
which takes tens of seconds whatever the data size. That compile is done once per process and
metric on a tiny random array before the timed phases (``_compile_kernels``; its time is
logged), so ``timings_`` measure the algorithm, not the compiler.

Seeding: ``random_state`` is passed to pynndescent and to ``umap.UMAP``; umap-learn then runs
its layout optimisation single-threaded (it overrides ``n_jobs`` to 1 whenever a seed is
given, so that the run reproduces). That is umap-learn's behaviour, kept by default: its "fit"
timings are then single-threaded timings. ``parallel_layout=True`` gives umap-learn no seed, as
its unseeded default call does, so the layout runs on ``n_jobs`` threads; numpy's global
generator, which umap-learn then draws from, is seeded (and restored) for the start and the
layout's seeds, but the threads' lock-free updates race, so such a run does not reproduce
exactly. The kNN search uses ``n_jobs`` threads either way (umap-learn's seeded call would run it
single-threaded); on digits, 1 and 2 threads gave the same embedding.
"""

from __future__ import annotations

import contextlib
import logging
import time
import warnings
from collections.abc import Iterator
from functools import cache

import numpy as np
import umap
from joblib import effective_n_jobs
from pynndescent.distances import named_distances
from sklearn.utils import check_random_state
from umap.umap_ import nearest_neighbors

from baselines._input import check_data
from nebench.errors import InputError
from nebench.method import EmbeddingMethod

log = logging.getLogger(__name__)


@cache
def _compile_kernels(metric: str, n_jobs: int, parallel_layout: bool) -> None:
    """Run the whole pipeline once on 64 random points so numba compiles it outside the timings."""
    t0 = time.perf_counter()
    UMAP(n_epochs=2, metric=metric, parallel_layout=parallel_layout)._embed(
        np.random.default_rng(0).normal(size=(64, 3)).astype(np.float32), n_jobs
    )
    log.info("UMAP: numba compilation took %.1f s (not in timings_)", time.perf_counter() - t0)


@contextlib.contextmanager
def _global_numpy_seed(seed: int | None) -> Iterator[None]:
    """numpy's global generator seeded with ``seed`` inside the block, restored after it (None:
    left alone)."""
    if seed is None:
        yield
        return
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


class UMAP(EmbeddingMethod):
    """umap-learn's UMAP, phases ``"knn"`` (pynndescent) and ``"fit"`` (graph + layout).

    Parameters follow ``umap.UMAP`` (same names, same defaults), and ``parallel_layout``
    (see the module docstring: False, the seeded single-threaded layout; True, umap-learn's
    unseeded multi-threaded one).
    """

    def __init__(
        self,
        n_neighbors: int = 15,
        min_dist: float = 0.1,
        n_epochs: int | None = None,
        init: str = "spectral",
        negative_sample_rate: int = 5,
        learning_rate: float = 1.0,
        metric: str = "euclidean",
        random_state: int = 0,
        n_jobs: int = -1,
        parallel_layout: bool = False,
    ) -> None:
        self.n_neighbors = n_neighbors
        self.min_dist = min_dist
        self.n_epochs = n_epochs
        self.init = init
        self.negative_sample_rate = negative_sample_rate
        self.learning_rate = learning_rate
        self.metric = metric
        self.random_state = random_state
        self.n_jobs = n_jobs
        self.parallel_layout = parallel_layout

    def fit_transform(self, X: np.ndarray) -> np.ndarray:
        """Embed ``X`` (n x d) into 2-D; returns an ``n x 2`` float32 array."""
        if self.metric not in named_distances:
            raise InputError(
                f"UMAP: unknown metric {self.metric!r}: use one pynndescent knows, "
                "e.g. 'euclidean' or 'cosine'."
            )
        if self.n_neighbors < 2:
            raise InputError(f"UMAP: n_neighbors must be >= 2, got {self.n_neighbors}.")
        X = check_data(X, min_samples=self.n_neighbors + 1, method="UMAP")
        n_jobs = effective_n_jobs(self.n_jobs)
        if not isinstance(self.parallel_layout, bool):
            raise InputError(f"UMAP: parallel_layout must be true or false, got {self.parallel_layout!r}.")
        _compile_kernels(self.metric, n_jobs, self.parallel_layout)
        self.embedding_ = self._embed(X, n_jobs)
        log.info("UMAP: timings %s", self.timings_)
        return self.embedding_

    def _embed(self, X: np.ndarray, n_jobs: int) -> np.ndarray:
        self.timings_ = {}
        self.knn_index_ = "pynndescent"

        with self._phase("knn"):
            knn = nearest_neighbors(
                X,
                n_neighbors=self.n_neighbors,
                metric=self.metric,
                metric_kwds={},
                angular=False,
                random_state=check_random_state(self.random_state),
                n_jobs=n_jobs,
            )

        with self._phase("fit"):
            reducer = umap.UMAP(
                n_neighbors=self.n_neighbors,
                min_dist=self.min_dist,
                n_epochs=self.n_epochs,
                init=self.init,
                negative_sample_rate=self.negative_sample_rate,
                learning_rate=self.learning_rate,
                metric=self.metric,
                random_state=None if self.parallel_layout else self.random_state,
                n_jobs=n_jobs,
                precomputed_knn=knn,
            )
            with warnings.catch_warnings(), _global_numpy_seed(self.random_state if self.parallel_layout else None):
                warnings.filterwarnings("ignore", message="n_jobs value", category=UserWarning)
                embedding = reducer.fit_transform(X)
        return np.ascontiguousarray(embedding, dtype=np.float32)
