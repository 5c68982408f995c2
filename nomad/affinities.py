"""p(j|i): how much of head i's attraction goes to its r-th nearest neighbour.

Inverse-rank model (nomad-projection eq. 6): for the k neighbours of i ranked r = 1..k
by distance, ``p(j|i) = exp(1/r) / sum_{r'=1..k} exp(1/r')``. Eq. 6 as printed sums k + 1
terms in the normaliser (``sum_{j=0..k} e^{1/(j+1)}``), so its weights of the k neighbours
would add up to less than 1; we normalise over the k neighbours as the authors' code does
(projection.py:131-135; ALGORITHMS.md sec. 2.1-2.2): a softmax of 1/r, so that p(.|i) sums to
1 (the printed form scales every attraction by a constant below 1). The printed rank_j(i), i's
place in j's list with "rank < k", would weight reverse neighbours and keep k - 1 of them; we read
it as the authors' code does: j's rank r = 1..k among i's k nearest neighbours. The alternative
``"uniform"`` gives every neighbour 1/k: the binary kNN graph of InfoNC-t-SNE
(tsne-to-umap-contrastive), where positives are drawn uniformly from a head's edges.
"""

from __future__ import annotations

import torch


def p_ji(k: int, model: str = "inverse_rank") -> torch.Tensor:
    """The (k,) vector of p(j|i) over a head's neighbours in ascending distance."""
    if model == "inverse_rank":
        w = torch.exp(1.0 / torch.arange(1, k + 1, dtype=torch.float64))
    elif model == "uniform":
        w = torch.ones(k, dtype=torch.float64)
    else:
        raise ValueError(f"p_model must be 'inverse_rank' or 'uniform', got {model!r}")
    return (w / w.sum()).float()
