"""Tests for the losses, p(j|i) and the batch gradient of the engine.

* nomad/affinities.py: p(j|i) of nomad-projection eq. 6.
* nomad/losses.py: every loss against a direct numpy computation of its docstring formula,
  its closed-form ``dq`` and ``kernel_grad`` against autograd, Neg-t-SNE's Z-bar spectrum
  (tsne-to-umap-contrastive), UMAP's forces against umap-learn's layouts.py formulas.
* nomad/optimize.py + nomad/cpu_kernel.py: the fused CPU kernel and the torch path give
  the same batch gradient, loss and NCE log-Z gradient; the torch path equals autograd of
  the total loss with respect to the positions.
"""

from __future__ import annotations

import math

import numba
import numpy as np
import pytest
import torch

from nomad.affinities import p_ji
from nomad.engine import make_shards
from nomad.index import build_index
from nomad.losses import NCE, InfoNCE, NegTSNE, UMAPLoss, cauchy
from nomad.optimize import Comm, TrainSpec, _ShardTrainer

pytestmark = pytest.mark.usefixtures("one_thread")


# -- p(j|i), eq. 6 ------------------------------------------------------------------------------
@pytest.mark.parametrize("k", [1, 5, 15])
def test_inverse_rank_weights_are_eq6(k):
    p = p_ji(k)
    w = np.exp(1.0 / np.arange(1, k + 1))
    assert p.shape == (k,) and p.dtype == torch.float32
    np.testing.assert_allclose(p.numpy(), w / w.sum(), rtol=1e-6)
    assert float(p.sum()) == pytest.approx(1.0, abs=1e-6)
    assert (np.diff(p.numpy()) < 0).all()


def test_inverse_rank_values_for_k8():
    # the reference code's softmax(1/rank) for K=8 (ALGORITHMS.md 2.1)
    np.testing.assert_allclose(p_ji(8).numpy(), [.232, .140, .119, .109, .104, .101, .098, .097],
                               atol=6e-4)


def test_uniform_weights():
    np.testing.assert_allclose(p_ji(4, "uniform").numpy(), [0.25] * 4)


def test_unknown_p_model_is_rejected():
    with pytest.raises(ValueError, match="p_model"):
        p_ji(5, "rank")


# -- loss values against the formulas -------------------------------------------------------------
B, K, S = 4, 3, 5


@pytest.fixture
def batch():
    """Tiny random loss inputs (float64), kernel values strictly inside (0, 1)."""
    rng = np.random.default_rng(0)
    q_pos = rng.uniform(0.05, 0.95, (B, K))
    p = rng.uniform(0.5, 1.5, (B, K))
    p /= p.sum(1, keepdims=True)
    q_noise = rng.uniform(0.01, 0.9, (B, S))
    c_noise = rng.uniform(0.1, 3.0, (B, S))
    return q_pos, p, q_noise, c_noise


def t(a: np.ndarray, grad: bool = False) -> torch.Tensor:
    return torch.tensor(a, dtype=torch.float64, requires_grad=grad)


def infonce_np(q_pos, p, q_noise, c_noise, rho, s):
    z = (c_noise * q_noise).sum(1, keepdims=True)
    return (p * (-rho * np.log(q_pos) + 4.0 ** -s * np.log(q_pos + z))).sum(1)


def binary_nce_np(q_pos, p, q_noise, c_noise, rho, nu):
    attract = -np.log(q_pos / (q_pos + nu))
    repel = -np.log(nu / (q_noise + nu))
    return rho * (p * attract).sum(1) + (c_noise * repel).sum(1)


def umap_np(q_pos, p, q_noise, c_noise, rho):
    return rho * (p * -np.log(q_pos)).sum(1) + (c_noise * -np.log(1.0 - q_noise)).sum(1)


N, M = 500, 5.0


def make_loss(name: str):
    return {
        "infonce_s0": lambda: InfoNCE(0.0),
        "infonce_s05": lambda: InfoNCE(0.5),
        "negtsne": lambda: NegTSNE(N, M, s=0.5),
        "nce": lambda: NCE(M),
        "umap": lambda: UMAPLoss(1.577, 0.895),
    }[name]()


