"""contrastive-ne (cne 0.4.0; Damrich, Böhm, Hamprecht & Kobak, ICLR 2023) as a harness method.

Contrastive neighbor embedding (tsne-to-umap-contrastive; ALGORITHMS.md sec. 1): the positives
are the directed edges (i, j) of the binary symmetric kNN graph, streamed in shuffled batches of
``batch_size`` edges; each head i gets ``negative_samples`` = m negatives drawn uniformly from
the other endpoints of its batch (their positions in the batch drawn once an epoch, cne's
``force_resample=None``). With q_ij = 1 / (1 + ||y_i - y_j||²)
the loss per head is, by ``loss_mode``:

* ``"infonce"`` (InfoNC-t-SNE):  -½ [log q_ij - 4^-s log(q_ij + Σ_{k∈M_i} q_ik)]
  (``"infonce_alt"``: the positive left out of the denominator);
* ``"neg"`` (Neg-t-SNE):  -log q_ij/(q_ij + ν) - Σ_k log(1 - q_ik/(q_ik + ν)),  ν = m Z̄ / n²,
  Z̄ = 100 n (s = 0, t-SNE-like) ... n²/5 (s = 1, UMAP-like), log-linear in s;
* ``"nce"`` (NCVis):  as ``"neg"`` with ν = m Z and log Z learned (lr 1e-3);
* ``"umap"`` (UMAP's loss with a = b = 1):  -log q_ij - Σ_k log(1 - q_ik);

summed over the batch (``loss_aggregation``), each gradient coordinate clipped to ±4, SGD with
the learning rate decayed linearly to 0 over ``n_epochs``. The spectrum is set by one of ``s``,
``Z_bar`` or ``neg_spec`` (= ν); unset, ``"infonce"`` runs at s = 0 and ``"neg"`` at ν = 1.
With ``early_exaggeration`` the first third of the epochs runs at s = max(s, 1) (the InfoNCE
modes, or "neg" with ``s`` set; cne ignores it otherwise).

Defaults are those of ``cne.CNE`` / ``cne.ContrastiveEmbedding`` in cne 0.4.0: k = 15,
200 epochs, batches of 2^15 edges, m = 5, SGD (lr 1.0; parametric: 0.001), sum aggregation,
clipping, early exaggeration on. The ICLR paper's scripts used batches of 1024, 750 epochs and
Adam for the parametric runs (ALGORITHMS.md sec. 1.6).

Phases: ``"knn"`` builds cne's graph exactly as ``CNE.fit`` does when given no graph (Annoy,
euclidean, 50 trees, the k + 1 nearest items of each point minus the first, edges symmetrised
with weight 1; the same graph, assembled in one vectorised step where cne fills a ``lil_matrix``
point by point, so the "knn" time is a lower bound of cne's) and hands it to ``CNE.fit(graph=...)``; ``"fit"`` is the initialisation and
optimisation. The non-parametric start is cne's: the top two PCs (scikit-learn ``PCA``)
rescaled to std(PC1) = ``init_scale`` (1e-4 in cne 0.4.0; the paper's scripts used 1.0). The
PCA is seeded here; cne leaves it unseeded, which matters where scikit-learn picks its
randomized solver (e.g. 500 < n < 10 d), and gives the same start wherever it does not.

``parametric=True`` trains cne's MLP (d-100-100-100-2) on X; ``transform`` then embeds new
points. ``fit_transform(X, X_knn=...)`` (parametric only) builds the graph from the rows of
``X_knn`` and trains the network on X, as the ICLR paper's parametric MNIST runs do (the
network reads the 784 pixels, the graph comes from their PCA-50; ALGORITHMS.md sec. 1.6).
cne 0.4.0 reads n from ``len(init)`` even when the model is parametric (and fails on
``init=None``), so the adapter passes X as ``init`` there; cne uses it for nothing else.

Seeding: ``random_state`` is cne's ``seed`` (edge shuffling, negatives); torch's global
generator is also seeded before the fit, so the parametric network's initial weights, which
cne leaves unseeded, are fixed too, and it is restored afterwards. Annoy keeps its own fixed
default seed (as in cne) but seeds each build thread by its index, so the graph, and the run,
reproduce for a given ``random_state`` and ``n_jobs`` (cne itself builds with all cores). The device is the CPU (cne also runs on CUDA, with an
exact pykeops graph; not wired up here).
"""

from __future__ import annotations

import contextlib
import io
import logging

import cne
import numpy as np
import scipy.sparse as sp
import torch
from annoy import AnnoyIndex
from joblib import effective_n_jobs
from sklearn.decomposition import PCA
from threadpoolctl import threadpool_limits

from baselines._input import check_data
from nebench.errors import InputError
from nebench.method import EmbeddingMethod

