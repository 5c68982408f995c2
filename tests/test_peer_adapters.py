"""Optional adapters for the peer libraries TorchDR and contrastive-ne (cne), and their configs.

Each test imports its library through ``pytest.importorskip``: without the ``peers`` extra the
tests skip. One thread throughout (the CPU is shared); few iterations on 600 digits.
"""

from __future__ import annotations

from importlib import import_module
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from conftest import check_cpu_method_config
from sklearn.datasets import load_digits
from sklearn.model_selection import cross_val_score
from sklearn.neighbors import KNeighborsClassifier

from nebench.errors import InputError

REPO = Path(__file__).resolve().parents[1]
#: config name -> the package its adapter needs
CONFIGS = {"torchdr_infotsne": "torchdr", "torchdr_umap": "torchdr", "cne": "cne"}
#: few iterations: enough to separate the digits, not to converge
SHORT_TORCHDR = {
    "TorchDRInfoTSNE": {"max_iter": 100, "early_exaggeration_iter": 50},
    "TorchDRUMAP": {"max_iter": 100},
}
SHORT_CNE = {"n_epochs": 20, "batch_size": 1024}


def torchdr_adapters() -> ModuleType:
    pytest.importorskip("torchdr")
    return import_module("baselines.torchdr")


def cne_adapter() -> ModuleType:
    pytest.importorskip("cne")
    return import_module("baselines.cne")


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    X, y = load_digits(return_X_y=True)
    keep = np.random.default_rng(0).permutation(len(X))[:600]
    return X[keep].astype(np.float32), y[keep]


def knn_accuracy(Z: np.ndarray, y: np.ndarray) -> float:
    return cross_val_score(KNeighborsClassifier(n_neighbors=10), Z, y, cv=5).mean()


def check_run(method, Z: np.ndarray, y: np.ndarray) -> None:
    assert Z.shape == (len(y), 2) and Z.dtype == np.float32 and np.isfinite(Z).all()
    assert set(method.timings_) == {"knn", "fit"} and min(method.timings_.values()) > 0
    assert knn_accuracy(Z, y) > 0.7  # chance is 0.1; these short runs reach ~0.93


# -- TorchDR ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(SHORT_TORCHDR))
def test_torchdr_embeds_digits(digits, name) -> None:
    cls = getattr(torchdr_adapters(), name)
    X, y = digits
    method = cls(random_state=0, n_jobs=1, **SHORT_TORCHDR[name])
    check_run(method, method.fit_transform(X), y)
    assert method.n_iter_ == SHORT_TORCHDR[name]["max_iter"]


@pytest.mark.parametrize("name", list(SHORT_TORCHDR))
def test_torchdr_matches_library(digits, name) -> None:
    """The timing hooks change nothing: the adapter returns what TorchDR itself returns."""
    adapters = torchdr_adapters()
    import torchdr

    X = digits[0][:300]
    params = {**SHORT_TORCHDR[name], "max_iter": 30}
    ours = getattr(adapters, name)(random_state=4, n_jobs=1, **params).fit_transform(X)
    library = getattr(torchdr, name.removeprefix("TorchDR"))
    ref = library(device="cpu", random_state=4, **params).fit_transform(X)
    np.testing.assert_array_equal(ours, ref)


def test_torchdr_seed_reproduces(digits) -> None:
    cls = torchdr_adapters().TorchDRUMAP
    X = digits[0][:300]
    first, again, other = (
        cls(max_iter=50, random_state=seed, n_jobs=1).fit_transform(X) for seed in (7, 7, 8)
    )
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, other)


def test_torchdr_leaves_torch_generator_alone(digits) -> None:
    cls = torchdr_adapters().TorchDRUMAP
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    cls(max_iter=5, random_state=0, n_jobs=1).fit_transform(digits[0][:100])
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize(
    "name, kwargs, match",
    [
        ("TorchDRUMAP", {"backend": "keops"}, "backend"),
        ("TorchDRUMAP", {"metric": "cosine"}, "metric"),
        ("TorchDRUMAP", {"n_neighbors": 1}, "n_neighbors"),
        ("TorchDRUMAP", {"lr": 0}, "lr"),
        ("TorchDRUMAP", {"min_dist": -0.1}, "min_dist"),
        ("TorchDRInfoTSNE", {"init": "spectral"}, "init"),
        ("TorchDRInfoTSNE", {"perplexity": 0}, "perplexity"),
        ("TorchDRInfoTSNE", {"max_iter": 0}, "max_iter"),
    ],
    ids=lambda v: str(v) if isinstance(v, dict) else None,
)
def test_torchdr_rejects_bad_params(digits, name, kwargs, match) -> None:
    cls = getattr(torchdr_adapters(), name)
    with pytest.raises(InputError, match=match):
        cls(**kwargs).fit_transform(digits[0])


