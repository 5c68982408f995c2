"""Parametric mode: a network maps data to the embedding (Parametric UMAP, parametric
InfoNC-t-SNE / Neg-t-SNE; parametric-umap sec. 2, tsne-to-umap-contrastive).

The loss, the samplers and the cell means are the engine's; only the positions change:
``y_i = f_theta(x_i)`` for an MLP f_theta (100-100-100 by default, as in the cne and
umap-learn references) trained by Adam. Each step embeds just the rows it touches (heads or
edge ends, positives, noise) and back-propagates the batch's loss, summed or averaged as
``aggregation`` says, through the network (Adam sees the two alike but for ``clip_grad``,
which cne applies to the summed loss); new points are embedded by a forward pass
(``transform``), without refitting. Two samplers drive the encoder: the engine's heads
(:class:`ParametricTrainer`) and the edges of the symmetric graph, as cne and Parametric UMAP
draw them (:class:`nomad.edges.ParametricEdgeTrainer`).
"""

from __future__ import annotations

import numpy as np
import torch

from .optimize import LR_LOG_Z, Comm, Shard, TrainSpec, _ShardTrainer


class MLPEncoder(torch.nn.Sequential):
    """Linear-ReLU layers of widths ``hidden``, then a linear map to 2-D."""

    def __init__(self, dim: int, hidden: tuple[int, ...] = (100, 100, 100)):
        layers: list[torch.nn.Module] = []
        for width in hidden:
            layers += [torch.nn.Linear(dim, width), torch.nn.ReLU()]
            dim = width
        layers.append(torch.nn.Linear(dim, 2))
        super().__init__(*layers)


@torch.no_grad()
def embed(encoder: torch.nn.Module, X, batch_size: int = 65536) -> np.ndarray:
    """``encoder(X)`` in batches on the encoder's device, as float32 numpy (X: a tensor, an
    array or a memmap)."""
    device = next(encoder.parameters()).device
    out = np.empty((len(X), 2), dtype=np.float32)
    for lo in range(0, len(X), batch_size):
        xb = X[lo:lo + batch_size]
        if not isinstance(xb, torch.Tensor):
            xb = np.asarray(xb, dtype=np.float32)
        xb = torch.as_tensor(xb, dtype=torch.float32, device=device)
        out[lo:lo + batch_size] = encoder(xb).cpu().numpy()
    return out


class EncodedPositions:
    """Mixin for a trainer whose positions are ``y_i = f_theta(x_i)``: the encoder, its inputs,
    Adam on theta, and one autograd step. The sampling is the trainer's own (heads below,
    edges in :class:`nomad.edges.ParametricEdgeTrainer`)."""

    def _init_encoder(self, encoder: torch.nn.Module, X_local: np.ndarray) -> None:
        spec = self.spec
        self.fused = False
        self.encoder = encoder.to(self.dev)
        self.X = torch.as_tensor(np.asarray(X_local, dtype=np.float32), device=self.dev)
        params = [{"params": list(self.encoder.parameters()), "lr": spec.learning_rate}]
        extra = [q for q in spec.loss.parameters() if q.requires_grad]
        if extra:  # log Z's gradient is aggregated as the network's (sum or batch mean)
            params.append({"params": extra, "lr": LR_LOG_Z, "fixed": True})
        self.opt = torch.optim.Adam(params, lr=spec.learning_rate)

    def embedding(self) -> np.ndarray:
        return embed(self.encoder, self.X)

    def _encode(self, *index: torch.Tensor) -> list[torch.Tensor]:
        """The embeddings of the rows in each index tensor (shape + (2,)); every distinct row
        goes through the network once."""
        flat = [t.reshape(-1) for t in index]
        rows, inv = torch.unique(torch.cat(flat), return_inverse=True)
        emb = self.encoder(self.X[rows])
        return [emb[part].view(*t.shape, 2) for part, t in zip(inv.split([len(f) for f in flat]), index)]

    def _adam_step(self, loss: torch.Tensor, lr: float) -> None:
        """Back-propagate ``loss`` (the batch's, summed or averaged), clip the network's
        gradient coordinates at ``clip_grad`` (cne's clip_grad_value_), take an Adam step."""
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.spec.clip_grad is not None:
            torch.nn.utils.clip_grad_value_(self.encoder.parameters(), self.spec.clip_grad)
        for group in self.opt.param_groups:
            if not group.get("fixed"):
                group["lr"] = lr
        self.opt.step()


class ParametricTrainer(EncodedPositions, _ShardTrainer):
    """The engine's heads loop with positions given by ``encoder`` (autograd, Adam)."""

    def __init__(self, shard: Shard, spec: TrainSpec, comm: Comm, encoder: torch.nn.Module,
                 X_local: np.ndarray):
        super().__init__(shard, spec, comm)
        self._init_encoder(encoder, X_local)

    def cell_means(self) -> torch.Tensor:
        self.Y.data = torch.as_tensor(self.embedding(), device=self.dev)
        return super().cell_means()

    def step(self, mu: torch.Tensor | None, lr: float, rho: float, with_value: bool = True) -> float:
        spec, B, S, loss_fn = self.spec, self.B, self.spec.noise_samples, self.loss
        heads, noise, size = self._sample(B, S)
        y_h, y_p, y_n = self._encode(heads, self.nbrs[heads], noise)
        q_pos = loss_fn.kernel(((y_h[:, None] - y_p) ** 2).sum(-1))
        q_all = loss_fn.kernel(((y_h[:, None] - y_n) ** 2).sum(-1))
        c_all = (spec.n_noise * size.float() / self.shard.n_total / S)[:, None].expand(B, S)
        if mu is not None:
            q_all = torch.cat([q_all, loss_fn.kernel(((y_h[:, None] - mu[None]) ** 2).sum(-1))], 1)
            c_all = torch.cat([c_all, self._mean_weights(heads)], 1)
        per_head = loss_fn(q_pos, self.p, q_all, c_all, rho)
        self._adam_step(per_head.mean() if spec.aggregation == "mean" else per_head.sum(), lr)
        return float(per_head.detach().mean())
