"""New points into a fitted map: their kNN among the training points, then the fitted loss with
the map held fixed (openTSNE's ``transform``, Poličar et al., applied to these losses).

Each new point x is a head: its k nearest training points are its positives, weighted by
p(j|x) (eq. 6, as in the fit), and S noise points drawn uniformly from the training embedding
stand for |M| noise samples (weight |M| / S each, exact InfoNC-t-SNE noise, eq. 2). Only the
new points move, so a point never pulls the map, nor another new point (openTSNE's
``transform`` does the same). Each starts at the median of its neighbours' positions
(openTSNE's default) and takes ``n_epochs`` full-batch gradient steps of the size a head takes
in the fit (learning rate / batch under mean aggregation: 10 ``lr_scale`` at the "auto" settings, so 2
for NOMAD and 1 at the paper's n/10), decayed
linearly to 0, with the fit's momentum and clipping. The whole set moves each epoch: the new
points never interact, so this is a full batch of independent heads.
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
        q = torch.from_numpy(np.array(X_new[lo:hi], dtype=np.float32))
        best_d = best_i = None
        for rlo, rhi in _chunks(len(X_ref), ref_chunk):
            r = torch.from_numpy(np.array(X_ref[rlo:rhi], dtype=np.float32))
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


def place(Y_ref: np.ndarray, neighbors: np.ndarray, p: torch.Tensor, loss: ContrastiveLoss, *,
          n_noise: float, noise_samples: int, n_epochs: int, step: float, momentum: float = 0.0,
          clip_grad: float | None = None, seed: int = 0, verbose: bool = False) -> np.ndarray:
    """Positions (m, 2) for m new points with training neighbours ``neighbors`` (m, k), the
    training embedding ``Y_ref`` fixed; see the module docstring. The forces come from the
    fit's compiled kernel (:func:`nomad.cpu_kernel.batch_forces`), the new points as heads
    appended after the n training points, whose own rows of the gradient are dropped."""
    import numba

    from .cpu_kernel import batch_forces, workspace

    ref = np.ascontiguousarray(Y_ref, dtype=np.float32)
    nbrs = np.ascontiguousarray(neighbors, dtype=np.int64)
    (n, _), (m, k) = ref.shape, nbrs.shape
    Y = np.empty((n + m, 2), dtype=np.float32)
    Y[:n] = ref
    Y[n:] = np.median(ref[nbrs], axis=1)  # start: the median of the neighbours' positions
    if m == 0 or n_epochs == 0:
        return Y[n:].copy()
    pk = p[:k].double()
    pk = (pk / pk.sum()).float().numpy()
    S = int(noise_samples)
    loss_kind, kernel_kind, alpha, nu, a, b = loss.fused()
    heads = np.arange(n, n + m, dtype=np.int64)
    c_noise = np.full(m, n_noise / S, dtype=np.float32)
    no_mu, no_c = np.zeros((0, 2), np.float32), np.zeros(0, np.float32)
    exclude = np.full(m, -1, dtype=np.int64)
    work = workspace(m, k, S, 1)
    grad = np.empty_like(Y)
    velocity = np.zeros((m, 2), dtype=np.float32)
    rng = np.random.default_rng(seed)
    threads = numba.get_num_threads()
    for epoch in tqdm(range(n_epochs), desc="placing new points", disable=not verbose, leave=False):
        noise = rng.integers(n, size=(m, S), dtype=np.int64)
        grad.fill(0.0)
        batch_forces(Y, heads, nbrs, pk, noise, c_noise, no_mu, no_c, exclude, 1.0, loss_kind,
                     kernel_kind, float(alpha), float(nu), float(a), float(b), grad, False, threads,
                     False, work)
        g = grad[n:]
        if clip_grad is not None:
            np.clip(g, -clip_grad, clip_grad, out=g)
        velocity *= momentum
        velocity += g
        Y[n:] -= np.float32(step * (1.0 - epoch / n_epochs)) * velocity
    return Y[n:].copy()
