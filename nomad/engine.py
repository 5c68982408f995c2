"""The engine shared by NOMAD and the contrastive family: index -> init -> sharded SGD.

A concrete method only says which loss it optimises (``_make_loss``) and its defaults;
the kNN index, the p(j|i) weights, the PCA initialisation, the noise and cell-mean
sampling, the optimiser, the schedule and the devices are all here. The flat constructor
parameters are resolved at fit time into the checked option groups of :mod:`nomad.options`,
and each trainer (heads, edges, parametric on heads or on edges) is given its own.
"""

from __future__ import annotations

import inspect
import logging
import math
from typing import ClassVar

import numpy as np
import torch
from sklearn.base import BaseEstimator

from . import distributed
from .affinities import p_ji
from .base import EmbeddingMethod
from .checks import check_data
from .errors import InputError
from .index import CellIndex, auto_n_cells, build_index, precomputed_index
from .losses import ContrastiveLoss
from .optimize import Comm, Shard, TrainSpec, train_shard
from .options import (
    EDGE_TRAINERS,
    EdgesOptions,
    EngineOptions,
    IndexOptions,
    ParametricEdgesOptions,
    ParametricOptions,
    resolve,
)
from .options import check_number as _check_number

log = logging.getLogger(__name__)

def pca_init(X: np.ndarray, scale: float, seed: int) -> np.ndarray:
    """First two principal components, rescaled so that std(PC1) = ``scale``.

    PCA initialisation improves global structure (nomad-projection sec. 3.4, citing
    Wang et al.). The engine's ``init_scale`` default is 1.0 (std of PC1 = 1); openTSNE and
    TorchDR start at std(PC1) = 1e-4, which ``init_scale=1e-4`` reproduces. The NOMAD reference
    code whitens instead (U without S: both axes at std 1e-4, ALGORITHMS.md 2.1), stretching the
    second axis to the first; the PC2/PC1 ratio is kept here.
    """
    from sklearn.decomposition import PCA

    n = len(X)
    rows = np.sort(np.random.default_rng(seed).choice(n, 100_000, replace=False)) if n > 100_000 else None
    pca = PCA(2, svd_solver="randomized", random_state=seed).fit(X if rows is None else X[rows])
    Y = np.empty((n, 2), dtype=np.float32)
    for lo in range(0, n, 1 << 18):
        Y[lo:lo + (1 << 18)] = pca.transform(np.asarray(X[lo:lo + (1 << 18)], dtype=np.float32))
    std = float(Y[:, 0].std()) or 1.0
    return Y * np.float32(scale / std)


def assign_cells_to_devices(cell_sizes: np.ndarray, world_size: int) -> np.ndarray:
    """Greedy balancing: largest cell first onto the least-loaded device."""
    load = np.zeros(world_size, dtype=np.int64)
    owner = np.empty(len(cell_sizes), dtype=np.int64)
    for c in np.argsort(-cell_sizes, kind="stable"):
        r = int(np.argmin(load))
        owner[c] = r
        load[r] += cell_sizes[c]
    return owner


def make_shards(index: CellIndex, Y0: np.ndarray, world_size: int) -> list[Shard]:
    """Split points by device, each device's points contiguous and sorted by cell."""
    sizes = index.cell_sizes()
    if world_size > len(sizes):
        raise InputError(f"{world_size} devices but only {len(sizes)} cells: set method.n_cells >= "
                         f"{world_size} (cells are the unit of sharding)")
    owner = assign_cells_to_devices(sizes, world_size)
    point_rank = owner[index.labels]
    order = np.lexsort((index.labels, point_rank))
    pos = np.empty_like(order)
    pos[order] = np.arange(len(order))
    bounds = np.searchsorted(point_rank[order], np.arange(world_size + 1))
    shards = []
    for r in range(world_size):
        rows = order[bounds[r]:bounds[r + 1]]
        shards.append(Shard(rank=r, rows=rows, Y0=Y0[rows], neighbors=pos[index.neighbors[rows]] - bounds[r],
                            cell=index.labels[rows], cell_sizes=sizes, cell_rank=owner,
                            n_total=len(order)))
    return shards


def resolve_seed(random_state) -> int:
    """The integer seed of a run: ``random_state`` itself, or one drawn from it (a
    ``np.random.RandomState``) or from fresh entropy (``None``), as scikit-learn allows."""
    if isinstance(random_state, (int, np.integer)) and not isinstance(random_state, bool):
        if random_state < 0:
            raise InputError(f"random_state={random_state} is negative: give a seed >= 0 or None")
        return int(random_state)
    if random_state is None or isinstance(random_state, np.random.RandomState):
        from sklearn.utils import check_random_state

        return int(check_random_state(random_state).randint(2**31 - 1))
    raise InputError(f"random_state={random_state!r} is invalid: give an integer seed, None or a "
                     "numpy RandomState")