def reference_value(name, loss, q_pos, p, q_noise, c_noise, rho):
    if name.startswith("infonce"):
        return infonce_np(q_pos, p, q_noise, c_noise, rho, loss.s)
    if name == "negtsne":  # nu = m Z-bar / n^2, Z-bar(0.5) = sqrt(100 n * n^2 / m)
        nu = M * math.sqrt(100.0 * N * N * N / M) / N**2
        return binary_nce_np(q_pos, p, q_noise, c_noise, rho, nu)
    if name == "nce":  # nu = m Z with Z = 1 at initialisation
        nu = M * math.exp(float(loss.log_z.detach()))
        return binary_nce_np(q_pos, p, q_noise, c_noise, rho, nu)
    return umap_np(q_pos, p, q_noise, c_noise, rho)


LOSSES = ["infonce_s0", "infonce_s05", "negtsne", "nce", "umap"]


@pytest.mark.parametrize("rho", [1.0, 2.5])
@pytest.mark.parametrize("name", LOSSES)
def test_forward_equals_the_formula(name, rho, batch):
    loss = make_loss(name)
    if name == "nce":
        with torch.no_grad():
            loss.log_z.fill_(0.3)  # a learned Z away from its initial 1
    got = loss(*map(t, batch), rho=rho)
    assert got.shape == (B,)
    ref = reference_value(name, loss, *batch, rho)
    np.testing.assert_allclose(got.detach().numpy(), ref, rtol=1e-5)


@pytest.mark.parametrize("rho", [1.0, 2.5])
@pytest.mark.parametrize("name", LOSSES)
def test_dq_equals_autograd(name, rho, batch):
    loss = make_loss(name)
    q_pos, p, q_noise, c_noise = batch
    qp, qn = t(q_pos, True), t(q_noise, True)
    loss(qp, t(p), qn, t(c_noise), rho=rho).sum().backward()
    g_pos, g_noise, g_params = loss.dq(t(q_pos), t(p), t(q_noise), t(c_noise), rho=rho)
    np.testing.assert_allclose(g_pos.detach().numpy(), qp.grad.numpy(), rtol=1e-5)
    np.testing.assert_allclose(g_noise.detach().numpy(), qn.grad.numpy(), rtol=1e-5)
    if name == "nce":
        assert set(g_params) == {loss.log_z}
        assert float(g_params[loss.log_z]) == pytest.approx(float(loss.log_z.grad), rel=1e-5)
    else:
        assert g_params == {}


@pytest.mark.parametrize("name", LOSSES)
def test_kernel_grad_equals_autograd(name):
    loss = make_loss(name)
    d2 = torch.tensor([0.01, 0.3, 1.0, 2.7, 40.0], dtype=torch.float64, requires_grad=True)
    q = loss.kernel(d2)
    (dq,) = torch.autograd.grad(q.sum(), d2)
    closed_form = loss.kernel_grad(d2.detach(), q.detach())
    np.testing.assert_allclose(closed_form.numpy(), dq.numpy(), rtol=1e-6)


def test_kernels():
    d2 = torch.tensor([0.0, 1.0, 3.0], dtype=torch.float64)
    np.testing.assert_allclose(cauchy(d2).numpy(), [1.0, 0.5, 0.25])  # eq. 1
    np.testing.assert_allclose(InfoNCE().kernel(d2).numpy(), [1.0, 0.5, 0.25])
    a, b = 1.577, 0.895
    np.testing.assert_allclose(UMAPLoss(a, b).kernel(d2).numpy(), 1.0 / (1.0 + a * d2.numpy() ** b))


def test_infonce_repulsion_scales_with_4_to_the_minus_s(batch):
    q_pos, p, q_noise, c_noise = map(t, batch)
    g0 = InfoNCE(0.0).dq(q_pos, p, q_noise, c_noise)[1]
    g1 = InfoNCE(1.0).dq(q_pos, p, q_noise, c_noise)[1]
    np.testing.assert_allclose(g1.numpy(), g0.numpy() / 4.0)


