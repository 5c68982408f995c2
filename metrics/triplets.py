"""Random triplet accuracy (Wang et al., as used in nomad-projection sec. 4; figures/eval.py).

Draw ``n_triplets`` ordered triplets (a, b, c) of distinct points uniformly with a seeded numpy
Generator. A triplet is preserved iff the embedding keeps the order of the two distances from a:

    sign(d_X(a,b) - d_X(a,c)) == sign(d_Y(a,b) - d_Y(a,c)) != 0,

i.e. a tie in either space (equal distances) counts as a failure, as in the reference code.
Distances are Euclidean, compared as exact float64 squared distances. The accuracy p is the
preserved fraction, with the binomial 95% CI half-width 1.96 * sqrt(p (1 - p) / n_triplets).
A random embedding scores about 0.5.
"""

from __future__ import annotations

import logging

import numpy as np

from metrics._checks import check_count, check_finite, check_pair
from nebench.errors import InputError

log = logging.getLogger(__name__)

_GATHER_ELEMENTS = 2**21  # float64 values per gathered row block (16 MiB)


def random_triplet_accuracy(
    X: np.ndarray, Y: np.ndarray, n_triplets: int = 100_000, seed: int = 0
) -> tuple[float, float]:
    """Fraction of random triplets whose distance order Y preserves: ``(mean, ci95_halfwidth)``."""
    X, Y = check_pair(X, Y)
    n = X.shape[0]
    n_triplets = check_count(n_triplets, "n_triplets")
    if n < 3:
        raise InputError(f"triplets need at least 3 points, got {n}; evaluate on more points.")

    a, b, c = distinct_triplets(n, n_triplets, seed)
    step = max(1, _GATHER_ELEMENTS // max(X.shape[1], Y.shape[1]))
    preserved = 0
    for t0 in range(0, n_triplets, step):
        t = slice(t0, t0 + step)
        gap_x = _distance_gap(X, a[t], b[t], c[t], "X")
        gap_y = _distance_gap(Y, a[t], b[t], c[t], "Y")
        preserved += int(np.count_nonzero(np.sign(gap_x) * np.sign(gap_y) > 0))
    p = preserved / n_triplets
    log.info("random triplet accuracy %.4f over %d triplets", p, n_triplets)
    return p, float(1.96 * np.sqrt(p * (1.0 - p) / n_triplets))


def distinct_triplets(n: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``size`` ordered triplets of distinct indices in [0, n), each uniform over all such triplets.

    b is drawn from the n - 1 indices other than a, c from the n - 2 other than a and b, by
    shifting a uniform draw past the excluded indices in increasing order.
    """
    rng = np.random.default_rng(seed)
    a = rng.integers(0, n, size)
    b = rng.integers(0, n - 1, size)
    b += b >= a
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    c = rng.integers(0, n - 2, size)
    c += c >= lo
    c += c >= hi
    return a, b, c


def _distance_gap(
    data: np.ndarray, a: np.ndarray, b: np.ndarray, c: np.ndarray, name: str
) -> np.ndarray:
    """d(a,b)^2 - d(a,c)^2 in float64 (same sign as d(a,b) - d(a,c))."""
    xa, xb, xc = (np.asarray(data[i], dtype=np.float64) for i in (a, b, c))
    with np.errstate(invalid="ignore", over="ignore"):  # non-finite rows are reported below
        gap = ((xa - xb) ** 2).sum(axis=1) - ((xa - xc) ** 2).sum(axis=1)
    if not np.isfinite(gap).all():
        check_finite(np.concatenate([xa, xb, xc]), name, " (among the sampled triplets)")
    return gap
