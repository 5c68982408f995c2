"""Spearman correlation of pairwise distances (global structure; Kobak & Linderman 2021 and
drnb use it), on seeded random pairs.

Draw ``n_pairs`` pairs (i, j), i != j, uniformly with a seeded numpy Generator and correlate the
ranks of their Euclidean distances in the data X and in the embedding Y:

    rho = Spearman(d_X(i, j), d_Y(i, j)),    computed by ``scipy.stats.spearmanr`` (ties get
    average ranks; the tests check it against Pearson's r of the ranks on a small case).

The 95% CI half-width comes from Fisher's z with the Spearman variance 1.06 / (n_pairs - 3)
(Fieller, Hartley & Pearson 1957): half the width of tanh(atanh(rho) ± 1.96 sqrt(1.06 /
(n_pairs - 3))). It treats the pairs as independent, which random pairs among n >> sqrt(n_pairs)
points nearly are. A random embedding scores about 0; a perfect one 1.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

from metrics._checks import check_count, check_pair
from nebench.errors import InputError


def distance_spearman(
    X: np.ndarray, Y: np.ndarray, n_pairs: int = 100_000, seed: int = 0
) -> tuple[float, float]:
    """Spearman's rho between data and embedding distances of random pairs: ``(rho, ci95)``."""
    X, Y = check_pair(X, Y)
    n = X.shape[0]
    n_pairs = check_count(n_pairs, "n_pairs")
    if n < 3 or n_pairs < 4:
        raise InputError(
            f"the distance correlation needs at least 3 points and 4 pairs, got {n} and "
            f"{n_pairs}; evaluate on more points or raise metrics.n_pairs."
        )
    rng = np.random.default_rng(seed)
    i = rng.integers(0, n, n_pairs)
    j = rng.integers(0, n - 1, n_pairs)
    j += j >= i
    d_x, d_y = (_distances(A, i, j) for A in (X, Y))
    rho = float(stats.spearmanr(d_x, d_y).statistic)
    half = 1.96 * np.sqrt(1.06 / (n_pairs - 3))
    z = np.arctanh(np.clip(rho, -1 + 1e-12, 1 - 1e-12))
    return rho, float((np.tanh(z + half) - np.tanh(z - half)) / 2)


def _distances(A: np.ndarray, i: np.ndarray, j: np.ndarray, block: int = 65_536) -> np.ndarray:
    """||A_i - A_j|| per pair, in float64, gathered in blocks of pairs (bounded memory)."""
    out = np.empty(len(i))
    for s in range(0, len(i), block):
        diff = np.asarray(A[i[s : s + block]], np.float64) - np.asarray(
            A[j[s : s + block]], np.float64
        )
        out[s : s + block] = np.sqrt((diff * diff).sum(axis=1))
    return out