# -- Neg-t-SNE's normaliser ------------------------------------------------------------------------
@pytest.mark.parametrize("n,m", [(1000, 5.0), (70000, 5.0), (500, 20.0)])
def test_negtsne_spectrum_endpoints(n, m):
    tsne = NegTSNE(n, m, s=0.0)
    umap = NegTSNE(n, m, s=1.0)
    assert tsne.z_bar == pytest.approx(100.0 * n)
    assert umap.z_bar == pytest.approx(n * n / m)
    assert float(umap.log_nu().exp()) == pytest.approx(1.0, rel=1e-5)  # nu = 1 at UMAP's end
    assert float(tsne.log_nu().exp()) == pytest.approx(m * 100.0 / n, rel=1e-5)
    half = NegTSNE(n, m, s=0.5)
    # geometric interpolation
    assert half.z_bar == pytest.approx(math.sqrt(tsne.z_bar * umap.z_bar))
    beyond = NegTSNE(n, m, s=1.5)
    assert beyond.z_bar == pytest.approx(umap.z_bar * math.sqrt(umap.z_bar / tsne.z_bar))


def test_negtsne_z_bar_overrides_s():
    loss = NegTSNE(1000, 5.0, s=0.0, z_bar=12345.0)
    assert loss.z_bar == 12345.0
    assert float(loss.log_nu().exp()) == pytest.approx(5.0 * 12345.0 / 1000**2, rel=1e-5)


def test_nce_starts_at_z_equal_one_and_learns_log_z():
    loss = NCE(5.0)
    assert float(loss.log_nu().detach().exp()) == pytest.approx(5.0)
    assert [p is loss.log_z for p in loss.parameters()] == [True]


# -- UMAP's forces (umap-learn layouts.py, ALGORITHMS.md 3.1) ----------------------------------
def tiny_trainer(Y: np.ndarray, neighbors: np.ndarray, loss, p_model="uniform", **spec_kw):
    """A one-device trainer over the given positions and (local) neighbour table."""
    from nomad.optimize import Shard

    n = len(Y)
    shard = Shard(rank=0, rows=np.arange(n), Y0=Y.astype(np.float32), neighbors=neighbors,
                  cell=np.zeros(n, dtype=np.int64), cell_sizes=np.array([n]),
                  cell_rank=np.zeros(1, dtype=np.int64), n_total=n)
    kw = {"n_epochs": 1, "learning_rate": 1.0, "batch_size": 1, "n_noise": 5.0, "noise_samples": 1,
              "approximate": "none", "backend": "torch"}
    kw.update(spec_kw)
    spec = TrainSpec(loss=loss, p=p_ji(neighbors.shape[1], p_model), **kw)
    return _ShardTrainer(shard, spec, Comm())


@pytest.mark.parametrize("a,b", [(1.0, 1.0), (1.577, 0.8951)])
def test_umap_attraction_equals_umap_learn(a, b):
    y_i, y_j = np.array([0.3, -0.2]), np.array([1.1, 0.9])
    tr = tiny_trainer(np.stack([y_i, y_j, [5.0, 5.0]]), np.array([[1], [0], [0]]), UMAPLoss(a, b))
    heads, noise = torch.tensor([0]), torch.tensor([[2]])
    grad, _, _ = tr._grad_torch(heads, noise, torch.zeros(1), None, None, 1.0)  # no repulsion
    d2 = float(((y_i - y_j) ** 2).sum())
    # layouts.py: y_i += alpha * grad_coeff (y_i - y_j), y_j -= the same (move_other=True)
    grad_coeff = -2.0 * a * b * d2 ** (b - 1.0) / (1.0 + a * d2**b)
    np.testing.assert_allclose(-grad[0].numpy(), grad_coeff * (y_i - y_j), rtol=1e-5)
    np.testing.assert_allclose(-grad[1].numpy(), -grad_coeff * (y_i - y_j), rtol=1e-5)
    assert (grad[2] == 0).all()


