"""openTSNE (Poličar, Stražar & Zupan, J. Stat. Softw. 109(3), 2024) as a harness method.

t-SNE (van der Maaten & Hinton, 2008) minimises KL(P || Q) over the embedding Y, with

    p_j|i ∝ exp(-||x_i - x_j||² / 2σ_i²) over the 3·perplexity nearest neighbours of i,
    σ_i set so that the perplexity of p_.|i equals ``perplexity``,
    p_ij = (p_j|i + p_i|j) / 2n,
    q_ij ∝ (1 + ||y_i - y_j||² / dof)^(-dof)      (dof = 1: Cauchy; Kobak et al., 2019),

by gradient descent with momentum and gains, the repulsion approximated by Barnes-Hut
(n < 10,000) or FFT interpolation (FIt-SNE, Linderman et al., 2019).

The run reproduces ``openTSNE.TSNE().fit(X)`` of openTSNE 1.0.4 with its defaults, built from
openTSNE's own pieces so the two phases are timed apart:

* ``"knn"``: ``openTSNE.affinity.PerplexityBasedNN`` (perplexity 30, ``method="auto"``: exact
  kNN below 1,000 points, Annoy above; euclidean). ``TSNE.fit`` calls ``MultiscaleMixture``
  with the single perplexity, which gives the same P (both call ``joint_probabilities_nn``
  on the same 3·perplexity neighbours); they differ only when n <= 3·perplexity, where each
  lowers the perplexity by its own rule.
* ``"fit"``: PCA initialisation (``openTSNE.initialization.pca``: top two PCs rescaled to
  std 1e-4 plus a little jitter), then ``TSNEEmbedding.optimize`` for 250 iterations of
  early exaggeration 12 (``"auto"`` = max(12, exaggeration)), then 500 iterations at
  ``exaggeration`` (None = 1). Momentum 0.8 in both phases, ``theta`` 0.5, 3 interpolation
  points, at least 50 intervals, ``max_step_norm`` 5: openTSNE's defaults, left untouched.
  ``learning_rate="auto"`` is n / exaggeration of each phase (Belkina et al., 2019), i.e.
  n/12 during early exaggeration and n afterwards.

``random_state`` seeds the Annoy index, the PCA and its jitter, as ``TSNE.fit`` does: a run
reproduces exactly for a given seed and ``n_jobs`` (checked on digits), but a different thread
count gives a (slightly) different embedding.
"""

from __future__ import annotations

import logging

import numpy as np
from joblib import effective_n_jobs
from openTSNE.affinity import PerplexityBasedNN
from openTSNE.initialization import pca, random, spectral
from openTSNE.tsne import TSNEEmbedding

from baselines._input import check_data
from nebench.errors import InputError
from nebench.method import EmbeddingMethod

log = logging.getLogger(__name__)

_NEIGHBORS = ("auto", "exact", "approx", "annoy", "pynndescent", "hnsw")
_GRADIENT_METHODS = ("auto", "bh", "BH", "barnes-hut", "fft", "FFT", "interpolation")
_INITIALIZATIONS = ("pca", "spectral", "random")


class OpenTSNE(EmbeddingMethod):
    """openTSNE's default t-SNE, phases ``"knn"`` (affinities) and ``"fit"`` (init + optimisation).

    Parameters follow ``openTSNE.TSNE`` (same names, same defaults), except ``n_jobs``: -1 (all
    cores, as every method of the harness uses them) where openTSNE's default is 1 thread.
    """

    def __init__(
        self,
        perplexity: float = 30.0,
        n_iter: int = 500,
        early_exaggeration_iter: int = 250,
        early_exaggeration: float | str = "auto",
        exaggeration: float | None = None,
        learning_rate: float | str = "auto",
        initialization: str = "pca",
        neighbors: str = "auto",
        negative_gradient_method: str = "auto",
        dof: float = 1.0,
        metric: str = "euclidean",
        random_state: int = 0,
        n_jobs: int = -1,
    ) -> None:
        self.perplexity = perplexity
        self.n_iter = n_iter
        self.early_exaggeration_iter = early_exaggeration_iter
        self.early_exaggeration = early_exaggeration
        self.exaggeration = exaggeration
        self.learning_rate = learning_rate
        self.initialization = initialization
        self.neighbors = neighbors
        self.negative_gradient_method = negative_gradient_method
        self.dof = dof
        self.metric = metric
        self.random_state = random_state
        self.n_jobs = n_jobs

    def _check_params(self) -> None:
        for name, allowed in (
            ("initialization", _INITIALIZATIONS),
            ("neighbors", _NEIGHBORS),
            ("negative_gradient_method", _GRADIENT_METHODS),
        ):
            if getattr(self, name) not in allowed:
                raise InputError(
                    f"OpenTSNE: unknown {name}={getattr(self, name)!r}: use one of {allowed}."
                )
        if self.perplexity <= 0:
            raise InputError(f"OpenTSNE: perplexity must be > 0, got {self.perplexity}.")

    def _initial_positions(self, X: np.ndarray, affinities: PerplexityBasedNN) -> np.ndarray:
        if self.initialization == "pca":
            return pca(X, 2, random_state=self.random_state)
        if self.initialization == "spectral":
            return spectral(affinities.P, 2, random_state=self.random_state)
        return random(X.shape[0], 2, random_state=self.random_state)

    def fit_transform(self, X: np.ndarray) -> np.ndarray:
        """Embed ``X`` (n x d) into 2-D; returns an ``n x 2`` float32 array."""
        self._check_params()
        X = check_data(X, min_samples=2, method="OpenTSNE")
        n_jobs = effective_n_jobs(self.n_jobs)
        self.timings_ = {}

        with self._phase("knn"):
            affinities = PerplexityBasedNN(
                X,
                perplexity=self.perplexity,
                method=self.neighbors,
                metric=self.metric,
                n_jobs=n_jobs,
                random_state=self.random_state,
            )
        self.knn_index_ = type(affinities.knn_index).__name__

        with self._phase("fit"):
            embedding = TSNEEmbedding(
                self._initial_positions(X, affinities),
                affinities,
                learning_rate=self.learning_rate,
                dof=self.dof,
                negative_gradient_method=self.negative_gradient_method,
                n_jobs=n_jobs,
                random_state=self.random_state,
            )
            early_exaggeration = self.early_exaggeration
            if early_exaggeration == "auto":
                early_exaggeration = 12 if self.exaggeration is None else max(12, self.exaggeration)
            self.early_exaggeration_ = early_exaggeration
            embedding.optimize(
                self.early_exaggeration_iter, exaggeration=early_exaggeration, inplace=True
            )
            embedding.optimize(self.n_iter, exaggeration=self.exaggeration, inplace=True)

        log.info("OpenTSNE: KL divergence %.4f, timings %s", embedding.kl_divergence, self.timings_)
        self.kl_divergence_ = float(embedding.kl_divergence)
        self.embedding_ = np.ascontiguousarray(embedding, dtype=np.float32)
        return self.embedding_
