"""TorchDR's InfoTSNE and UMAP (Van Assel et al., TorchDR, torchdr 0.5) as harness methods.

Both optimise all n points at every iteration (full batch) with SGD, the repulsion estimated
from negatives drawn uniformly over all points (except the point itself) anew at every step
(ALGORITHMS.md sec. 5):

* ``TorchDRInfoTSNE`` (InfoNC-t-SNE, tsne-to-umap-contrastive; ``torchdr.InfoTSNE``): P is
  the entropic affinity of perplexity ``perplexity`` on the 3·perplexity nearest neighbours,
  each row normalised to 1/n (not symmetrised); with q_ij = 1 / (1 + ||y_i - y_j||²),

      L(Y) = -Σ_ij P_ij log q_ij + (1/n) Σ_i log Σ_{j ∈ Neg(i)} q_ij,

  ``n_negatives`` = 300 per point, the positive *not* in the denominator. lr "auto" =
  max(n / exaggeration / 4, 50); ``early_exaggeration_coeff`` 12 on the attraction for the
  first ``early_exaggeration_iter`` = 250 of ``max_iter`` = 1000 iterations with momentum 0.5,
  then a fresh SGD with momentum 0.8. The "LinearLR" scheduler gets torch's default arguments
  (TorchDR passes none): a 5-step warm-up from lr/3, no decay.
* ``TorchDRUMAP`` (McInnes et al., 2018; ``torchdr.UMAP``): P is UMAP's fuzzy-union graph of
  ``n_neighbors`` = 30 neighbours (the point itself counted, as in umap-learn), and with
  q_ij = 1 / (1 + a ||y_i - y_j||^(2b)) (a, b fitted to ``min_dist``, ``spread``)

      L(Y) = -Σ_ij P_ij log q_ij - Σ_i Σ_{j ∈ Neg(i)} log(1 - q_ij),

  through closed-form gradients clipped at ±4 per edge; each edge is active at the iterations
  umap-learn's ``epochs_per_sample`` schedule picks, with ``negative_sample_rate`` = 5 negatives
  per active edge. SGD lr 1.0 without momentum, decayed linearly to 0 over ``max_iter`` = 1000.

Both start from PCA rescaled to std(PC1) = ``init_scaling`` = 1e-4 and stop early when the
gradient norm, checked every 50 iterations, falls below 1e-7. Defaults are TorchDR's own, as
read in torchdr 0.5's source (``InfoTSNE.__init__``, ``UMAP.__init__``).

Phases: TorchDR computes the input affinity inside ``fit_transform``; its
``on_affinity_computation_start/end`` hooks bracket that step, so ``"knn"`` is the kNN search
(faiss, exact flat index by default) with P's calibration and TorchDR's graph bookkeeping, and
``"fit"`` is everything else in ``fit_transform`` (input conversion and TorchDR's duplicate
removal, PCA initialisation, optimisation).

The device is the CPU (TorchDR also runs on CUDA; not wired up here). ``random_state`` goes to
TorchDR, which seeds Python's, NumPy's and torch's global generators when the estimator is
built (here: inside ``fit_transform``); torch's generator is restored afterwards. A run
reproduces for a given seed and ``n_jobs`` (torch and faiss threads).
"""

from __future__ import annotations

import importlib.util
import logging
import time
from typing import ClassVar

import numpy as np
import torch
import torchdr
from joblib import effective_n_jobs
from threadpoolctl import threadpool_limits
from torchdr.distance import LIST_METRICS_FAISS, LIST_METRICS_TORCH

from baselines._input import check_data
from nebench.errors import InputError
from nebench.method import EmbeddingMethod

log = logging.getLogger(__name__)

_METRICS = {"faiss": LIST_METRICS_FAISS, None: LIST_METRICS_TORCH}
_INITS = ("pca", "normal", "random")


class _AffinityTimer:
    """Mixin for a TorchDR estimator: wall time of its input-affinity step in ``affinity_seconds_``."""

    def on_affinity_computation_start(self) -> None:
        self._affinity_t0 = time.perf_counter()
        super().on_affinity_computation_start()

    def on_affinity_computation_end(self) -> None:
        super().on_affinity_computation_end()
        self.affinity_seconds_ = time.perf_counter() - self._affinity_t0


class _TimedInfoTSNE(_AffinityTimer, torchdr.InfoTSNE):
    pass


class _TimedUMAP(_AffinityTimer, torchdr.UMAP):
    pass


