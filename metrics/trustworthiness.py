"""Trustworthiness and continuity (Venna & Kaski 2001), per point, on a seeded subsample.

On m points (``n_points`` drawn without replacement by a seeded numpy Generator; all n when
``n_points`` >= n), let r_X(i, j) be the rank of j among the neighbours of i in the data X
(1 = nearest, i itself excluded) and N_X^k(i), N_Y^k(i) the k nearest neighbours of i in X and in
the embedding Y, all among the m points. A point's trustworthiness penalises the embedding's
neighbours that are not neighbours in the data, by how far down the data's ranking they are:

    T_i = 1 - 2 / (k (2m - 3k - 1)) * Σ_{j ∈ N_Y^k(i) \\ N_X^k(i)} (r_X(i, j) - k),

and T = mean_i T_i is ``sklearn.manifold.trustworthiness(X, Y, n_neighbors=k)`` exactly (the
tests check it). Continuity is the same with X and Y swapped (the data's neighbours missing from
the embedding): C_i = T_i(Y, X). Both are reported with the 95% CI half-width
1.96 * sd(T_i) / sqrt(m), like NP@k. They need k < m / 2; the cost is O(m^2) time and memory
(m = 2,000: two 2,000 x 2,000 rankings), which is why a subsample is used.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import pairwise_distances

from metrics._checks import check_count, check_pair
from metrics.neighborhood import eval_indices
from nebench.errors import InputError


def trustworthiness_continuity(
    X: np.ndarray, Y: np.ndarray, k: int = 15, n_points: int = 2000, seed: int = 0
) -> dict[str, tuple[float, float]]:
    """``{"trustworthiness": (mean, ci95), "continuity": (mean, ci95)}`` on ``n_points``."""
    X, Y = check_pair(X, Y)
    k = check_count(k, "k")
    rows = eval_indices(X.shape[0], check_count(n_points, "n_points"), seed)
    m = len(rows)
    if k >= m / 2:
        raise InputError(
            f"trustworthiness and continuity need k = {k} < half the {m} points they use; "
            "evaluate on more points (metrics.n_trust), lower metrics.ks, or set metrics.n_trust=0."
        )
    X_m, Y_m = (np.asarray(A[rows], np.float64) for A in (X, Y))
    return {
        "trustworthiness": _mean_ci(per_point_trustworthiness(X_m, Y_m, k)),
        "continuity": _mean_ci(per_point_trustworthiness(Y_m, X_m, k)),
    }


def per_point_trustworthiness(X: np.ndarray, Y: np.ndarray, k: int) -> np.ndarray:
    """T_i for every row (the module docstring's formula); its mean is sklearn's value."""
    m = X.shape[0]
    rank_x = _ranks(pairwise_distances(X))
    nn_y = np.argsort(_without_self(pairwise_distances(Y)), axis=1)[:, :k]
    penalty = np.take_along_axis(rank_x, nn_y, axis=1) - k
    return 1.0 - 2.0 / (k * (2.0 * m - 3.0 * k - 1.0)) * np.clip(penalty, 0, None).sum(axis=1)


def _ranks(distances: np.ndarray) -> np.ndarray:
    """r(i, j): 1 for the nearest other point of row i, ...; the point itself ranks last."""
    order = np.argsort(_without_self(distances), axis=1)
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(1, distances.shape[1] + 1)[None, :], axis=1)
    return ranks


def _without_self(distances: np.ndarray) -> np.ndarray:
    np.fill_diagonal(distances, np.inf)
    return distances


def _mean_ci(values: np.ndarray) -> tuple[float, float]:
    return float(values.mean()), float(1.96 * values.std() / np.sqrt(len(values)))
