"""Synthetic datasets with known structure, generated in float32 from a seeded generator."""

from __future__ import annotations

import math

import numpy as np

from nebench.errors import InputError

#: rows generated per step, so a 1M-point set never needs a float64 temporary
CHUNK_ROWS = 1 << 16


def gaussian_clusters(
    n_samples: int,
    dim: int,
    n_clusters: int,
    cluster_std: float,
    centre_spread: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Isotropic Gaussian clusters: centres ``c_k ~ N(0, centre_spread^2 I)``, cluster ids
    ``y_i ~ Uniform{0..n_clusters-1}``, points ``x_i = c_{y_i} + N(0, cluster_std^2 I)``.

    Returns ``X`` (n_samples, dim) float32, filled in chunks, and ``y`` int64.
    """
    for key, value in (("n_samples", n_samples), ("dim", dim), ("n_clusters", n_clusters)):
        if int(value) != value or value < 1:
            raise InputError(f"dataset.{key}={value!r} must be a positive integer")
    if cluster_std < 0 or centre_spread < 0:
        raise InputError(
            f"dataset.cluster_std={cluster_std} and dataset.centre_spread={centre_spread} "
            f"must be >= 0"
        )
    centres = (centre_spread * rng.standard_normal((n_clusters, dim))).astype(np.float32)
    y = rng.integers(n_clusters, size=n_samples, dtype=np.int64)
    X = np.empty((n_samples, dim), dtype=np.float32)
    for start in range(0, n_samples, CHUNK_ROWS):
        block = X[start : start + CHUNK_ROWS]
        rng.standard_normal(out=block, dtype=np.float32)
        block *= np.float32(cluster_std)
        block += centres[y[start : start + CHUNK_ROWS]]
    return X, y


def uniform_rings(
    n_rings: int,
    n_per_ring: int,
    inner_radius: float,
    outer_radius: float,
    spacing: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Points uniform (by area) on 2-D annuli ``inner_radius <= |x - c| <= outer_radius``
    (umap-true-loss sec. 4, Fig. 1a; Fig. 1c uses twenty such rings).

    Ring ``r`` is centred on a square grid, ``c_r = spacing * (r mod m, r div m)`` with
    ``m = ceil(sqrt(n_rings))``; a gap ``spacing - 2 outer_radius`` far above the kNN radius
    keeps the rings apart in the kNN graph. Rows are ordered ring by ring; ``y`` is the ring id.
    """
    if not 0 <= inner_radius < outer_radius:
        raise InputError(
            f"ring radii inner_radius={inner_radius}, outer_radius={outer_radius}: "
            f"need 0 <= inner_radius < outer_radius"
        )
    if n_rings < 1 or n_per_ring < 1:
        raise InputError(f"dataset.n_rings={n_rings}, n_per_ring={n_per_ring} must be >= 1")
    if n_rings > 1 and spacing <= 2 * outer_radius:
        raise InputError(
            f"dataset.spacing={spacing} makes rings of outer radius {outer_radius} overlap: "
            f"set spacing well above 2 * outer_radius = {2 * outer_radius}"
        )
    n = n_rings * n_per_ring
    y = np.repeat(np.arange(n_rings, dtype=np.int64), n_per_ring)
    radius = np.sqrt(rng.uniform(inner_radius**2, outer_radius**2, size=n))
    angle = rng.uniform(0.0, 2 * np.pi, size=n)
    n_cols = math.ceil(math.sqrt(n_rings))
    X = np.stack(
        [
            spacing * (y % n_cols) + radius * np.cos(angle),
            spacing * (y // n_cols) + radius * np.sin(angle),
        ],
        axis=1,
    )
    return X.astype(np.float32), y