class _TorchDRMethod(EmbeddingMethod):
    """Runs one TorchDR estimator on the CPU; subclasses name it and list its parameters."""

    _estimator: ClassVar[type]
    #: constructor arguments passed to the TorchDR estimator under the same name
    _passed: ClassVar[tuple[str, ...]]
    #: the neighbourhood size n must exceed (TorchDR refuses n <= it)
    _neighborhood: ClassVar[str]

    def _check_params(self) -> None:
        name = type(self).__name__
        if self.backend not in _METRICS:
            raise InputError(
                f"{name}: backend={self.backend!r} is not supported on the CPU: use 'faiss' or "
                "null (plain torch)."
            )
        if self.backend == "faiss" and importlib.util.find_spec("faiss") is None:
            raise InputError(
                f"{name}: backend='faiss' needs faiss: pip install faiss-cpu (a dependency of "
                "nebench), or set method.backend=null."
            )
        if self.metric not in _METRICS[self.backend]:
            raise InputError(
                f"{name}: metric={self.metric!r} is not available with backend={self.backend!r}: "
                f"use one of {_METRICS[self.backend]}."
            )
        if self.init not in _INITS:
            raise InputError(f"{name}: unknown init={self.init!r}: use one of {_INITS}.")
        for key, minimum in (
            ("max_iter", 1),
            ("n_neighbors", 2),
            ("n_negatives", 1),
            ("negative_sample_rate", 1),
            ("early_exaggeration_iter", 0),
        ):
            value = getattr(self, key, minimum)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise InputError(
                    f"{name}: {key} must be a whole number >= {minimum}, got {value!r}."
                )
        for key in (
            "perplexity",
            "init_scaling",
            "spread",
            "lr",
            "early_exaggeration_coeff",
            "min_dist",
        ):
            value = getattr(self, key, 1.0)
            ok = (key == "lr" and value == "auto") or (
                isinstance(value, (int, float))
                and not isinstance(value, bool)
                and (value >= 0 if key == "min_dist" else value > 0)
            )
            if not ok:
                raise InputError(
                    f"{name}: {key} must be a number > 0 (min_dist: >= 0), got {value!r}."
                )

    def fit_transform(self, X: np.ndarray) -> np.ndarray:
        """Embed ``X`` (n x d) into 2-D; returns an ``n x 2`` float32 array."""
        self._check_params()
        min_samples = int(getattr(self, self._neighborhood)) + 1
        X = check_data(X, min_samples=min_samples, method=type(self).__name__)
        params = {key: getattr(self, key) for key in self._passed}
        with torch.random.fork_rng(devices=[]), threadpool_limits(effective_n_jobs(self.n_jobs)):
            t0 = time.perf_counter()
            estimator = self._estimator(
                **params, device="cpu", random_state=self.random_state, distributed=False
            )
            embedding = estimator.fit_transform(X)
            total = time.perf_counter() - t0
        knn = estimator.affinity_seconds_
        self.timings_ = {"knn": knn, "fit": total - knn}
        self.n_iter_ = int(estimator.n_iter_) + 1
        log.info("%s: %d iterations, timings %s", type(self).__name__, self.n_iter_, self.timings_)
        self.embedding_ = np.ascontiguousarray(embedding, dtype=np.float32)
        return self.embedding_


class TorchDRInfoTSNE(_TorchDRMethod):
    """``torchdr.InfoTSNE`` with its defaults; phases ``"knn"`` (affinity) and ``"fit"``.

    Parameters follow ``torchdr.InfoTSNE`` (same names, same defaults).
    """

    _estimator = _TimedInfoTSNE
    _neighborhood = "perplexity"
    _passed = (
        "perplexity",
        "max_iter",
        "lr",
        "early_exaggeration_coeff",
        "early_exaggeration_iter",
        "n_negatives",
        "init",
        "init_scaling",
        "metric",
        "backend",
    )

    def __init__(
        self,
        perplexity: float = 30.0,
        max_iter: int = 1000,
        lr: float | str = "auto",
        early_exaggeration_coeff: float = 12.0,
        early_exaggeration_iter: int = 250,
        n_negatives: int = 300,
        init: str = "pca",
        init_scaling: float = 1e-4,
        metric: str = "sqeuclidean",
        backend: str | None = "faiss",
        random_state: int = 0,
        n_jobs: int = -1,
    ) -> None:
        self.perplexity = perplexity
        self.max_iter = max_iter
        self.lr = lr
        self.early_exaggeration_coeff = early_exaggeration_coeff
        self.early_exaggeration_iter = early_exaggeration_iter
        self.n_negatives = n_negatives
        self.init = init
        self.init_scaling = init_scaling
        self.metric = metric
        self.backend = backend
        self.random_state = random_state
        self.n_jobs = n_jobs


class TorchDRUMAP(_TorchDRMethod):
    """``torchdr.UMAP`` with its defaults; phases ``"knn"`` (fuzzy graph) and ``"fit"``.

    Parameters follow ``torchdr.UMAP`` (same names, same defaults).
    """

    _estimator = _TimedUMAP
    _neighborhood = "n_neighbors"
    _passed = (
        "n_neighbors",
        "min_dist",
        "spread",
        "max_iter",
        "lr",
        "negative_sample_rate",
        "init",
        "init_scaling",
        "metric",
        "backend",
    )

    def __init__(
        self,
        n_neighbors: int = 30,
        min_dist: float = 0.1,
        spread: float = 1.0,
        max_iter: int = 1000,
        lr: float = 1.0,
        negative_sample_rate: int = 5,
        init: str = "pca",
        init_scaling: float = 1e-4,
        metric: str = "sqeuclidean",
        backend: str | None = "faiss",
        random_state: int = 0,
        n_jobs: int = -1,
    ) -> None:
        self.n_neighbors = n_neighbors
        self.min_dist = min_dist
        self.spread = spread
        self.max_iter = max_iter
        self.lr = lr
        self.negative_sample_rate = negative_sample_rate
        self.init = init
        self.init_scaling = init_scaling
        self.metric = metric
        self.backend = backend
        self.random_state = random_state
        self.n_jobs = n_jobs
