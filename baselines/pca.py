"""2-D PCA (scikit-learn), a fast linear reference and a cheap stand-in method for harness tests.

Y = (X - mean(X)) V_2, with V_2 the top two right singular vectors of the centred X. There is
no kNN phase: the single ``"fit"`` phase covers the whole run. ``n_jobs`` caps the BLAS threads.
"""

from __future__ import annotations

import numpy as np
from joblib import effective_n_jobs
from sklearn.decomposition import PCA as SklearnPCA
from threadpoolctl import threadpool_limits

from baselines._input import check_data
from nebench.method import EmbeddingMethod


class PCA(EmbeddingMethod):
    """Projection on the top two principal components; phase ``"fit"`` only."""

    def __init__(self, svd_solver: str = "auto", random_state: int = 0, n_jobs: int = -1) -> None:
        self.svd_solver = svd_solver
        self.random_state = random_state
        self.n_jobs = n_jobs

    def fit_transform(self, X: np.ndarray) -> np.ndarray:
        """Embed ``X`` (n x d, d >= 2) into 2-D; returns an ``n x 2`` float32 array."""
        X = check_data(X, min_samples=2, method="PCA")
        self.timings_ = {}
        with self._phase("fit"), threadpool_limits(limits=effective_n_jobs(self.n_jobs)):
            embedding = SklearnPCA(
                n_components=2, svd_solver=self.svd_solver, random_state=self.random_state
            ).fit_transform(X)
        self.embedding_ = np.ascontiguousarray(embedding, dtype=np.float32)
        return self.embedding_
