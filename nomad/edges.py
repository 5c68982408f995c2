"""Edge sampling: an epoch walks the edges of the symmetric kNN graph (UMAP, cne).

The engine's default draws *heads* and brings all k neighbours of each (NOMAD). UMAP and
cne instead sample *edges* ij of the symmetric graph with weights mu_ij: in each epoch every
directed edge is taken with probability mu_ij (umap-true-loss Algorithm 1: E X_ij = mu_ij;
for cne's binary graph that is every edge once), in shuffled batches. Each sampled edge
pulls both ends together (``rho`` L^a_ij) and draws m = |M| negatives s uniformly from all
points (or, ``noise="batch_neighbors"``, from the batch's tails: cne's in-batch noise),
which push the head away; ``push_noise`` also moves the negatives (cne's autograd does,
umap-learn does not). The per-edge loss is the method's loss with one positive of weight 1
and m noise samples of weight 1 each. The same epochs drive free positions (SGD,
:class:`EdgeTrainer`) or an encoder (Adam, :class:`ParametricEdgeTrainer`: cne's parametric
mode, and Parametric UMAP's sampler with ``graph="umap"``).

``correct_repulsion`` (UMAP's loss only) adds the sampler proposed in umap-true-loss
section 7.3: each kNN edge is also taken for repulsion with probability
``r_ij = 1 - mu_ij - (d_i + d_j) m / (2n)``, so that the expected loss is eq. 18 and the
target similarities are mu_ij themselves. With ``loss_log_every`` > 0 (UMAP's loss only)
the purported, effective and actual losses (:mod:`nomad.true_loss`) are logged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy import sparse

from .losses import UMAPLoss
from .optimize import LR_LOG_Z, Comm, Shard, TrainSpec, _loss, _lr_factor, _rho, _ShardTrainer
from .parametric import EncodedPositions
from .true_loss import attraction, repulsion, umap_losses


@dataclass
class EdgeGraph:
    """Directed edges (both directions of each symmetric edge) and their mu_ij."""

    heads: torch.Tensor
    tails: torch.Tensor
    mu: torch.Tensor


def edge_graph(neighbors: np.ndarray, distances: np.ndarray, kind: str, seed: int) -> EdgeGraph:
    """The symmetric graph of a kNN graph (rows: k neighbours, self excluded).

    ``"binary"``: mu_ij = 1 where j is among i's k neighbours or i among j's (cne).
    ``"umap"``: UMAP's fuzzy simplicial set (umap-learn's ``fuzzy_simplicial_set``, with
    the point itself as its 0-th neighbour as umap-learn counts it, so k + 1 there).
    """
    n, k = neighbors.shape
    if kind == "umap":
        from umap.umap_ import fuzzy_simplicial_set

        idx = np.hstack([np.arange(n)[:, None], neighbors]).astype(np.int64)
        dst = np.hstack([np.zeros((n, 1)), distances]).astype(np.float32)
        P = fuzzy_simplicial_set(np.empty((n, 1), np.float32), k + 1, np.random.RandomState(seed),
                                 "euclidean", knn_indices=idx, knn_dists=dst)[0]
    else:
        A = sparse.csr_matrix((np.ones(n * k, np.float32), (np.repeat(np.arange(n), k), neighbors.ravel())),
                              shape=(n, n))
        P = ((A + A.T) > 0).astype(np.float32)
    P = sparse.coo_matrix(P)
    keep = (P.row != P.col) & (P.data > 0)
    return EdgeGraph(heads=torch.as_tensor(P.row[keep], dtype=torch.long),
                     tails=torch.as_tensor(P.col[keep], dtype=torch.long),
                     mu=torch.as_tensor(P.data[keep], dtype=torch.float32))


class EdgeTrainer(_ShardTrainer):
    """The engine's SGD on free positions, one device, with edge sampling: torch ops, or on
    the CPU the compiled epoch of :func:`nomad.cpu_kernel.fused_edge_epoch` (the same
    updates; its noise comes from a counter-based stream instead of torch's). The loss logs
    and the eq. 18 correction use the torch ops."""

    def __init__(self, shard: Shard, spec: TrainSpec, comm: Comm, graph: EdgeGraph, *,
                 push_noise: bool, correct_repulsion: bool, loss_log_every: int, loss_log_pairs: int):
        super().__init__(shard, spec, comm)
        self.fused = self.fused and loss_log_every == 0 and not correct_repulsion
        self.graph = EdgeGraph(*(x.to(self.dev) for x in (graph.heads, graph.tails, graph.mu)))
        graph = self.graph
        self.m = int(spec.n_noise)
        self.push_noise = push_noise
        self.log_every, self.log_pairs = loss_log_every, loss_log_pairs
        self.loss_log: list[dict[str, float]] = []
        self.r = None
        if correct_repulsion:
            n = self.n_local
            degree = torch.zeros(n, device=self.dev).index_add_(0, graph.heads, graph.mu)
            r = 1.0 - graph.mu - (degree[graph.heads] + degree[graph.tails]) * self.m / (2 * n)
            self.r = r.clamp(0.0, 1.0)
        self._one = torch.ones(1, 1, device=self.dev)

    def _negatives(self, h, t):
        """(len(h), m) negatives: uniform over all points, or over the batch's tails."""
        if self.spec.noise == "batch_neighbors":
            return t[torch.randint(len(t), (len(h), self.m), generator=self.gen, device=self.dev)]
        return torch.randint(self.n_local, (len(h), self.m), generator=self.gen, device=self.dev)

    def _forces(self, h, t, rho, grad, record):
        """Add the batch's gradient to ``grad``; return its loss summed over the edges."""
        loss_fn, Y, m = self.loss, self.Y.data, self.m
        noise = self._negatives(h, t)
        if record is not None:
            record["noise"].append((h[:, None].expand(-1, m).reshape(-1), noise.reshape(-1)))
        diff_p = (Y[h] - Y[t])[:, None]
        diff_n = Y[h][:, None] - Y[noise]
        d2_p, d2_n = (diff_p * diff_p).sum(-1), (diff_n * diff_n).sum(-1)
        q_pos, q_noise = loss_fn.kernel(d2_p), loss_fn.kernel(d2_n)
        c = torch.ones_like(q_noise)
        value = float(loss_fn(q_pos, self._one, q_noise, c, rho).detach().sum())
        g_pos, g_noise, g_params = loss_fn.dq(q_pos, self._one, q_noise, c, rho)
        f_p = (2.0 * g_pos * loss_fn.kernel_grad(d2_p, q_pos))[..., None] * diff_p
        f_n = (2.0 * g_noise * loss_fn.kernel_grad(d2_n, q_noise))[..., None] * diff_n
        grad.index_add_(0, h, f_p[:, 0] + f_n.sum(1))
        grad.index_add_(0, t, f_p[:, 0], alpha=-1.0)
        if self.push_noise:
            grad.index_add_(0, noise.reshape(-1), f_n.reshape(-1, 2), alpha=-1.0)
        return value, g_params

    def _repel(self, h, t, grad):
        """The correction's extra repulsion L^r_ij on edges (both ends move: it is a loss)."""
        loss_fn, Y = self.loss, self.Y.data
        diff = (Y[h] - Y[t])[:, None]
        d2 = (diff * diff).sum(-1)
        q = loss_fn.kernel(d2)
        _, g, _ = loss_fn.dq(q[:, :0], self._one[:, :0], q, torch.ones_like(q))
        f = (2.0 * g * loss_fn.kernel_grad(d2, q))[..., None] * diff
        grad.index_add_(0, h, f[:, 0])
        grad.index_add_(0, t, f[:, 0], alpha=-1.0)

    def _epoch(self, epoch: int, rho: float, record) -> float:
        spec, g = self.spec, self.graph
        take = torch.nonzero(torch.rand(len(g.mu), generator=self.gen, device=self.dev) < g.mu).flatten()
        take = take[torch.randperm(len(take), generator=self.gen, device=self.dev)]
        extra = None
        if self.r is not None:
            extra = torch.nonzero(torch.rand(len(self.r), generator=self.gen, device=self.dev) < self.r).flatten()
            if record is not None:
                record["extra"].append((g.heads[extra], g.tails[extra]))
        if record is not None:
            record["edges"].append((g.heads[take], g.tails[take]))
        B = spec.batch_size
        steps = max(1, math.ceil(len(take) / B))
        lrs = [spec.learning_rate * _lr_factor(spec, (epoch + k / steps) / spec.n_epochs) for k in range(steps)]
        if self.fused:
            return self._fused_epoch(take.numpy(), np.array(lrs) * self.aggregation_scale(), rho, epoch)
        first = math.nan
        for k in range(steps):
            batch = take[k * B:(k + 1) * B]
            part = extra[k::steps] if extra is not None else None
            value = self._update(g.heads[batch], g.tails[batch], part, rho, lrs[k], record)
            first = value / max(len(batch), 1) if k == 0 else first
        return first

    def _update(self, h, t, extra, rho, lr, record) -> float:
        """One step on the batch of edges h -> t (and the correction's ``extra`` edges) at
        learning rate ``lr`` (before aggregation); returns the loss summed over the edges."""
        grad = torch.zeros_like(self.Y.data)
        value, g_params = self._forces(h, t, rho, grad, record)
        if extra is not None:
            self._repel(self.graph.heads[extra], self.graph.tails[extra], grad)
        scale = self.aggregation_scale()
        g_params = {q: g * scale for q, g in g_params.items()}  # log Z: aggregated as positions
        self._sgd(grad, g_params, lr * scale)
        return value

    def _fused_epoch(self, take: np.ndarray, lrs: np.ndarray, rho: float, epoch: int) -> float:
        """The epoch in the compiled loop (:func:`nomad.cpu_kernel.fused_edge_epoch`)."""
        import numba

        from .cpu_kernel import fused_edge_epoch

        spec, loss_fn = self.spec, self.loss
        if not hasattr(self, "_velocity"):
            self._velocity = np.zeros_like(self.Y.data.numpy())
            self._ends = self.graph.heads.numpy(), self.graph.tails.numpy()
        loss_kind, kernel_kind, alpha, nu, a, b = loss_fn.fused()
        learn_nu = isinstance(getattr(loss_fn, "log_z", None), torch.nn.Parameter)
        value, log_nu = fused_edge_epoch(
            self.Y.data.numpy(), self._velocity, *self._ends, take, self.m, spec.batch_size, lrs,
            float(spec.momentum), float(spec.clip_grad or 0.0), spec.noise == "batch_neighbors",
            self.push_noise, float(rho), loss_kind, kernel_kind, float(alpha),
            math.log(nu) if nu > 0 else 0.0, learn_nu, LR_LOG_Z * self.aggregation_scale(), float(a),
            float(b), (spec.seed * 1_000_003 + spec.first_epoch + epoch) % (2**32), numba.get_num_threads())
        if learn_nu:
            loss_fn.log_z.data.fill_(log_nu - math.log(loss_fn.m))
        return float(value)

    def _sgd(self, grad, g_params, lr):
        self.Y.grad = grad
        for param, gp in g_params.items():
            param.grad = gp.reshape(param.shape)
        if self.spec.clip_grad is not None:
            grad.clamp_(-self.spec.clip_grad, self.spec.clip_grad)
        for group in self.opt.param_groups:
            if not group.get("fixed"):
                group["lr"] = lr
        self.opt.step()

    def _log(self, epoch: int, record) -> None:
        """The three losses of umap-true-loss Fig. 3 at the end of ``epoch``."""
        loss_fn, Y, g = self.spec.loss, self.Y.data, self.graph
        cat = [torch.cat([p[i] for p in record[key]]) if record[key] else torch.zeros(0, dtype=torch.long)
               for key in ("edges", "noise", "extra") for i in (0, 1)]
        eh, et, nh, nt, xh, xt = cat
        actual_a = float(attraction(loss_fn, Y[eh], Y[et]).double().sum())
        actual_r = float(repulsion(loss_fn, Y[nh], Y[nt]).double().sum()
                         + repulsion(loss_fn, Y[xh], Y[xt]).double().sum())
        row = {"epoch": epoch + 1,
               **umap_losses(loss_fn, Y, g.heads, g.tails, g.mu, self.m, self.log_pairs, self.gen, self.r),
               "actual_attractive": actual_a, "actual_repulsive": actual_r, "actual": actual_a + actual_r}
        self.loss_log.append(row)

    def _train(self) -> np.ndarray:
        spec = self.spec
        bar = self.progress()
        for epoch in bar:
            logged = self.log_every > 0 and ((epoch + 1) % self.log_every == 0 or epoch == 0)
            record = {"edges": [], "noise": [], "extra": []} if logged else None
            self.loss = _loss(spec, epoch)
            with torch.no_grad():
                value = self._epoch(epoch, _rho(spec, epoch), record)
                if logged:
                    self._log(epoch, record)
            if self.after_epoch(bar, epoch, value):
                break
        bar.close()
        return self.embedding()


class ParametricEdgeTrainer(EncodedPositions, EdgeTrainer):
    """Edge sampling driving an encoder (cne's parametric mode, Parametric UMAP): the same
    epochs of edges and negatives as :class:`EdgeTrainer`, with y_i = f_theta(x_i) and each
    batch's loss back-propagated through the network (Adam). The negatives move too, through
    the network, as in cne; no correction, no loss logs."""

    def __init__(self, shard: Shard, spec: TrainSpec, comm: Comm, graph: EdgeGraph,
                 encoder: torch.nn.Module, X_local: np.ndarray):
        super().__init__(shard, spec, comm, graph, push_noise=True, correct_repulsion=False,
                         loss_log_every=0, loss_log_pairs=1)
        self._init_encoder(encoder, X_local)

    def _update(self, h, t, extra, rho, lr, record) -> float:
        loss_fn = self.loss
        noise = self._negatives(h, t)
        with torch.enable_grad():
            y_h, y_t, y_n = self._encode(h, t, noise)
            q_pos = loss_fn.kernel(((y_h - y_t) ** 2).sum(-1))[:, None]
            q_noise = loss_fn.kernel(((y_h[:, None] - y_n) ** 2).sum(-1))
            total = loss_fn(q_pos, self._one, q_noise, torch.ones_like(q_noise), rho).sum()
            self._adam_step(total * self.aggregation_scale(), lr)
        return float(total.detach())


def check_edge_options(loss, correct_repulsion: bool, loss_log_every: int) -> None:
    """The correction and the loss logs are defined for UMAP's loss only."""
    from .errors import InputError

    if (correct_repulsion or loss_log_every) and not isinstance(loss, UMAPLoss):
        raise InputError("correct_repulsion and loss_log_every are defined for UMAP's loss "
                         "(umap-true-loss): use method=umap_loss, or leave them off")
