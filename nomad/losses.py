"""The part that varies between methods: the per-head contrastive loss.

Every loss sees, for a batch of B heads i, the kernel values to their k kNN positives
``q_pos`` (B, k) with weights ``p`` = p(j|i) (rows sum to 1), and the kernel values to
noise points ``q_noise`` (B, S) with weights ``c_noise``: the expected number of noise
samples each column stands for, so that ``sum_s c_is f(q_is)`` estimates
``E_{M~xi} sum_{m in M} f(q_im)`` (a sampled point from domain D stands for
``|M| p(m in D) / S`` samples; a cell mean mu_r for ``|M| p(m in r)``, nomad-projection
eq. 4). ``rho`` scales the attraction (early / late exaggeration).

Notation of tsne-to-umap-contrastive (Damrich et al.): q_ij = 1/(1+||y_i-y_j||^2),
m = |M| noise samples per positive, Z-bar a fixed normaliser, nu = m Z-bar / n^2.
"""

from __future__ import annotations

import math

import torch

_EPS = 1e-10


def cauchy(d2: torch.Tensor) -> torch.Tensor:
    """q = 1 / (1 + d^2), the Cauchy (t-distribution, 1 dof) kernel (nomad-projection eq. 1)."""
    return 1.0 / (1.0 + d2)


