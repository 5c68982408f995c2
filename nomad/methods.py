"""The methods: one engine, different losses (tsne-to-umap-contrastive; nomad-projection)."""

from __future__ import annotations

from typing import ClassVar

from .engine import ContrastiveEmbedding
from .losses import NCE, InfoNCE, NegTSNE, UMAPLoss, umap_ab


class NOMAD(ContrastiveEmbedding):
    """NOMAD Projection (Duderstadt, Nussbaum, van der Maaten).

    The InfoNC-t-SNE loss with the noise from cells on other devices replaced by the
    cell means (eq. 3-5), inverse-rank p(j|i) (eq. 6), PCA init, SGD annealed linearly to 0
    (sec. 3.4). On one device with ``approximate="remote"`` nothing is approximated and the
    loss is exactly InfoNC-t-SNE. ``s`` (0, the paper's) is the spectrum parameter of that
    InfoNCE loss, as in :class:`InfoNCTSNE` (repulsion x 4^-s).

    Defaults not fixed by the paper follow the authors' figure scripts (k = 8 neighbours,
    |M| = 10,000 noise samples per head, momentum 0.8); ``noise_samples`` = 256 draws
    estimate the noise term, shared by groups of ``noise_group`` = 16 heads (README,
    "Defaults": sharing keeps NP@k and makes CPU epochs 2x faster; the draws it saves buy
    256 instead of 128, +0.01 NP@10 on three datasets). The learning rate is n/5
    (``lr_scale`` = 0.2, the authors' PubMed script; the paper's text says n/10): at the
    same epochs it raised NP@10 by 0.000-0.015 at 16k-70k points (arxiv_minilm, MNIST,
    Fashion-MNIST) and by 0.035-0.04 at 250k-1M (mnist1m), kNN accuracy unchanged, where
    n/2.5 lost kNN accuracy (README "Defaults"; ``lr_scale=0.1`` gives the paper's n/10).
    ``n_epochs`` = 400, which the paper does not fix: the knee of NP@10 against time at this
    rate (README "Epochs against time"), 0.97-0.98x openTSNE's NP@10 on MNIST-70k and
    Fashion-MNIST-70k and 0.93x on mnist1m's million points.
    """

    multi_device: ClassVar[bool] = True
    _default_approximate: ClassVar[str] = "remote"

    def __init__(self, s: float = 0.0, n_neighbors: int = 8, n_noise: float = 10_000,
                 noise_samples: int | str = 256, noise_group: int = 16, momentum: float = 0.8,
                 lr_scale: float = 0.2, n_epochs: int = 400, **kwargs):
        super().__init__(n_neighbors=n_neighbors, n_noise=n_noise, noise_samples=noise_samples,
                         noise_group=noise_group, momentum=momentum, lr_scale=lr_scale, n_epochs=n_epochs,
                         **kwargs)
        self.s = s

    def _make_loss(self, n: int):
        return InfoNCE(self.s)


class InfoNCTSNE(ContrastiveEmbedding):
    """InfoNC-t-SNE (Damrich et al.): uniform noise over all n points, positive in the
    denominator, spectrum parameter ``s`` scaling the repulsion by 4^-s."""

    def __init__(self, s: float = 0.0, p_model: str = "uniform", **kwargs):
        super().__init__(p_model=p_model, **kwargs)
        self.s = s

    def _make_loss(self, n: int):
        return InfoNCE(self.s)


class NegTSNEMethod(ContrastiveEmbedding):
    """Neg-t-SNE (Damrich et al.): fixed normaliser ``z_bar`` or spectrum parameter ``s``
    (Z-bar from t-SNE's 100 n at s=0 to UMAP's n^2/m at s=1, extrapolated beyond)."""

    def __init__(self, s: float | None = 1.0, z_bar: float | None = None, p_model: str = "uniform",
                 **kwargs):
        super().__init__(p_model=p_model, **kwargs)
        self.s = s
        self.z_bar = z_bar

    def _make_loss(self, n: int):
        return NegTSNE(n, self.n_noise, s=self.s, z_bar=self.z_bar)


class NCVis(ContrastiveEmbedding):
    """NCVis (Artemenkov & Panov; Damrich et al.'s NCE): the normaliser Z is learned."""

    def __init__(self, p_model: str = "uniform", **kwargs):
        super().__init__(p_model=p_model, **kwargs)

    def _make_loss(self, n: int):
        return NCE(self.n_noise)


class UMAPLossMethod(ContrastiveEmbedding):
    """UMAP's loss and kernel (a, b fitted from ``min_dist`` and ``spread`` as umap-learn does)
    on this engine, with umap-learn's gradient clipping at 4 and, under ``sampling="edges"``,
    its negatives that do not move (``push_noise=False``)."""

    def __init__(self, min_dist: float = 0.1, spread: float = 1.0, p_model: str = "uniform",
                 clip_grad: float | None = 4.0, push_noise: bool = False, **kwargs):
        super().__init__(p_model=p_model, clip_grad=clip_grad, push_noise=push_noise, **kwargs)
        self.min_dist = min_dist
        self.spread = spread

    def _make_loss(self, n: int):
        return UMAPLoss(*umap_ab(self.min_dist, self.spread))
