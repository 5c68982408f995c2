"""The record every dataset loader returns."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Dataset:
    """A data matrix, its labels and its train/test split.

    ``X`` is ``(n, d)``; after :func:`nebench.datasets.load_dataset` it is C-contiguous float32
    (an ``np.memmap`` when no preprocessing forced a copy). ``y`` holds int64 labels with -1 for
    unlabelled points, or is None for a set without labels. The first ``n_train`` rows are the
    train split (``n_train == n`` when there is no split). ``label_names[k]`` names label ``k``.
    ``image_shape`` is the shape of one image when each row of ``X`` is a flattened image, and
    None otherwise (so it is dropped once PCA has replaced the pixels). ``text`` holds one
    string per row (shown when hovering a point of the run's ``embedding.html``), or is None.
    ``X_encoder`` holds the rows a parametric method's encoder reads when they are not ``X``
    (``dataset.encoder_input=raw``: the rows before PCA, float32), and is None otherwise; the kNN
    graph and the metrics always use ``X``.
    """

    X: np.ndarray
    y: np.ndarray | None
    n_train: int
    name: str
    label_names: list[str] | None = None
    image_shape: tuple[int, ...] | None = None
    text: np.ndarray | None = None
    X_encoder: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.n_train = int(self.n_train)
        if self.label_names is not None:
            self.label_names = [str(s) for s in self.label_names]
        if self.image_shape is not None:
            self.image_shape = tuple(int(s) for s in self.image_shape)
