"""``mnist1m``: MNIST grown to millions of digits by small random deformations, in the way of
infiMNIST / MNIST8M (Loosli, Canu & Bottou 2007, "Training invariant support vector machines
using selective sampling").

Rows. The train split holds the 60,000 official training digits, then deformed copies of them:
row r >= 60,000 deforms training digit r mod 60,000 (so every original gets its deformations in
turn). The test split is the 10,000 official test digits, undeformed: no test digit and no
deformation of one is ever in the train split, so a classifier trained on the train split and
scored on the test split (``knn_acc``) measures generalisation. ``n_samples`` counts all rows.

A deformation (one per row, all its randomness from ``numpy.random.default_rng((seed, batch))``
for the row's batch of ``BATCH`` rows, so the set is the same whatever machine makes it) is, for
the 28 x 28 image with pixel positions p measured from its centre,

    source(p) = A p + t + alpha * G_sigma * u(p),

sampled with bilinear interpolation (``scipy.ndimage.map_coordinates``, zero outside): A an affine
map of rotation ±``MAX_ROTATION_DEG``, scale 1 ± ``MAX_SCALE``, shear ±``MAX_SHEAR``; t a
translation of ±``MAX_SHIFT`` pixels (uniform draws); and an elastic field (Simard, Steinkraus &
Platt 2003): u uniform in [-1, 1]² per pixel, smoothed by a Gaussian of ``SIGMA`` pixels (``scipy.ndimage.gaussian_filter``) and
scaled by ``ALPHA``. These are smaller than Simard's (alpha 34, sigma 4), as infiMNIST keeps its
deformations small so that every copy stays a clean digit of its class. Measured: a 1-NN
classifier on 10,000 raw training digits labels deformed copies of 1,000 other training digits
90.4% right, about as well as 1,000 official test digits (92.0%; undeformed training digits:
95.7%), so a copy differs from its original about as much as a new writer's digit does.

Cache. The rows are generated once into
``<cache_dir>/mnist1m_v1_n<n_samples>_s<seed>_<digest>.npy`` (the digest: of the source's pixels
and labels, :func:`source_digest`)
(uint8, n x 784, written to a temporary file and renamed, under a file lock so that concurrent
sweep jobs generate it once) and read memory-mapped; the labels come from ``mnist.npz``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from pathlib import Path

import numpy as np
from filelock import FileLock
from scipy import ndimage

from nebench.data.dataset import Dataset
from nebench.errors import InputError

log = logging.getLogger(__name__)

VERSION = 1
SIDE = 28
N_TRAIN_ORIGINALS, N_TEST = 60_000, 10_000
#: deformation parameters (module docstring)
MAX_ROTATION_DEG, MAX_SCALE, MAX_SHEAR, MAX_SHIFT = 8.0, 0.08, 0.15, 1.0
ALPHA, SIGMA = 6.0, 3.0
#: rows deformed per step (and per seeded generator)
BATCH = 4096


def deform(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One random deformation of each 28 x 28 image (module docstring); uint8 in, uint8 out."""
    b = len(images)
    theta = np.deg2rad(rng.uniform(-MAX_ROTATION_DEG, MAX_ROTATION_DEG, b))
    scale = 1.0 + rng.uniform(-MAX_SCALE, MAX_SCALE, b)
    shear = rng.uniform(-MAX_SHEAR, MAX_SHEAR, b)
    shift = rng.uniform(-MAX_SHIFT, MAX_SHIFT, (b, 2))
    cos, sin = np.cos(theta) / scale, np.sin(theta) / scale
    # A = rotation(theta) @ shear @ 1/scale, as a (b, 2, 2) stack acting on (row, col)
    A = np.stack([np.stack([cos, -sin + cos * shear], -1), np.stack([sin, cos + sin * shear], -1)], 1)
    field = rng.uniform(-1.0, 1.0, (2, b, SIDE, SIDE)).astype(np.float32)
    field = ALPHA * ndimage.gaussian_filter(field, sigma=(0, 0, SIGMA, SIGMA), mode="constant")
    centre = (SIDE - 1) / 2
    grid = np.stack(np.meshgrid(np.arange(SIDE), np.arange(SIDE), indexing="ij")) - centre
    source = np.einsum("bij,jrc->ibrc", A, grid) + shift.T[:, :, None, None] + centre + field
    batch = np.broadcast_to(np.arange(b)[:, None, None], (b, SIDE, SIDE))
    out = ndimage.map_coordinates(
        images.astype(np.float32), [batch, source[0], source[1]], order=1, mode="constant"
    )
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def generate(X: np.ndarray, n_train: int, n_samples: int, seed: int, out: np.ndarray) -> None:
    """Fill ``out`` (n_samples x 784 uint8) with the rows of the module docstring from MNIST's
    ``X`` (70,000 x 784 uint8: ``n_train`` train rows, then the test rows)."""
    train, test = X[:n_train], X[n_train:]
    n_out_train = n_samples - len(test)
    out[: min(n_train, n_out_train)] = train[: min(n_train, n_out_train)]
    images = train.reshape(-1, SIDE, SIDE)
    for batch, start in enumerate(range(n_train, n_out_train, BATCH)):
        stop = min(start + BATCH, n_out_train)
        rng = np.random.default_rng((seed, batch))
        out[start:stop] = deform(images[np.arange(start, stop) % n_train], rng).reshape(-1, SIDE**2)
    out[n_out_train:] = test


