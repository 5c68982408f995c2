"""kNN classification accuracy in the embedding (a local-structure check beyond the NOMAD paper).

A ``sklearn.neighbors.KNeighborsClassifier(k)`` is fit on the training rows of Y with their labels
and scored (accuracy) on the test rows. Rows labelled -1 are ignored. The split is rows
[0, n_train) vs [n_train, n), as datasets with a train/test split are stacked; with no split
(``n_train`` None or n) it is a seeded random 80/20 split of the labelled rows.
"""

from __future__ import annotations

import logging

import numpy as np
from sklearn.neighbors import KNeighborsClassifier

from metrics._checks import as_matrix, check_count, check_finite, check_labels

log = logging.getLogger(__name__)

_TRAIN_FRACTION = 0.8


def knn_accuracy(
    Y: np.ndarray, y: np.ndarray, n_train: int | None, k: int = 10, seed: int = 0
) -> float | None:
    """Test accuracy of a k-NN classifier on Y; None when the labels cannot support one."""
    Y = as_matrix(Y, "Y")
    check_finite(Y, "Y")
    n = Y.shape[0]
    labels, n_train = check_labels(y, n, n_train)
    k = check_count(k, "k")

    labelled = labels != -1
    if n_train is None or n_train == n:
        rows = np.random.default_rng(seed).permutation(np.flatnonzero(labelled))
        n_fit = round(_TRAIN_FRACTION * len(rows))
        train, test = rows[:n_fit], rows[n_fit:]
    else:
        train = np.flatnonzero(labelled[:n_train])
        test = n_train + np.flatnonzero(labelled[n_train:])

    n_classes = len(np.unique(labels[train]))
    if n_classes < 2 or len(train) < k or len(test) == 0:
        log.warning(
            "kNN accuracy skipped: %d training rows in %d classes, %d test rows (k = %d)",
            len(train),
            n_classes,
            len(test),
            k,
        )
        return None
    clf = KNeighborsClassifier(n_neighbors=k).fit(np.asarray(Y[train], np.float32), labels[train])
    return float(clf.score(np.asarray(Y[test], np.float32), labels[test]))
