"""Input validation shared by the metrics: clear `InputError`s before any heavy work."""

from __future__ import annotations

import numbers
import operator
from collections.abc import Iterable

import numpy as np

from nebench.errors import InputError

_SCAN_ELEMENTS = 2**24  # values checked for finiteness at once


def as_matrix(a: object, name: str) -> np.ndarray:
    """Return ``a`` as a 2-D real array without copying numpy arrays (np.memmap stays lazy)."""
    arr = a if isinstance(a, np.ndarray) else np.asarray(a)
    if arr.ndim != 2:
        raise InputError(
            f"{name} must be a 2-D array of shape (n_points, n_dims), got shape {arr.shape}; "
            f"reshape it, e.g. {name}.reshape(len({name}), -1)."
        )
    if arr.dtype == np.bool_ or not (
        np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)
    ):
        raise InputError(
            f"{name} has dtype {arr.dtype}; pass real numbers, e.g. {name}.astype(np.float32)."
        )
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise InputError(
            f"{name} is empty (shape {arr.shape}); pass at least one point and one dim."
        )
    return arr


def check_finite(arr: np.ndarray, name: str, where: str = "") -> None:
    """Raise if ``arr`` holds NaN or inf (``where`` says which rows were looked at).

    Scans blocks of rows, so a large memmap is never expanded to a full boolean array.
    """
    step = max(1, _SCAN_ELEMENTS // arr.shape[1])
    for start in range(0, len(arr), step):
        if not np.isfinite(arr[start : start + step]).all():
            raise InputError(
                f"{name} contains NaN or inf values{where}; remove or impute those rows "
                "(in X and Y alike) before evaluating."
            )


def check_pair(X: object, Y: object) -> tuple[np.ndarray, np.ndarray]:
    """X (n x D, high-d data) and Y (n x d, embedding) as arrays with matching rows, Y finite.

    X is checked for non-finite values block by block while it is read (it may be a large memmap).
    """
    X, Y = as_matrix(X, "X"), as_matrix(Y, "Y")
    if X.shape[0] != Y.shape[0]:
        raise InputError(
            f"X has {X.shape[0]} rows but Y has {Y.shape[0]}; pass the embedding of exactly the "
            "rows of X, in the same order."
        )
    check_finite(Y, "Y")
    return X, Y


def check_count(value: object, name: str, minimum: int = 1) -> int:
    """``value`` as an int >= ``minimum``."""
    try:
        if isinstance(value, bool):
            raise TypeError
        count = operator.index(value)
    except TypeError:
        raise InputError(f"{name} must be an integer, got {value!r}.") from None
    if count < minimum:
        raise InputError(f"{name} must be >= {minimum}, got {count}.")
    return count


def check_n_eval(n_eval: int | None) -> int | None:
    """None (all points) or a positive number of evaluation points."""
    return None if n_eval is None else check_count(n_eval, "n_eval")


def check_rows(rows: object, n: int) -> np.ndarray:
    """Distinct point indices in [0, n), as a non-empty 1-D int64 array."""
    idx = np.asarray(rows)
    if idx.ndim != 1 or idx.size == 0 or not np.issubdtype(idx.dtype, np.integer):
        raise InputError(
            f"rows must be a non-empty 1-D array of point indices, got shape {idx.shape} and "
            f"dtype {idx.dtype}; pass e.g. np.arange(n_train, n) for the held-out points."
        )
    if idx.min() < 0 or idx.max() >= n:
        raise InputError(f"rows must index the {n} points (0..{n - 1}), got {idx.min()}..{idx.max()}.")
    if len(np.unique(idx)) != len(idx):
        raise InputError("rows repeats a point; pass each evaluation point once (np.unique(rows)).")
    return idx.astype(np.int64)


def check_ks(ks: int | Iterable[int], n: int) -> tuple[int, ...]:
    """Distinct neighbourhood sizes, in the given order, each in [1, n - 1]."""
    ks = (ks,) if isinstance(ks, numbers.Integral) else tuple(ks)
    if not ks:
        raise InputError("ks is empty; pass the neighbourhood sizes to evaluate, e.g. ks=(10, 15).")
    ks = tuple(dict.fromkeys(check_count(k, "each k in ks") for k in ks))
    if max(ks) >= n:
        raise InputError(
            f"k = {max(ks)} needs more than {max(ks)} points but there are {n}; "
            f"use ks below {n} or evaluate on more points."
        )
    return ks


def check_labels(y: object, n: int, n_train: int | None) -> tuple[np.ndarray, int | None]:
    """Labels as a length-n 1-D array (-1 = unlabelled); n_train None or in [1, n]."""
    labels = np.asarray(y)
    if labels.shape != (n,):
        raise InputError(
            f"y must be a 1-D array with one label per point ({n}), got shape {labels.shape}; "
            "pass the labels of the embedded rows, -1 for unlabelled ones."
        )
    if n_train is not None:
        n_train = check_count(n_train, "n_train")
        if n_train > n:
            raise InputError(
                f"n_train = {n_train} exceeds the {n} points; rows [0, n_train) are the training "
                "split, so pass n_train <= n (or None for a random 80/20 split)."
            )
    return labels, n_train