def test_torchdr_needs_more_points_than_neighbors() -> None:
    adapters = torchdr_adapters()
    with pytest.raises(InputError, match="at least 31"):
        adapters.TorchDRUMAP().fit_transform(np.zeros((30, 3), dtype=np.float32))
    with pytest.raises(InputError, match="at least 31"):
        adapters.TorchDRInfoTSNE().fit_transform(np.zeros((30, 3), dtype=np.float32))


# -- cne -------------------------------------------------------------------------------------


@pytest.mark.parametrize("loss_mode", ["infonce", "neg", "nce", "umap"])
def test_cne_embeds_digits(digits, loss_mode) -> None:
    X, y = digits
    method = cne_adapter().CNE(loss_mode=loss_mode, random_state=0, n_jobs=1, **SHORT_CNE)
    check_run(method, method.fit_transform(X), y)


def test_cne_graph_and_embedding_match_cne(digits) -> None:
    """Our "knn" phase builds cne's own graph, and given it the fit is cne's."""
    adapter = cne_adapter()
    import cne

    X = digits[0][:500]  # n <= 500: scikit-learn's exact PCA, so cne's unseeded start is fixed
    reference = cne.CNE(k=15, n_epochs=1, print_freq_epoch=None)  # its own graph (all cores)
    reference.fit(X)
    assert (adapter.knn_graph(X, 15, n_jobs=-1) != reference.neighbor_mat).nnz == 0

    settings = {"loss_mode": "neg", "s": 0.5, "n_epochs": 5, "batch_size": 1024}
    ours = adapter.CNE(random_state=3, n_jobs=1, **settings).fit_transform(X)
    graph = adapter.knn_graph(X, 15, n_jobs=1)
    ref = cne.CNE(k=15, seed=3, print_freq_epoch=None, **settings).fit_transform(X, graph=graph)
    # equal up to float summation order (torch's thread count may differ between the two fits)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-4)


def test_cne_exact_graph_is_the_engines_graph_with_every_cell_probed() -> None:
    """``knn="exact"`` (conf/cne_match.yaml) gives cne the binary graph our edge sampler walks
    when the cell index probes every cell: the same kNN graph on both sides."""
    from nomad.edges import edge_graph
    from nomad.index import build_index

    X = np.random.default_rng(0).standard_normal((600, 10)).astype(np.float32)  # no distance ties
    index, _ = build_index(X, 15, n_cells=4, n_probe=4)
    ours = edge_graph(index.neighbors, index.distances, "binary", seed=0)
    theirs = cne_adapter().knn_graph(X, 15, n_jobs=1, knn="exact").tocoo()
    assert sorted(zip(ours.heads.tolist(), ours.tails.tolist())) == sorted(zip(theirs.row, theirs.col))
    with pytest.raises(InputError, match="knn"):
        cne_adapter().CNE(knn="hnsw").fit_transform(X)


def test_cne_seed_reproduces(digits) -> None:
    cls = cne_adapter().CNE
    X = digits[0]
    first, again, other = (
        cls(n_epochs=5, batch_size=1024, random_state=seed, n_jobs=1).fit_transform(X)
        for seed in (7, 7, 8)
    )
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, other)


def test_cne_spectrum_parameter_reaches_cne(digits) -> None:
    """s = 0 puts Neg-t-SNE at Z-bar = 100 n, i.e. nu = m Z-bar / n^2 = 500 / n."""
    cls = cne_adapter().CNE
    X = digits[0]
    method = cls(loss_mode="neg", s=0.0, n_epochs=1, n_jobs=1)
    method.fit_transform(X)
    assert method.cne_.cne.neg_spec == pytest.approx(5 * 100 / len(X))
    default = cls(loss_mode="neg", n_epochs=1, n_jobs=1)
    default.fit_transform(X)
    assert default.cne_.cne.neg_spec == 1.0  # cne's default: UMAP-like
    assert default.cne_.cne.clamp_low == 1e-4  # cne's "auto" for euclidean
    low = cls(clamp_low=1e-10, n_epochs=1, n_jobs=1)
    low.fit_transform(X)
    assert low.cne_.cne.clamp_low == 1e-10
    with pytest.raises(InputError, match="clamp_low must be a number > 0"):
        cls(clamp_low=0).fit_transform(X)


