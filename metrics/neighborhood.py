"""Neighbourhood preservation NP@k (nomad-projection sec. 4; the authors' figures/eval.py).

For evaluation points i (``n_eval`` drawn without replacement by a seeded numpy Generator; all n
points when ``n_eval`` is None or >= n), let N_X(i) and N_Y(i) be the exact Euclidean k nearest
neighbours of i among ALL n points in the data X and in the embedding Y, i itself excluded by
index. Then

    score_i = |N_X(i) ∩ N_Y(i)| / k,      NP@k = mean_i score_i,

reported with the 95% CI half-width 1.96 * sd(score) / sqrt(m), m the number of evaluation points (population sd, as eval.py).
``rows`` evaluates given points instead of a random sample (e.g. held-out points, whose
neighbours are still searched among all n).
A random embedding scores about k / (n - 1). Unlike eval.py we exclude the query by index rather
than dropping the first neighbour column, which is wrong when points are duplicated, and we fix the
seed of the evaluation sample. All ks come from one top-max(k) search (see ``metrics.exact_knn``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

import numpy as np

from metrics._checks import check_count, check_ks, check_n_eval, check_pair, check_rows
from metrics.exact_knn import exact_knn

log = logging.getLogger(__name__)


def neighborhood_preservation(
    X: np.ndarray,
    Y: np.ndarray,
    ks: Iterable[int] = (10, 15),
    n_eval: int | None = 5000,
    seed: int = 0,
    chunk_size: int = 65536,
    *,
    rows: np.ndarray | None = None,
) -> dict[int, tuple[float, float]]:
    """NP@k for each k in ``ks``: ``{k: (mean, ci95_halfwidth)}``, over ``n_eval`` seeded
    points or, when given, the points ``rows``."""
    X, Y = check_pair(X, Y)
    n = X.shape[0]
    ks = check_ks(ks, n)
    n_eval = check_n_eval(n_eval)
    chunk_size = check_count(chunk_size, "chunk_size")

    t0 = time.perf_counter()
    eval_idx = eval_indices(n, n_eval, seed) if rows is None else check_rows(rows, n)
    k_max = max(ks)
    nn_x = exact_knn(X, eval_idx, k_max, chunk_size, name="X")
    nn_y = exact_knn(Y, eval_idx, k_max, chunk_size, name="Y")
    result = {}
    for k in ks:
        scores = _overlap(nn_x[:, :k], nn_y[:, :k]) / k
        result[k] = (float(scores.mean()), float(1.96 * scores.std() / np.sqrt(len(scores))))
    log.info(
        "NP@%s on %d of %d points in %.1fs",
        ",".join(map(str, ks)),
        len(eval_idx),
        n,
        time.perf_counter() - t0,
    )
    return result


def eval_indices(n: int, n_eval: int | None, seed: int) -> np.ndarray:
    """Sorted evaluation points: ``n_eval`` of n without replacement, or all of them."""
    if n_eval is None or n_eval >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=n_eval, replace=False))


def _overlap(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """|a_i ∩ b_i| per row (rows hold distinct indices): repeats in sorted a_i ∪ b_i."""
    both = np.sort(np.concatenate([a, b], axis=1), axis=1)
    return np.count_nonzero(both[:, 1:] == both[:, :-1], axis=1)
