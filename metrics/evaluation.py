"""All metrics of one embedding in a flat dict, inputs validated before any heavy work.

Keys: ``np@{k}`` and ``np@{k}_ci95`` (``metrics.neighborhood``), ``rta`` and ``rta_ci95``
(``metrics.triplets``), ``knn_acc`` (``metrics.knn_classification``; only with usable labels) and,
when asked, ``trustworthiness`` (Venna & Kaski, ``sklearn.manifold.trustworthiness``; it is
O(n^2), so computed on a seeded subsample of at most 5,000 points with n_neighbors = max(ks)).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import numpy as np
from sklearn import manifold

from metrics._checks import check_count, check_ks, check_labels, check_n_eval, check_pair
from metrics.knn_classification import knn_accuracy
from metrics.neighborhood import eval_indices, neighborhood_preservation
from metrics.triplets import random_triplet_accuracy
from nebench.errors import InputError

log = logging.getLogger(__name__)

TRUSTWORTHINESS_POINTS = 5000


def evaluate(
    X: np.ndarray,
    Y: np.ndarray,
    y: np.ndarray | None = None,
    n_train: int | None = None,
    *,
    ks: Iterable[int] = (10, 15),
    n_eval: int | None = 5000,
    n_triplets: int = 100_000,
    knn_k: int = 10,
    trustworthiness: bool = False,
    seed: int = 0,
) -> dict[str, float]:
    """Metrics of embedding Y of X; labels ``y`` (-1: none), training rows [0, n_train)."""
    X, Y = check_pair(X, Y)
    n = X.shape[0]
    ks = check_ks(ks, n)
    n_eval = check_n_eval(n_eval)
    n_triplets = check_count(n_triplets, "n_triplets")
    knn_k = check_count(knn_k, "knn_k")
    if y is not None:
        y, n_train = check_labels(y, n, n_train)
    n_trust = min(n, TRUSTWORTHINESS_POINTS)
    if trustworthiness and max(ks) >= n_trust / 2:
        raise InputError(
            f"trustworthiness needs max(ks) = {max(ks)} < half the {n_trust} points it uses; "
            "lower ks, evaluate on more points, or pass trustworthiness=False."
        )

    results: dict[str, float] = {}
    for k, (mean, ci95) in neighborhood_preservation(X, Y, ks, n_eval, seed).items():
        results[f"np@{k}"] = mean
        results[f"np@{k}_ci95"] = ci95
    results["rta"], results["rta_ci95"] = random_triplet_accuracy(X, Y, n_triplets, seed)
    if y is not None:
        acc = knn_accuracy(Y, y, n_train, knn_k, seed)
        if acc is not None:
            results["knn_acc"] = acc
    if trustworthiness:
        rows = eval_indices(n, n_trust, seed)
        results["trustworthiness"] = float(
            manifold.trustworthiness(
                np.asarray(X[rows], np.float32),
                np.asarray(Y[rows], np.float32),
                n_neighbors=max(ks),
            )
        )
    log.info("metrics: %s", results)
    return results