def test_cne_parametric_transforms_new_points(digits) -> None:
    cls = cne_adapter().CNE
    X, y = digits
    train, test = slice(0, 400), slice(400, None)
    runs = [
        cls(parametric=True, optimizer="adam", random_state=0, n_jobs=1, **SHORT_CNE)
        for _ in range(2)
    ]
    Z_train = [method.fit_transform(X[train]) for method in runs]
    np.testing.assert_array_equal(Z_train[0], Z_train[1])  # the network's start is seeded
    method = runs[0]
    check_run(method, Z_train[0], y[train])
    np.testing.assert_allclose(method.transform(X[train]), Z_train[0], rtol=1e-5, atol=1e-6)
    Z_test = method.transform(X[test])
    assert Z_test.shape == (200, 2) and Z_test.dtype == np.float32
    with pytest.raises(InputError, match="features"):
        method.transform(X[test, :10])
    # held-out digits land among their own class
    classifier = KNeighborsClassifier(n_neighbors=10).fit(Z_train[0], y[train])
    assert classifier.score(Z_test, y[test]) > 0.7


def test_cne_parametric_graph_from_x_knn(digits) -> None:
    """With X_knn the graph comes from X_knn's rows and the network reads X (the ICLR paper's
    pixels-in, PCA-50 graph setup); free positions and mismatched rows are refused."""
    adapter = cne_adapter()
    X = digits[0][:400]
    X_knn = X[:, ::4] * 3.0  # other rows, so another graph
    method = adapter.CNE(parametric=True, optimizer="adam", random_state=0, n_jobs=1, **SHORT_CNE)
    method.fit_transform(X, X_knn=X_knn)
    expected = adapter.knn_graph(X_knn.astype(np.float32), 15, n_jobs=1)
    assert (method.cne_.neighbor_mat != expected).nnz == 0
    assert (adapter.knn_graph(X, 15, n_jobs=1) != expected).nnz > 0
    assert method.transform(X[:5]).shape == (5, 2)  # the network reads X's 64 features
    with pytest.raises(InputError, match="rows"):
        method.fit_transform(X, X_knn=X_knn[:-1])
    with pytest.raises(InputError, match="parametric=True"):
        adapter.CNE(n_jobs=1, **SHORT_CNE).fit_transform(X, X_knn=X_knn)


def test_cne_transform_needs_a_parametric_fit(digits) -> None:
    method = cne_adapter().CNE(n_epochs=1, n_jobs=1)
    method.fit_transform(digits[0][:100])
    with pytest.raises(InputError, match="parametric"):
        method.transform(digits[0][:10])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"loss_mode": "tsne"}, "loss_mode"),
        ({"optimizer": "rmsprop"}, "optimizer"),
        ({"n_epochs": 0}, "n_epochs"),
        ({"learning_rate": -1.0}, "learning_rate"),
        ({"loss_mode": "neg", "s": 0.5, "Z_bar": 1e5}, "keep one"),
        ({"loss_mode": "nce", "s": 0.5}, "no effect"),
        ({"loss_mode": "infonce", "neg_spec": 1.0}, "no effect"),
    ],
    ids=str,
)
def test_cne_rejects_bad_params(digits, kwargs, match) -> None:
    with pytest.raises(InputError, match=match):
        cne_adapter().CNE(**kwargs).fit_transform(digits[0])


def test_cne_needs_more_points_than_neighbors() -> None:
    with pytest.raises(InputError, match="at least 16"):
        cne_adapter().CNE().fit_transform(np.zeros((15, 3), dtype=np.float32))


# -- configs ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(CONFIGS))
def test_config_matches_constructor(name) -> None:
    pytest.importorskip(CONFIGS[name])
    check_cpu_method_config(REPO / "conf" / "method" / f"{name}.yaml", name)
