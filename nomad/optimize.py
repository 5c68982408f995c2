"""The optimisation loop one device runs over its shard (shared by every engine method).

Per step, B heads i are drawn uniformly from the shard (nomad-projection: uniform P_i);
each head brings its k neighbours j of the kNN graph weighted by p(j|i) (eq. 6) and S noise
points drawn uniformly from its *noise domain* D_i, each standing for |M| p(m in D_i) / S
samples of the uniform noise xi. Every cell outside D_i is *approximated*: it enters as
its mean mu_r with weight |M| p(m in r) (eq. 4). The domain is

* ``"none"``:   all n points (one device only): exact InfoNC-t-SNE noise (eq. 2);
* ``"remote"``: the points on this device; cells on other devices are approximated
  (the paper's multi-device scheme, Figure 2);
* ``"others"``: the head's own cell; all other cells are approximated (to study the
  approximation on one device).

The loss is summed over the batch; the learning rate is divided by B under ``"mean"``
aggregation (the paper's n/10 convention, an unbiased estimate of the expected loss) and
used as is under ``"sum"`` (cne's convention). SGD, linear decay to 0 (sec. 3.4).
Cell means are detached and refreshed every epoch (the paper's Figure 2) or every step
(the reference code); on several devices only they cross process boundaries.

The neighbours j need not share the head's cell: faiss's IVF search and cell probing
(``n_probe`` > 1), the one-device defaults, find them anywhere; on several devices the index
keeps every kNN edge inside a cell, and so inside a device (:mod:`nomad.index`).

NCVis' learned log Z takes plain SGD steps of ``LR_LOG_Z`` (cne) on its gradient aggregated as
the positions' is: under ``"mean"`` the batch mean, so its step does not grow with the batch
(n/10 heads by default) and so with n.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from .losses import ContrastiveLoss

log = logging.getLogger(__name__)

#: SGD step of NCVis' learned log Z (cne's 1e-3), applied to the batch-aggregated gradient
LR_LOG_Z = 1e-3


@dataclass
class Shard:
    """What one device trains: its cells' points, contiguous and sorted by cell."""

    rank: int
    rows: np.ndarray  # (n_local,) original row of each local point
    Y0: np.ndarray  # (n_local, 2) initial positions
    neighbors: np.ndarray  # (n_local, k) local row indices
    cell: np.ndarray  # (n_local,) global cell id, non-decreasing
    cell_sizes: np.ndarray  # (C,) size of every cell (all devices)
    cell_rank: np.ndarray  # (C,) device holding each cell
    n_total: int


@dataclass
class TrainSpec:
    """Hyperparameters of the loop, resolved (no "auto" left)."""

    loss: ContrastiveLoss
    p: torch.Tensor  # (k,) p(j|i)
    n_epochs: int
    learning_rate: float
    batch_size: int  # heads per step, summed over devices
    n_noise: float  # |M|
    noise_samples: int  # S drawn per head
    noise_group: int = 1  # heads sharing one draw of the S noise points
    approximate: str = "remote"
    mean_refresh: str = "epoch"
    mean_weight: str = "paper"  # "paper": |M| p(m in r) (eq. 4); "reference": 1 per mean
    noise: str = "uniform"  # "uniform" over the domain (eq. 2); "batch_neighbors" (reference code)
    aggregation: str = "mean"
    momentum: float = 0.0
    lr_schedule: str = "linear"
    lr_decay_start: float = 0.3
    early_exaggeration: float = 1.0
    early_exaggeration_epochs: int = 0
    #: cne's early exaggeration: the first ``spectrum_exaggeration_epochs`` epochs optimise
    #: ``early_loss`` (``loss`` at s_early = max(s, 1), :meth:`ContrastiveLoss.spectrum_early`)
    early_loss: ContrastiveLoss | None = None
    spectrum_exaggeration_epochs: int = 0
    late_exaggeration: float = 1.0
    late_exaggeration_time: float = 1.0
    clip_grad: float | None = None
    seed: int = 0
    device: str = "cpu"
    backend: str = "auto"  # "torch" ops, "fused" CPU kernel, "auto": fused on CPU
    verbose: bool = False
    loss_history: list = field(default_factory=list)
    #: called after every epoch as ``callback(epoch, loss, trainer)``; True stops training
    callback: Callable | None = None
    first_epoch: int = 0  # epochs trained before (continued optimisation): the bar's offset


