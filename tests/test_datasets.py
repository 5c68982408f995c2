"""Dataset configs, loaders, preprocessing and input checks (nebench.datasets)."""

from __future__ import annotations

import functools
import os
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from sklearn.decomposition import PCA
from sklearn.neighbors import NearestNeighbors

from nebench.data import preprocess
from nebench.datasets import LOADERS, Dataset, check_data, load_dataset
from nebench.errors import InputError

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
CONFIGS = sorted(p.stem for p in (CONF_DIR / "dataset").glob("*.yaml"))
DATA_DIR = Path(
    os.environ.get("NEBENCH_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data")
)
#: bring-your-own vector sets whose files are not shipped
PAPER_SETS = ["arxiv", "imagenet", "pubmed", "wikipedia"]
#: config -> (n, d, n_train, file it needs under DATA_DIR or None)
EXPECTED = {
    "digits": (1797, 64, 1797, None),
    "gaussians": (10000, 50, 10000, None),
    "ring": (1000, 2, 1000, None),
    "rings20": (20000, 2, 20000, None),
    "mnist": (70000, 50, 60000, "mnist.npz"),
    "fashion_mnist": (70000, 50, 60000, "fashion_mnist.npz"),
    "arxiv_minilm": (16000, 384, 16000, "arxiv_minilm.npz"),
    "mammoth": (50000, 3, 50000, "mammoth.npz"),
    "mammoth10k": (10000, 3, 10000, "mammoth.npz"),
}


