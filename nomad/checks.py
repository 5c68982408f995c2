"""Input checks on a data matrix, run before any heavy work (the library's and the harness's)."""

from __future__ import annotations

import numpy as np

from .errors import InputError

#: bytes of X scanned per step of the NaN/inf check (bounds its temporary memory)
CHUNK_BYTES = 1 << 24


def check_data(X: np.ndarray, *, min_points: int = 2) -> None:
    """Raise :class:`InputError` unless ``X`` is a non-empty, numeric, finite ``(n, d)`` matrix
    with ``n >= min_points`` (the runner passes ``min_points = k + 1`` for a kNN graph).

    The NaN/inf scan reads ``X`` in row chunks of about ``CHUNK_BYTES``, so a large memmap is
    checked without a full in-memory copy.
    """
    X = X if isinstance(X, np.ndarray) else np.asarray(X)
    if not (np.issubdtype(X.dtype, np.integer) or np.issubdtype(X.dtype, np.floating)):
        raise InputError(
            f"data of dtype {X.dtype} is not numeric: convert it to numbers first, "
            f"e.g. X.astype(np.float32) (strings or Python objects cannot be embedded)"
        )
    if X.ndim == 1:
        raise InputError(
            f"1-D data: reshape to (n, 1) with X.reshape(-1, 1) for n scalar points, or to "
            f"(1, d) with X.reshape(1, -1) for a single point (got shape {X.shape})"
        )
    if X.ndim != 2:
        raise InputError(
            f"{X.ndim}-D data of shape {X.shape}: the data must be an (n, d) matrix; "
            f"flatten each point, e.g. X.reshape(len(X), -1)"
        )
    n, d = X.shape
    if n == 0 or d == 0:
        raise InputError(f"empty data of shape {X.shape}: give at least one point with one feature")
    if n < min_points:
        raise InputError(
            f"n={n} points but k={min_points - 1} neighbours need at least {min_points}: "
            f"use more points or a smaller method.n_neighbors"
        )
    if np.issubdtype(X.dtype, np.floating):
        _check_finite(X)


def _check_finite(X: np.ndarray) -> None:
    rows = max(1, CHUNK_BYTES // (X.shape[1] * X.dtype.itemsize))
    n_bad, first = 0, -1
    for start in range(0, len(X), rows):
        bad = np.flatnonzero(~np.isfinite(X[start : start + rows]).all(axis=1))
        if bad.size and first < 0:
            first = start + int(bad[0])
        n_bad += bad.size
    if n_bad:
        raise InputError(
            f"data contain NaN or inf in {n_bad} of {len(X)} rows (first at row {first}): "
            f"drop or impute those rows before embedding"
        )