class Comm:
    """The only channel between devices: all-gathers of the cell-mean matrix.

    Every byte that crosses a process boundary during training goes through
    :meth:`all_gather`, which counts it (``bytes_by_tag``).
    """

    def __init__(self, world_size: int = 1, rank: int = 0):
        self.world_size, self.rank = world_size, rank
        self.bytes_by_tag: dict[str, int] = {}
        self.calls_by_tag: dict[str, int] = {}

    def all_gather(self, t: torch.Tensor, tag: str) -> list[torch.Tensor]:
        if self.world_size == 1:
            return [t]
        import torch.distributed as dist

        out = [torch.empty_like(t) for _ in range(self.world_size)]
        dist.all_gather(out, t.contiguous())
        nbytes = t.numel() * t.element_size() * self.world_size
        self.bytes_by_tag[tag] = self.bytes_by_tag.get(tag, 0) + nbytes
        self.calls_by_tag[tag] = self.calls_by_tag.get(tag, 0) + 1
        return out


def _lr_factor(spec: TrainSpec, t: float) -> float:
    """Learning-rate multiplier at training progress t in [0, 1)."""
    if spec.lr_schedule == "linear":  # paper sec. 3.4: linear to 0
        return 1.0 - t
    if spec.lr_schedule == "reference":  # reference code: flat, then linear to 1e-8
        if t <= spec.lr_decay_start:
            return 1.0
        return 1.0 - (1.0 - 1e-8) * (t - spec.lr_decay_start) / (1.0 - spec.lr_decay_start)
    if spec.lr_schedule == "constant":
        return 1.0
    raise ValueError(f"unknown lr_schedule {spec.lr_schedule!r}")


def _loss(spec: TrainSpec, epoch: int) -> ContrastiveLoss:
    """The loss an epoch optimises: ``early_loss`` during cne's early exaggeration, else ``loss``."""
    if spec.early_loss is not None and epoch < spec.spectrum_exaggeration_epochs:
        return spec.early_loss
    return spec.loss


def _rho(spec: TrainSpec, epoch: int) -> float:
    """Attraction multiplier of an epoch: early, then late exaggeration (1 = off)."""
    if epoch < spec.early_exaggeration_epochs:
        return spec.early_exaggeration
    if epoch / spec.n_epochs >= spec.late_exaggeration_time:
        return spec.late_exaggeration
    return 1.0


