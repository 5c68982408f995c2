"""The library as openTSNE and umap-learn users meet it (nomad/engine.py, nomad/transform.py):

* ``nomad`` imports and fits with the harness, Hydra and OmegaConf absent; t-SimCNE stays unloaded.
* scikit-learn conventions: get_params/set_params/clone, fit returns self, random_state=None.
* transform of new points (kNN in the training data, optimised against the fixed map), pickling,
  continued optimisation, init arrays, precomputed kNN graphs, callbacks.
* The two checked defects: NCVis' log Z step does not grow with the batch; with
  noise="batch_neighbors" pool and cell means together weigh |M| on several devices.
"""

from __future__ import annotations

import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from scipy import sparse
from sklearn.base import clone
from sklearn.datasets import load_digits
from sklearn.decomposition import PCA
from sklearn.neighbors import KNeighborsClassifier, NearestNeighbors, kneighbors_graph

from nomad import NOMAD, InfoNCTSNE, InputError, NCVis, NegTSNE, UMAPLoss
from nomad.affinities import p_ji
from nomad.engine import make_shards, pca_init
from nomad.index import build_index
from nomad.losses import NCE, InfoNCE
from nomad.optimize import Comm, TrainSpec, _ShardTrainer

pytestmark = pytest.mark.usefixtures("one_thread")
METHODS = [NOMAD, InfoNCTSNE, NegTSNE, NCVis, UMAPLoss]


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    d = load_digits()
    return d.data.astype(np.float32), d.target


@pytest.fixture(scope="module")
def fitted(digits):
    """NOMAD fitted on the first 1500 digits; the other 297 are held out."""
    X, _ = digits
    return NOMAD(n_epochs=30).fit(X[:1500])


def held_out_accuracy(Y_train, y_train, Y_new, y_new) -> float:
    return float(KNeighborsClassifier(10).fit(Y_train, y_train).score(Y_new, y_new))


