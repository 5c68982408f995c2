"""Readers for data files (.npy, .npz, .parquet) that turn every failure into an InputError.

File formats: one row per point. An ``.npz`` holds ``X`` and optionally ``y`` (int labels, -1 =
unlabelled), ``n_train`` (first rows = train split) and ``label_names``, as documented for the
shared data directory (its README.md); a ``.npy`` holds ``X`` only and is memory-mapped; a
``.parquet`` holds one embedding (list/array) per row in one column and optionally a label column.
"""

from __future__ import annotations

import zipfile
import zlib
from os import PathLike
from pathlib import Path

import numpy as np

from nebench.data.dataset import Dataset
from nebench.errors import InputError

DOCS = "see the README's Datasets section"
#: exceptions NumPy / zipfile / pyarrow raise on a corrupt, truncated or foreign file
_READ_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    ValueError,
    EOFError,
    zipfile.BadZipFile,
    zlib.error,
)


def resolve(path: str | PathLike, data_dir: str | PathLike) -> Path:
    """``path`` itself when absolute, else ``data_dir / path``."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else Path(data_dir).expanduser() / p


def require_file(path: Path, key: str) -> None:
    """Raise InputError naming ``path`` and the ways to fix it when it is not a file."""
    if not path.is_file():
        raise InputError(
            f"dataset file not found: {path}. Put the file there, or set the data directory with "
            f"paths.data_dir=... or the NEBENCH_DATA_DIR environment variable, or point "
            f"dataset.{key} at the file ({DOCS})."
        )


def _unreadable(path: Path, err: BaseException) -> InputError:
    return InputError(
        f"cannot read {path} ({type(err).__name__}: {err}): the file is corrupt, truncated or "
        f"not in the expected format; replace it with a good copy ({DOCS})"
    )


def read_npy(path: Path, name: str) -> Dataset:
    """A ``.npy`` matrix, memory-mapped read-only; no labels, no split."""
    try:
        X = np.load(path, mmap_mode="r", allow_pickle=False)
    except _READ_ERRORS as err:
        raise _unreadable(path, err) from err
    return Dataset(X=X, y=None, n_train=len(X) if X.ndim else 0, name=name)


def read_npz(
    path: Path, name: str, subset: str | None = None, text_key: str | None = "text"
) -> Dataset:
    """An ``.npz`` archive with ``X`` and optional ``y``, ``n_train``, ``label_names`` and
    ``text_key`` (one string per row, for the map's hover; default key ``text``); with
    ``subset`` the rows listed by that key's index array (e.g. mammoth's ``subset10k``)."""
    wanted = {"X", "y", "n_train", "label_names", subset, text_key}
    try:
        archive = np.load(path, allow_pickle=False)
    except _READ_ERRORS as err:
        raise _unreadable(path, err) from err
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise InputError(f"{path} holds a single array, not an .npz archive: rename it to .npy")
    try:
        with archive:
            keys = archive.files
            arrays = {k: archive[k] for k in keys if k in wanted}
    except _READ_ERRORS as err:
        raise _unreadable(path, err) from err
    if "X" not in arrays:
        raise InputError(
            f"{path} has no key 'X' (keys: {', '.join(keys) or 'none'}): store the data matrix "
            f"under X, e.g. np.savez(path, X=X, y=y)"
        )
    if subset is not None and subset not in arrays:
        raise InputError(
            f"{path} has no key {subset!r} for dataset.subset (keys: {', '.join(keys)}): "
            f"set dataset.subset=null or to one of those keys"
        )
    X = arrays["X"]
    n = len(X) if X.ndim else 0
    ds = Dataset(
        X=X,
        y=_labels(arrays["y"], n, path) if "y" in arrays else None,
        n_train=_n_train(arrays.get("n_train"), n, path),
        name=name,
        label_names=list(arrays["label_names"]) if "label_names" in arrays else None,
    )
    if text_key is not None and text_key in arrays:
        ds.text = _text(arrays[text_key], n, path, f"key {text_key!r}")
    elif text_key not in (None, "text"):
        raise InputError(f"{path} has no key {text_key!r} for dataset.text_key (keys: "
                         f"{', '.join(keys)}): set dataset.text_key=null or to one of those keys")
    if subset is None:
        return ds
    idx = arrays[subset]
    if idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer) or np.any((idx < 0) | (idx >= n)):
        raise InputError(
            f"{path}: key {subset!r} must be a 1-D array of row indices in [0, {n}): "
            f"fix the file or set dataset.subset=null"
        )
    return take_rows(ds, idx)


def read_parquet(
    path: Path, name: str, column: str, label_column: str | None, text_column: str | None = None
) -> Dataset:
    """A parquet table: embeddings (one list/array per row) in ``column``; integer or string
    labels in ``label_column`` (strings become ids into ``label_names``; nulls become -1);
    hover text for the map in ``text_column`` (nulls become empty)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    try:
        names = pq.read_schema(path).names
    except (*_READ_ERRORS, pa.ArrowException) as err:
        raise _unreadable(path, err) from err
    for key, col in (("column", column), ("label_column", label_column), ("text_column", text_column)):
        if col is not None and col not in names:
            raise InputError(
                f"{path} has no column {col!r} (columns: {', '.join(names)}): "
                f"set dataset.{key}=<one of those columns>"
            )
    try:
        table = pq.read_table(
            path, columns=list(dict.fromkeys(c for c in (column, label_column, text_column) if c))
        )
    except (*_READ_ERRORS, pa.ArrowException) as err:
        raise _unreadable(path, err) from err
    emb = table.column(column).combine_chunks()
    if not (
        pa.types.is_list(emb.type)
        or pa.types.is_large_list(emb.type)
        or pa.types.is_fixed_size_list(emb.type)
    ):
        raise InputError(
            f"{path}: column {column!r} holds {emb.type}, not one embedding (list/array) per row: "
            f"set dataset.column to the embedding column"
        )
    lengths = np.asarray(pc.fill_null(pc.list_value_length(emb), -1))
    if emb.null_count or (len(lengths) and np.any(lengths != lengths[0])):
        raise InputError(
            f"{path}: column {column!r} has {emb.null_count} null rows and row lengths "
            f"{sorted(set(lengths.tolist()))[:5]}: every row needs an embedding of the same length"
        )
    d = int(lengths[0]) if len(lengths) else 0
    X = emb.flatten().to_numpy(zero_copy_only=False).reshape(len(emb), d)
    y, label_names = None, None
    if label_column is not None:
        lab = table.column(label_column).combine_chunks()
        if pa.types.is_integer(lab.type):
            y = np.asarray(pc.fill_null(lab, -1)).astype(np.int64)
        else:
            enc = pc.dictionary_encode(lab.cast(pa.string()))
            y = np.asarray(pc.fill_null(enc.indices, -1)).astype(np.int64)
            label_names = enc.dictionary.to_pylist()
    text = None
    if text_column is not None:
        text = np.array(
            ["" if t is None else str(t) for t in table.column(text_column).to_pylist()], dtype=object
        )
    return Dataset(X=X, y=y, n_train=len(X), name=name, label_names=label_names, text=text)