class ContrastiveLoss(torch.nn.Module):
    """Base: Cauchy kernel. Subclasses implement ``forward`` (per-head loss, (B,)) and
    ``dq``, its closed-form partial derivatives (the engine's fast path; ``forward``
    with autograd is the reference they are tested against)."""

    def kernel(self, d2: torch.Tensor) -> torch.Tensor:
        return cauchy(d2)

    def kernel_grad(self, d2: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        """dq/d(d^2); for the Cauchy kernel -q^2."""
        return -q * q

    def forward(self, q_pos, p, q_noise, c_noise, rho: float = 1.0) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def dq(self, q_pos, p, q_noise, c_noise, rho: float = 1.0):  # pragma: no cover
        """(dL/dq_pos, dL/dq_noise, {parameter: dL/dparameter}) of ``forward(...).sum()``."""
        raise NotImplementedError

    def fused(self) -> tuple[int, int, float, float, float, float]:  # pragma: no cover
        """(loss_kind, kernel_kind, alpha, nu, a, b) for :mod:`nomad.cpu_kernel`."""
        raise NotImplementedError

    def spectrum_early(self) -> ContrastiveLoss | None:
        """This loss at cne's early-exaggeration point of the spectrum, s_early = max(s, 1)
        (cne.py:441-459, ALGORITHMS.md 1.5), or None for a loss without a spectrum parameter
        (NCE learns its normaliser, UMAP's loss has none; cne runs neither with it)."""
        return None


class InfoNCE(ContrastiveLoss):
    """InfoNC-t-SNE (nomad-projection eq. 2/3; with cell means, the NOMAD surrogate eq. 3-5).

    ``L_i = sum_j p(j|i) [ -rho log q_ij + 4^-s log(q_ij + sum_s c_is q_is) ]``.
    ``s`` is the spectrum parameter of the cne reference (repulsion scaled by 4^-s):
    s = 0 is InfoNC-t-SNE, s = 1 "UMAP-like".
    """

    def __init__(self, s: float = 0.0):
        super().__init__()
        self.s = s

    def forward(self, q_pos, p, q_noise, c_noise, rho: float = 1.0):
        noise = (c_noise * q_noise).sum(1, keepdim=True)
        per_edge = -rho * torch.log(q_pos + _EPS) + 4.0 ** (-self.s) * torch.log(q_pos + noise)
        return (p * per_edge).sum(1)

    def dq(self, q_pos, p, q_noise, c_noise, rho: float = 1.0):
        alpha = 4.0 ** (-self.s)
        noise = (c_noise * q_noise).sum(1, keepdim=True)
        inv_den = p / (q_pos + noise)  # p_j / (q_ij + Z_i)
        g_pos = -rho * p / (q_pos + _EPS) + alpha * inv_den
        g_noise = alpha * c_noise * inv_den.sum(1, keepdim=True)
        return g_pos, g_noise, {}

    def fused(self):
        return 0, 0, 4.0 ** (-self.s), 0.0, 1.0, 1.0

    def spectrum_early(self) -> InfoNCE:
        """Repulsion x 4^-max(s, 1): at the default s = 0 a quarter of it (cne's ``ince_spec`` = 4)."""
        return InfoNCE(max(self.s, 1.0))


class _BinaryNCE(ContrastiveLoss):
    """Shared form of Neg-t-SNE and NCE: classify q/(q + nu) for data vs noise.

    ``L_i = sum_j p(j|i) [-rho log(q_ij / (q_ij + nu))] + sum_s c_is [-log(nu / (q_is + nu))]``.
    """

    def log_nu(self) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def forward(self, q_pos, p, q_noise, c_noise, rho: float = 1.0):
        log_nu = self.log_nu()
        nu = log_nu.exp()
        attract = -(torch.log(q_pos + _EPS) - torch.log(q_pos + nu))
        repel = torch.log(q_noise + nu) - log_nu
        return rho * (p * attract).sum(1) + (c_noise * repel).sum(1)

    def dq(self, q_pos, p, q_noise, c_noise, rho: float = 1.0):
        log_nu = self.log_nu()
        nu = log_nu.exp()
        g_pos = rho * p * (-1.0 / (q_pos + _EPS) + 1.0 / (q_pos + nu))
        g_noise = c_noise / (q_noise + nu)
        params = {}
        if isinstance(getattr(self, "log_z", None), torch.nn.Parameter):  # NCE: d/d log Z = d/d log nu
            d_log_nu = rho * (p * nu / (q_pos + nu)).sum() + (c_noise * (nu / (q_noise + nu) - 1.0)).sum()
            params[self.log_z] = d_log_nu.detach()
        return g_pos, g_noise, params

    def fused(self):
        return 1, 0, 1.0, float(self.log_nu().detach().exp()), 1.0, 1.0


class NegTSNE(_BinaryNCE):
    """Neg-t-SNE with fixed normaliser Z-bar: nu = m Z-bar / n^2 (tsne-to-umap-contrastive).

    Z-bar comes from ``z_bar`` or from the spectrum parameter ``s``:
    ``Z-bar(s) = Z_tsne (Z_umap / Z_tsne)^s`` with Z_tsne = 100 n and Z_umap = n^2 / m,
    so s = 0 is t-SNE-like, s = 1 is UMAP (nu = 1), and s outside [0, 1] extrapolates.
    (cne 0.4.0 fixes Z_umap = n^2 / 5, cne.py:323-326: the same at the default m = 5.)
    """

    def __init__(self, n: int, m: float, s: float | None = None, z_bar: float | None = None):
        super().__init__()
        self.n, self.m = n, m
        if z_bar is None:
            s = 1.0 if s is None else s
            z_tsne, z_umap = 100.0 * n, n * n / m
            z_bar = z_tsne * (z_umap / z_tsne) ** s
        else:
            s = None  # z_bar given: it overrides s
        self.s, self.z_bar = s, float(z_bar)
        self.register_buffer("_log_nu", torch.tensor(math.log(m * self.z_bar / (n * n))))

    def log_nu(self):
        return self._log_nu

    def spectrum_early(self) -> NegTSNE:
        """Z-bar at s_early = max(s, 1): the UMAP end Z-bar = n^2 / m (nu = 1) for s <= 1. With
        ``z_bar`` given (no s; cne then runs no early exaggeration at all) the same end, unless
        ``z_bar`` lies beyond it: Z-bar_early = max(z_bar, n^2 / m), i.e. nu_early = max(nu, 1)."""
        if self.s is not None:
            return NegTSNE(self.n, self.m, s=max(self.s, 1.0))
        return NegTSNE(self.n, self.m, z_bar=max(self.z_bar, self.n * self.n / self.m))


class NCE(_BinaryNCE):
    """NCVis: NCE with a learned normaliser Z, nu = m Z (log Z a parameter, init Z = 1)."""

    def __init__(self, m: float):
        super().__init__()
        self.m = m
        self.log_z = torch.nn.Parameter(torch.zeros(()))

    def log_nu(self):
        return self.log_z + math.log(self.m)


class UMAPLoss(ContrastiveLoss):
    """UMAP's cross-entropy with its kernel q = 1 / (1 + a d^{2b}) (umap-true-loss eq. 5-6).

    ``L_i = sum_j p(j|i) [-rho log q_ij] + sum_s c_is [-log(1 - q_is)]``, the form that
    UMAP's negative sampling optimises (binary targets).
    """

    def __init__(self, a: float, b: float):
        super().__init__()
        self.a, self.b = float(a), float(b)

    def kernel(self, d2):
        return 1.0 / (1.0 + self.a * d2.clamp(min=1e-12).pow(self.b))  # clamp: finite grad at 0

    def kernel_grad(self, d2, q):
        return -self.a * self.b * d2.clamp(min=1e-12).pow(self.b - 1.0) * q * q

    def forward(self, q_pos, p, q_noise, c_noise, rho: float = 1.0):
        attract = -torch.log(q_pos.clamp(min=1e-4))
        repel = -torch.log((1.0 - q_noise).clamp(min=1e-4))
        return rho * (p * attract).sum(1) + (c_noise * repel).sum(1)

    def dq(self, q_pos, p, q_noise, c_noise, rho: float = 1.0):
        g_pos = -rho * p / q_pos.clamp(min=1e-4)
        g_noise = c_noise / (1.0 - q_noise).clamp(min=1e-4)
        return g_pos, g_noise, {}

    def fused(self):
        return 2, 1, 1.0, 0.0, self.a, self.b


def umap_ab(min_dist: float, spread: float = 1.0) -> tuple[float, float]:
    """UMAP's a, b: least-squares fit of 1/(1+a x^{2b}) to its target curve (umap-learn)."""
    from umap.umap_ import find_ab_params

    a, b = find_ab_params(spread, min_dist)
    return float(a), float(b)
