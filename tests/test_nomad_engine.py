"""Tests for the engine (nomad/engine.py, nomad/methods.py, the loop in nomad/optimize.py).

* The NOMAD surrogate (nomad-projection eq. 3-5): with no approximated cell it is exactly
  InfoNC-t-SNE (eq. 2); with ``approximate="others"`` the mean term is
  |M| sum_{r != own cell} p(m in r) q(y_i, mu_r), checked by hand.
* The library API end to end on sklearn's digits: quality, seeding, timings, bad input.
* The Neg-t-SNE spectrum (tsne-to-umap-contrastive): the embedding shrinks as Z-bar grows.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.distance import pdist
from sklearn.datasets import load_digits, make_blobs
from sklearn.decomposition import PCA
from sklearn.model_selection import cross_val_score
from sklearn.neighbors import KNeighborsClassifier

import nomad
import nomad.engine as engine_module
from nebench.errors import InputError
from nomad import NOMAD, InfoNCTSNE, NCVis, NegTSNE, UMAPLoss
from nomad.affinities import p_ji
from nomad.engine import make_shards, pca_init
from nomad.index import build_index
from nomad.losses import InfoNCE
from nomad.optimize import Comm, TrainSpec, _lr_factor, _ShardTrainer


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    d = load_digits()
    return d.data.astype(np.float32), d.target


def knn_score(Y: np.ndarray, y: np.ndarray) -> float:
    return float(cross_val_score(KNeighborsClassifier(10), Y, y, cv=5).mean())


def median_scale(Y: np.ndarray, seed: int = 0) -> float:
    """Median pairwise distance of a seeded 300-point subsample."""
    rows = np.random.default_rng(seed).choice(len(Y), 300, replace=False)
    return float(np.median(pdist(Y[rows])))


pytestmark = pytest.mark.usefixtures("one_thread")


# -- the library API end to end -------------------------------------------------------------------
def test_public_api():
    assert set(nomad.__all__) == {"NOMAD", "InfoNCTSNE", "NegTSNE", "NCVis", "UMAPLoss", "InputError"}
    assert nomad.InputError is InputError  # the harness's error is the library's


def test_nomad_embeds_digits(digits):
    X, y = digits
    model = NOMAD(n_epochs=30)
    Y = model.fit_transform(X)
    assert Y.shape == (len(X), 2) and Y.dtype == np.float32
    assert np.isfinite(Y).all()
    assert knn_score(Y, y) > 0.8
    assert {"knn", "init", "fit"} <= set(model.timings_)
    assert all(v >= 0 for v in model.timings_.values())
    assert model.embedding_ is Y
    history = model.loss_history_
    assert len(history) == 30 and np.isfinite(history).all()
    assert np.mean(history[-5:]) < np.mean(history[:5])  # the loss falls
    assert model.bytes_per_epoch_ == 0  # one device: nothing crosses a process boundary


@pytest.mark.parametrize("cls", [InfoNCTSNE, NegTSNE, NCVis, UMAPLoss])
def test_every_engine_method_embeds_digits(digits, cls):
    X, y = digits
    Y = cls(n_epochs=30).fit_transform(X)
    assert Y.shape == (len(X), 2) and Y.dtype == np.float32 and np.isfinite(Y).all()
    assert knn_score(Y, y) > 0.75


def test_seeded_runs_are_identical_and_seeds_differ(digits):
    X = digits[0][:600]
    a = NOMAD(n_epochs=10, random_state=3).fit_transform(X)
    b = NOMAD(n_epochs=10, random_state=3).fit_transform(X)
    c = NOMAD(n_epochs=10, random_state=4).fit_transform(X)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-3


@pytest.mark.parametrize("options", [
    {"momentum": 0.8, "lr_schedule": "reference", "lr_decay_start": 0.3},
    {"aggregation": "sum"},
    {"early_exaggeration": 4.0, "early_exaggeration_epochs": 5, "late_exaggeration": 1.5,
         "late_exaggeration_time": 0.7},
    {"batch_size": 64, "noise_samples": 3, "n_noise": 10, "clip_grad": 4.0,
     "lr_schedule": "constant",
         "learning_rate": 50.0},
    {"approximate": "others", "n_cells": 8},
    {"approximate": "others", "n_cells": 8, "mean_refresh": "step"},
    {"p_model": "uniform", "n_neighbors": 10, "init_scale": 1e-4},
])
def test_options_run_and_keep_the_structure(digits, options):
    X, y = digits
    Y = NOMAD(n_epochs=30, **options).fit_transform(X)
    assert np.isfinite(Y).all()
    assert knn_score(Y, y) > 0.8


def test_exaggeration_schedule_reaches_every_epoch(digits, monkeypatch):
    """Early exaggeration for its epochs, then 1, then late exaggeration from its time on."""
    from nomad import optimize

    seen = []
    rho = optimize._rho
    monkeypatch.setattr(optimize, "_rho", lambda spec, epoch: seen.append(rho(spec, epoch)) or seen[-1])
    NOMAD(n_epochs=10, early_exaggeration=4.0, early_exaggeration_epochs=3, late_exaggeration=1.5,
          late_exaggeration_time=0.7).fit(digits[0][:600])
    assert seen == [4.0] * 3 + [1.0] * 4 + [1.5] * 3


@pytest.mark.parametrize("refresh, per_epoch", [("epoch", 1), ("step", 10)])
def test_cell_means_are_refreshed_as_asked(digits, monkeypatch, refresh, per_epoch):
    """mean_refresh: the means of the approximated cells once an epoch or before every step
    (batch n/10: 10 steps an epoch)."""
    from nomad import optimize

    calls = []
    means = optimize._ShardTrainer.cell_means
    monkeypatch.setattr(optimize._ShardTrainer, "cell_means", lambda self: calls.append(1) or means(self))
    NOMAD(n_epochs=4, approximate="others", n_cells=8, mean_refresh=refresh).fit(digits[0][:600])
    assert len(calls) == 4 * per_epoch


def test_index_cache_is_reused_by_a_second_fit(digits, tmp_path):
    X = digits[0][:500]
    first = NOMAD(n_epochs=5, n_cells=3, cache_dir=str(tmp_path))
    Y1 = first.fit_transform(X)
    second = NOMAD(n_epochs=5, n_cells=3, cache_dir=str(tmp_path))
    Y2 = second.fit_transform(X)
    assert (first.index_cached_, second.index_cached_) == (False, True)
    np.testing.assert_array_equal(Y1, Y2)
    assert first.n_cells_ == 3


# -- bad input: a clear InputError before heavy work ----------------------------------------------
@pytest.fixture
def no_heavy_work(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("the index was built before the input was checked")

    monkeypatch.setattr(engine_module, "build_index", fail)


BAD_PARAMETERS = [
    (NOMAD, {"n_epochs": -1}, "n_epochs"),
    (NOMAD, {"n_epochs": 0}, "n_epochs"),
    (NOMAD, {"n_epochs": 2.5}, "n_epochs"),
    (NOMAD, {"learning_rate": 0}, "learning_rate"),
    (NOMAD, {"learning_rate": -5.0}, "learning_rate"),
    (NOMAD, {"learning_rate": "fast"}, "learning_rate"),
    (NOMAD, {"p_model": "gaussian"}, "p_model"),
    (NOMAD, {"n_neighbors": 0}, "n_neighbors"),
    (NOMAD, {"n_noise": 0}, "n_noise"),
    (NOMAD, {"noise_samples": 0}, "noise_samples"),
    (NOMAD, {"noise_group": 0}, "noise_group"),
    (NOMAD, {"batch_size": 0}, "batch_size"),
    (NOMAD, {"momentum": -0.1}, "momentum"),
    (NOMAD, {"n_cells": 0}, "n_cells"),
    (NOMAD, {"devices": 0}, "devices"),
    (NOMAD, {"approximate": "all"}, "approximate"),
    (NOMAD, {"approximate": "none", "devices": 2}, "approximate"),
    (NOMAD, {"aggregation": "avg"}, "aggregation"),
    (NOMAD, {"lr_schedule": "cosine"}, "lr_schedule"),
    (NOMAD, {"mean_refresh": "batch"}, "mean_refresh"),
    (NOMAD, {"metric": "cosine"}, "metric"),
    (NOMAD, {"accelerator": "tpu"}, "accelerator"),
    (NOMAD, {"init": "random"}, "init"),
    (NOMAD, {"init_scale": 0.0}, "init_scale"),
    (NOMAD, {"n_epochs": float("nan")}, "n_epochs"),
    (NOMAD, {"n_epochs": True}, "n_epochs"),
    (InfoNCTSNE, {"devices": 2}, "devices"),
    (NegTSNE, {"devices": 2}, "devices"),
    (NCVis, {"p_model": "rank"}, "p_model"),
]


@pytest.mark.parametrize("cls,kwargs,name", BAD_PARAMETERS,
                         ids=[f"{c.__name__}-{kw}" for c, kw, _ in BAD_PARAMETERS])
def test_bad_parameters_raise_input_error_naming_them(digits, no_heavy_work, cls, kwargs, name):
    with pytest.raises(InputError, match=name):
        cls(**kwargs).fit_transform(digits[0][:200])


# Parameters that once slipped through the validation (crash, hang or silent misbehaviour).
@pytest.mark.parametrize("kwargs,name", [
    pytest.param({"max_cell_size": -1}, "max_cell_size", id="max_cell_size=-1"),
    pytest.param({"max_cell_size": 0}, "max_cell_size", id="max_cell_size=0"),
    pytest.param({"cell_size": 0}, "cell_size", id="cell_size=0"),
    pytest.param({"clip_grad": -1.0}, "clip_grad", id="clip_grad=-1"),
])
def test_unchecked_parameters_raise_input_error(digits, no_heavy_work, kwargs, name):
    with pytest.raises(InputError, match=name):
        NOMAD(**kwargs).fit_transform(digits[0][:200])


def test_bad_data_raises_input_error(digits, no_heavy_work):
    X = digits[0][:200].copy()
    X[3, 3] = np.nan
    with pytest.raises(InputError):
        NOMAD().fit_transform(X)
    with pytest.raises(InputError):
        NOMAD(n_neighbors=15).fit_transform(digits[0][:15])  # k + 1 points needed
    with pytest.raises(InputError, match="metric"):  # digits rows are not unit-norm
        NOMAD(metric="inner_product").fit_transform(digits[0][:200])


def test_inner_product_metric_runs_on_unit_norm_data(digits):
    X, y = digits
    X = X / np.linalg.norm(X, axis=1, keepdims=True)
    Y = NOMAD(n_epochs=30, metric="inner_product").fit_transform(X)
    assert knn_score(Y, y) > 0.8


# -- PCA initialisation and the schedule (nomad-projection sec. 3.4) ---------------------------
def test_pca_init_is_the_first_two_components_rescaled(digits):
    X = digits[0]
    Y = pca_init(X, 2.5, seed=0)
    assert Y.dtype == np.float32
    assert Y[:, 0].std() == pytest.approx(2.5, rel=1e-4)
    ref = PCA(2).fit_transform(X.astype(np.float64))
    for c in range(2):  # the same axes up to sign and one common scale
        corr = np.corrcoef(Y[:, c], ref[:, c])[0, 1]
        assert abs(corr) > 0.999


def test_lr_schedules():
    spec = TrainSpec(loss=InfoNCE(), p=p_ji(3), n_epochs=1, learning_rate=1.0, batch_size=1,
                     n_noise=1.0, noise_samples=1, lr_decay_start=0.3)
    spec.lr_schedule = "linear"  # paper: linear to 0
    assert [_lr_factor(spec, t) for t in (0.0, 0.5, 0.9)] == pytest.approx([1.0, 0.5, 0.1])
    spec.lr_schedule = "reference"  # flat until 0.3, then linear towards 1e-8 at t = 1
    factors = [_lr_factor(spec, t) for t in (0.0, 0.3, 0.65)]
    assert factors == pytest.approx([1.0, 1.0, 0.5], abs=1e-7)
    assert _lr_factor(spec, 1.0) == pytest.approx(1e-8)
    spec.lr_schedule = "constant"
    assert _lr_factor(spec, 0.99) == 1.0


# -- the NOMAD surrogate (eq. 3-5) -------------------------------------------------------------
@pytest.mark.parametrize("approximate", ["remote", "none"])
def test_nomad_without_approximated_cells_is_infonc_tsne(digits, approximate):
    X = digits[0][:800]
    kw = {"n_epochs": 15, "n_cells": 4, "random_state": 1,
          # NOMAD's own defaults, set explicitly so both methods run the same settings
          "n_neighbors": 8, "n_noise": 10_000, "noise_samples": 256, "noise_group": 16, "momentum": 0.8,
          "lr_scale": 0.2}
    Y_nomad = NOMAD(approximate=approximate, **kw).fit_transform(X)
    Y_info = InfoNCTSNE(p_model="inverse_rank", **kw).fit_transform(X)
    np.testing.assert_array_equal(Y_nomad, Y_info)
    # the comparison can tell: approximating cells changes the result
    Y_others = NOMAD(approximate="others", **kw).fit_transform(X)
    assert np.abs(Y_others - Y_info).max() > 1e-3


@pytest.fixture(scope="module")
def four_cells():
    """400 points in 4 cells, random positions, as one device's shard."""
    X, _ = make_blobs(400, n_features=6, centers=4, random_state=0)
    idx, _ = build_index(X.astype(np.float32), 7, n_cells=4, seed=0)
    Y0 = np.random.default_rng(0).normal(scale=2.0, size=(400, 2)).astype(np.float32)
    return make_shards(idx, Y0, 1)[0]