# -- a library without the harness ------------------------------------------------------------------
def test_nomad_imports_and_fits_without_the_harness_hydra_or_omegaconf():
    code = textwrap.dedent("""
        import sys

        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("nebench", "hydra", "omegaconf"):
                    raise ImportError(f"blocked: {name}")
                return None

        sys.meta_path.insert(0, Block())
        import numpy as np
        import nomad
        from nomad import NOMAD
        X = np.random.default_rng(0).normal(size=(120, 5)).astype(np.float32)
        model = NOMAD(n_epochs=3, n_neighbors=5).fit(X)
        assert model.embedding_.shape == (120, 2) and np.isfinite(model.embedding_).all()
        assert model.transform(X[:4]).shape == (4, 2)
        try:
            NOMAD(n_epochs=0).fit(X)
        except nomad.InputError as err:
            print("InputError:", err)
        loaded = sorted({m.split(".")[0] for m in sys.modules})
        print("loaded:", [m for m in loaded if m in ("nebench", "hydra", "omegaconf", "tsimcne_lite")])
    """)
    out = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True,
                         timeout=300, env={"NUMBA_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr[-3000:]
    assert "InputError: method.n_epochs=0 is invalid" in out.stdout
    assert "loaded: []" in out.stdout  # neither the harness nor t-SimCNE was imported


# -- scikit-learn conventions -----------------------------------------------------------------------
@pytest.mark.parametrize("cls", METHODS)
def test_every_method_is_a_sklearn_estimator(cls):
    model = cls(n_epochs=7, learning_rate=3.0)
    params = model.get_params()
    assert params["n_epochs"] == 7 and params["learning_rate"] == 3.0  # the engine's, not only its own
    assert {"n_neighbors", "random_state", "callbacks", "init"} <= set(params)
    twin = clone(model)
    assert type(twin) is cls and twin is not model and twin.get_params() == params
    assert twin.set_params(n_epochs=9) is twin and twin.n_epochs == 9 and model.n_epochs == 7
    with pytest.raises(ValueError, match="Invalid parameter"):
        model.set_params(n_epoch=3)


def test_fit_returns_self_and_random_state_none_draws_a_recorded_seed(digits):
    X = digits[0][:300]
    model = NOMAD(n_epochs=3, random_state=None)
    assert model.fit(X) is model and model.embedding_.shape == (300, 2)
    seed = model.random_state_
    assert isinstance(seed, int)
    again = NOMAD(n_epochs=3, random_state=seed).fit(X)
    np.testing.assert_array_equal(again.embedding_, model.embedding_)  # the recorded seed reruns it
    other = NOMAD(n_epochs=3, random_state=np.random.RandomState(5)).fit(X)
    assert other.random_state_ != seed
    with pytest.raises(InputError, match="random_state"):
        NOMAD(random_state="zero").fit(X)


# -- transform, pickle, continue ----------------------------------------------------------------------
def test_transform_places_new_points_as_well_as_a_refit(digits, fitted):
    X, y = digits
    Y_new = fitted.transform(X[1500:])
    assert Y_new.shape == (len(X) - 1500, 2) and Y_new.dtype == np.float32 and np.isfinite(Y_new).all()
    placed = held_out_accuracy(fitted.embedding_, y[:1500], Y_new, y[1500:])
    refit = NOMAD(n_epochs=30).fit_transform(X)
    together = held_out_accuracy(refit[:1500], y[:1500], refit[1500:], y[1500:])
    assert placed > 0.85 and placed > together - 0.05
    start = fitted.transform(X[1500:], n_epochs=0)  # the median of the neighbours' positions
    assert not np.allclose(start, Y_new)
    assert "transform" in fitted.timings_


def test_transform_checks_its_input(digits, fitted):
    with pytest.raises(InputError, match="not fitted: call fit"):
        NOMAD().transform(digits[0][:5])
    with pytest.raises(InputError, match="64"):
        fitted.transform(digits[0][:5, :10])


def test_a_pickled_model_transforms_the_same(digits, fitted):
    X = digits[0][1500:1600]
    loaded = pickle.loads(pickle.dumps(fitted))
    np.testing.assert_array_equal(loaded.transform(X), fitted.transform(X))
    np.testing.assert_array_equal(loaded.embedding_, fitted.embedding_)


def test_parametric_transform_is_the_encoder(digits):
    X = digits[0][:400]
    model = NOMAD(n_epochs=3, parametric=True, hidden=(16,)).fit(X)
    np.testing.assert_allclose(model.transform(X), model.embedding_, atol=1e-5)
    before = model.transform(X[:10])
    model.optimize(2)  # continues training the same encoder
    assert model.n_epochs_ == 5 and not np.allclose(model.transform(X[:10]), before)


def test_optimize_continues_from_the_embedding(digits):
    X = digits[0][:500]
    model = NCVis(n_epochs=10).fit(X)
    Y10, log_z = model.embedding_.copy(), float(model.loss_.log_z.detach())
    assert model.optimize(5, learning_rate=10.0) is model
    assert model.n_epochs_ == 15 and len(model.loss_history_) == 15
    assert 0 < np.abs(model.embedding_ - Y10).max()
    assert float(model.loss_.log_z.detach()) != log_z  # NCVis' learned Z carries on
    with pytest.raises(InputError, match="not fitted"):
        NOMAD().optimize(5)
    with pytest.raises(InputError, match=r"^optimize\(n_epochs=0\) is invalid"):
        model.optimize(0)
    with pytest.raises(InputError, match=r"^transform\(n_epochs=-1\) is invalid"):
        model.transform(X[:5], n_epochs=-1)


# -- init, precomputed neighbours, callbacks ------------------------------------------------------------
def test_init_array_is_the_starting_point(digits):
    X = digits[0][:300]
    Y0 = np.random.default_rng(0).normal(size=(300, 2)).astype(np.float32) * 5
    Y = NOMAD(n_epochs=1, init=Y0, learning_rate=1e-6).fit_transform(X)
    np.testing.assert_allclose(Y, Y0, atol=1e-3)
    assert clone(NOMAD(init=Y0)).init is not Y0  # clone copies the array, as sklearn does
    with pytest.raises(InputError, match=r"\(n, 2\) array"):
        NOMAD(init=Y0[:10]).fit(X)
    with pytest.raises(InputError, match="'pca'"):
        NOMAD(init="spectral").fit(X)


def test_precomputed_knn_graph_as_arrays_or_sparse_matrix(digits):
    X, y = digits
    X = X[:600] + np.random.default_rng(0).normal(0, 1e-3, (600, 64)).astype(np.float32)  # no ties
    y = y[:600]
    dist, idx = NearestNeighbors(n_neighbors=9).fit(X).kneighbors(X)  # self first, then 8
    graph = kneighbors_graph(X, 12, mode="distance")  # self excluded, 12 stored per row
    kw = {"n_epochs": 20, "n_neighbors": 8}
    from_arrays = NOMAD(**kw).fit(X, knn_graph=(idx, dist))
    from_sparse = NOMAD(**kw).fit(X, knn_graph=graph)
    np.testing.assert_array_equal(from_arrays.index_.neighbors, idx[:, 1:])
    np.testing.assert_array_equal(from_sparse.index_.neighbors, idx[:, 1:])
    np.testing.assert_array_equal(from_arrays.embedding_, from_sparse.embedding_)
    assert from_arrays.knn_index_ == "precomputed"
    assert held_out_accuracy(from_arrays.embedding_[:500], y[:500], from_arrays.embedding_[500:],
                             y[500:]) > 0.8
    with pytest.raises(InputError, match="fewer than k=8"):
        NOMAD(**kw).fit(X, knn_graph=(idx[:, :5], dist[:, :5]))
    with pytest.raises(InputError, match="lie in"):
        NOMAD(**kw).fit(X, knn_graph=(idx + 600, dist))
    with pytest.raises(InputError, match="sparse matrix of shape"):
        NOMAD(**kw).fit(X, knn_graph=sparse.eye(10))
    with pytest.raises(InputError, match="devices=1"):
        NOMAD(devices=2, accelerator="cpu", **kw).fit(X, knn_graph=graph)


def test_an_encoder_can_read_other_rows_than_the_graph_comes_from(digits):
    """X_knn: the graph from PCA rows, the encoder reading the raw ones (the ICLR paper's
    parametric runs: pixels in, graph from PCA-50)."""
    X, y = digits[0][:600], digits[1][:600]
    X_pca = PCA(20, random_state=0).fit_transform(X).astype(np.float32)
    kw = {"n_epochs": 60, "n_neighbors": 8, "parametric": True, "hidden": (32,), "random_state": 0}
    on_pca = NegTSNE(**kw).fit(X_pca)
    model = NegTSNE(**kw).fit(X, X_knn=X_pca)
    np.testing.assert_array_equal(model.index_.neighbors, on_pca.index_.neighbors)
    assert model.encoder_[0].in_features == 64 and on_pca.encoder_[0].in_features == 20
    np.testing.assert_allclose(model.transform(X), model.embedding_, atol=1e-5)
    assert held_out_accuracy(model.embedding_[:500], y[:500], model.transform(X[500:]), y[500:]) > 0.7
    with pytest.raises(InputError, match="parametric=True"):
        NegTSNE(n_epochs=2, n_neighbors=8).fit(X, X_knn=X_pca)
    with pytest.raises(InputError, match="not both"):
        NegTSNE(**kw).fit(X, X_knn=X_pca, knn_graph=(on_pca.index_.neighbors, on_pca.index_.distances))
    with pytest.raises(InputError, match="one row of each"):
        NegTSNE(**kw).fit(X, X_knn=X_pca[:500])


def test_callbacks_see_every_epoch_and_can_stop(digits):
    X = digits[0][:300]
    seen = []

    def record(epoch, loss, embedding):
        seen.append((epoch, loss, embedding.copy()))
        return epoch == 3  # stop after the fourth epoch

    model = NOMAD(n_epochs=10, callbacks=[record]).fit(X)
    assert [e for e, _, _ in seen] == [0, 1, 2, 3]
    assert model.n_epochs_ == 4 and [v for _, v, _ in seen] == model.loss_history_
    np.testing.assert_array_equal(seen[-1][2], model.embedding_)  # input order, as embedding_
    model.set_params(callbacks=None).optimize(2)
    assert len(seen) == 4 and model.n_epochs_ == 6
    with pytest.raises(InputError, match="callable"):
        NOMAD(callbacks=[1]).fit(X)


def test_verbose_reports_every_long_phase(digits, caplog):
    X = digits[0][:400]
    with caplog.at_level("INFO", logger="nomad"):
        model = NOMAD(n_epochs=10, n_cells=2, knn="cells", verbose=True).fit(X)
        model.transform(X[:20])
    assert "k-means: 2 cells from 400 points" in caplog.text
    assert "epoch 10/10: loss" in caplog.text
    with caplog.at_level("INFO", logger="nomad"):
        model.optimize(10)
    assert "epoch 20/20: loss" in caplog.text  # continued epochs count on


# -- the two checked defects ---------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["torch", "fused"])
def test_ncvis_log_z_step_does_not_grow_with_the_batch(digits, backend):
    """Under mean aggregation log Z's step is LR_LOG_Z times the batch's mean gradient. Before
    the fix it was the summed gradient: 8x the batch, 8x the step."""
    X = digits[0][:800]
    idx, _ = build_index(X, 8, n_cells=1)
    shard = make_shards(idx, pca_init(X, 1.0, 0), 1)[0]
    steps = []
    for B in (50, 400):
        spec = TrainSpec(loss=NCE(5.0), p=p_ji(8, "uniform"), n_epochs=1, learning_rate=80.0,
                         batch_size=B, n_noise=5.0, noise_samples=5, approximate="none", backend=backend)
        trainer = _ShardTrainer(shard, spec, Comm())
        if backend == "torch":
            trainer.step(None, spec.learning_rate, 1.0)
        else:
            trainer._fused_epoch(None, np.array([spec.learning_rate / B]), 1.0, 0)
        steps.append(abs(float(spec.loss.log_z.detach())))
    assert steps[0] > 0
    assert 0.4 < steps[1] / steps[0] < 2.5


def test_batch_neighbor_noise_weighs_m_with_the_remote_means(digits):
    """On one of two devices, the pool of the batch's positives plus the remote cells' means must
    weigh |M| per head (eq. 4), as uniform noise does; before the fix the pool alone weighed |M|."""
    from nomad.cpu_kernel import draw_serial

    X = digits[0][:600]
    idx, _ = build_index(X, 8, n_cells=4)
    shard = make_shards(idx, pca_init(X, 1.0, 0), 2)[0]
    assert 0 < len(shard.rows) < 600
    spec = TrainSpec(loss=InfoNCE(), p=p_ji(8), n_epochs=1, learning_rate=60.0, batch_size=60,
                     n_noise=1000.0, noise_samples=16, approximate="remote", noise="batch_neighbors",
                     backend="torch")
    trainer = _ShardTrainer(shard, spec, Comm())
    means = float(trainer._c_mu.sum())
    assert 0 < means < 1000
    _, _, size = trainer._sample(30, 16)
    torch.testing.assert_close(1000.0 * size.double() / 600 + means, torch.full((30,), 1000.0,
                               dtype=torch.float64))
    # the compiled epoch's draw
    B, S = 30, 16
    heads, noise = np.empty(B, np.int64), np.empty((B, S), np.int64)
    c_noise, exclude = np.empty(B, np.float32), np.empty(B, np.int64)
    lo, n = (t.numpy() for t in trainer._domain(torch.arange(trainer.n_local)))
    draw_serial(heads, noise, c_noise, exclude, lo, n, trainer.cell_lo.numpy(), trainer.cell_n.numpy(),
                shard.cell, False, True, shard.neighbors, trainer.n_local, 1000.0, 600, np.uint64(7))
    np.testing.assert_allclose(c_noise * S + means, 1000.0, rtol=1e-5)