@pytest.mark.parametrize("a,b", [(1.0, 1.0), (1.577, 0.8951)])
def test_umap_repulsion_equals_umap_learn(a, b):
    y_i, y_m = np.array([0.3, -0.2]), np.array([1.4, 0.9])
    tr = tiny_trainer(np.stack([y_i, [0.31, -0.2], y_m]), np.array([[1], [0], [0]]), UMAPLoss(a, b))
    heads, noise = torch.tensor([0]), torch.tensor([[2]])
    c = 1.0  # one negative sample of weight 1, as one of layouts.py's negative updates
    with torch.no_grad():
        tr.Y.data[1] = tr.Y.data[0]  # the positive on the head: zero attraction force
    grad, _, _ = tr._grad_torch(heads, noise, torch.full((1,), c), None, None, 1.0)
    d2 = float(((y_i - y_m) ** 2).sum())
    # layouts.py: grad_coeff = 2 gamma b / ((0.001 + d^2)(1 + a d^{2b})), gamma = 1; the 0.001
    # is umap-learn's guard against d = 0, so the exact gradient matches to ~0.001 / d^2
    grad_coeff = 2.0 * b / ((0.001 + d2) * (1.0 + a * d2**b))
    np.testing.assert_allclose(-grad[0].numpy(), grad_coeff * (y_i - y_m), rtol=2e-3)
    # the sampled negative is a parameter here, so it feels the opposite force
    np.testing.assert_allclose(-grad[2].numpy(), -grad_coeff * (y_i - y_m), rtol=2e-3)


# -- the batch gradient: fused kernel vs torch path vs autograd ----------------------------------
GRAD_LOSSES = {
    "infonce": lambda n: InfoNCE(0.5),
    "negtsne": lambda n: NegTSNE(n, 50.0, s=0.5),
    "nce": lambda n: NCE(50.0),
    "umap": lambda n: UMAPLoss(1.577, 0.8951),
}


@pytest.fixture(scope="module")
def problem():
    """600 points, 4 cells, k = 7, random positions (not a fitted layout)."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(600, 5)).astype(np.float32)
    idx, _ = build_index(X, 7, n_cells=4, max_cell_size=400)
    Y0 = rng.normal(scale=2.0, size=(600, 2)).astype(np.float32)
    return make_shards(idx, Y0, 1)[0]


def trainer(shard, loss_name: str, approximate: str, backend: str, noise_group: int = 1) -> _ShardTrainer:
    spec = TrainSpec(loss=GRAD_LOSSES[loss_name](shard.n_total), p=p_ji(7), n_epochs=1,
                     learning_rate=1.0, batch_size=100, n_noise=50.0, noise_samples=8,
                     noise_group=noise_group, approximate=approximate, backend=backend, seed=3)
    return _ShardTrainer(shard, spec, Comm())


def sampled_batch(tr: _ShardTrainer):
    """The engine's own samples, as ``step`` draws them."""
    spec = tr.spec
    heads, noise, size = tr._sample(tr.B, spec.noise_samples)
    c_noise = spec.n_noise * size.float() / tr.shard.n_total / spec.noise_samples
    mu = tr.cell_means() if tr.uses_means else None
    c_mu = tr._mean_weights(heads) if mu is not None else None
    return heads, noise, c_noise, mu, c_mu


@pytest.mark.parametrize("noise_group", [1, 3])
@pytest.mark.parametrize("approximate", ["none", "others"])
@pytest.mark.parametrize("loss_name", list(GRAD_LOSSES))
def test_fused_kernel_equals_torch_path(problem, loss_name, approximate, noise_group):
    results = []
    for backend in ("torch", "fused"):
        tr = trainer(problem, loss_name, approximate, backend, noise_group)
        assert tr.fused == (backend == "fused")
        assert tr.uses_means == (approximate == "others")
        batch = sampled_batch(tr)  # same seed: both backends see the same samples
        compute = tr._grad_fused if backend == "fused" else tr._grad_torch
        with torch.no_grad():
            grad, value, g_params = compute(*batch, 1.5)
        params = {type(k): float(v) for k, v in g_params.items()}
        results.append((grad.numpy().copy(), value, params))
    (g_t, v_t, p_t), (g_f, v_f, p_f) = results
    scale = np.abs(g_t).max()
    assert scale > 0
    assert np.abs(g_f - g_t).max() <= 1e-4 * scale
    assert v_f == pytest.approx(v_t, rel=1e-5)
    assert p_f.keys() == p_t.keys() == ({torch.nn.Parameter} if loss_name == "nce" else set())
    for key in p_t:
        assert p_f[key] == pytest.approx(p_t[key], rel=1e-4)