log = logging.getLogger(__name__)

_LOSS_MODES = ("infonce", "infonce_alt", "neg", "nce", "umap")
#: the loss modes each spectrum parameter applies to (cne ignores it elsewhere)
_SPECTRUM = {
    "s": ("infonce", "infonce_alt", "neg"),
    "Z_bar": ("neg",),
    "neg_spec": ("neg",),
}
_ANNOY_TREES = 50  # cne's setting (cne/_cne.py, CNE.fit)


def knn_graph(X: np.ndarray, k: int, n_jobs: int, knn: str = "annoy") -> sp.csr_matrix:
    """cne's binary symmetric kNN graph of ``X``, as a CSR matrix: neighbours from Annoy
    (``"annoy"``: euclidean, 50 trees, cne's own search) or exact (``"exact"``:
    :func:`metrics.exact_knn`, the neighbours the engine finds when it probes every cell)."""
    if knn == "exact":
        from metrics.exact_knn import exact_knn

        neighbors = list(exact_knn(X, np.arange(len(X)), k))
    else:
        index = AnnoyIndex(X.shape[1], "euclidean")
        for i, x in enumerate(X):
            index.add_item(i, x)
        index.build(_ANNOY_TREES, n_jobs=n_jobs)
        # the first of the k + 1 results is dropped, as in cne (normally the point itself)
        neighbors = [index.get_nns_by_item(i, k + 1)[1:] for i in range(len(X))]
    rows = np.repeat(np.arange(len(X)), [len(nbrs) for nbrs in neighbors])
    cols = np.concatenate(neighbors)
    A = sp.csr_matrix((np.ones(len(cols)), (rows, cols)), shape=(len(X), len(X)))
    A = A.maximum(A.T).tocsr()
    A.sort_indices()  # cne's edge order (its batches shuffle a fixed edge list)
    return A


