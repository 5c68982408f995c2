"""All metrics of one embedding in a flat dict, inputs validated before any heavy work.

Keys: ``np@{k}`` and ``np@{k}_ci95`` (``metrics.neighborhood``), ``rta`` and ``rta_ci95``
(``metrics.triplets``), ``knn_acc`` (``metrics.knn_classification``; only with usable labels),
``trustworthiness`` and ``continuity`` with their ``_ci95`` (``metrics.trustworthiness``, k =
max(ks), on ``n_trust`` seeded points; 0 skips them, and so do too few points, with a
warning) and ``distance_spearman`` with its
``_ci95`` (``metrics.distance_correlation``, on ``n_pairs`` seeded pairs; 0 skips it).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import numpy as np

from metrics._checks import check_count, check_ks, check_labels, check_n_eval, check_pair
from metrics.distance_correlation import distance_spearman
from metrics.knn_classification import knn_accuracy
from metrics.neighborhood import neighborhood_preservation
from metrics.triplets import random_triplet_accuracy
from metrics.trustworthiness import trustworthiness_continuity

log = logging.getLogger(__name__)


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
    n_trust: int = 2000,
    n_pairs: int = 100_000,
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
    n_trust = check_count(n_trust, "n_trust", minimum=0)
    n_pairs = check_count(n_pairs, "n_pairs", minimum=0)
    if n_trust and max(ks) >= min(n, n_trust) / 2:
        log.warning(
            "trustworthiness and continuity skipped: they need max(ks) = %d < half the %d points "
            "they use (raise metrics.n_trust or lower metrics.ks)",
            max(ks),
            min(n, n_trust),
        )
        n_trust = 0

    results: dict[str, float] = {}
    for k, (mean, ci95) in neighborhood_preservation(X, Y, ks, n_eval, seed).items():
        results[f"np@{k}"] = mean
        results[f"np@{k}_ci95"] = ci95
    results["rta"], results["rta_ci95"] = random_triplet_accuracy(X, Y, n_triplets, seed)
    if y is not None:
        acc = knn_accuracy(Y, y, n_train, knn_k, seed)
        if acc is not None:
            results["knn_acc"] = acc
    if n_trust:
        for name, (mean, ci95) in trustworthiness_continuity(X, Y, max(ks), n_trust, seed).items():
            results[name], results[f"{name}_ci95"] = mean, ci95
    if n_pairs:
        results["distance_spearman"], results["distance_spearman_ci95"] = distance_spearman(
            X, Y, n_pairs, seed
        )
    log.info("metrics: %s", results)
    return results
