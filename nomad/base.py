"""The contract every embedding method follows (sklearn-style), in the library and in the harness.

A method takes all hyperparameters in ``__init__`` (no work there), and
``fit_transform(X)`` maps an ``n x d`` float32 array to an ``n x 2`` float32
embedding, rows in input order. The wall time of each phase it went through is
left in ``timings_`` (seconds, keys such as ``"knn"`` and ``"fit"``), covering
all the work from the array in memory to the embedding (kNN / affinities
included, metrics excluded). Methods that search neighbours name the search in
``knn_index_`` (e.g. ``"faiss IVF"``, ``"Annoy"``), which the benchmark table shows.
The harness (``nebench``) runs any subclass; the class lives here so that the library
never imports the harness.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import ClassVar

import numpy as np


class EmbeddingMethod:
    """Base class: device capabilities and phase timing shared by all methods."""

    #: accelerators the method can run on ("cpu", "cuda")
    accelerators: ClassVar[tuple[str, ...]] = ("cpu",)
    #: whether ``devices > 1`` is supported (one process per device)
    multi_device: ClassVar[bool] = False
    #: whether a fitted model's ``transform`` embeds new points whatever its settings (peers
    #: whose ``transform`` needs ``parametric=True`` leave this False)
    transforms_new_points: ClassVar[bool] = False

    timings_: dict[str, float]

    def fit_transform(self, X: np.ndarray) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError

    @contextmanager
    def _phase(self, name: str) -> Iterator[None]:
        """Add the wall time of the ``with`` block to ``timings_[name]``."""
        if not hasattr(self, "timings_"):
            self.timings_ = {}
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.timings_[name] = self.timings_.get(name, 0.0) + time.perf_counter() - t0