def take_rows(ds: Dataset, idx: np.ndarray) -> Dataset:
    """The rows ``idx`` of ``ds``, train rows first (in ``idx`` order), ``n_train`` updated."""
    idx = idx[np.argsort(idx >= ds.n_train, kind="stable")]
    return Dataset(
        X=ds.X[idx],
        y=None if ds.y is None else ds.y[idx],
        n_train=int(np.count_nonzero(idx < ds.n_train)),
        name=ds.name,
        label_names=ds.label_names,
        image_shape=ds.image_shape,
        text=None if ds.text is None else ds.text[idx],
    )


def _labels(y: np.ndarray, n: int, path: Path) -> np.ndarray:
    if y.shape != (n,) or not np.issubdtype(y.dtype, np.integer):
        raise InputError(
            f"{path}: y has shape {y.shape} and dtype {y.dtype}, but must hold one integer label "
            f"per row of X (shape ({n},), -1 = unlabelled): fix y or drop it from the file"
        )
    return y.astype(np.int64, copy=False)


def _text(text: np.ndarray, n: int, path: Path, what: str) -> np.ndarray:
    if text.shape != (n,) or text.dtype.kind not in "US":
        raise InputError(
            f"{path}: {what} has shape {text.shape} and dtype {text.dtype}, but must hold one "
            f"string per row of X (shape ({n},), e.g. np.array(titles, dtype=str)): fix it or "
            f"drop it from the file"
        )
    return text


def _n_train(value: np.ndarray | None, n: int, path: Path) -> int:
    if value is None:
        return n
    if value.size != 1 or not np.issubdtype(value.dtype, np.integer) or not 0 <= int(value) <= n:
        raise InputError(
            f"{path}: n_train={value!r} must be one integer in [0, {n}] (the number of leading "
            f"train rows): fix it or drop it from the file"
        )
    return int(value)
