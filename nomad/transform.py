"""New points into a fitted map: their kNN among the training points, then the fitted loss with
the map held fixed (openTSNE's ``transform``, Poličar et al., applied to these losses).

Each new point x is a head: its k nearest training points are its positives, weighted by
p(j|x) (eq. 6, as in the fit), and S noise points drawn uniformly from the training embedding
stand for |M| noise samples (weight |M| / S each, exact InfoNC-t-SNE noise, eq. 2). Only the
new points move, so a point never pulls the map, nor another new point (openTSNE's
``transform`` does the same). Each starts at the median of its neighbours' positions
(openTSNE's default) and takes ``n_epochs`` full-batch gradient steps of the size a head takes
in the fit (learning rate / batch under mean aggregation: 1 at the "auto" settings), decayed
linearly to 0, with the fit's momentum and clipping.
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from .index import _chunks, _rank_dists
from .losses import ContrastiveLoss


def query_knn(X_ref: np.ndarray, X_new: np.ndarray, k: int, metric: str = "euclidean",
              chunk: int = 1024, verbose: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest rows of ``X_ref`` for every row of ``X_new``, ascending:
    ``(indices (m, k) int64, distances (m, k) float32)`` (Euclidean, or negative inner products).

    One pass over X_ref per chunk of new points: O(m n d), a few seconds for 10^4 new points
    against 6 x 10^4 reference points of 784 dimensions."""
    k = min(k, len(X_ref))
    idx = np.empty((len(X_new), k), dtype=np.int64)
    dist = np.empty((len(X_new), k), dtype=np.float32)
    ref_chunk = 1 << 16
    for lo, hi in tqdm(list(_chunks(len(X_new), chunk)), desc="kNN of new points", disable=not verbose,
                       leave=False):
        q = torch.as_tensor(np.asarray(X_new[lo:hi], dtype=np.float32))
        best_d = best_i = None
        for rlo, rhi in _chunks(len(X_ref), ref_chunk):
            r = torch.as_tensor(np.asarray(X_ref[rlo:rhi], dtype=np.float32))
            d = -(q @ r.T) if metric == "inner_product" else _rank_dists(q, r, (r * r).sum(1))
            val, ind = torch.topk(d, min(k, rhi - rlo), dim=1, largest=False)
            ind = ind + rlo
            if best_d is not None:
                val, ind = torch.cat([best_d, val], 1), torch.cat([best_i, ind], 1)
                val, pos = torch.topk(val, k, dim=1, largest=False)
                ind = torch.gather(ind, 1, pos)
            best_d, best_i = val, ind
        if metric == "euclidean":
            best_d = (best_d + (q * q).sum(1, keepdim=True)).clamp_(min=0.0).sqrt_()
        idx[lo:hi], dist[lo:hi] = best_i.numpy(), best_d.numpy()
    return idx, dist


@torch.no_grad()
def place(Y_ref: np.ndarray, neighbors: np.ndarray, p: torch.Tensor, loss: ContrastiveLoss, *,
          n_noise: float, noise_samples: int, n_epochs: int, step: float, momentum: float = 0.0,
          clip_grad: float | None = None, seed: int = 0, batch: int = 4096,
          verbose: bool = False) -> np.ndarray:
    """Positions (m, 2) for m new points with training neighbours ``neighbors`` (m, k), the
    training embedding ``Y_ref`` fixed; see the module docstring."""
    ref = torch.as_tensor(Y_ref, dtype=torch.float32)
    nbrs = torch.as_tensor(neighbors, dtype=torch.long)
    m, k = nbrs.shape
    Y = ref[nbrs].median(dim=1).values.clone()  # start: the median of the neighbours' positions
    if m == 0 or n_epochs == 0:
        return Y.numpy()
    p = p[:k].to(torch.float32)[None, :]
    p = p / p.sum()
    S, n = int(noise_samples), len(ref)
    c = torch.full((1,), float(n_noise) / S)
    gen = torch.Generator().manual_seed(int(seed))
    velocity = torch.zeros_like(Y)
    for epoch in tqdm(range(n_epochs), desc="placing new points", disable=not verbose, leave=False):
        lr = step * (1.0 - epoch / n_epochs)
        grad = torch.empty_like(Y)
        for lo, hi in _chunks(m, batch):
            y = Y[lo:hi]
            noise = torch.randint(n, (hi - lo, S), generator=gen)
            diff_p, diff_n = y[:, None] - ref[nbrs[lo:hi]], y[:, None] - ref[noise]
            d2_p, d2_n = (diff_p * diff_p).sum(-1), (diff_n * diff_n).sum(-1)
            q_pos, q_noise = loss.kernel(d2_p), loss.kernel(d2_n)
            g_pos, g_noise, _ = loss.dq(q_pos, p, q_noise, c.expand(hi - lo, S))
            w_p = 2.0 * g_pos * loss.kernel_grad(d2_p, q_pos)
            w_n = 2.0 * g_noise * loss.kernel_grad(d2_n, q_noise)
            grad[lo:hi] = (w_p[..., None] * diff_p).sum(1) + (w_n[..., None] * diff_n).sum(1)
        if clip_grad is not None:
            grad.clamp_(-clip_grad, clip_grad)
        velocity.mul_(momentum).add_(grad)
        Y -= lr * velocity
    return Y.numpy()