class ContrastiveEmbedding(EmbeddingMethod, BaseEstimator):
    """Contrastive neighbour embedding on NOMAD's cell index (shared engine).

    A scikit-learn estimator: ``fit(X)`` returns the model with ``embedding_``,
    ``fit_transform(X)`` the embedding, ``transform(X_new)`` places new points into the fitted
    map, ``optimize(n_epochs)`` continues training; ``get_params``/``set_params``/``clone`` see
    every parameter below; a fitted model pickles. "auto" values are resolved at fit time
    and recorded: ``random_state_``, ``learning_rate_``, ``batch_size_``, ``noise_samples_``.

    The parameters are flat keywords (scikit-learn, openTSNE, umap-learn); the defaults in the
    signatures (this one and a method's own, e.g. :class:`~nomad.methods.NOMAD`) are the only
    place each is written (the harness builds its Hydra config from them). At fit time they are
    resolved into frozen, self-checking groups (:mod:`nomad.options`; ``options()`` returns
    them, ``options_`` keeps the fitted ones) and each trainer gets its own: an option only
    another trainer reads, set away from its default, fails with one
    :class:`~nomad.errors.InputError` naming it and the fix (``graph`` with
    ``sampling="heads"``, ``hidden`` with ``parametric=False``, ...).

    Index (:class:`~nomad.options.IndexOptions`), the kNN graph and its weights:
        n_neighbors: k of the kNN graph.
        p_model: "inverse_rank" (nomad-projection eq. 6) or "uniform" (binary kNN graph).
        metric: "euclidean" or "inner_product" (unit-norm data only).
        knn: where the kNN graph comes from: "cells" (the index's cells, ``n_probe`` of
            them searched exactly), "faiss_ivf" (faiss's IVF index over all points,
            ``ivf_nprobe`` of its 4 sqrt(n) lists searched; one device only) or "auto":
            faiss_ivf on one device (at 70k higher recall in a third of the time; at 1M
            mnist1m the same fit time, while the own-cell graph splits the map into its cells,
            README "kNN indexes"), cells on several devices.
        n_probe: with knn="cells", kNN candidates come from the own cell (1, the paper) or
            also the n_probe - 1 nearest cells (higher recall; one device only, since
            neighbours may then cross devices); "auto" = 3 on one device (NP@10 +0.02-0.03 on
            MNIST and arXiv, README), else 1.
        ivf_nprobe: with knn="faiss_ivf", the IVF lists searched per point.
        n_cells: K-means cells ("auto" = one per ``cell_size`` points); cell_size;
            max_cell_size: the bound cells are split to ("auto" = 2 * n / n_cells). Cells are
            also the unit of sharding over devices.
        cache_dir: where the index is cached (None: no cache).

    Noise (:class:`~nomad.options.NoiseOptions`), the repulsive term:
        n_noise: |M|, the number of noise samples per head in the objective (the
            repulsion strength; m in tsne-to-umap-contrastive; per edge with edge sampling).
        noise: "uniform" over the head's noise domain D (all points without approximation,
            eq. 2) or "batch_neighbors": drawn from the pool of the batch's positives (the
            reference code); each of the S draws stands for |M| p(m in D) / S samples.
        The trainers that draw heads (heads, parametric on heads) also read:
        noise_samples: S, noise points actually drawn per head to estimate it
            ("auto" = min(|M|, 32)); each stands for |M| p(m in D) / S samples. The sum is
            estimated without bias, the loss's log of it is not, so S is part of the
            objective (eq. 2 at S = |M|); a draw may be the head itself, as in the reference.
        noise_group: G, heads that share one draw of the S noise points (each head's
            estimate of the noise sum stays unbiased; a group's forces on a noise point are summed before they
            are scattered, so the compiled CPU epoch gathers and scatters G times less).
        approximate: which cells enter as cell means ("none", "remote", "others"; None = the
            method's own: "remote" for NOMAD, "none" for the others).
        mean_refresh: "epoch" (paper, Figure 2) or "step" (reference code); mean_weight:
            "paper" (|M| p(m in r), eq. 4) or "reference" (1 per mean, the code). Both need
            cell means (approximate other than "none").

    Schedule (:class:`~nomad.options.ScheduleOptions`), the optimisation:
        n_epochs: passes over the n heads (over the edges with edge sampling).
        learning_rate: "auto" = ``lr_scale`` n for mean aggregation, 1.0 for sum aggregation
            (cne), 1e-3 (Adam) for the parametric trainers.
        lr_scale: the "auto" rate of mean aggregation over n (the reference code's name);
            0.1 = n/10, nomad-projection sec. 3.4 (NOMAD: 0.2, see its docstring).
        batch_size: heads per step over all devices ("auto" = ceil(n/10): each head
            occurrence then takes a step of 10 lr_scale, a unit step at n/10 as in cne); edges per
            step with ``sampling="edges"``, free or parametric ("auto" = 1024, cne's ICLR-paper batch).
        aggregation: "mean" (paper) or "sum" (cne) of the loss over a batch (for an encoder,
            Adam sees the two alike but for ``clip_grad``).
        momentum, lr_schedule ("linear" to 0, "reference": flat then linear, "constant"),
        lr_decay_start: SGD settings; the reference code uses momentum 0.8 and "reference".
        early_exaggeration, early_exaggeration_epochs, late_exaggeration,
        late_exaggeration_time: attraction multipliers (1 = off; t-SNE's early exaggeration).
        spectrum_exaggeration_epochs: cne's early exaggeration (cne.py:441-459,
            ALGORITHMS.md 1.5): the first that many epochs optimise the loss at the spectrum
            point s_early = max(s, 1), the UMAP-like end (InfoNCE: repulsion x 4^-1 at s <= 1;
            Neg-t-SNE: Z-bar = n^2 / m, nu = 1; with ``z_bar`` given, Z-bar = max(z_bar, n^2 / m)),
            then the target; one learning-rate schedule spans all epochs and the optimiser is
            not reset (as in cne). 0 = off. Only for losses with a spectrum parameter (nomad,
            infonc_tsne, neg_tsne); ncvis and umap_loss refuse it (cne applies it to neither).
        clip_grad: clip each gradient coordinate (cne, UMAP: 4): for free positions, of the
            batch's summed gradient, before the 1/B of mean aggregation (which the step size
            carries); for an encoder, of its parameters' gradient of the aggregated loss. The
            two agree under sum aggregation.

    Init (:class:`~nomad.options.InitOptions`):
        init: "pca", or an (n, 2) array of starting positions (used as given);
        init_scale: std of PC1 after rescaling ("pca" only).

    Trainer: ``sampling`` and ``parametric`` pick one of four, each with its own group:
        sampling: "heads" (NOMAD: draw heads, each brings its k neighbours;
            :class:`~nomad.options.HeadsOptions`, no options of its own; the one trainer for
            several devices) or "edges" (UMAP, cne: each epoch walks the edges of the symmetric
            kNN graph, each taken with probability mu_ij; one device, exact noise; see
            :mod:`nomad.edges`).
        parametric: train an MLP encoder with Adam instead of free positions, on the heads or
            edges ``sampling`` names (:class:`~nomad.options.ParametricOptions`,
            :class:`~nomad.options.ParametricEdgesOptions`: cne's parametric mode);
            ``transform`` then embeds new points.
        Edges (:class:`~nomad.options.EdgesOptions`): graph: "binary" (cne) or "umap" (UMAP's
            fuzzy simplicial set); push_noise: negatives are pushed too (cne; heads and the
            encoder always push theirs); correct_repulsion: umap-true-loss eq. 18;
            loss_log_every / loss_log_pairs: purported, effective and actual UMAP losses after
            the first epoch and every that many epochs, in ``loss_log_``; all-pair sums exact up to that many pairs
            (correct_repulsion and the log: UMAP's loss only).
        Parametric: hidden: the encoder's layer widths; on edges also ``graph``.

    Devices (:class:`~nomad.options.DeviceOptions`):
        accelerator ("cpu"/"cuda"/"auto"), devices: where to train; devices > 1 runs one
            process per device (NOMAD, heads trainer, knn="cells" with n_probe=1).

    The run (no group):
        callbacks: a callable or a list of them, each called after every epoch as
            ``callback(epoch, loss, embedding)`` (embedding: (n, 2), input order; loss: the
            epoch's first batch's mean per head); one returning True stops training (openTSNE's
            convention). One device only.
        random_state: an integer seed, None (fresh entropy) or a numpy RandomState.
        verbose: tqdm bars and log lines for the index build, the kNN search and the epochs
            (with the current loss).
    """

    accelerators: ClassVar[tuple[str, ...]] = ("cpu", "cuda")
    multi_device: ClassVar[bool] = False
    transforms_new_points: ClassVar[bool] = True  # encoder, or openTSNE-style placement
    _default_approximate: ClassVar[str] = "none"

    def __init__(
        self,
        n_neighbors: int = 15,
        p_model: str = "inverse_rank",
        n_noise: float = 5,
        noise_samples: int | str = "auto",
        noise_group: int = 1,
        n_epochs: int = 500,
        learning_rate: float | str = "auto",
        lr_scale: float = 0.1,
        batch_size: int | str = "auto",
        aggregation: str = "mean",
        momentum: float = 0.0,
        lr_schedule: str = "linear",
        lr_decay_start: float = 0.3,
        early_exaggeration: float = 1.0,
        early_exaggeration_epochs: int = 0,
        spectrum_exaggeration_epochs: int = 0,
        late_exaggeration: float = 1.0,
        late_exaggeration_time: float = 1.0,
        clip_grad: float | None = None,
        init: str | np.ndarray = "pca",
        init_scale: float = 1.0,
        n_cells: int | str = "auto",
        cell_size: int = 8192,
        max_cell_size: int | str = "auto",
        n_probe: int | str = "auto",
        knn: str = "auto",
        ivf_nprobe: int = 10,
        approximate: str | None = None,
        mean_refresh: str = "epoch",
        mean_weight: str = "paper",
        noise: str = "uniform",
        metric: str = "euclidean",
        accelerator: str = "auto",
        devices: int = 1,
        cache_dir: str | None = None,
        parametric: bool = False,
        hidden: tuple[int, ...] | list[int] = (100, 100, 100),
        sampling: str = "heads",
        graph: str = "binary",
        push_noise: bool = True,
        correct_repulsion: bool = False,
        loss_log_every: int = 0,
        loss_log_pairs: int = 10**8,
        callbacks=None,
        random_state: int | np.random.RandomState | None = 0,
        verbose: bool = False,
    ):
        self.n_neighbors = n_neighbors
        self.p_model = p_model
        self.n_noise = n_noise
        self.noise_samples = noise_samples
        self.noise_group = noise_group
        self.n_epochs = n_epochs
        self.learning_rate = learning_rate
        self.lr_scale = lr_scale
        self.batch_size = batch_size
        self.aggregation = aggregation
        self.momentum = momentum
        self.lr_schedule = lr_schedule
        self.lr_decay_start = lr_decay_start
        self.early_exaggeration = early_exaggeration
        self.early_exaggeration_epochs = early_exaggeration_epochs
        self.spectrum_exaggeration_epochs = spectrum_exaggeration_epochs
        self.late_exaggeration = late_exaggeration
        self.late_exaggeration_time = late_exaggeration_time
        self.clip_grad = clip_grad
        self.init = init
        self.init_scale = init_scale
        self.n_cells = n_cells
        self.cell_size = cell_size
        self.max_cell_size = max_cell_size
        self.n_probe = n_probe
        self.knn = knn
        self.ivf_nprobe = ivf_nprobe
        self.approximate = approximate
        self.mean_refresh = mean_refresh
        self.mean_weight = mean_weight
        self.noise = noise
        self.metric = metric
        self.accelerator = accelerator
        self.devices = devices
        self.cache_dir = cache_dir
        self.parametric = parametric
        self.hidden = hidden
        self.sampling = sampling
        self.graph = graph
        self.push_noise = push_noise
        self.correct_repulsion = correct_repulsion
        self.loss_log_every = loss_log_every
        self.loss_log_pairs = loss_log_pairs
        self.callbacks = callbacks
        self.random_state = random_state
        self.verbose = verbose

    @classmethod
    def _get_param_names(cls) -> list[str]:
        """Every keyword of every ``__init__`` up the class tree: a method's own (``s``,
        ``min_dist``) and the engine's it passes on through ``**kwargs`` (scikit-learn reads
        only the class's own signature, which would lose the engine's to ``clone``)."""
        names: set[str] = set()
        for klass in cls.__mro__:
            init = klass.__dict__.get("__init__")
            if init is None or klass is object:
                continue
            names.update(name for name, p in inspect.signature(init).parameters.items()
                         if name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL))
        return sorted(names)

    # -- what subclasses vary ---------------------------------------------------------------
    def _make_loss(self, n: int) -> ContrastiveLoss:  # pragma: no cover - interface
        raise NotImplementedError

    # -- the options, grouped and checked --------------------------------------------------------
    @classmethod
    def default_params(cls) -> dict:
        """Every constructor parameter with its default, the one place each is written: the
        most derived ``__init__`` that names it (``NOMAD(n_neighbors=8)`` over the engine's
        15), in the engine's order, then a method's own (``s``, ``min_dist``). The harness's
        Hydra config of a method is built from this."""
        defaults: dict = {}
        for klass in reversed(cls.__mro__):
            init = klass.__dict__.get("__init__")
            if init is None or klass is object:
                continue
            for name, p in inspect.signature(init).parameters.items():
                if name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
                    defaults[name] = p.default
        return defaults

    def options(self) -> EngineOptions:
        """The parameters resolved into their checked groups (:mod:`nomad.options`: index,
        noise, schedule, init, the trainer's variant, devices); an invalid value or combination
        raises one :class:`~nomad.errors.InputError` naming the option, why, and the fix. ``fit``
        records what it used as ``options_``."""
        options = resolve(self.get_params(deep=False), type(self).default_params(), method=type(self).__name__,
                          multi_device=self.multi_device, default_approximate=self._default_approximate)
        if self.callbacks is not None and not all(callable(cb) for cb in self._callback_list()):
            raise InputError("callbacks must be a callable or a list of callables "
                             "callback(epoch, loss, embedding)")
        return options

    def _check_data(self, X: np.ndarray, index: IndexOptions) -> None:
        check_data(X, min_points=index.n_neighbors + 1)
        if index.metric == "inner_product":
            norms = np.linalg.norm(np.asarray(X[:1000], dtype=np.float32), axis=1)
            if not np.allclose(norms, 1.0, atol=1e-2):
                raise InputError("metric='inner_product' needs unit-norm rows: set dataset.l2_normalize=true "
                                 "or use method.metric=euclidean")

    def _check_knn_rows(self, X: np.ndarray, X_knn: np.ndarray, knn_graph, index: IndexOptions) -> None:
        """``fit``'s checks when the graph comes from ``X_knn`` and the encoder reads X."""
        if knn_graph is not None:
            raise InputError("give knn_graph (a graph computed elsewhere) or X_knn (rows to search it "
                             "in), not both")
        if not self.parametric:
            raise InputError("X_knn needs parametric=True: free positions read the data only through "
                             "the kNN graph (and the PCA start), so fit on the rows the graph should "
                             "come from")
        check_data(X, min_points=index.n_neighbors + 1)
        self._check_data(X_knn, index)
        if len(X_knn) != len(X):
            raise InputError(f"X_knn has {len(X_knn)} rows and X {len(X)}: give one row of each per "
                             "point, in the same order")

    def _resolve_accelerator(self, options: EngineOptions) -> str:
        accelerator, devices = options.devices.accelerator, options.devices.devices
        if accelerator == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        if accelerator == "cuda" and torch.cuda.device_count() < devices:
            raise InputError(f"asked for {devices} CUDA devices but {torch.cuda.device_count()} are "
                             "visible: use accelerator='cpu' with devices=N for CPU processes")
        return accelerator

    # -- the pipeline ---------------------------------------------------------------------------
    def fit(self, X: np.ndarray, y=None, *, knn_graph=None, X_knn=None) -> ContrastiveEmbedding:
        """Embed X: kNN graph -> initial positions -> ``n_epochs`` of SGD; returns ``self``
        with ``embedding_`` (n, 2), rows in input order.

        ``knn_graph`` skips the search: ``(indices, distances)`` of shape (n, >= k) in
        ascending distance, or a sparse (n, n) matrix of distances with at least k stored
        entries a row; entries of a point to itself are dropped, the k nearest others kept.
        ``X_knn`` (parametric models only): the rows the graph is searched in, row i
        describing the same point as ``X[i]``, when the encoder reads other features than the
        graph comes from. The ICLR paper's parametric runs do so: the network reads MNIST's
        784 pixels, the kNN graph comes from their PCA-50 (tsne-to-umap-contrastive; cne's
        ``fit(X, graph=...)``). ``transform`` then takes rows like X's.
        ``y`` is ignored (scikit-learn's signature)."""
        options = self.options()
        if X_knn is not None:
            self._check_knn_rows(X, X_knn, knn_graph, options.index)
        else:
            self._check_data(X, options.index)
        self._resolve_accelerator(options)  # asking for absent GPUs fails before the index is built
        n = len(X)
        if knn_graph is not None and options.devices.devices > 1:
            raise InputError("a precomputed knn_graph may link any two points, but several devices need "
                             "every kNN edge inside a cell: use devices=1, or let the engine search")
        Y0 = self._check_init(n, options)
        loss = self._make_loss(n)
        self._early_loss = self._spectrum_early(loss, options)  # refused before the index is built
        if isinstance(options.trainer, EdgesOptions):
            from .edges import check_edge_options

            check_edge_options(loss, options.trainer.correct_repulsion, options.trainer.loss_log_every)
        self.timings_ = {}
        seed = self.random_state_ = resolve_seed(self.random_state)
        if knn_graph is not None:
            self.index_ = precomputed_index(knn_graph, n, int(options.index.n_neighbors))
            self.index_cached_, self.knn_index_ = False, "precomputed"
        else:
            self._build_index(X if X_knn is None else X_knn, seed, options)
        if Y0 is None:
            with self._phase("init"):
                Y0 = pca_init(X, options.init.init_scale, seed)
        self.loss_, self.loss_history_, self.n_epochs_ = loss, [], 0
        self.encoder_ = None
        self._fit_X = X  # kept by reference for transform (kNN of new points) and optimize
        self._run(X, Y0, int(options.schedule.n_epochs), None, options, exaggerate=True)
        return self

    def fit_transform(self, X: np.ndarray, y=None, *, knn_graph=None, X_knn=None) -> np.ndarray:
        """``fit(X).embedding_``."""
        return self.fit(X, knn_graph=knn_graph, X_knn=X_knn).embedding_

    def optimize(self, n_epochs: int, *, learning_rate: float | None = None) -> ContrastiveEmbedding:
        """Continue optimising a fitted model for ``n_epochs`` more epochs from ``embedding_``
        (openTSNE's ``optimize``): the same kNN graph, loss (NCVis keeps its learned Z) and
        options, the learning rate (the fitted one unless given) decayed over these epochs by
        ``lr_schedule``, no early exaggeration. The encoder of a parametric model continues
        training. Returns ``self`` with the new ``embedding_``; ``loss_history_`` grows."""
        self._check_fitted("optimize")
        _check_number("n_epochs", n_epochs, minimum=1, integer=True, call="optimize")
        if learning_rate is not None:
            _check_number("learning_rate", learning_rate, minimum=0, strict=True, call="optimize")
        options = self.options()
        self._run(self._fit_X, self.embedding_, int(n_epochs), learning_rate, options, exaggerate=False)
        return self

    def _spectrum_early(self, loss: ContrastiveLoss, options: EngineOptions) -> ContrastiveLoss | None:
        """The loss of cne's early-exaggeration epochs, or None when they are off."""
        epochs = options.schedule.spectrum_exaggeration_epochs
        if not epochs:
            return None
        early = loss.spectrum_early()
        if early is None:
            raise InputError(f"method.spectrum_exaggeration_epochs={epochs}: "
                             f"{type(self).__name__} has no spectrum parameter s to shift (cne's early "
                             "exaggeration is defined for InfoNCE and Neg-t-SNE): set it to 0, or use "
                             "method=infonc_tsne, neg_tsne or nomad")
        return early

    def _build_index(self, X: np.ndarray, seed: int, options: EngineOptions) -> None:
        n, index, devices = len(X), options.index, options.devices.devices
        n_cells = auto_n_cells(n, index.cell_size) if index.n_cells == "auto" else int(index.n_cells)
        n_cells = max(n_cells, devices)
        max_cell = 2 * math.ceil(n / n_cells) if index.max_cell_size == "auto" else int(index.max_cell_size)
        self.knn_index_ = "faiss IVF" if index.knn == "faiss_ivf" else f"cells ({index.n_probe} probed)"
        with self._phase("knn"):
            self.index_, self.index_cached_ = build_index(
                X, int(index.n_neighbors), n_cells=n_cells, max_cell_size=max_cell, metric=index.metric,
                seed=seed, cache_dir=index.cache_dir, n_probe=index.n_probe, knn=index.knn,
                ivf_nprobe=int(index.ivf_nprobe), verbose=self.verbose)

    def _run(self, X: np.ndarray, Y0: np.ndarray, n_epochs: int, learning_rate: float | None,
             options: EngineOptions, exaggerate: bool) -> None:
        """Train from ``Y0`` for ``n_epochs`` on the fitted index; set the fitted state. Early
        exaggeration (both kinds) only where ``exaggerate`` (a fit, not ``optimize``). Each
        trainer gets the loop's settings and its own option group."""
        n, devices, trainer = len(Y0), options.devices.devices, options.trainer
        accelerator = self._resolve_accelerator(options)
        spec = self._train_spec(n, options, n_epochs, learning_rate, exaggerate)
        spec.device = "cuda" if accelerator == "cuda" else "cpu"
        shards = make_shards(self.index_, Y0, devices)
        if self.callbacks:
            spec.callback = self._callback(shards[0].rows, n)
        with self._phase("fit"):
            if isinstance(trainer, ParametricOptions):
                Ys = [self._fit_parametric(X, shards[0], spec, trainer)]
                stats = [{"bytes_by_tag": {}, "calls_by_tag": {}}]
            elif isinstance(trainer, EdgesOptions):
                Ys = [self._fit_edges(shards[0], spec, trainer)]
                stats = [{"bytes_by_tag": {}, "calls_by_tag": {}}]
            elif devices == 1:
                comm = Comm()
                Ys = [train_shard(shards[0], spec, comm)]
                stats = [{"bytes_by_tag": comm.bytes_by_tag, "calls_by_tag": comm.calls_by_tag}]
            else:
                Ys, stats = distributed.run_sharded(shards, spec, accelerator)
        Y = np.empty((n, 2), dtype=np.float32)
        for s, Ys_r in zip(shards, Ys):
            Y[s.rows] = Ys_r
        self.embedding_ = Y
        self.options_ = options
        self.loss_history_ += list(spec.loss_history)
        self.n_epochs_ += len(spec.loss_history)
        self.learning_rate_, self.batch_size_ = spec.learning_rate, spec.batch_size
        self.noise_samples_ = spec.noise_samples
        self.comm_stats_ = stats
        self.bytes_per_epoch_ = sum(s["bytes_by_tag"].get("cell_means", 0) for s in stats[:1]) / n_epochs
        self.n_cells_ = self.index_.n_cells
        log.info("%s: n=%d, %d cells, %d devices (%s), %.0f bytes all-gathered per epoch per device",
                 type(self).__name__, n, self.n_cells_, devices, accelerator, self.bytes_per_epoch_)

    def _callback(self, rows: np.ndarray, n: int):
        """The trainer's per-epoch hook: every callback sees ``(epoch, loss, embedding)``, the
        embedding in input order (a fresh array); any returning True stops training (openTSNE)."""
        callbacks = self._callback_list()

        def on_epoch(epoch: int, loss: float, trainer) -> bool:
            Y = np.empty((n, 2), dtype=np.float32)
            Y[rows] = trainer.embedding()
            stops = [bool(cb(epoch, loss, Y)) for cb in callbacks]  # every callback runs
            return any(stops)

        return on_epoch

    def _callback_list(self) -> list:
        if self.callbacks is None:
            return []
        return list(self.callbacks) if isinstance(self.callbacks, (list, tuple)) else [self.callbacks]

    def _fit_parametric(self, X: np.ndarray, shard: Shard, spec: TrainSpec,
                        options: ParametricOptions) -> np.ndarray:
        from .edges import ParametricEdgeTrainer, edge_graph
        from .parametric import MLPEncoder, ParametricTrainer

        if self.encoder_ is None:  # a new fit; optimize() continues the trained encoder
            torch.manual_seed(spec.seed)
            self.encoder_ = MLPEncoder(X.shape[1], tuple(int(w) for w in options.hidden))
        if isinstance(options, ParametricEdgesOptions):
            graph = edge_graph(shard.neighbors, self.index_.distances[shard.rows], options.graph, spec.seed)
            trainer = ParametricEdgeTrainer(shard, spec, Comm(), graph, self.encoder_, X[shard.rows])
        else:
            trainer = ParametricTrainer(shard, spec, Comm(), self.encoder_, X[shard.rows])
        return trainer.train()

    def _fit_edges(self, shard: Shard, spec: TrainSpec, options: EdgesOptions) -> np.ndarray:
        from .edges import EdgeTrainer, edge_graph

        graph = edge_graph(shard.neighbors, self.index_.distances[shard.rows], options.graph, spec.seed)
        trainer = EdgeTrainer(shard, spec, Comm(), graph, push_noise=bool(options.push_noise),
                              correct_repulsion=bool(options.correct_repulsion),
                              loss_log_every=int(options.loss_log_every),
                              loss_log_pairs=int(options.loss_log_pairs))
        Y = trainer.train()
        self.loss_log_ = trainer.loss_log
        return Y

    def transform(self, X: np.ndarray, *, n_epochs: int = 100) -> np.ndarray:
        """Embed new points into the fitted map, which stays fixed.

        Parametric models: a forward pass of the encoder (``n_epochs`` unused). Free
        positions (openTSNE's ``transform``): each new point's k nearest neighbours among the
        training points (exact search), its start at the median of their positions, then
        ``n_epochs`` of the fitted loss with the new points as heads against the fixed
        training embedding (:func:`nomad.transform.place`), with the fitted options."""
        from .parametric import embed
        from .transform import place, query_knn

        self._check_fitted("transform")
        check_data(X, min_points=1)
        if np.shape(X)[1] != self._fit_X.shape[1]:
            raise InputError(f"X has {np.shape(X)[1]} columns but the model was fitted on "
                             f"{self._fit_X.shape[1]}: give points of the training data's space")
        _check_number("n_epochs", n_epochs, minimum=0, integer=True, call="transform")
        index, schedule = self.options_.index, self.options_.schedule
        with self._phase("transform"):
            if self.encoder_ is not None:
                return embed(self.encoder_, X)
            k = int(index.n_neighbors)
            nbrs, _ = query_knn(self._fit_X, X, k, index.metric, verbose=self.verbose)
            step = self.learning_rate_ * (1.0 / self.batch_size_ if schedule.aggregation == "mean" else 1.0)
            return place(self.embedding_, nbrs, p_ji(k, index.p_model), self.loss_,
                         n_noise=float(self.options_.noise.n_noise), noise_samples=self.noise_samples_,
                         n_epochs=int(n_epochs), step=step, momentum=float(schedule.momentum),
                         clip_grad=schedule.clip_grad, seed=self.random_state_, verbose=self.verbose)

    def _check_fitted(self, what: str) -> None:
        if not hasattr(self, "embedding_"):
            raise InputError(f"{type(self).__name__} is not fitted: call fit(X) before {what}")

    def _check_init(self, n: int, options: EngineOptions) -> np.ndarray | None:
        """The ``init`` array as float32 (n, 2), or None for ``"pca"``."""
        init = options.init.init
        if isinstance(init, str):
            return None
        Y0 = np.asarray(init, dtype=np.float32)
        if Y0.shape != (n, 2) or not np.isfinite(Y0).all():
            raise InputError(f"init must be 'pca' or a finite (n, 2) array of starting positions; got "
                             f"shape {Y0.shape} for n={n} points")
        return Y0.copy()

    def _train_spec(self, n: int, options: EngineOptions, n_epochs: int, learning_rate: float | None,
                    exaggerate: bool) -> TrainSpec:
        """The loop's settings (the schedule and noise groups, p(j|i) of the index's k) with every
        "auto" resolved (recorded as ``learning_rate_``, ``batch_size_``, ``noise_samples_``)."""
        sched, noise, trainer = options.schedule, options.noise, options.trainer
        if sched.batch_size != "auto":
            batch = int(sched.batch_size)
        else:  # edges: cne's ICLR-paper batch of 1024 edges
            batch = 1024 if isinstance(trainer, EDGE_TRAINERS) else math.ceil(n / 10)
        batch = min(batch, n)
        if learning_rate is not None:
            lr = float(learning_rate)
        elif sched.learning_rate == "auto" and isinstance(trainer, ParametricOptions):
            lr = 1e-3  # Adam (cne, Parametric UMAP)
        elif sched.learning_rate == "auto":
            lr = sched.lr_scale * n if sched.aggregation == "mean" else 1.0
        else:
            lr = float(sched.learning_rate)
        S = min(math.ceil(noise.n_noise), 32) if noise.noise_samples == "auto" else int(noise.noise_samples)
        seed = self.random_state_ + self.n_epochs_  # a continued run draws fresh samples
        torch.manual_seed(seed)
        return TrainSpec(
            loss=self.loss_, p=p_ji(int(options.index.n_neighbors), options.index.p_model), n_epochs=n_epochs,
            learning_rate=lr, batch_size=batch, n_noise=float(noise.n_noise), noise_samples=S,
            noise_group=int(noise.noise_group),
            approximate=noise.approximate, mean_refresh=noise.mean_refresh, mean_weight=noise.mean_weight,
            noise=noise.noise, aggregation=sched.aggregation,
            momentum=float(sched.momentum), lr_schedule=sched.lr_schedule, lr_decay_start=sched.lr_decay_start,
            early_exaggeration=float(sched.early_exaggeration),
            early_exaggeration_epochs=int(sched.early_exaggeration_epochs) if exaggerate else 0,
            early_loss=self._early_loss if exaggerate else None,
            spectrum_exaggeration_epochs=int(sched.spectrum_exaggeration_epochs) if exaggerate else 0,
            late_exaggeration=float(sched.late_exaggeration),
            late_exaggeration_time=float(sched.late_exaggeration_time),
            clip_grad=sched.clip_grad, seed=seed, first_epoch=self.n_epochs_,
            device="cpu", verbose=self.verbose)