def compose_dataset(name: str, data_dir: Path | str = DATA_DIR, overrides: tuple = ()):
    """The ``dataset`` node as the runner sees it (group composed, paths.data_dir set)."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        cfg = compose(overrides=[f"+dataset={name}", f"+paths.data_dir={data_dir}", *overrides])
    return cfg.dataset


@functools.cache
def load_config(name: str) -> Dataset:
    """``load_dataset`` of a config with seed 0, loaded once per test session."""
    return load_dataset(compose_dataset(name), DATA_DIR, seed=0)


def need_file(name: str | None) -> None:
    if name is not None and not (DATA_DIR / name).is_file():
        pytest.skip(f"{DATA_DIR / name} is absent (set NEBENCH_DATA_DIR to the data directory)")


# ---------------------------------------------------------------- configs


def test_every_config_is_tested():
    assert set(CONFIGS) == set(EXPECTED) | set(PAPER_SETS) | {"vectors", "gaussians_1m", "mnist1m"}


@pytest.mark.parametrize("name", CONFIGS)
def test_config_composes_with_shared_schema(name):
    ds = compose_dataset(name)
    assert ds.name == name
    assert ds.loader in LOADERS
    for key in ("n", "pca", "l2_normalize"):
        assert key in ds


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_config_loads(name):
    n, d, n_train, needed = EXPECTED[name]
    need_file(needed)
    ds = load_config(name)
    assert isinstance(ds, Dataset) and ds.name == name
    assert ds.X.shape == (n, d)
    assert ds.X.dtype == np.float32 and ds.X.flags.c_contiguous
    assert ds.n_train == n_train
    assert ds.y.shape == (n,) and ds.y.dtype == np.int64
    assert np.isfinite(ds.X).all()


def test_mnist_labels_and_pca_input():
    need_file("mnist.npz")
    ds = load_config("mnist")
    assert ds.label_names == [str(k) for k in range(10)]
    assert ds.y[0] == 5  # first MNIST training label
    assert ds.image_shape is None  # PCA replaced the pixels
    raw = load_dataset(
        compose_dataset("mnist", overrides=("dataset.pca=null", "dataset.n=500")), DATA_DIR
    )
    assert raw.X.shape == (500, 784) and raw.image_shape == (28, 28)
    assert raw.X.max() == 255.0


def test_mammoth10k_is_the_labelled_subset():
    need_file("mammoth.npz")
    full, sub = load_config("mammoth"), load_config("mammoth10k")
    assert (full.y == -1).sum() == 40000
    assert (sub.y >= 0).all() and set(np.unique(sub.y)) == set(range(11))
    rows = {tuple(r) for r in full.X[full.y >= 0]}
    assert all(tuple(r) in rows for r in sub.X[:100])


def test_arxiv_minilm_is_unit_norm():
    need_file("arxiv_minilm.npz")
    ds = load_config("arxiv_minilm")
    np.testing.assert_allclose(np.linalg.norm(ds.X, axis=1), 1.0, atol=2e-3)
    assert ds.label_names[0] == "cs.CV" and len(ds.label_names) == 45


@pytest.mark.parametrize("name", PAPER_SETS)
def test_paper_sets_point_at_data_dir(name, tmp_path):
    if (DATA_DIR / Path(str(compose_dataset(name).path)).name).is_file():
        pytest.skip(f"{name} vectors are present; loading them is a benchmark, not a unit test")
    with pytest.raises(InputError, match=str(tmp_path)):
        load_dataset(compose_dataset(name, data_dir=tmp_path), tmp_path)


def test_gaussians_1m_is_float32_throughout():
    tracemalloc.start()
    ds = load_dataset(compose_dataset("gaussians_1m"), DATA_DIR)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert ds.X.shape == (1_000_000, 64) and ds.X.dtype == np.float32
    assert len(np.unique(ds.y)) == 100
    assert peak < 1.5 * ds.X.nbytes  # no float64 copy of the matrix


# ---------------------------------------------------------------- synthetic sets


def test_gaussian_clusters_structure_and_seed():
    cfg = dict(compose_dataset("gaussians"), n_samples=2000)
    a, b, c = (load_dataset(cfg, DATA_DIR, seed=s) for s in (0, 0, 1))
    np.testing.assert_array_equal(a.X, b.X)
    assert not np.array_equal(a.X, c.X)
    assert set(np.unique(a.y)) == set(range(10))
    idx = NearestNeighbors(n_neighbors=16).fit(a.X).kneighbors(return_distance=False)
    assert (a.y[idx] == a.y[:, None]).mean() > 0.99  # each cluster is its own kNN component


def test_ring_geometry():
    ds = load_dataset(compose_dataset("ring"), DATA_DIR, seed=3)
    r = np.linalg.norm(ds.X, axis=1)
    assert r.min() >= 3.5 - 1e-5 and r.max() <= 4.5 + 1e-5
    # uniform by area: half the points lie inside radius sqrt((3.5^2 + 4.5^2) / 2)
    assert abs((r < np.sqrt((3.5**2 + 4.5**2) / 2)).mean() - 0.5) < 0.06
    angle = np.arctan2(ds.X[:, 1], ds.X[:, 0])
    assert np.histogram(angle, bins=8)[0].min() > 80  # all around the ring


def test_rings20_rings_do_not_share_knn_edges():
    ds = load_config("rings20")
    assert np.bincount(ds.y).tolist() == [1000] * 20
    idx = NearestNeighbors(n_neighbors=16).fit(ds.X).kneighbors(return_distance=False)
    assert (ds.y[idx] == ds.y[:, None]).all()
    for ring in (0, 19):
        pts = ds.X[ds.y == ring]
        r = np.linalg.norm(pts - pts.mean(axis=0), axis=1)
        assert r.min() > 3.3 and r.max() < 4.7


def test_rings_that_overlap_are_rejected():
    with pytest.raises(InputError, match="spacing"):
        load_dataset(dict(compose_dataset("rings20"), spacing=5.0), DATA_DIR)


# ---------------------------------------------------------------- preprocessing


@pytest.fixture
def split_npz(tmp_path):
    """100 points with X[i] = (i, i^2 mod 7, 1) and a 70/30 train/test split."""
    i = np.arange(100)
    X = np.stack([i, i**2 % 7, np.ones_like(i)], axis=1).astype(np.float64)
    np.savez(tmp_path / "split.npz", X=X, y=i % 3, n_train=np.int64(70))
    return tmp_path


def test_subsample_keeps_train_first(split_npz):
    cfg = {"name": "s", "loader": "npz", "file": "split.npz", "n": 40}
    ds = load_dataset(cfg, split_npz, seed=0)
    rows = ds.X[:, 0].astype(int)
    assert ds.X.shape == (40, 3) and ds.X.dtype == np.float32
    assert ds.n_train == np.count_nonzero(rows < 70) and 0 < ds.n_train < 40
    assert (rows[: ds.n_train] < 70).all() and (rows[ds.n_train :] >= 70).all()
    assert (np.diff(rows) > 0).all()
    np.testing.assert_array_equal(ds.y, rows % 3)
    assert np.array_equal(load_dataset(cfg, split_npz, seed=0).X, ds.X)
    assert not np.array_equal(load_dataset(cfg, split_npz, seed=1).X, ds.X)


def test_pca_dims_match_sklearn():
    ds = load_dataset({"loader": "digits", "pca": 10}, DATA_DIR, seed=0)
    from sklearn.datasets import load_digits

    ref = PCA(n_components=10, random_state=0).fit_transform(load_digits().data)
    assert ds.X.shape == (1797, 10) and ds.X.dtype == np.float32 and ds.X.flags.c_contiguous
    assert ds.image_shape is None
    np.testing.assert_allclose(np.abs(ds.X), np.abs(ref), atol=1e-3)


def test_pca_on_large_data_fits_a_subsample_and_transforms_in_chunks(monkeypatch):
    monkeypatch.setattr(preprocess, "PCA_FIT_MAX", 500)
    monkeypatch.setattr(preprocess, "CHUNK_ROWS", 300)
    X = load_dataset({"loader": "digits"}, DATA_DIR).X
    Y = preprocess.pca(X, 5, seed=0)
    full = PCA(n_components=5).fit(X)
    assert Y.shape == (1797, 5) and Y.dtype == np.float32
    # axes fitted on 500 points capture almost the variance of the full fit
    assert Y.var(axis=0).sum() > 0.95 * full.explained_variance_.sum()


def test_held_out_rows_do_not_shape_the_pca(split_npz):
    """fit_on_train: the axes come from the 70 train rows alone; the 30 test rows are only
    projected (without it, all 100 rows shape the basis)."""
    cfg = {"name": "s", "loader": "npz", "file": "split.npz", "pca": 2}
    X = np.load(split_npz / "split.npz")["X"].astype(np.float32)
    train_only = load_dataset(cfg, split_npz, seed=0, fit_on_train=True).X
    ref = PCA(n_components=2, random_state=0).fit(X[:70]).transform(X)
    np.testing.assert_allclose(np.abs(train_only), np.abs(ref), atol=1e-4)
    everything = load_dataset(cfg, split_npz, seed=0).X
    assert not np.allclose(np.abs(everything), np.abs(train_only), atol=1e-2)
    with pytest.raises(InputError, match=r"fitted on the 2 train rows \(holdout=true\)"):
        preprocess.pca(X, 3, seed=0, fit_rows=2)


def test_encoder_input_raw_keeps_the_rows_before_pca():
    from sklearn.datasets import load_digits

    raw = load_digits().data
    kept = load_dataset({"loader": "digits", "pca": 10, "n": 500, "encoder_input": "raw"}, DATA_DIR)
    pca_only = load_dataset({"loader": "digits", "pca": 10, "n": 500}, DATA_DIR)
    assert kept.X.shape == (500, 10) and kept.X_encoder.shape == (500, 64)
    assert kept.X_encoder.dtype == np.float32 and pca_only.X_encoder is None
    np.testing.assert_array_equal(kept.X, pca_only.X)  # the graph's and the metrics' rows
    # the same subsample, row for row: raw rows of digits, whose PCA is X
    assert NearestNeighbors(n_neighbors=1).fit(raw).kneighbors(kept.X_encoder)[0].max() == 0
    ref = PCA(n_components=10, random_state=0).fit_transform(kept.X_encoder)
    np.testing.assert_allclose(np.abs(ref), np.abs(kept.X), atol=1e-3)
    no_pca = load_dataset({"loader": "digits", "encoder_input": "raw"}, DATA_DIR)
    assert no_pca.X_encoder is None  # without PCA the encoder reads X itself
    with pytest.raises(InputError, match="encoder_input"):
        load_dataset({"loader": "digits", "encoder_input": "pixels"}, DATA_DIR)


def test_l2_normalize():
    ds = load_dataset({"loader": "digits", "l2_normalize": True}, DATA_DIR)
    np.testing.assert_allclose(np.linalg.norm(ds.X, axis=1), 1.0, rtol=1e-5)


# ---------------------------------------------------------------- bring-your-own vectors


def test_vectors_npy_is_memory_mapped(tmp_path):
    X = np.random.default_rng(0).normal(size=(50, 4)).astype(np.float32)
    X[7] = 0.0
    np.save(tmp_path / "v.npy", X)
    ds = load_dataset({"loader": "vectors", "path": "v.npy"}, tmp_path)  # relative to data_dir
    assert isinstance(ds.X, np.memmap) and not ds.X.flags.writeable
    np.testing.assert_array_equal(ds.X, X)
    assert ds.y is None and ds.n_train == 50
    normed = load_dataset(
        {"loader": "vectors", "path": str(tmp_path / "v.npy"), "l2_normalize": True}, "/nonexistent"
    )
    assert not isinstance(normed.X, np.memmap)
    assert (normed.X[7] == 0).all() and np.isfinite(normed.X).all()
    np.testing.assert_array_equal(np.load(tmp_path / "v.npy"), X)  # file untouched


def test_vectors_npz(tmp_path):
    X = np.arange(30, dtype=np.float16).reshape(10, 3)
    np.savez(tmp_path / "v.npz", X=X, y=np.arange(10) % 2, n_train=np.int64(6))
    ds = load_dataset({"loader": "vectors", "path": str(tmp_path / "v.npz"), "n": 5}, tmp_path)
    assert ds.X.dtype == np.float32 and ds.X.shape == (5, 3)
    assert ds.n_train == np.count_nonzero(ds.X[:, 0] < 18)


def test_vectors_of_images_carry_their_shape(tmp_path):
    np.save(tmp_path / "img.npy", np.zeros((4, 2 * 3 * 3), dtype=np.uint8))
    cfg = {"loader": "vectors", "path": "img.npy", "image_shape": [2, 3, 3]}
    assert load_dataset(cfg, tmp_path).image_shape == (2, 3, 3)
    with pytest.raises(InputError, match=r"image_shape=\[4, 4\] holds 16 values .* have 18"):
        load_dataset({**cfg, "image_shape": [4, 4]}, tmp_path)


def test_vectors_parquet(tmp_path):
    import pandas as pd

    X = np.random.default_rng(0).normal(size=(6, 3)).astype(np.float32)
    labels = ["cat", "dog", None, "cat", "dog", "cat"]
    pd.DataFrame({"emb": list(X), "kind": labels}).to_parquet(tmp_path / "v.parquet")
    cfg = {"loader": "vectors", "path": "v.parquet", "column": "emb", "label_column": "kind"}
    ds = load_dataset(cfg, tmp_path)
    np.testing.assert_array_equal(ds.X, X)
    assert ds.y[2] == -1
    assert [ds.label_names[k] if k >= 0 else None for k in ds.y] == labels


# ---------------------------------------------------------------- bad input


def test_missing_file_names_path_and_fix(tmp_path):
    with pytest.raises(InputError) as err:
        load_dataset(compose_dataset("mnist", data_dir=tmp_path), tmp_path)
    msg = str(err.value)
    for word in (str(tmp_path / "mnist.npz"), "paths.data_dir", "NEBENCH_DATA_DIR", "README"):
        assert word in msg


@pytest.mark.parametrize("suffix", [".npz", ".npy", ".parquet"])
def test_corrupt_file(tmp_path, suffix):
    (tmp_path / f"bad{suffix}").write_bytes(b"PK\x03\x04 this is not a real file")
    with pytest.raises(InputError, match="corrupt"):
        load_dataset({"loader": "vectors", "path": f"bad{suffix}"}, tmp_path)


def test_truncated_npz(tmp_path):
    np.savez_compressed(tmp_path / "t.npz", X=np.ones((1000, 10)))
    data = (tmp_path / "t.npz").read_bytes()
    (tmp_path / "t.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="corrupt"):
        load_dataset({"loader": "npz", "file": "t.npz"}, tmp_path)


def test_npz_without_x(tmp_path):
    np.savez(tmp_path / "nox.npz", data=np.ones((3, 2)))
    with pytest.raises(InputError, match="no key 'X'.*data"):
        load_dataset({"loader": "npz", "file": "nox.npz"}, tmp_path)


def test_parquet_bad_columns(tmp_path):
    import pandas as pd

    pd.DataFrame({"emb": [[1.0, 2.0], [3.0]]}).to_parquet(tmp_path / "r.parquet")
    with pytest.raises(InputError, match="no column 'embedding'.*emb"):
        load_dataset({"loader": "vectors", "path": "r.parquet"}, tmp_path)
    with pytest.raises(InputError, match="same length"):
        load_dataset({"loader": "vectors", "path": "r.parquet", "column": "emb"}, tmp_path)


def test_config_errors():
    with pytest.raises(InputError, match="missing key dataset.path"):
        load_dataset(compose_dataset("vectors"), DATA_DIR)
    with pytest.raises(InputError, match="unknown dataset loader 'nope'.*digits"):
        load_dataset({"loader": "nope"}, DATA_DIR)
    with pytest.raises(InputError, match="unknown key dataset.pcaa"):
        load_dataset({"loader": "digits", "pcaa": 5}, DATA_DIR)
    with pytest.raises(InputError, match="dataset.n=2000 but digits has only 1797"):
        load_dataset({"loader": "digits", "n": 2000}, DATA_DIR)
    with pytest.raises(InputError, match="dataset.pca=100 .* at most 64"):
        load_dataset({"loader": "digits", "pca": 100}, DATA_DIR)
    with pytest.raises(InputError, match="unknown file type"):
        load_dataset({"loader": "vectors", "path": __file__}, DATA_DIR)


def test_unresolved_data_dir_interpolation():
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"loader": "vectors", "path": "${paths.data_dir}/x.npy"})
    with pytest.raises(InputError, match="paths.data_dir"):
        load_dataset(cfg, DATA_DIR)


# ---------------------------------------------------------------- check_data


@pytest.mark.parametrize(
    ("X", "words"),
    [
        (np.zeros((0, 3)), "empty"),
        (np.zeros(5), "1-D data: reshape to \\(n, 1\\)"),
        (np.zeros((2, 2, 2)), "3-D data"),
        (np.array([["a", "b"], ["c", "d"]]), "not numeric"),
        (np.array([[1, None], [2, 3]], dtype=object), "not numeric"),
    ],
)
def test_check_data_rejects_bad_shapes_and_dtypes(X, words):
    with pytest.raises(InputError, match=words):
        check_data(X)


def test_check_data_counts_non_finite_rows():
    X = np.ones((10, 3), dtype=np.float32)
    X[4, 1] = np.nan
    X[8] = np.inf
    with pytest.raises(InputError, match="2 of 10 rows \\(first at row 4\\)"):
        check_data(X)


def test_check_data_min_points():
    msg = "n=5 points but k=15 neighbours need at least 16: use more points or a smaller method.n_neighbors"
    with pytest.raises(InputError, match=msg.replace(".", "\\.")):
        check_data(np.ones((5, 2)), min_points=16)
    check_data(np.ones((16, 2)), min_points=16)


def test_check_data_scans_a_memmap_in_chunks(tmp_path):
    X = np.lib.format.open_memmap(
        tmp_path / "big.npy", mode="w+", dtype=np.float32, shape=(200_000, 64)
    )
    X[:] = 1.0
    X[150_001, 3] = np.nan
    X.flush()
    X = np.load(tmp_path / "big.npy", mmap_mode="r")
    tracemalloc.start()
    with pytest.raises(InputError, match="1 of 200000 rows \\(first at row 150001\\)"):
        check_data(X)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < X.nbytes / 4  # chunked: no full-size temporary


def test_load_dataset_rejects_nan_rows_before_preprocessing(tmp_path):
    X = np.ones((20, 4), dtype=np.float32)
    X[3, 0] = np.nan
    np.save(tmp_path / "nan.npy", X)
    with pytest.raises(InputError, match="first at row 3"):
        load_dataset({"loader": "vectors", "path": "nan.npy", "pca": 2}, tmp_path)


# ---------------------------------------------------------------- mnist1m


def test_mnist1m_grows_mnist_keeps_the_test_digits_apart_and_caches(tmp_path):
    """80,000 rows: the 60,000 train digits, 10,000 deformed copies of the first 10,000 of them,
    the 10,000 test digits untouched; generated once, the same from the same seed."""
    need_file("mnist.npz")
    overrides = ("dataset.n_samples=80000", f"dataset.cache_dir={tmp_path}", "dataset.pca=null")
    cfg = compose_dataset("mnist1m", overrides=overrides)
    ds = load_dataset(cfg, DATA_DIR, seed=0)
    mnist = np.load(DATA_DIR / "mnist.npz")
    X0, y0 = mnist["X"], mnist["y"]
    assert ds.X.shape == (80000, 784) and ds.n_train == 70000 and ds.image_shape == (28, 28)
    assert np.array_equal(ds.X[:60000], X0[:60000]) and np.array_equal(ds.X[70000:], X0[60000:])
    assert np.array_equal(ds.y[60000:70000], y0[:10000]) and np.array_equal(ds.y[70000:], y0[60000:])
    copies, originals = ds.X[60000:70000].astype(float), X0[:10000].astype(float)
    assert not np.array_equal(copies, originals)  # deformed ...
    corr = [np.corrcoef(copies[i], originals[i])[0, 1] for i in range(0, 10000, 50)]
    assert np.median(corr) > 0.5  # ... yet close to their digit
    # a deformed copy stays a digit of its class: its nearest undeformed digit shares its label
    rows = np.arange(0, 10000, 100)
    nearest = [np.argmin(((originals - copies[i]) ** 2).sum(1)) for i in rows]
    assert np.mean(y0[nearest] == y0[rows]) >= 0.9
    cached = list(tmp_path.glob("mnist1m_*.npy"))
    assert len(cached) == 1 and isinstance(ds.X, np.ndarray)
    mtime = cached[0].stat().st_mtime_ns
    again = load_dataset(compose_dataset("mnist1m", overrides=overrides[:2] + ("dataset.n=5000",)),
                         DATA_DIR, seed=1)  # fmt: skip
    assert cached[0].stat().st_mtime_ns == mtime  # read, not regenerated
    assert again.X.shape == (5000, 50)  # PCA to 50 like mnist


def test_mnist1m_cache_is_keyed_by_its_source():
    """A cache grown from one 70,000-row file is never read for another of the same shape."""
    from nebench.data import infimnist
    from nebench.data.dataset import Dataset

    rng = np.random.default_rng(0)
    X, y = rng.integers(0, 256, (50, 784), dtype=np.uint8), rng.integers(0, 10, 50)
    digest = infimnist.source_digest(Dataset(X=X, y=y, n_train=40, name="m"))
    assert digest == infimnist.source_digest(Dataset(X=X.copy(), y=y.copy(), n_train=40, name="m"))
    other_pixels, other_labels = X.copy(), (y + 1) % 10
    other_pixels[3, 5] ^= 1
    for changed in (Dataset(X=other_pixels, y=y, n_train=40, name="m"),
                    Dataset(X=X, y=other_labels, n_train=40, name="m"),
                    Dataset(X=X, y=y, n_train=41, name="m")):  # fmt: skip
        assert infimnist.source_digest(changed) != digest


def test_mnist1m_needs_a_writable_cache_and_enough_rows(tmp_path):
    need_file("mnist.npz")
    small = compose_dataset("mnist1m", overrides=("dataset.n_samples=1000",))
    with pytest.raises(InputError, match="n_samples"):
        load_dataset(small, DATA_DIR)
    blocked = tmp_path / "file"
    blocked.write_text("")
    cfg = compose_dataset("mnist1m", overrides=("dataset.n_samples=70000", f"dataset.cache_dir={blocked}"))
    with pytest.raises(InputError, match="cache_dir"):
        load_dataset(cfg, DATA_DIR)
