"""Datasets: one loader per kind of source, chosen by the Hydra ``dataset`` group.

Every ``conf/dataset/*.yaml`` has ``name`` (the dataset's name in result tables), ``loader``
(a key of :data:`LOADERS`), the loader's own parameters, and the shared preprocessing keys,
applied in this order after :func:`check_data`:

* ``n``: null = all rows, else a seeded random subsample of ``n`` rows (train rows stay first);
* ``pca``: null = off, else the number of PCA dims (sklearn, ``random_state=seed``; above
  100k points fitted on a seeded 100k subsample and applied in chunks);
* ``l2_normalize``: scale every row to unit Euclidean norm;
* ``encoder_input``: what a parametric method's encoder reads: ``pca`` (default) the rows above,
  ``raw`` the rows before PCA (``Dataset.X_encoder``, l2-normalised too where asked), as in the
  ICLR paper's parametric runs (tsne-to-umap-contrastive: the network reads MNIST's 784 pixels,
  the kNN graph comes from their PCA-50). The graph and the metrics always use ``X``.

``X`` always ends as C-contiguous float32; a float32 ``.npy`` stays memory-mapped when no
preprocessing needs a copy. Relative file names are resolved against ``data_dir``.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Mapping
from os import PathLike
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from nebench.data import files, infimnist, preprocess, synthetic
from nebench.data.checks import check_data
from nebench.data.dataset import Dataset
from nebench.errors import InputError

__all__ = ["LOADERS", "Dataset", "check_data", "load_dataset"]

log = logging.getLogger(__name__)

_MISSING = "???"  # OmegaConf's mark for a value the user must set
#: values of ``dataset.encoder_input`` (see the module docstring)
ENCODER_INPUTS = ("pca", "raw")


def _digits(data_dir: Path, seed: int, name: str) -> Dataset:
    """scikit-learn's 8x8 handwritten digits (1797 x 64, embedded in sklearn, no split)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return Dataset(
        X=bunch.data,
        y=bunch.target.astype(np.int64),
        n_train=len(bunch.data),
        name=name,
        label_names=[str(t) for t in bunch.target_names],
        image_shape=bunch.images.shape[1:],
    )


def _gaussians(
    data_dir: Path,
    seed: int,
    name: str,
    *,
    n_samples: int,
    dim: int,
    n_clusters: int,
    cluster_std: float = 1.0,
    centre_spread: float = 2.0,
) -> Dataset:
    """Gaussian clusters generated from ``seed``; label = cluster id."""
    X, y = synthetic.gaussian_clusters(
        n_samples, dim, n_clusters, cluster_std, centre_spread, np.random.default_rng(seed)
    )
    return Dataset(X=X, y=y, n_train=len(X), name=name)


def _rings(
    data_dir: Path,
    seed: int,
    name: str,
    *,
    n_rings: int = 1,
    n_per_ring: int = 1000,
    inner_radius: float = 3.5,
    outer_radius: float = 4.5,
    spacing: float = 20.0,
) -> Dataset:
    """Uniform 2-D rings generated from ``seed`` (umap-true-loss sec. 4); label = ring id."""
    X, y = synthetic.uniform_rings(
        n_rings, n_per_ring, inner_radius, outer_radius, spacing, np.random.default_rng(seed)
    )
    return Dataset(X=X, y=y, n_train=len(X), name=name)


def _npz(
    data_dir: Path,
    seed: int,
    name: str,
    *,
    file: str,
    subset: str | None = None,
    image_shape: list[int] | None = None,
    text_key: str | None = "text",
) -> Dataset:
    """A documented ``.npz`` archive under ``data_dir`` (keys X, y, n_train, label_names, and
    ``text_key``: one string per row, shown by the run's map when hovering a point)."""
    path = files.resolve(file, data_dir)
    files.require_file(path, "file")
    ds = files.read_npz(path, name, subset, text_key)
    ds.image_shape = None if image_shape is None else tuple(image_shape)
    return ds


def _vectors(
    data_dir: Path,
    seed: int,
    name: str,
    *,
    path: str,
    column: str = "embedding",
    label_column: str | None = None,
    image_shape: list[int] | None = None,
    text_column: str | None = None,
) -> Dataset:
    """Bring-your-own vectors: ``.npy`` (memory-mapped), ``.npz`` or ``.parquet``; rows that
    are flattened images carry their ``image_shape`` ([H, W] or [H, W, C], for image methods).
    Hover text for the run's map: an ``.npz``'s ``text`` key, a ``.parquet``'s ``text_column``."""
    p = files.resolve(path, data_dir)
    files.require_file(p, "path")
    suffix = p.suffix.lower()
    if text_column is not None and suffix != ".parquet":
        raise InputError(f"dataset.text_column is for .parquet files; {p.name} is {suffix}: set "
                         "dataset.text_column=null (an .npz carries its hover text under key text)")
    if suffix == ".npy":
        ds = files.read_npy(p, name)
    elif suffix == ".npz":
        ds = files.read_npz(p, name)
    elif suffix == ".parquet":
        ds = files.read_parquet(p, name, column, label_column, text_column)
    else:
        raise InputError(
            f"dataset.path={p} has an unknown file type {p.suffix!r}: give a .npy, .npz or "
            f".parquet file ({files.DOCS})"
        )
    if image_shape is not None:
        if int(np.prod(image_shape)) != ds.X.shape[1]:
            raise InputError(f"dataset.image_shape={list(image_shape)} holds {int(np.prod(image_shape))} "
                             f"values but the rows of {p.name} have {ds.X.shape[1]}: fix the shape")
        ds.image_shape = tuple(image_shape)
    return ds