def test_fused_kernel_skips_the_value_when_not_asked(problem):
    tr = trainer(problem, "infonce", "none", "fused")
    batch = sampled_batch(tr)
    g1, v1, _ = tr._grad_fused(*batch, 1.0, with_value=True)
    g2, v2, _ = tr._grad_fused(*batch, 1.0, with_value=False)
    assert v1 > 0 and v2 == 0.0
    np.testing.assert_array_equal(g1.numpy(), g2.numpy())


def own_samples(tr: _ShardTrainer, seed: int = 0):
    """Heads and noise chosen so that no noise sample is its head (UMAP's d^{2b} has an
    infinite derivative at d = 0, which autograd would turn into nan * 0)."""
    rng = np.random.default_rng(seed)
    n, S = tr.n_local, tr.spec.noise_samples
    heads = rng.integers(0, n, 60)
    if tr.spec.approximate == "others":  # noise from the head's own cell
        lo, size = tr.cell_lo[heads].numpy(), tr.cell_n[heads].numpy()
        offset = rng.integers(1, size[:, None], (60, S))  # never 0: never the head itself
        noise = lo[:, None] + (heads[:, None] - lo[:, None] + offset) % size[:, None]
        c_noise = tr.spec.n_noise * size / tr.shard.n_total / S
    else:
        noise = (heads[:, None] + rng.integers(1, n, (60, S))) % n
        c_noise = np.full(60, tr.spec.n_noise / S)
    assert (noise != heads[:, None]).all()
    heads, noise = torch.as_tensor(heads), torch.as_tensor(noise)
    mu = tr.cell_means() if tr.uses_means else None
    c_mu = tr._mean_weights(heads) if mu is not None else None
    return heads, noise, torch.as_tensor(c_noise, dtype=torch.float32), mu, c_mu


def autograd_total_loss(tr, heads, noise, c_noise, mu, c_mu, rho):
    """Recompute the batch loss from a float64 leaf copy of the positions; the cell means
    are constants (detached), as in the engine."""
    loss_fn = tr.spec.loss
    Y = tr.Y.detach().double().clone().requires_grad_(True)
    for param in loss_fn.parameters():
        param.grad = None
    y_h = Y[heads]
    d2_p = ((y_h[:, None] - Y[tr.nbrs[heads]]) ** 2).sum(-1)
    d2_n = ((y_h[:, None] - Y[noise]) ** 2).sum(-1)
    q_noise = loss_fn.kernel(d2_n)
    c_all = c_noise.double()[:, None].expand(-1, noise.shape[1])
    if mu is not None:
        d2_m = ((y_h[:, None] - mu.double()[None]) ** 2).sum(-1)
        q_noise = torch.cat([q_noise, loss_fn.kernel(d2_m)], 1)
        c_all = torch.cat([c_all, c_mu.double()], 1)
    total = loss_fn(loss_fn.kernel(d2_p), tr.p.double(), q_noise, c_all, rho).sum()
    total.backward()
    return Y.grad.numpy(), float(total.detach())


@pytest.mark.parametrize("approximate", ["none", "others"])
@pytest.mark.parametrize("loss_name", list(GRAD_LOSSES))
def test_torch_path_gradient_equals_autograd_of_the_total_loss(problem, loss_name, approximate):
    tr = trainer(problem, loss_name, approximate, "torch")
    batch = own_samples(tr)
    with torch.no_grad():
        grad, value, g_params = tr._grad_torch(*batch, 1.5)
    ref, ref_value = autograd_total_loss(tr, *batch, 1.5)
    assert np.abs(ref).max() > 0
    assert np.abs(grad.numpy() - ref).max() <= 1e-4 * np.abs(ref).max()
    assert value == pytest.approx(ref_value, rel=1e-5)
    if loss_name == "nce":
        log_z = tr.spec.loss.log_z
        assert float(g_params[log_z]) == pytest.approx(float(log_z.grad), rel=1e-4)


def test_every_sampled_noise_weight_sums_to_the_number_of_noise_samples(problem):
    # |M| p(m in D) for the sampled domain D plus |M| p(m in r) for the means = |M|
    for approximate in ("none", "others"):
        tr = trainer(problem, "infonce", approximate, "torch", noise_group=3)
        _heads, noise, c_noise, _mu, c_mu = sampled_batch(tr)
        total = c_noise * noise.shape[1] + (c_mu.sum(1) if c_mu is not None else 0.0)
        np.testing.assert_allclose(total.numpy(), 50.0, rtol=1e-5)