def source_digest(mnist: Dataset) -> str:
    """8 hex digits of a hash of the source pixels and labels: a cache grown from another file
    (Fashion-MNIST has the same shape) is never read for this one."""
    digest = hashlib.blake2b(digest_size=4)
    for part in (np.ascontiguousarray(mnist.X, np.uint8), np.asarray(mnist.y, np.int64)):
        digest.update(part.data)
    digest.update(str(mnist.n_train).encode())
    return digest.hexdigest()


def load(mnist: Dataset, n_samples: int, seed: int, cache_dir: Path, name: str) -> Dataset:
    """The ``mnist1m`` dataset of ``n_samples`` rows grown from the ``mnist`` dataset."""
    n_test = len(mnist.X) - mnist.n_train
    if mnist.X.shape[1] != SIDE**2 or mnist.n_train != N_TRAIN_ORIGINALS or n_test != N_TEST:
        raise InputError(f"mnist1m grows the official MNIST (60,000 + 10,000 rows of 784 "
                         f"pixels); this mnist.npz has {mnist.n_train} + {n_test} rows of "
                         f"{mnist.X.shape[1]}: replace it with the documented file")
    if mnist.y is None:
        raise InputError("mnist1m labels its deformed digits from mnist.npz, which holds no y: "
                         "replace it with the documented file (X, y, n_train)")
    if int(n_samples) != n_samples or n_samples < len(mnist.X):
        raise InputError(f"dataset.n_samples={n_samples!r} must be a whole number >= 70,000 "
                         "(all of MNIST); use dataset.n to subsample fewer points")
    path = Path(cache_dir) / f"mnist1m_v{VERSION}_n{n_samples}_s{seed}_{source_digest(mnist)}.npy"
    if not path.exists():
        _build(mnist, n_samples, seed, path)
    X = np.load(path, mmap_mode="r")
    n_out_train = n_samples - n_test
    y = np.concatenate([mnist.y[np.arange(n_out_train) % mnist.n_train], mnist.y[mnist.n_train :]])
    return Dataset(X=X, y=y, n_train=n_out_train, name=name, label_names=mnist.label_names,
                   image_shape=(SIDE, SIDE))  # fmt: skip


def _build(mnist: Dataset, n_samples: int, seed: int, path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(f"{path}.lock")
        lock.acquire()
    except OSError as err:
        raise InputError(f"cannot write the mnist1m cache in {path.parent} ({err}): set "
                         "dataset.cache_dir to a writable folder") from err
    try:
        if path.exists():  # another job made it while this one waited
            return
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        start = time.perf_counter()
        log.info("generating %s (%d rows, once; later runs read it memory-mapped)", path, n_samples)
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(n_samples, SIDE**2))
        try:
            generate(np.asarray(mnist.X, np.uint8), mnist.n_train, n_samples, seed, out)
            out.flush()
            del out
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        log.info("mnist1m: %d rows in %.0f s, %.2f GB", n_samples, time.perf_counter() - start,
                 path.stat().st_size / 1e9)  # fmt: skip
    finally:
        lock.release()