class _ShardTrainer:
    def __init__(self, shard: Shard, spec: TrainSpec, comm: Comm):
        self.spec, self.comm, self.shard = spec, comm, shard
        dev = torch.device(spec.device)
        self.dev = dev
        self.Y = torch.nn.Parameter(torch.as_tensor(shard.Y0, dtype=torch.float32, device=dev).clone())
        self.nbrs = torch.as_tensor(shard.neighbors, device=dev)
        self.n_local = len(shard.rows)
        self.p = spec.p.to(dev)[None, :]
        cell = torch.as_tensor(shard.cell, device=dev)
        self.local_cells, inv, counts = torch.unique_consecutive(cell, return_inverse=True, return_counts=True)
        starts = torch.cumsum(counts, 0) - counts
        self.local_cell_idx = inv  # position of each point's cell among the local cells
        self.cell_lo, self.cell_n = starts[inv], counts[inv]
        self.cell = cell
        self.cell_sizes = torch.as_tensor(shard.cell_sizes, dtype=torch.float32, device=dev)
        self.C = len(shard.cell_sizes)
        self.max_local_cells = int(np.bincount(shard.cell_rank, minlength=comm.world_size).max())
        self.gen = torch.Generator(device=dev).manual_seed(spec.seed * 1000 + shard.rank)
        if spec.approximate == "none" and comm.world_size > 1:
            raise ValueError("approximate='none' needs every point on one device; use 'remote'")
        self.remote_mask = torch.as_tensor(shard.cell_rank != shard.rank, device=dev)
        # |M| p(m in r) for every cell that may be approximated (eq. 4); the reference code
        # gives every mean weight 1
        if spec.mean_weight == "paper":
            self._c_mu = spec.n_noise * self.cell_sizes / shard.n_total
        else:
            self._c_mu = torch.ones_like(self.cell_sizes)
        if spec.approximate == "remote":
            self._c_mu = self._c_mu * self.remote_mask
        self.fused = spec.backend == "fused" or (spec.backend == "auto" and dev.type == "cpu")
        self.uses_means = spec.approximate == "others" or (
            spec.approximate == "remote" and bool(self.remote_mask.any())
        )
        # heads per step on this device: its share of the global batch
        share = self.n_local / shard.n_total * comm.world_size
        self.B = max(1, round(spec.batch_size / comm.world_size * share))
        self.steps_per_epoch = max(1, math.ceil(shard.n_total / spec.batch_size))
        params = [{"params": [self.Y], "lr": spec.learning_rate}]
        extra = [q for q in spec.loss.parameters() if q.requires_grad]
        if extra:  # NCE's log Z: plain SGD at LR_LOG_Z (cne)
            params.append({"params": extra, "lr": LR_LOG_Z, "momentum": 0.0, "fixed": True})
        self.opt = torch.optim.SGD(params, lr=spec.learning_rate, momentum=spec.momentum)
        self.spec.loss.to(dev)
        if spec.early_loss is not None:
            spec.early_loss.to(dev)
        self.loss = spec.loss  # the current epoch's loss (:func:`_loss`)

    # -- cell means (nomad-projection eq. 4) -------------------------------------------
    def cell_means(self) -> torch.Tensor:
        """(C, 2) means of every cell's current positions; remote ones by all-gather."""
        with torch.no_grad():
            L = len(self.local_cells)
            sums = torch.zeros(L, 2, device=self.dev).index_add_(0, self.local_cell_idx, self.Y)
            counts = torch.bincount(self.local_cell_idx, minlength=L).float()
            block = torch.zeros(self.max_local_cells, 2, device=self.dev)
            block[:L] = sums / counts[:, None]
            blocks = self.comm.all_gather(block, "cell_means")
            mu = torch.zeros(self.C, 2, device=self.dev)
            cell_rank = torch.as_tensor(self.shard.cell_rank, device=self.dev)
            for r, b in enumerate(blocks):
                ids = torch.nonzero(cell_rank == r).flatten()  # a device's cells, in id order
                mu[ids] = b[: len(ids)]
            return mu

    # -- one step -------------------------------------------------------------------------
    def _domain(self, heads: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(lo, size) of each head's noise domain: its cell when other cells enter as means,
        else the whole shard."""
        if self.spec.approximate == "others":
            return self.cell_lo[heads], self.cell_n[heads]
        return (torch.zeros_like(heads), torch.full_like(heads, self.n_local))

    def _sample(self, B: int, S: int):
        """Heads, S noise points per head (B, S) from its noise domain, and its domain size.

        Heads come in groups of ``noise_group`` that share one draw of noise points (the rows
        of a group are equal): a group's first head is uniform over the shard, the others
        uniform over its cell, so each head is uniform and each estimate unbiased (the compiled
        loop, :func:`nomad.cpu_kernel.fused_epoch`, draws from the same distributions)."""
        G = group_size(B, self.spec.noise_group)
        Bg = -(-B // G)
        first = torch.randint(self.n_local, (Bg,), generator=self.gen, device=self.dev)
        lo, size = self._domain(first)
        if G > 1:
            u = torch.rand(Bg, G - 1, generator=self.gen, device=self.dev)
            cell_lo, cell_n = self.cell_lo[first, None], self.cell_n[first, None]
            rest = cell_lo + torch.minimum((u * cell_n).long(), cell_n - 1)
            heads = torch.cat([first[:, None], rest], 1).reshape(-1)[:B]
        else:
            heads = first
        if self.spec.noise == "batch_neighbors":  # reference code: the pool of the batch's positives
            # the pool stands for the domain as uniform draws would (weight |M| p(m in D_i) / S
            # each), so that pool and cell means weigh |M| together (eq. 4), on any number of devices
            pool = self.nbrs[heads].reshape(-1)
            noise = pool[torch.randint(len(pool), (Bg, S), generator=self.gen, device=self.dev)]
        else:
            u = torch.rand(Bg, S, generator=self.gen, device=self.dev)
            noise = lo[:, None] + torch.minimum((u * size[:, None]).long(), size[:, None] - 1)
        return heads, noise.repeat_interleave(G, 0)[:B], size.repeat_interleave(G)[:B]

    def _mean_weights(self, heads: torch.Tensor) -> torch.Tensor:
        """(B, C) weights |M| p(m in r) of the approximated cells r (eq. 4), 0 elsewhere."""
        if self.spec.approximate == "others":
            return self._c_mu[None, :] * (self.cell[heads][:, None] != torch.arange(self.C, device=self.dev))
        return self._c_mu[None, :].expand(len(heads), -1)

    def _grad_torch(self, heads, noise, c_noise, mu, c_mu, rho, with_value=True):
        """Batch gradient with torch ops (any device)."""
        loss_fn, S, Y = self.loss, noise.shape[1], self.Y.data
        y_h = Y[heads]
        pos = self.nbrs[heads]
        diff_p = y_h[:, None, :] - Y[pos]
        diff_n = y_h[:, None, :] - Y[noise]
        d2_p, d2_n = (diff_p * diff_p).sum(-1), (diff_n * diff_n).sum(-1)
        q_pos, q_noise = loss_fn.kernel(d2_p), loss_fn.kernel(d2_n)
        c_all, q_all = c_noise[:, None].expand(-1, S), q_noise
        if mu is not None:  # approximated cells enter as their means
            diff_m = y_h[:, None, :] - mu[None]
            d2_m = (diff_m * diff_m).sum(-1)
            q_all = torch.cat([q_noise, loss_fn.kernel(d2_m)], 1)
            c_all = torch.cat([c_all, c_mu], 1)
        value = float(loss_fn(q_pos, self.p, q_all, c_all, rho).sum())
        g_pos, g_all, g_params = loss_fn.dq(q_pos, self.p, q_all, c_all, rho)
        w_p = 2.0 * g_pos * loss_fn.kernel_grad(d2_p, q_pos)
        w_n = 2.0 * g_all[:, :S] * loss_fn.kernel_grad(d2_n, q_noise)
        f_p, f_n = w_p[..., None] * diff_p, w_n[..., None] * diff_n
        g_head = f_p.sum(1) + f_n.sum(1)
        if mu is not None:  # means are constants: force on the head only
            w_m = 2.0 * g_all[:, S:] * loss_fn.kernel_grad(d2_m, q_all[:, S:])
            g_head += (w_m[..., None] * diff_m).sum(1)
        grad = torch.zeros_like(Y)
        grad.index_add_(0, heads, g_head)
        grad.index_add_(0, pos.reshape(-1), f_p.reshape(-1, 2), alpha=-1.0)
        grad.index_add_(0, noise.reshape(-1), f_n.reshape(-1, 2), alpha=-1.0)
        return grad, value, g_params

    def _grad_fused(self, heads, noise, c_noise, mu, c_mu, rho, with_value=True):
        """The same batch gradient from the fused CPU kernel."""
        import numba

        from .cpu_kernel import batch_forces, workspace

        loss_fn = self.loss
        loss_kind, kernel_kind, alpha, nu, a, b = loss_fn.fused()
        if mu is None:
            mu_np, c_mu_np = np.zeros((0, 2), np.float32), np.zeros(0, np.float32)
            exclude = np.full(len(heads), -1, dtype=np.int64)
        else:
            mu_np, c_mu_np = mu.numpy(), self._c_mu.numpy()
            exclude = (self.cell[heads] if self.spec.approximate == "others"
                       else torch.full_like(heads, -1)).numpy()
        grad = torch.zeros_like(self.Y.data)
        G = group_size(len(heads), self.spec.noise_group)  # a group's rows of noise are equal
        value, d_lognu = batch_forces(
            self.Y.data.numpy(), heads.numpy(), self.nbrs[heads].numpy(), self.p[0].numpy(),
            noise[::G].numpy(), c_noise.numpy(), mu_np, c_mu_np, exclude, float(rho),
            loss_kind, kernel_kind, float(alpha), float(nu), float(a), float(b), grad.numpy(),
            with_value, numba.get_num_threads(), True,
            workspace(len(heads), self.nbrs.shape[1], noise.shape[1], G))
        g_params = {}
        if isinstance(getattr(loss_fn, "log_z", None), torch.nn.Parameter):
            g_params[loss_fn.log_z] = torch.tensor(float(d_lognu.sum()))
        return grad, float(value.sum()), g_params

    def step(self, mu: torch.Tensor | None, lr: float, rho: float, with_value: bool = True) -> float:
        """One SGD step with closed-form forces: dL/dy = sum 2 (dL/dq)(dq/dd^2)(y_i - y_o).

        Returns the batch's mean loss per head (when ``with_value``)."""
        spec, B, S = self.spec, self.B, self.spec.noise_samples
        heads, noise, size = self._sample(B, S)
        c_noise = spec.n_noise * size.float() / self.shard.n_total / S  # (B,) weight per sample
        c_mu = self._mean_weights(heads) if mu is not None and not self.fused else None
        compute = self._grad_fused if self.fused else self._grad_torch
        with torch.no_grad():
            grad, value, g_params = compute(heads, noise, c_noise, mu, c_mu, rho, with_value)
        scale = self.aggregation_scale()
        self.Y.grad = grad
        for param, g in g_params.items():
            param.grad = g.reshape(param.shape) * scale  # log Z: aggregated as the positions
        if spec.clip_grad is not None:
            grad.clamp_(-spec.clip_grad, spec.clip_grad)
        for group in self.opt.param_groups:
            if not group.get("fixed"):
                group["lr"] = lr * scale
        self.opt.step()
        return value / B

    def aggregation_scale(self, batch: int | None = None) -> float:
        """1/B under ``"mean"`` aggregation (B: the global batch), 1 under ``"sum"``."""
        return 1.0 / (batch or self.spec.batch_size) if self.spec.aggregation == "mean" else 1.0

    def embedding(self) -> np.ndarray:
        """The shard's current positions (n_local, 2)."""
        return self.Y.detach().cpu().numpy()

    def progress(self):
        """tqdm over the epochs, on rank 0 when ``verbose``; shows the current loss."""
        spec = self.spec
        return tqdm(range(spec.n_epochs), disable=not (spec.verbose and self.shard.rank == 0),
                    desc=f"{type(spec.loss).__name__} epochs", leave=False)

    def after_epoch(self, bar, epoch: int, value: float) -> bool:
        """Record the epoch's loss, stop on overflow, show it, and run the callback (True: stop)."""
        spec = self.spec
        spec.loss_history.append(value)
        if not math.isfinite(value):
            raise FloatingPointError(f"loss became {value} at epoch {epoch}: lower method.learning_rate")
        bar.set_postfix(loss=f"{value:.4g}", refresh=False)
        if spec.verbose and self.shard.rank == 0 and (epoch + 1) % max(1, spec.n_epochs // 10) == 0:
            log.info("epoch %d/%d: loss %.4g", spec.first_epoch + epoch + 1,
                     spec.first_epoch + spec.n_epochs, value)
        return spec.callback is not None and bool(spec.callback(spec.first_epoch + epoch, value, self))

    def train(self) -> np.ndarray:
        if not self.fused:
            return self._train()
        # the fused kernel has its own threads; torch's small sampling ops run faster on one
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return self._train()
        finally:
            torch.set_num_threads(threads)

    def _fused_epoch(self, mu: torch.Tensor | None, lrs: np.ndarray, rho: float, epoch: int) -> float:
        """One epoch in the compiled CPU loop (:func:`nomad.cpu_kernel.fused_epoch`)."""
        import numba

        from .cpu_kernel import epoch_workspace, fused_epoch

        spec, loss_fn = self.spec, self.loss
        if not hasattr(self, "_velocity"):
            self._velocity = np.zeros_like(self.Y.data.numpy())
            self._dom_lo, self._dom_n = (t.numpy() for t in self._domain(torch.arange(self.n_local)))
            self._arrays = epoch_workspace(self.n_local, self.B, self.nbrs.shape[1], spec.noise_samples,
                                           group_size(self.B, spec.noise_group))
        loss_kind, kernel_kind, alpha, nu, a, b = loss_fn.fused()
        learn_nu = isinstance(getattr(loss_fn, "log_z", None), torch.nn.Parameter)
        no_mu = mu is None
        value, log_nu = fused_epoch(
            self.Y.data.numpy(), self._velocity, self.nbrs.numpy(), self.p[0].numpy(),
            self._dom_lo, self._dom_n, self.cell_lo.numpy(), self.cell_n.numpy(), self.shard.n_total,
            float(spec.n_noise), lrs, float(spec.momentum), float(spec.clip_grad or 0.0),
            np.zeros((0, 2), np.float32) if no_mu else mu.numpy(),
            np.zeros(0, np.float32) if no_mu else self._c_mu.numpy(),
            self.cell.numpy(), spec.approximate == "others", spec.noise == "batch_neighbors",
            float(rho), loss_kind, kernel_kind,
            float(alpha), math.log(nu) if nu > 0 else 0.0, learn_nu, LR_LOG_Z * self.aggregation_scale(),
            float(a), float(b),
            (spec.seed * 1_000_003 + self.shard.rank * 10_007 + spec.first_epoch + epoch) % (2**32),
            numba.get_num_threads(), self._arrays)
        if learn_nu:
            loss_fn.log_z.data.fill_(log_nu - math.log(loss_fn.m))
        return float(value)

    def _train(self) -> np.ndarray:
        spec = self.spec
        steps = self.steps_per_epoch
        total = spec.n_epochs * steps
        scale = self.aggregation_scale()
        bar = self.progress()
        for epoch in bar:
            _maybe_inject_fault(self.shard.rank, epoch)
            rho, self.loss = _rho(spec, epoch), _loss(spec, epoch)
            mu = self.cell_means() if self.uses_means and spec.mean_refresh == "epoch" else None
            lrs = np.array([spec.learning_rate * _lr_factor(spec, (epoch * steps + k) / total)
                            for k in range(steps)])
            if self.fused and spec.mean_refresh == "epoch":
                value = self._fused_epoch(mu, (lrs * scale).astype(np.float64), rho, epoch)
            else:
                for k in range(steps):
                    if self.uses_means and spec.mean_refresh == "step":
                        mu = self.cell_means()
                    loss_k = self.step(mu, float(lrs[k]), rho, with_value=k == 0)
                    value = loss_k if k == 0 else value
            if self.after_epoch(bar, epoch, value):  # value: the loss of the epoch's first batch
                break
        bar.close()
        return self.embedding()


def group_size(B: int, G: int) -> int:
    """Heads per noise group when B heads form ceil(B / G) groups of equal size but the last."""
    return -(-B // -(-B // G))


def _maybe_inject_fault(rank: int, epoch: int) -> None:
    """Test hook: NOMAD_FAULT_RANK=r makes device r fail at epoch 1 (worker-death tests)."""
    import os

    if epoch == 1 and os.environ.get("NOMAD_FAULT_RANK") == str(rank):
        raise RuntimeError(f"injected fault on rank {rank}")


def train_shard(shard: Shard, spec: TrainSpec, comm: Comm | None = None) -> np.ndarray:
    """Optimise one shard; returns its (n_local, 2) embedding."""
    return _ShardTrainer(shard, spec, comm or Comm()).train()
