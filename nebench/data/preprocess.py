"""Shared preprocessing of every dataset: seeded subsample, PCA, row L2 normalisation."""

from __future__ import annotations

import numpy as np
from sklearn.decomposition import PCA

from nebench.data.dataset import Dataset
from nebench.data.files import take_rows
from nebench.errors import InputError

#: above this many points PCA is fitted on a seeded subsample of this size
PCA_FIT_MAX = 100_000
#: rows per step for the PCA transform and the normalisation of large sets
CHUNK_ROWS = 100_000


def subsample(ds: Dataset, n: int, seed: int) -> Dataset:
    """A seeded uniform random subset of ``n`` rows, in data order (train rows stay first)."""
    n_all = len(ds.X)
    if n > n_all:
        raise InputError(
            f"dataset.n={n} but {ds.name} has only {n_all} points: set dataset.n to at most "
            f"{n_all}, or dataset.n=null for all points"
        )
    if n == n_all:
        return ds
    idx = np.sort(np.random.default_rng(seed).choice(n_all, size=n, replace=False))
    return take_rows(ds, idx)


def to_float32(X: np.ndarray) -> np.ndarray:
    """``X`` as C-contiguous float32, without a copy (a memmap stays a memmap) when it is one."""
    if X.dtype == np.float32 and X.flags.c_contiguous:
        return X
    return np.ascontiguousarray(X, dtype=np.float32)


def pca(X: np.ndarray, n_components: int, seed: int, fit_rows: int | None = None) -> np.ndarray:
    """Project onto the top ``n_components`` principal axes (sklearn PCA, random_state=seed),
    fitted on the first ``fit_rows`` rows (None: all of them; a held-out split's train rows).

    For more than ``PCA_FIT_MAX`` fitting rows, the axes are fitted on a seeded subsample of that
    size and all points are transformed in chunks of ``CHUNK_ROWS``. Any dtype (e.g. a uint8
    memmap) is cast to float32 one chunk at a time.
    """
    n, d = X.shape
    n_fit = n if fit_rows is None else int(fit_rows)
    if n_components > min(n_fit, d):
        rows = f"{n_fit} points" if fit_rows is None else f"the {n_fit} train rows (holdout=true)"
        raise InputError(
            f"dataset.pca={n_components} but the PCA is fitted on {rows} of {d} dims: set "
            f"dataset.pca to at most {min(n_fit, d)}"
            + ("" if fit_rows is None else ", keep more train rows (dataset.n)")
            + ", or dataset.pca=null to turn PCA off"
        )
    model = PCA(n_components=n_components, random_state=seed)
    if n_fit == n and n <= PCA_FIT_MAX:
        return to_float32(model.fit_transform(to_float32(X)))
    fit_idx = np.arange(n_fit)
    if n_fit > PCA_FIT_MAX:
        fit_idx = np.sort(np.random.default_rng(seed).choice(n_fit, size=PCA_FIT_MAX, replace=False))
    model.fit(to_float32(X[fit_idx]))
    out = np.empty((n, n_components), dtype=np.float32)
    for start in range(0, n, CHUNK_ROWS):
        out[start : start + CHUNK_ROWS] = model.transform(to_float32(X[start : start + CHUNK_ROWS]))
    return out


def l2_normalize(X: np.ndarray) -> np.ndarray:
    """Rows scaled to unit Euclidean norm (all-zero rows stay zero); in place when ``X`` owns
    its writable memory, else into a new array (a read-only memmap is never written)."""
    out = X if X.flags.writeable and X.flags.owndata else np.empty(X.shape, dtype=X.dtype)
    for start in range(0, len(X), CHUNK_ROWS):
        block = X[start : start + CHUNK_ROWS]
        norms = np.linalg.norm(block, axis=1, keepdims=True)
        norms[norms == 0] = 1
        np.divide(block, norms, out=out[start : start + CHUNK_ROWS])
    return out