class CNE(EmbeddingMethod):
    """cne's contrastive neighbor embedding, phases ``"knn"`` (graph) and ``"fit"``.

    Parameters follow ``cne.CNE`` (same names and defaults), except ``n_neighbors`` (cne: ``k``),
    ``learning_rate="auto"`` (cne's rule: 1.0, parametric 0.001), ``init_scale`` (the std of
    PC1 in cne's PCA initialisation) and ``random_state`` (cne: ``seed``).
    """

    def __init__(
        self,
        loss_mode: str = "infonce",
        parametric: bool = False,
        n_neighbors: int = 15,
        n_epochs: int = 200,
        batch_size: int = 32768,
        negative_samples: int = 5,
        learning_rate: float | str = "auto",
        optimizer: str = "sgd",
        s: float | None = None,
        Z_bar: float | None = None,
        neg_spec: float | None = None,
        early_exaggeration: bool = True,
        loss_aggregation: str = "sum",
        clip_grad: bool = True,
        clamp_low: float | str = "auto",
        init_scale: float = 1e-4,
        knn: str = "annoy",
        random_state: int = 0,
        n_jobs: int = -1,
    ) -> None:
        self.loss_mode = loss_mode
        self.knn = knn
        self.parametric = parametric
        self.n_neighbors = n_neighbors
        self.n_epochs = n_epochs
        self.batch_size = batch_size
        self.negative_samples = negative_samples
        self.learning_rate = learning_rate
        self.optimizer = optimizer
        self.s = s
        self.Z_bar = Z_bar
        self.neg_spec = neg_spec
        self.early_exaggeration = early_exaggeration
        self.loss_aggregation = loss_aggregation
        self.clip_grad = clip_grad
        self.clamp_low = clamp_low
        self.init_scale = init_scale
        self.random_state = random_state
        self.n_jobs = n_jobs

    def _check_params(self) -> None:
        for name, allowed in (
            ("loss_mode", _LOSS_MODES),
            ("optimizer", ("sgd", "adam")),
            ("knn", ("annoy", "exact")),
            ("loss_aggregation", ("sum", "mean")),
        ):
            if getattr(self, name) not in allowed:
                raise InputError(
                    f"CNE: unknown {name}={getattr(self, name)!r}: use one of {allowed}."
                )
        for name in ("n_neighbors", "n_epochs", "batch_size", "negative_samples"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"CNE: {name} must be a whole number >= 1, got {value!r}.")
        for name in ("learning_rate", "clamp_low", "init_scale"):
            value = getattr(self, name)
            if not (name in ("learning_rate", "clamp_low") and value == "auto") and not (
                isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0
            ):
                raise InputError(f"CNE: {name} must be a number > 0, got {value!r}.")
        spectrum = [name for name in _SPECTRUM if getattr(self, name) is not None]
        if len(spectrum) > 1:
            raise InputError(
                f"CNE: {' and '.join(spectrum)} are all set, but each places the run on the "
                "spectrum: keep one of them and set the others to null."
            )
        if spectrum and self.loss_mode not in _SPECTRUM[spectrum[0]]:
            raise InputError(
                f"CNE: {spectrum[0]} has no effect with loss_mode={self.loss_mode!r}; use "
                f"loss_mode in {_SPECTRUM[spectrum[0]]} or set {spectrum[0]}=null."
            )

    def _cne_kwargs(self) -> dict:
        kwargs = {
            "loss_mode": self.loss_mode,
            "n_epochs": self.n_epochs,
            "batch_size": self.batch_size,
            "negative_samples": self.negative_samples,
            "optimizer": self.optimizer,
            "early_exaggeration": self.early_exaggeration,
            "loss_aggregation": self.loss_aggregation,
            "clip_grad": self.clip_grad,
            "clamp_low": self.clamp_low,
            "print_freq_epoch": None,
            "device": "cpu",
        }
        if self.learning_rate != "auto":
            kwargs["learning_rate"] = self.learning_rate
        kwargs.update(
            {name: getattr(self, name) for name in _SPECTRUM if getattr(self, name) is not None}
        )
        return kwargs

    def fit_transform(self, X: np.ndarray, X_knn: np.ndarray | None = None) -> np.ndarray:
        """Embed ``X`` (n x d) into 2-D; returns an ``n x 2`` float32 array. With ``X_knn``
        (parametric only; one row per row of X) the graph comes from ``X_knn``'s rows."""
        self._check_params()
        X = check_data(X, min_samples=self.n_neighbors + 1, method="CNE")
        X_knn = X if X_knn is None else self._check_knn_rows(X, X_knn)
        n_jobs = effective_n_jobs(self.n_jobs)
        self.n_features_in_ = X.shape[1]
        self.timings_ = {}
        self.knn_index_ = {"annoy": "Annoy", "exact": "exact"}[self.knn]

        with self._phase("knn"):
            graph = knn_graph(X_knn, self.n_neighbors, n_jobs, self.knn)

        printed = io.StringIO()  # cne prints its warnings; they go to the log instead
        with (
            self._phase("fit"),
            threadpool_limits(n_jobs),
            torch.random.fork_rng(devices=[]),
            contextlib.redirect_stdout(printed),
        ):
            torch.manual_seed(self.random_state)
            if self.parametric:
                init = X  # cne 0.4.0 takes n from len(init) (see the module docstring)
            else:
                pca = PCA(n_components=2, random_state=self.random_state)
                init = cne.rescale(pca.fit_transform(X), target_std=self.init_scale)
            self.cne_ = cne.CNE(
                k=self.n_neighbors,
                parametric=self.parametric,
                seed=self.random_state,
                data_on_gpu=False,
                **self._cne_kwargs(),
            )
            self.cne_.fit(X, init=init, graph=graph)
            embedding = self.cne_.transform(X, fit_transform=True)
        if printed.getvalue().strip():
            log.info("CNE (cne output): %s", printed.getvalue().strip())
        last = self.cne_.cne.losses[-1]
        log.info("CNE: final epoch loss %.4g, timings %s", sum(last) / len(last), self.timings_)
        self.embedding_ = np.ascontiguousarray(embedding, dtype=np.float32)
        return self.embedding_

    def _check_knn_rows(self, X: np.ndarray, X_knn: np.ndarray) -> np.ndarray:
        if not self.parametric:
            raise InputError(
                "CNE: X_knn needs parametric=True: free positions read the data only through the "
                "kNN graph (and the PCA start), so fit on the rows the graph should come from."
            )
        X_knn = check_data(X_knn, min_samples=self.n_neighbors + 1, method="CNE")
        if len(X_knn) != len(X):
            raise InputError(
                f"CNE: X_knn has {len(X_knn)} rows and X {len(X)}: give one row of each per "
                "point, in the same order."
            )
        return X_knn

    def transform(self, X: np.ndarray) -> np.ndarray:
        """Embed new points with the trained network (``parametric=True`` only)."""
        if not self.parametric or not hasattr(self, "cne_"):
            raise InputError(
                "CNE.transform needs a fitted parametric model: set parametric=true and call "
                "fit_transform first."
            )
        X = check_data(X, min_samples=1, method="CNE")
        if X.shape[1] != self.n_features_in_:
            raise InputError(
                f"CNE.transform got {X.shape[1]} features, but the model was trained on "
                f"{self.n_features_in_}: pass points with the training data's features."
            )
        with torch.no_grad(), threadpool_limits(effective_n_jobs(self.n_jobs)):
            return np.ascontiguousarray(self.cne_.transform(X), dtype=np.float32)