def _mnist1m(
    data_dir: Path,
    seed: int,
    name: str,
    *,
    file: str = "mnist.npz",
    n_samples: int = 1_000_000,
    generation_seed: int = 0,
    cache_dir: str | None = None,
) -> Dataset:
    """MNIST grown to ``n_samples`` rows by small random deformations of the training digits
    (``nebench.data.infimnist``); generated once from ``generation_seed`` into ``cache_dir``
    (null: ``data_dir``) and memory-mapped."""
    mnist = _npz(data_dir, seed, "mnist", file=file)
    cache = data_dir if cache_dir is None else files.resolve(cache_dir, data_dir)
    return infimnist.load(mnist, n_samples, generation_seed, cache, name)


#: loader name (the ``loader`` key of a dataset config) -> function; its keyword-only
#: parameters are the loader's config keys
LOADERS: dict[str, Callable[..., Dataset]] = {
    "digits": _digits,
    "gaussians": _gaussians,
    "rings": _rings,
    "npz": _npz,
    "vectors": _vectors,
    "mnist1m": _mnist1m,
}


def load_dataset(cfg: Mapping, data_dir: str | PathLike, seed: int = 0, *,
                 fit_on_train: bool = False) -> Dataset:
    """Load and preprocess the dataset described by ``cfg`` (the Hydra ``dataset`` node or a
    plain dict); bad configs and bad files raise :class:`InputError` before heavy work.
    ``fit_on_train``: the PCA axes are fitted on the train rows alone (a held-out split must not
    shape the basis its rows are embedded in)."""
    params = _plain(cfg)
    loader_name = params.pop("loader", None)
    if loader_name not in LOADERS:
        raise InputError(
            f"unknown dataset loader {loader_name!r}: set dataset.loader to one of "
            f"{', '.join(LOADERS)}"
        )
    loader = LOADERS[loader_name]
    name = str(params.pop("name", loader_name))
    n = _optional_count(params.pop("n", None), "n")
    n_pca = _optional_count(params.pop("pca", None), "pca")
    l2 = params.pop("l2_normalize", False)
    if not isinstance(l2, bool):
        raise InputError(f"dataset.l2_normalize={l2!r} must be true or false")
    encoder_input = params.pop("encoder_input", "pca")
    if encoder_input not in ENCODER_INPUTS:
        raise InputError(f"dataset.encoder_input={encoder_input!r} must be one of "
                         f"{', '.join(ENCODER_INPUTS)}")
    kwargs = _loader_kwargs(loader, loader_name, params)

    ds = loader(Path(data_dir), seed, name, **kwargs)
    check_data(ds.X)
    if n is not None:
        ds = preprocess.subsample(ds, n, seed)
    if n_pca is not None:  # casts chunk by chunk: no float32 copy of all the raw data
        X = preprocess.pca(ds.X, n_pca, seed, fit_rows=ds.n_train if fit_on_train else None)
        if encoder_input == "raw":
            ds.X_encoder = preprocess.to_float32(ds.X)
            if l2:
                ds.X_encoder = preprocess.l2_normalize(ds.X_encoder)
    else:  # no PCA: the encoder reads X either way
        X = preprocess.to_float32(ds.X)
    if l2:
        X = preprocess.l2_normalize(X)
    ds.X = X
    if ds.image_shape is not None and int(np.prod(ds.image_shape)) != X.shape[1]:
        ds.image_shape = None
    log.info(
        "dataset %s: %d points x %d dims, n_train=%d, %s",
        name,
        X.shape[0],
        X.shape[1],
        ds.n_train,
        "no labels" if ds.y is None else f"{len(np.unique(ds.y[ds.y >= 0]))} labels",
    )
    return ds


def _plain(cfg: Mapping) -> dict:
    """The config as a plain dict with interpolations such as ``${paths.data_dir}`` resolved."""
    if isinstance(cfg, DictConfig):
        try:
            return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
        except OmegaConfBaseException as err:
            raise InputError(
                f"cannot resolve the dataset config ({err}): a dataset path like "
                f"${{paths.data_dir}}/file.npy needs paths.data_dir in the config; set it, or "
                f"give the dataset file as an absolute path"
            ) from err
    if not isinstance(cfg, Mapping):
        raise InputError(f"dataset config must be a mapping, got {type(cfg).__name__}")
    return dict(cfg)


def _optional_count(value: object, key: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"dataset.{key}={value!r} must be a positive integer or null")
    return value


def _loader_kwargs(loader: Callable[..., Dataset], loader_name: str, params: dict) -> dict:
    """Check ``params`` against the loader's keyword-only parameters."""
    accepted = {
        p.name: p
        for p in inspect.signature(loader).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    }
    for key in params:
        if key not in accepted:
            raise InputError(
                f"unknown key dataset.{key} for loader {loader_name!r}: it takes "
                f"{', '.join(accepted) or 'no parameters'} besides name, n, pca, l2_normalize, encoder_input"
            )
    for key, p in accepted.items():
        if params.get(key, p.default) in (inspect.Parameter.empty, _MISSING):
            raise InputError(
                f"missing key dataset.{key}: loader {loader_name!r} needs it; set it in the "
                f"dataset config or on the command line, e.g. dataset.{key}=..."
            )
    return params
