"""Baseline adapters (openTSNE, umap-learn, PCA) and their Hydra configs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import openTSNE
import pytest
from conftest import check_cpu_method_config
from sklearn.datasets import load_digits
from sklearn.model_selection import cross_val_score
from sklearn.neighbors import KNeighborsClassifier

from baselines.opentsne import OpenTSNE
from baselines.pca import PCA
from nebench.errors import InputError

REPO = Path(__file__).resolve().parents[1]
CONFIGS = [REPO / "conf" / "method" / f"{name}.yaml" for name in ("opentsne", "umap", "pca")]
# few iterations: enough to compare code paths, not to converge
SHORT_TSNE = {"n_iter": 50, "early_exaggeration_iter": 50}


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    X, y = load_digits(return_X_y=True)
    return X.astype(np.float32), y


def knn_accuracy(Z: np.ndarray, y: np.ndarray) -> float:
    return cross_val_score(KNeighborsClassifier(n_neighbors=10), Z, y, cv=5).mean()


def check_embedding(Z: np.ndarray, n: int) -> None:
    assert Z.shape == (n, 2)
    assert Z.dtype == np.float32
    assert np.isfinite(Z).all()


def baselines_attr(name: str) -> type:
    """A class through the lazy package attribute, as ``import baselines`` users get it."""
    import baselines

    return getattr(baselines, name)


def test_import_baselines_is_lazy() -> None:
    code = (
        "import sys, baselines; assert 'umap' not in sys.modules and 'openTSNE' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)
    assert baselines_attr("PCA") is PCA


def test_pca_embeds_digits(digits) -> None:
    X, y = digits
    method = PCA()
    Z = method.fit_transform(X)
    check_embedding(Z, len(X))
    assert set(method.timings_) == {"fit"} and method.timings_["fit"] > 0
    assert knn_accuracy(Z, y) > 0.4  # chance is 0.1; linear 2-D PCA reaches ~0.6


def test_opentsne_embeds_digits(digits) -> None:
    X, y = digits
    method = OpenTSNE(random_state=0, n_jobs=1)
    Z = method.fit_transform(X)
    check_embedding(Z, len(X))
    assert set(method.timings_) == {"knn", "fit"}
    assert min(method.timings_.values()) > 0
    assert knn_accuracy(Z, y) > 0.8


@pytest.mark.parametrize("n", [500, 1797], ids=["exact-knn", "annoy"])
def test_opentsne_matches_tsne_fit(digits, n) -> None:
    X = digits[0][:n]
    ours = OpenTSNE(random_state=3, n_jobs=1, **SHORT_TSNE).fit_transform(X)
    ref = openTSNE.TSNE(random_state=3, n_jobs=1, **SHORT_TSNE).fit(X)
    np.testing.assert_allclose(ours, np.asarray(ref, dtype=np.float32), rtol=1e-5, atol=1e-7)


def test_opentsne_seed_reproduces(digits) -> None:
    X = digits[0]  # >= 1,000 points: the seeded Annoy index is used
    short = {"n_iter": 20, "early_exaggeration_iter": 20, "n_jobs": 2}
    first, again, other = (
        OpenTSNE(random_state=seed, **short).fit_transform(X) for seed in (7, 7, 8)
    )
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, other)


def test_opentsne_exaggeration_sets_auto_early_exaggeration(digits, monkeypatch) -> None:
    seen = []
    optimize = openTSNE.TSNEEmbedding.optimize

    def spy(self, n_iter, **kwargs):
        seen.append(kwargs["exaggeration"])
        return optimize(self, n_iter, **kwargs)

    monkeypatch.setattr(openTSNE.TSNEEmbedding, "optimize", spy)
    X = digits[0][:200]
    OpenTSNE(n_iter=2, early_exaggeration_iter=2, n_jobs=1).fit_transform(X)
    OpenTSNE(n_iter=2, early_exaggeration_iter=2, exaggeration=20, n_jobs=1).fit_transform(X)
    assert seen == [12, None, 20, 20]


@pytest.mark.parametrize(
    "X, match",
    [
        (np.zeros(10, dtype=np.float32), "2-D"),
        (np.full((50, 3), np.nan, dtype=np.float32), "NaN"),
        (np.zeros((1, 3), dtype=np.float32), "at least"),
        (np.array([["a", "b"]] * 50), "numeric"),
    ],
)
@pytest.mark.parametrize("name", ["OpenTSNE", "UMAP", "PCA"])
def test_bad_input_is_rejected(name, X, match) -> None:
    with pytest.raises(InputError, match=match):
        baselines_attr(name)().fit_transform(X)


@pytest.mark.parametrize(
    "method",
    [
        OpenTSNE(initialization="umap"),
        OpenTSNE(negative_gradient_method="exact"),
        OpenTSNE(neighbors="faiss"),
        OpenTSNE(perplexity=0),
    ],
    ids=["initialization", "gradient", "neighbors", "perplexity"],
)
def test_opentsne_rejects_bad_params(digits, method) -> None:
    with pytest.raises(InputError, match="OpenTSNE"):
        method.fit_transform(digits[0])


@pytest.mark.parametrize("kwargs", [{"metric": "nope"}, {"n_neighbors": 1}, {"parallel_layout": "yes"}], ids=str)
def test_umap_rejects_bad_params(digits, kwargs) -> None:
    with pytest.raises(InputError, match="UMAP"):
        baselines_attr("UMAP")(**kwargs).fit_transform(digits[0])


def test_umap_needs_more_points_than_neighbors() -> None:
    with pytest.raises(InputError, match="at least 16"):
        baselines_attr("UMAP")().fit_transform(np.zeros((15, 3), dtype=np.float32))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_matches_constructor(path) -> None:
    check_cpu_method_config(path, path.stem)


@pytest.mark.slow  # the first UMAP run in a process spends 30-70 s in numba compilation
def test_umap_embeds_digits(digits) -> None:
    X, y = digits
    method = baselines_attr("UMAP")(random_state=0, n_jobs=2)
    Z = method.fit_transform(X)
    check_embedding(Z, len(X))
    assert set(method.timings_) == {"knn", "fit"}
    assert min(method.timings_.values()) > 0
    assert knn_accuracy(Z, y) > 0.8


@pytest.mark.slow
def test_umap_adapter_is_umap_learns_own_call(digits) -> None:
    """Every parameter reaches umap-learn: the adapter's embedding equals umap.UMAP's on the
    same pynndescent graph, bit for bit, at non-default settings."""
    import umap
    from sklearn.utils import check_random_state
    from umap.umap_ import nearest_neighbors

    X = digits[0][:600].astype(np.float32)
    params = {"n_neighbors": 12, "min_dist": 0.5, "n_epochs": 40, "negative_sample_rate": 3,
              "learning_rate": 0.5, "init": "pca"}  # fmt: skip
    ours = baselines_attr("UMAP")(**params, random_state=3, n_jobs=1).fit_transform(X)
    knn = nearest_neighbors(X, 12, "euclidean", {}, False, check_random_state(3), n_jobs=1)
    theirs = umap.UMAP(**params, random_state=3, n_jobs=1, precomputed_knn=knn).fit_transform(X)
    np.testing.assert_array_equal(ours, theirs.astype(np.float32))


@pytest.mark.slow
def test_umap_seed_reproduces(digits) -> None:
    X = digits[0][:500]
    first, again, other = (
        baselines_attr("UMAP")(n_epochs=50, random_state=seed, n_jobs=2).fit_transform(X)
        for seed in (7, 7, 8)
    )
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, other)


@pytest.mark.slow  # numba compiles umap-learn's parallel layout on its first call
def test_umap_parallel_layout_embeds_and_leaves_numpys_generator_alone(digits) -> None:
    X, y = digits
    state = np.random.get_state()[1].copy()
    method = baselines_attr("UMAP")(random_state=0, n_jobs=2, parallel_layout=True)
    Z = method.fit_transform(X)
    np.testing.assert_array_equal(np.random.get_state()[1], state)
    check_embedding(Z, len(X))
    assert knn_accuracy(Z, y) > 0.8