# -- the compiled CPU epoch loop vs the torch step loop -----------------------------------------
def four_point_trainer(loss_name: str, approximate: str, backend: str, batch: int = 1) -> _ShardTrainer:
    """Four points in two cells of two, k = 1 (each point's neighbour is its cell mate)."""
    from nomad.optimize import Shard

    Y0 = np.array([[0.0, 0.0], [0.7, 0.2], [2.0, -1.0], [2.5, -0.4]], dtype=np.float32)
    shard = Shard(rank=0, rows=np.arange(4), Y0=Y0, neighbors=np.array([[1], [0], [3], [2]]),
                  cell=np.array([0, 0, 1, 1]), cell_sizes=np.array([2, 2]),
                  cell_rank=np.zeros(2, dtype=np.int64), n_total=4)
    spec = TrainSpec(loss=GRAD_LOSSES[loss_name](4), p=p_ji(1), n_epochs=1, learning_rate=1.0,
                     batch_size=batch, n_noise=2.0, noise_samples=1, noise_group=batch,
                     approximate=approximate, momentum=0.5, clip_grad=0.8, backend=backend, seed=0)
    return _ShardTrainer(shard, spec, Comm())


@pytest.mark.parametrize("approximate", ["none", "others"])
@pytest.mark.parametrize("loss_name", list(GRAD_LOSSES))
def test_fused_epoch_is_one_of_the_torch_step_sequences(loss_name, approximate):
    """The compiled epoch draws its own samples, so enumerate every possible sample of a
    2-step epoch with B = S = 1 through the torch path (``step``: lr, momentum, clipping,
    NCE's log Z) and require the compiled result to be one of them."""
    lrs, rho = np.array([0.3, 0.2]), 1.3
    fused = four_point_trainer(loss_name, approximate, "fused")
    assert fused.B == 1
    mu = fused.cell_means() if fused.uses_means else None
    value = fused._fused_epoch(mu, lrs, rho, epoch=0)
    Y_fused = fused.Y.detach().numpy().copy()

    def domain(i):
        return [i - i % 2, i - i % 2 + 1] if approximate == "others" else list(range(4))

    samples = [(h, m) for h in range(4) for m in domain(h)]
    best = (np.inf, None)
    for first in samples:
        for second in samples:
            tr = four_point_trainer(loss_name, approximate, "torch")
            draws = iter([first, second])

            def sample(B, S, draws=draws):
                h, m = next(draws)
                return torch.tensor([h]), torch.tensor([[m]]), torch.tensor([len(domain(h))])

            tr._sample = sample
            v = tr.step(mu, float(lrs[0]), rho, with_value=True)
            tr.step(mu, float(lrs[1]), rho, with_value=False)
            err = np.abs(tr.Y.detach().numpy() - Y_fused).max()
            if err < best[0]:
                best = (err, (v, tr))
    err, (v, tr) = best
    assert err < 1e-5
    assert value == pytest.approx(v, rel=1e-5)
    if loss_name == "nce":  # log Z learned with its own plain SGD step in both loops
        log_z = float(tr.spec.loss.log_z.detach())
        assert float(fused.spec.loss.log_z.detach()) == pytest.approx(log_z, abs=1e-7)
        assert log_z != 0.0