def surrogate_trainer(shard, approximate: str, s: float = 0.0, backend: str = "torch"):
    spec = TrainSpec(loss=InfoNCE(s), p=p_ji(7), n_epochs=1, learning_rate=1.0, batch_size=50,
                     n_noise=20.0, noise_samples=6, approximate=approximate, backend=backend)
    return _ShardTrainer(shard, spec, Comm())


@pytest.mark.parametrize("approximate", ["remote", "none"])
def test_one_device_approximates_no_cell(four_cells, approximate):
    tr = surrogate_trainer(four_cells, approximate)
    assert not tr.uses_means
    _heads, _noise, size = tr._sample(tr.B, 6)
    assert (size == 400).all()  # noise uniform over all n points (eq. 2)


@pytest.mark.parametrize("path", ["torch", "fused"])
def test_a_noise_group_takes_its_heads_from_one_cell_and_every_head_is_uniform(four_cells, path):
    """Both samplers: the G heads of a group share the first head's cell (so the compiled loop
    works one cell's rows at a time) and the noise domain stays all points; yet each head is
    uniform over the shard: over many draws every row is a head about equally often."""
    from nomad.cpu_kernel import draw

    shard, G, S, B, draws = four_cells, 5, 6, 50, 400
    cell = shard.cell
    spec = TrainSpec(loss=InfoNCE(), p=p_ji(7), n_epochs=1, learning_rate=1.0, batch_size=B,
                     n_noise=20.0, noise_samples=S, noise_group=G, approximate="remote")
    tr = _ShardTrainer(shard, spec, Comm())
    counts = np.zeros(len(cell))
    for t in range(draws):
        if path == "torch":
            heads, noise, _size = (a.numpy() for a in tr._sample(B, S))
            noise = noise[::G]
        else:
            heads, noise = np.empty(B, np.int64), np.empty((B // G, S), np.int64)
            c_noise, exclude = np.empty(B, np.float32), np.empty(B, np.int64)
            n = len(cell)
            draw(heads, noise, c_noise, exclude, np.zeros(n, np.int64), np.full(n, n), tr.cell_lo.numpy(),
                 tr.cell_n.numpy(), cell, False, False, tr.nbrs.numpy(), n, 20.0, n, np.uint64(t) << np.uint64(20))
            np.testing.assert_allclose(c_noise, 20.0 / S)  # |M| p(m in all points) / S
        groups = cell[heads].reshape(-1, G)
        assert (groups == groups[:, :1]).all()  # one cell a group
        counts += np.bincount(heads, minlength=len(cell))
        spans = cell[noise].max(1) != cell[noise].min(1)
        assert spans.mean() > 0.5  # the noise still comes from all cells
    expected = draws * B / len(cell)  # 50 per row; a chi-square test of uniformity
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < len(cell) + 5 * np.sqrt(2 * len(cell)), chi2


@pytest.mark.parametrize("s", [0.0, 0.5])
def test_mean_term_of_approximated_cells_by_hand(four_cells, s):
    shard = four_cells
    tr = surrogate_trainer(shard, "others", s)
    assert tr.uses_means
    n, M, S = 400, 20.0, 6
    Y = shard.Y0.astype(np.float64)
    cell = shard.cell
    sizes = np.bincount(cell)
    heads, noise, size = tr._sample(tr.B, S)
    h, nz = heads.numpy(), noise.numpy()
    own = cell[h]
    assert (cell[nz] == own[:, None]).all()  # sampled noise only from the head's own cell
    np.testing.assert_array_equal(size.numpy(), sizes[own])
    c_noise = M * size.float() / n / S  # |M| p(m in own cell) / S per sample, as in step()

    mu = tr.cell_means()
    mu_hand = np.stack([Y[cell == r].mean(0) for r in range(4)])
    np.testing.assert_allclose(mu.numpy(), mu_hand, rtol=1e-5, atol=1e-6)
    c_mu = tr._mean_weights(heads)
    c_mu_hand = M * sizes[None, :] / n * (np.arange(4)[None, :] != own[:, None])
    np.testing.assert_allclose(c_mu.numpy(), c_mu_hand, rtol=1e-6)

    def q(a, b):
        return 1.0 / (1.0 + ((a - b) ** 2).sum(-1))

    # eq. 4: |M| sum_{r != own} (|r| / n) q(y_i, mu_r)
    mean_term = np.array([
        sum(M * sizes[r] / n * q(Y[i], mu_hand[r]) for r in range(4) if r != own[b])
        for b, i in enumerate(h)
    ])
    sampled = (M * sizes[own] / n / S) * q(Y[h][:, None], Y[nz]).sum(1)  # eq. 5, sampled
    q_pos = q(Y[h][:, None], Y[shard.neighbors[h]])
    p = p_ji(7).numpy().astype(np.float64)
    z = (sampled + mean_term)[:, None]
    by_hand = (p * (-np.log(q_pos) + 4.0**-s * np.log(q_pos + z))).sum()
    for backend in ("torch", "fused"):
        tr_b = surrogate_trainer(shard, "others", s, backend)
        compute = tr_b._grad_fused if backend == "fused" else tr_b._grad_torch
        _, value, _ = compute(heads, noise, c_noise, mu, c_mu, 1.0)
        assert value == pytest.approx(by_hand, rel=1e-5)
    # without the means the loss would differ: the test sees the mean term
    _, without, _ = tr._grad_torch(heads, noise, c_noise, None, None, 1.0)
    assert abs(without - by_hand) > 1e-3 * abs(by_hand)


# -- the Neg-t-SNE spectrum (tsne-to-umap-contrastive) -----------------------------------------
@pytest.fixture(scope="module")
def mixture_1000() -> np.ndarray:
    X, _ = make_blobs(1000, n_features=10, centers=6, random_state=0)
    return X.astype(np.float32)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("knob,values", [
    ("s", [-1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0]),
    ("z_bar", [1e3 * 10**e for e in (0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0)]),
])
def test_negtsne_scale_falls_as_z_bar_grows(mixture_1000, seed, knob, values):
    scales = []
    for v in values:
        kw = {"s": v} if knob == "s" else {"s": None, "z_bar": v}
        Y = NegTSNE(n_epochs=30, random_state=seed, **kw).fit_transform(mixture_1000)
        scales.append(median_scale(Y))
    assert np.all(np.diff(scales) < 0), scales
    assert scales[0] > 1.5 * scales[-1]


def test_reference_mean_weight_gives_each_cell_mean_weight_one(digits, monkeypatch):
    """mean_weight="reference" (the authors' code) weights every approximated cell mean 1,
    the paper |M| p(m in r) (eq. 4); the two runs differ."""
    from nomad import optimize

    trainers = []
    init = optimize._ShardTrainer.__init__
    monkeypatch.setattr(optimize._ShardTrainer, "__init__",
                        lambda self, *a, **kw: (init(self, *a, **kw), trainers.append(self))[0])
    X = digits[0][:600]
    kw = {"n_epochs": 5, "n_cells": 4, "approximate": "others", "random_state": 0}
    paper = NOMAD(**kw)
    reference = NOMAD(mean_weight="reference", **kw)
    assert np.abs(paper.fit_transform(X) - reference.fit_transform(X)).max() > 1e-3
    by_paper, by_reference = trainers
    heads = torch.arange(len(X))
    other_cells = (by_paper.cell[heads][:, None] != torch.arange(by_paper.C)).float()
    sizes = by_paper.cell_sizes
    assert sizes.sum() == len(X) and by_paper.C >= 2
    # eq. 4: |M| p(m in r) = 10,000 |r| / n for every other cell, 0 for the head's own
    torch.testing.assert_close(by_paper._mean_weights(heads), other_cells * (10_000 * sizes / len(X)))
    torch.testing.assert_close(by_reference._mean_weights(heads), other_cells)
    with pytest.raises(InputError, match="mean_weight"):
        NOMAD(mean_weight="one").fit_transform(X)


def test_batch_neighbor_noise_draws_from_the_batch_pool(digits):
    """noise="batch_neighbors" (the authors' code) draws noise from the positives of the
    batch's heads, each standing for |M|/S samples; it runs on both paths and differs."""
    X = digits[0][:600]
    idx, _ = build_index(X, 8, n_cells=3)
    shard = make_shards(idx, pca_init(X, 1.0, 0), 1)[0]
    spec = TrainSpec(loss=InfoNCE(), p=p_ji(8), n_epochs=1, learning_rate=60.0, batch_size=60,
                     n_noise=1000, noise_samples=16, noise="batch_neighbors")
    trainer = _ShardTrainer(shard, spec, Comm())
    heads, noise, size = trainer._sample(60, 16)
    pool = set(trainer.nbrs[heads].reshape(-1).tolist())
    assert set(noise.reshape(-1).tolist()) <= pool
    assert torch.all(1000 * size / 600 / 16 == 1000 / 16)  # weight |M| / S per draw
    kw = {"n_epochs": 5, "random_state": 0}
    Y_pool = NOMAD(noise="batch_neighbors", **kw).fit_transform(X)
    assert np.isfinite(Y_pool).all()
    assert np.abs(Y_pool - NOMAD(**kw).fit_transform(X)).max() > 1e-3
