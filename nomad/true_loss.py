"""UMAP's three losses (umap-true-loss, Damrich & Hamprecht 2021), evaluated on an embedding.

For the symmetric input similarities mu_ij with degrees d_i = sum_j mu_ij, m negative
samples per sampled edge, n points, nu_ij = phi(e_i, e_j) the embedding kernel,
L^a_ij = -log nu_ij and L^r_ij = -log(1 - nu_ij), sums over ordered pairs i != j (which is
the papers' ``2 sum_{i<j}``):

* purported (eq. 6):  ``sum_ij mu_ij L^a_ij + (1 - mu_ij) L^r_ij``  (UMAP's stated loss);
* effective (eq. 12): ``sum_ij mu_ij L^a_ij + (d_i m / n) L^r_ij``  (what its sampling
  optimises in expectation), plus ``sum_ij r_ij L^r_ij`` when kNN edges are also sampled for
  repulsion with probability r_ij (the proposed correction, eq. 18, section 7.3);
* actual (eq. 11):    the same terms over the pairs sampled in one epoch.

The repulsive sums over all pairs are O(n^2) work, never O(n^2) memory: exact in chunks
when ``n^2 <= max_pairs``, otherwise estimated without bias from ``max_pairs // n`` random
partners per point. ``L^r_ii`` (a point drawn as its own negative) is counted as the
sampler sees it, with the loss's clamp, so effective and actual losses share one definition.
"""

from __future__ import annotations

import torch

from .losses import UMAPLoss

_CLAMP = 1e-4  # the clamp of UMAPLoss.forward


def attraction(loss: UMAPLoss, y_a: torch.Tensor, y_b: torch.Tensor) -> torch.Tensor:
    """L^a = -log nu for the pairs (y_a[r], y_b[r])."""
    q = loss.kernel(((y_a - y_b) ** 2).sum(-1))
    return -torch.log(q.clamp(min=_CLAMP))


def repulsion(loss: UMAPLoss, y_a: torch.Tensor, y_b: torch.Tensor) -> torch.Tensor:
    """L^r = -log(1 - nu) for the pairs (y_a[r], y_b[r])."""
    q = loss.kernel(((y_a - y_b) ** 2).sum(-1))
    return -torch.log((1.0 - q).clamp(min=_CLAMP))


def repulsion_row_sums(loss: UMAPLoss, Y: torch.Tensor, max_pairs: int,
                       gen: torch.Generator) -> torch.Tensor:
    """R_i = sum_j L^r_ij over all j (j = i included), exact or estimated (see module doc)."""
    n = len(Y)
    if n * n <= max_pairs:
        rows = max(1, max_pairs // max(n, 1) // 64)
        out = torch.empty(n, dtype=torch.float64)
        for lo in range(0, n, rows):
            block = Y[lo:lo + rows]
            out[lo:lo + rows] = repulsion(loss, block[:, None], Y[None]).sum(1, dtype=torch.float64)
        return out
    partners = max(1, max_pairs // n)
    out = torch.empty(n, dtype=torch.float64)
    rows = max(1, (1 << 22) // partners)
    for lo in range(0, n, rows):
        hi = min(n, lo + rows)
        j = torch.randint(n, (hi - lo, partners), generator=gen)
        out[lo:hi] = repulsion(loss, Y[lo:hi, None], Y[j]).mean(1, dtype=torch.float64) * n
    return out


def umap_losses(loss: UMAPLoss, Y: torch.Tensor, heads: torch.Tensor, tails: torch.Tensor,
                mu: torch.Tensor, m: float, max_pairs: int, gen: torch.Generator,
                r: torch.Tensor | None = None) -> dict[str, float]:
    """Purported (eq. 6) and effective (eq. 12; with ``r``, eq. 18's sampler) losses of Y.

    ``heads, tails, mu``: the directed edges of the symmetric graph (both directions listed)
    and their similarities; ``r``: the extra repulsion probability per edge (correction).
    """
    n = len(Y)
    degree = torch.zeros(n, dtype=torch.float64).index_add_(0, heads, mu.double())
    la = attraction(loss, Y[heads], Y[tails]).double()
    lr = repulsion(loss, Y[heads], Y[tails]).double()
    R = repulsion_row_sums(loss, Y, max_pairs, gen)
    self_r = repulsion(loss, Y, Y).double()  # L^r_ii, as the sampler sees it
    attract = float((mu.double() * la).sum())
    purported_rep = float((R - self_r).sum() - (mu.double() * lr).sum())
    effective_rep = float((degree * m / n * R).sum())
    if r is not None:
        effective_rep += float((r.double() * lr).sum())
    return {
        "purported_attractive": attract, "purported_repulsive": purported_rep,
        "purported": attract + purported_rep,
        "effective_attractive": attract, "effective_repulsive": effective_rep,
        "effective": attract + effective_rep,
    }