@pytest.mark.parametrize("approximate", ["none", "others"])
@pytest.mark.parametrize("loss_name", ["infonce", "nce"])
def test_fused_epoch_shares_one_noise_draw_in_a_group_of_heads(loss_name, approximate):
    """B = G = 2, S = 1: one step of the compiled epoch equals the torch step for one of the
    draws (h1, h2, m) where h2 shares h1's cell, m is in h1's noise domain and both heads push
    the one noise point m."""
    lrs, rho = np.array([0.3]), 1.3
    fused = four_point_trainer(loss_name, approximate, "fused", batch=2)
    assert fused.B == 2
    mu = fused.cell_means() if fused.uses_means else None
    value = fused._fused_epoch(mu, lrs / 2, rho, epoch=0)  # step() scales lr by 1 / B (mean)
    Y_fused = fused.Y.detach().numpy().copy()

    def domain(i):
        return [i - i % 2, i - i % 2 + 1] if approximate == "others" else list(range(4))

    best = (np.inf, None)
    for h1 in range(4):
        for h2 in (h1 - h1 % 2, h1 - h1 % 2 + 1):  # h1's cell
            for m in domain(h1):
                tr = four_point_trainer(loss_name, approximate, "torch", batch=2)
                size = len(domain(h1))
                tr._sample = lambda B, S, d=(h1, h2, m, size): (
                    torch.tensor(d[:2]), torch.tensor([[d[2]], [d[2]]]), torch.tensor([d[3], d[3]]))
                v = tr.step(mu, float(lrs[0]), rho, with_value=True)
                err = np.abs(tr.Y.detach().numpy() - Y_fused).max()
                best = min(best, (err, v), key=lambda t: t[0])
    assert best[0] < 1e-5
    assert value == pytest.approx(best[1], rel=1e-5)


@pytest.mark.parametrize("approximate", ["none", "others"])
def test_noise_groups_share_a_draw_and_keep_heads_uniform(problem, approximate):
    tr = trainer(problem, "infonce", approximate, "torch", noise_group=4)
    cell = problem.cell
    counts = np.zeros(problem.n_total)
    for _ in range(200):
        heads, noise, size = tr._sample(tr.B, 8)
        groups = noise.reshape(25, 4, 8)
        assert (groups == groups[:, :1]).all()  # one draw per group of 4 heads
        assert (size.reshape(25, 4) == size.reshape(25, 4)[:, :1]).all()
        if approximate == "others":  # a group's heads share the own cell, their noise domain
            own = cell[heads.numpy()].reshape(25, 4)
            assert (own == own[:, :1]).all()
            assert (cell[noise.numpy()] == cell[heads.numpy()][:, None]).all()
        counts += np.bincount(heads.numpy(), minlength=problem.n_total)
    # each head is uniform over the shard: per-cell frequencies match the cell sizes
    per_cell = np.bincount(cell, weights=counts) / counts.sum()
    np.testing.assert_allclose(per_cell, np.bincount(cell) / problem.n_total, atol=0.02)


needs_two_threads = pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2,
                                       reason="numba has a single thread here")


@needs_two_threads
def test_fused_gradient_is_bitwise_the_same_for_any_thread_count(problem):
    tr = trainer(problem, "infonce", "others", "fused")
    batch = sampled_batch(tr)
    grads = []
    for threads in (1, 2):
        numba.set_num_threads(threads)
        try:
            grads.append(tr._grad_fused(*batch, 1.0)[0].numpy().copy())
        finally:
            numba.set_num_threads(1)
    np.testing.assert_array_equal(grads[0], grads[1])


@needs_two_threads
def test_fused_epoch_with_the_parallel_kernel_is_bitwise_the_same_for_any_thread_count():
    from nomad.cpu_kernel import PARALLEL_MIN_PAIRS

    rng = np.random.default_rng(0)
    X = rng.normal(size=(4000, 5)).astype(np.float32)
    idx, _ = build_index(X, 15, n_cells=2)
    shard = make_shards(idx, rng.normal(size=(4000, 2)).astype(np.float32), 1)[0]
    results = []
    for threads in (1, 2):
        spec = TrainSpec(loss=InfoNCE(), p=p_ji(15), n_epochs=1, learning_rate=1.0,
                         batch_size=4000, n_noise=10.0, noise_samples=10, noise_group=4,
                         approximate="others")
        tr = _ShardTrainer(shard, spec, Comm())
        assert tr.B * (15 + 10 + 2) >= PARALLEL_MIN_PAIRS  # the parallel kernel runs
        numba.set_num_threads(threads)
        try:
            value = tr._fused_epoch(tr.cell_means(), np.array([1.0, 0.5]), 1.0, epoch=0)
        finally:
            numba.set_num_threads(1)
        results.append((tr.Y.detach().numpy().copy(), value))
    np.testing.assert_array_equal(results[0][0], results[1][0])
    assert results[0][1] == results[1][1]
    assert np.abs(results[0][0] - shard.Y0).max() > 0
