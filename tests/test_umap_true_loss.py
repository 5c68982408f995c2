"""Edge sampling (nomad/edges.py) and UMAP's three losses (nomad/true_loss.py).

* The purported (eq. 6) and effective (eq. 12) losses against a dense O(n^2) computation,
  and the sampled all-pair estimate against the exact one.
* The sampler: the actual loss of an epoch (eq. 11) agrees with the effective loss within
  sampling noise; the eq. 18 correction makes the expected repulsion on kNN edges 1 - mu_ij.
* The graphs are symmetric; edge sampling trains; options are checked.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import make_blobs
from sklearn.neighbors import KNeighborsClassifier

from nebench.errors import InputError
from nomad import NOMAD, InfoNCTSNE, UMAPLoss
from nomad.edges import edge_graph
from nomad.losses import UMAPLoss as UMAPLossFn
from nomad.true_loss import repulsion_row_sums, umap_losses

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def blobs():
    X, y = make_blobs(400, 8, centers=4, random_state=0)
    return X.astype(np.float32), y


def test_losses_equal_dense_computation():
    rng = np.random.default_rng(0)
    n, m = 40, 5
    Y = torch.as_tensor(rng.normal(size=(n, 2)), dtype=torch.float32)
    mu = np.triu(rng.random((n, n)) * (rng.random((n, n)) < 0.2), 1)
    mu = mu + mu.T
    heads, tails = np.nonzero(mu)
    loss = UMAPLossFn(1.5, 0.9)
    d2 = ((Y.numpy()[:, None] - Y.numpy()[None]) ** 2).sum(-1)
    nu = 1.0 / (1.0 + 1.5 * np.maximum(d2, 1e-12) ** 0.9)
    La, Lr = -np.log(np.maximum(nu, 1e-4)), -np.log(np.maximum(1 - nu, 1e-4))
    off = ~np.eye(n, dtype=bool)
    d = mu.sum(1)
    got = umap_losses(loss, Y, torch.as_tensor(heads), torch.as_tensor(tails),
                      torch.as_tensor(mu[heads, tails], dtype=torch.float32), m, 10**6, torch.Generator())
    purported = (mu * La + (1 - mu) * Lr)[off].sum()  # eq. 6: 2 sum_{i<j} = ordered pairs
    effective = (mu * La)[off].sum() + (d[:, None] * m / n * Lr).sum()  # eq. 12 (+ L^r_ii)
    assert got["purported"] == pytest.approx(purported, rel=1e-4)
    assert got["effective"] == pytest.approx(effective, rel=1e-4)
    assert got["effective_attractive"] == got["purported_attractive"]


def test_sampled_row_sums_estimate_exact_ones():
    Y = torch.as_tensor(np.random.default_rng(1).normal(size=(2000, 2)), dtype=torch.float32)
    loss = UMAPLossFn(1.6, 0.9)
    exact = repulsion_row_sums(loss, Y, 2000 * 2000, torch.Generator())
    sampled = repulsion_row_sums(loss, Y, 2000 * 400, torch.Generator().manual_seed(0))
    assert float(sampled.sum() / exact.sum()) == pytest.approx(1.0, abs=0.02)


@pytest.mark.parametrize("kind", ["binary", "umap"])
def test_graphs_are_symmetric(blobs, kind):
    X, _ = blobs
    nbrs = np.argsort(((X[:, None] - X[None]) ** 2).sum(-1), 1)[:, 1:11]
    dist = np.sqrt(((X[:, None] - X[nbrs]) ** 2).sum(-1))
    g = edge_graph(nbrs, dist, kind, seed=0)
    pairs = {(int(h), int(t)): float(w) for h, t, w in zip(g.heads, g.tails, g.mu)}
    assert all(pairs.get((t, h)) == pytest.approx(w) for (h, t), w in pairs.items())
    assert all((h, int(nbrs[h, 0])) in pairs for h in range(len(X)))
    mu = g.mu.numpy()
    assert (mu > 0).all() and (mu <= 1).all()
    assert (mu == 1).all() if kind == "binary" else (mu < 1).mean() > 0.3


def test_umap_graph_is_umap_learns_own_fuzzy_set(blobs):
    """graph="umap" from a k-NN table (self excluded) equals the fuzzy simplicial set umap-learn
    builds from the data itself with n_neighbors = k + 1 (it counts the point as its own 0-th
    neighbour; below 4,096 points its search is exact)."""
    from umap.umap_ import fuzzy_simplicial_set

    X, _ = blobs
    nbrs = np.argsort(((X[:, None] - X[None]) ** 2).sum(-1), 1)[:, 1:11]
    dist = np.sqrt(((X[:, None] - X[nbrs]) ** 2).sum(-1))
    g = edge_graph(nbrs, dist, "umap", seed=0)
    ours = np.zeros((len(X), len(X)))
    ours[g.heads.numpy(), g.tails.numpy()] = g.mu.numpy()
    theirs = fuzzy_simplicial_set(np.asarray(X, np.float32), 11, np.random.RandomState(0), "euclidean")[0]
    theirs = theirs.toarray()
    np.fill_diagonal(theirs, 0.0)
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_actual_loss_agrees_with_effective(blobs):
    """With a vanishing step the embedding stays put, so each epoch's actual loss (eq. 11) is
    an unbiased draw of the effective loss (eq. 12) (umap-true-loss Fig. 3's claim); with
    the eq. 18 correction too."""
    X, _ = blobs
    for correct in (False, True):
        m = UMAPLoss(sampling="edges", graph="umap", aggregation="sum", learning_rate=1e-9, n_epochs=8,
                     loss_log_every=1, correct_repulsion=correct, push_noise=False, n_neighbors=10)
        m.fit_transform(X)
        ratio = np.array([r["actual"] / r["effective"] for r in m.loss_log_])
        assert len(ratio) == 8
        assert np.abs(ratio - 1).max() < 0.05 and abs(ratio.mean() - 1) < 0.02
        rep = np.array([r["effective_repulsive"] / r["purported_repulsive"] for r in m.loss_log_])
        if not correct:  # negative sampling shrinks the repulsion (d_i m / n instead of 1 - mu_ij)
            assert (rep < 0.2).all()


def test_correction_gives_eq18(blobs):
    """With the extra edge repulsion the logged effective loss is eq. 18 (kNN edges weighted
    1 - mu_ij, all other pairs (d_i + d_j) m / 2n; edges with mu_ij so close to 1 that the
    extra probability would be negative keep the sampled weight), computed here densely at
    the final embedding, plus the sampler's L^r_ii terms."""
    X, _ = blobs
    n, k, m = len(X), 10, 5
    method = UMAPLoss(sampling="edges", graph="umap", correct_repulsion=True, aggregation="sum",
                      n_epochs=3, loss_log_every=3, n_neighbors=k)
    Y = method.fit_transform(X)
    g = edge_graph(method.index_.neighbors, method.index_.distances, "umap", seed=0)
    mu = np.zeros((n, n))
    mu[g.heads.numpy(), g.tails.numpy()] = g.mu.numpy()
    loss = method.loss_
    d2 = ((Y[:, None] - Y[None]) ** 2).sum(-1).astype(np.float64)
    nu = 1.0 / (1.0 + loss.a * np.maximum(d2, 1e-12) ** loss.b)
    La, Lr = -np.log(np.maximum(nu, 1e-4)), -np.log(np.maximum(1 - nu, 1e-4))
    d = mu.sum(1)
    knn, off = mu > 0, ~np.eye(n, dtype=bool)
    sampled = (d[:, None] + d[None]) * m / (2 * n)  # negative sampling's weight (eq. 12)
    rep_weight = np.where(knn, np.maximum(1 - mu, sampled), sampled)  # r_ij >= 0: clipped at mu ~ 1
    eq18 = (mu * La + rep_weight * Lr)[off].sum() + (d * m / n * np.diag(Lr)).sum()
    assert method.loss_log_[-1]["effective"] == pytest.approx(eq18, rel=1e-3)


def test_edge_sampling_trains_and_reproduces(blobs):
    X, y = blobs
    runs = [InfoNCTSNE(sampling="edges", aggregation="sum", n_epochs=30, random_state=3).fit_transform(X)
            for _ in range(2)]
    np.testing.assert_array_equal(runs[0], runs[1])
    acc = KNeighborsClassifier(10).fit(runs[0][::2], y[::2]).score(runs[0][1::2], y[1::2])
    assert acc > 0.9


@pytest.mark.parametrize("cls, params, match", [
    (UMAPLoss, {"loss_log_every": 5}, "sampling=edges"),
    (UMAPLoss, {"correct_repulsion": True}, "sampling=edges"),
    (InfoNCTSNE, {"sampling": "edges", "loss_log_every": 5}, "UMAP's loss"),
    (NOMAD, {"sampling": "edges"}, "one device"),
    (UMAPLoss, {"sampling": "edges", "n_noise": 2.5}, "n_noise"),
    (UMAPLoss, {"sampling": "edge"}, "sampling"),
])
def test_edge_options_are_checked(blobs, cls, params, match):
    with pytest.raises(InputError, match=match):
        cls(n_epochs=2, **params).fit_transform(blobs[0])


# -- the compiled edge epoch vs the torch edge steps ----------------------------------------------
def two_edge_trainer(loss_name: str, backend: str, momentum: float, push_noise: bool):
    """Four points, edges 0->1 and 2->3: one edge per step (two steps an epoch), m = 1."""
    from test_nomad_losses import GRAD_LOSSES

    from nomad.affinities import p_ji
    from nomad.edges import EdgeGraph, EdgeTrainer
    from nomad.optimize import Comm, Shard, TrainSpec

    Y0 = np.array([[0.0, 0.0], [0.7, 0.2], [2.0, -1.0], [2.5, -0.4]], dtype=np.float32)
    shard = Shard(rank=0, rows=np.arange(4), Y0=Y0, neighbors=np.array([[1], [0], [3], [2]]),
                  cell=np.zeros(4, dtype=np.int64), cell_sizes=np.array([4]),
                  cell_rank=np.zeros(1, dtype=np.int64), n_total=4)
    spec = TrainSpec(loss=GRAD_LOSSES[loss_name](4), p=p_ji(1), n_epochs=2, learning_rate=0.3,
                     batch_size=1, n_noise=1.0, noise_samples=1, approximate="none", aggregation="sum",
                     momentum=momentum, clip_grad=0.8, backend=backend, seed=0)
    graph = EdgeGraph(heads=torch.tensor([0, 2]), tails=torch.tensor([1, 3]), mu=torch.ones(2))
    return EdgeTrainer(shard, spec, Comm(), graph, push_noise=push_noise, correct_repulsion=False,
                       loss_log_every=0, loss_log_pairs=10)


@pytest.mark.parametrize("momentum, push_noise", [(0.0, True), (0.5, True), (0.0, False)])
@pytest.mark.parametrize("loss_name", ["infonce", "negtsne", "nce", "umap"])
def test_fused_edge_epoch_is_one_of_the_torch_step_sequences(loss_name, momentum, push_noise):
    """Both backends walk the same shuffled edges (one torch generator, one seed); the compiled
    epoch draws its own negatives, so run the torch steps with every possible pair of
    negatives and require the compiled epoch's result to be one of them (the lr schedule,
    momentum or the sparse update without it, clipping, push_noise, NCE's log Z)."""
    fused = two_edge_trainer(loss_name, "fused", momentum, push_noise)
    assert fused.fused
    value = fused._epoch(0, 1.3, None)
    Y_fused = fused.Y.detach().numpy().copy()
    matches = []  # torch runs that end where the compiled epoch did (clipping can tie several)
    for first in range(4):
        for second in range(4):
            tr = two_edge_trainer(loss_name, "torch", momentum, push_noise)
            assert not tr.fused
            draws = iter([first, second])
            tr._negatives = lambda h, t, draws=draws: torch.tensor([[next(draws)]])
            v = tr._epoch(0, 1.3, None)
            if np.abs(tr.Y.detach().numpy() - Y_fused).max() < 1e-5:
                matches.append((v, tr))
    assert matches
    v, tr = min(matches, key=lambda m: abs(m[0] - value))
    assert value == pytest.approx(v, rel=1e-5)
    if loss_name == "nce":
        log_z = float(tr.spec.loss.log_z.detach())
        assert float(fused.spec.loss.log_z.detach()) == pytest.approx(log_z, abs=1e-7)
        assert log_z != 0.0
