"""Input checks shared by the adapters: fail with a clear message before any heavy work."""

from __future__ import annotations

import numpy as np

from nebench.errors import InputError


def check_data(X: np.ndarray, min_samples: int, method: str) -> np.ndarray:
    """Return ``X`` as a C-contiguous ``float32`` ``n x d`` array, or raise ``InputError``."""
    X = np.asarray(X)
    if X.ndim != 2:
        raise InputError(
            f"{method} needs a 2-D array (n_samples, n_features), got shape {X.shape}: "
            "reshape the data to one row per point."
        )
    if not np.issubdtype(X.dtype, np.number):
        raise InputError(f"{method} needs numeric data, got dtype {X.dtype}: convert it first.")
    if X.shape[0] < min_samples:
        raise InputError(
            f"{method} needs at least {min_samples} points with these settings, got "
            f"{X.shape[0]}: pass more points or lower the neighbourhood size."
        )
    X = np.ascontiguousarray(X, dtype=np.float32)
    if not np.isfinite(X).all():
        raise InputError(
            f"{method} got NaN or infinite values in X: drop or impute those rows first."
        )
    return X
