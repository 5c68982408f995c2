"""t-SimCNE (Böhm, Berens & Kobak, ICLR 2023): contrastive 2-D maps of images, from pixels.

Neighbours come from data augmentation instead of a kNN graph (t-simcne sec. 3.1-3.2): every
image of a batch of b gives two random views (:mod:`tsimcne_lite.augment`), a CNN backbone and a
projection head map the 2b views to z, and each view's partner is its positive while the other
2b - 2 views are its negatives, under InfoNCE with the Cauchy kernel (eq. 4-5)::

    l(i, j) = -log q_ij + log sum_{k != i} q_ik,   q_ij = 1 / (1 + ||z_i - z_j||^2),

averaged over all 2b views (both directions). This is the InfoNC-t-SNE loss of
:class:`nomad.losses.InfoNCE` (s = 0) with the other views as its noise, each of weight 1, so
the kernel and the loss are reused from there.

Dimensionality annealing in three stages (sec. 3.4, ``n_epochs`` = [1000, 50, 450] in the
paper): (1) pre-train backbone and head with a 128-D output; (2) replace the head's output
layer by a fresh 2-D one (weights N(0, 1), as the authors' ``mutate_model``) and train that
layer alone; (3) fine-tune the whole network in 2-D. Optimiser (sec. 3.3): SGD with momentum
0.9 and weight decay 5e-4 (the authors' code), each gradient coordinate clipped to +-4, learning
rate 0.03 b / 256 for stages 1 and 2 and 1/1000 of it for stage 3; stages 1 and 3 warm up
linearly over 10 epochs and then anneal with a cosine to 0, stage 2 runs at a constant rate
("no warm-up, no annealing", sec. 3.4; the authors' package anneals it too). The schedule is
evaluated per step on the fractional epoch. The paper used b = 1024; the authors' package
defaults to 512, as here.

Backbones: ``"resnet18"`` is the paper's (sec. 3.3): ResNet-18 with the CIFAR-style first layer
(3x3 convolution, stride 1, no max-pool; Chen et al. 2020), 512 features, for GPUs.
``"small_cnn"`` (default) is three stride-2 3x3 convolution blocks (32, 64, 128 channels, batch
norm, ReLU), average-pooled to 2 x 2 (global pooling lost the digits' layout: kNN accuracy of the
features on MNIST 0.78 instead of 0.88 in a short run), 512 features; it trains on a few thousand
small images on 2 CPU cores in minutes. The head is one hidden ReLU layer of
``head_hidden`` units ("auto" = 2 x the backbone's 512 features = 1024, the paper's).

Input: rows of ``X`` are images flattened in C order from ``(H, W)`` (grayscale) or
``(H, W, C)`` (channels last, e.g. ``images.reshape(n, -1)`` of an ``(n, 32, 32, 3)`` array);
``image_shape`` says which. Pixels in [0, 255] (any value above 1) are divided by 255; inside
the network every channel is standardised by the training images' mean and std. The output
is ``transform`` of the un-augmented images, with batch norm in evaluation mode (the authors'
``transform``), and ``transform`` embeds unseen images the same way.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from nomad.base import EmbeddingMethod
from nomad.checks import check_data
from nomad.errors import InputError
from nomad.losses import InfoNCE, cauchy

from .augment import Augmentation

log = logging.getLogger(__name__)

BACKBONES = ("small_cnn", "resnet18")
#: learning rate per image of a batch (t-simcne sec. 3.3: 0.03 b / 256)
LR_PER_256 = 0.03
_EMBED_BATCH = 1024


# -- networks -----------------------------------------------------------------------------------
def _conv_block(c_in: int, c_out: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True)]


def small_cnn(in_channels: int) -> tuple[nn.Module, int]:
    """Three stride-2 conv blocks (32, 64, 128 channels), average-pooled to 2 x 2: 512 features
    (28 x 28 -> 14 -> 7 -> 4 -> 2; about 2 M multiply-adds per image)."""
    net = nn.Sequential(
        *_conv_block(in_channels, 32, 2), *_conv_block(32, 64, 2), *_conv_block(64, 128, 2),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(),
    )
    return net, 512


class BasicBlock(nn.Module):
    """ResNet basic block (He et al. 2016): two 3x3 convolutions and a shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


def resnet18(in_channels: int) -> tuple[nn.Module, int]:
    """CIFAR-style ResNet-18 (3x3 stem, stride 1, no max-pool; t-simcne sec. 3.3): 512 features."""
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True)
    ]
    c_in = 64
    for c_out, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        layers += [BasicBlock(c_in, c_out, stride), BasicBlock(c_out, c_out, 1)]
        c_in = c_out
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return nn.Sequential(*layers), 512


class ContrastiveNet(nn.Module):
    """Per-channel standardisation -> backbone -> projection head (Linear-ReLU-Linear)."""

    def __init__(self, backbone: nn.Module, features: int, hidden: int, out_dim: int,
                 mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        self.register_buffer("mean", mean.view(1, -1, 1, 1).clone())
        self.register_buffer("std", std.view(1, -1, 1, 1).clone())
        self.backbone = backbone
        self.head = nn.Sequential(nn.Linear(features, hidden), nn.ReLU(inplace=True),
                                  nn.Linear(hidden, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone((x - self.mean) / self.std))

    def replace_readout(self, out_dim: int) -> nn.Linear:
        """A fresh output layer of ``out_dim`` units, weights N(0, 1) (the authors' mutate_model)."""
        hidden = self.head[-1].in_features
        readout = nn.Linear(hidden, out_dim).to(self.mean.device)
        nn.init.normal_(readout.weight, std=1.0)
        self.head[-1] = readout
        return readout


# -- loss and schedule --------------------------------------------------------------------------
def tsimcne_loss(z: torch.Tensor, loss: InfoNCE | None = None) -> torch.Tensor:
    """Mean t-SimCNE loss (t-simcne eq. 4-5) of 2b views: rows i and i + b are two views of one
    image, every other row is a negative of both."""
    loss = InfoNCE(s=0.0) if loss is None else loss
    n2 = z.shape[0]
    b = n2 // 2
    sq = (z * z).sum(1)
    d2 = (sq[:, None] + sq[None, :] - 2.0 * z @ z.T).clamp(min=0.0)  # finite gradient at d = 0
    q = cauchy(d2)
    rows = torch.arange(n2, device=z.device)
    partner = (rows + b) % n2
    others = torch.ones(n2, n2, dtype=torch.bool, device=z.device)
    others[rows, rows] = False
    others[rows, partner] = False
    q_pos = q[rows, partner][:, None]
    q_noise = q[others].view(n2, n2 - 2)
    return loss(q_pos, torch.ones_like(q_pos), q_noise, torch.ones_like(q_noise)).mean()


def learning_rate_at(t0: float, t1: float, n_epochs: int, base: float, warmup: int,
                     anneal: bool) -> float:
    """The rate of a step that runs from epoch ``t0`` to ``t1`` (fractional): linear warm-up
    over ``warmup`` epochs, then (``anneal``) cosine annealing to 0 at ``n_epochs``."""
    if t1 <= warmup:
        return base * t1 / warmup
    if not anneal:
        return base
    return base * 0.5 * (1.0 + math.cos(math.pi * max(t0 - warmup, 0.0) / (n_epochs - warmup)))


# -- the method ---------------------------------------------------------------------------------
class TSimCNE(EmbeddingMethod):
    """t-SimCNE (module docstring): phases ``"pretrain"``, ``"readout"``, ``"finetune"`` (the
    three stages) and ``"embed"`` (the training images through the trained network).

    Args:
        image_shape: ``(H, W)`` or ``(H, W, C)`` of one row of X (the runner passes the
            dataset's when this is None).
        backbone: ``"small_cnn"`` (CPU default) or ``"resnet18"`` (the paper's).
        n_epochs: epochs of the three stages (paper: [1000, 50, 450]).
        batch_size: images per batch b (2b views); the last batches of an epoch are evened out.
        learning_rate: ``"auto"`` = 0.03 b / 256 (sec. 3.3), or a number: the base rate.
        stage_lr_factors: the base rate's multiple per stage (paper: 1, 1, 1/1000).
        warmup_epochs: linear warm-up per stage; ``"auto"`` = [10, 0, 10] (paper), each at
            most a tenth of its stage (so that short runs still anneal).
        momentum, weight_decay, clip_grad: SGD settings (0.9, 5e-4, +-4: the authors' code).
        pretrain_dim: output dimension of stage 1 (128).
        head_hidden: hidden units of the head; ``"auto"`` = 2 x the backbone's features.
        crop_scale: area range of the random resized crop (0.2-1, the authors' code).
        flip: horizontal flips; ``"auto"`` = on for colour images (the paper's CIFAR), off for
            grayscale ones, where the default datasets are digits (a mirrored 2, 3, 7 is no
            longer a digit); set ``True`` for e.g. Fashion-MNIST.
        jitter_p, brightness, contrast, saturation, hue, grayscale_p: colour augmentation
            (SimCLR's 0.8, 0.4, 0.4, 0.4, 0.1, 0.2; saturation, hue, grayscale need colour).
        random_state: seeds the weights, the batches and every augmentation.
        accelerator: ``"cpu"``, ``"cuda"`` or ``"auto"``; one device.

    Fitted: ``net_`` (the network), ``loss_history_`` (mean loss per epoch, per stage),
    ``stage_losses_`` (each stage's last-epoch mean loss), ``learning_rates_``,
    ``warmup_epochs_``, ``flip_``, ``embedding_``.
    """

    accelerators: ClassVar[tuple[str, ...]] = ("cpu", "cuda")
    multi_device: ClassVar[bool] = False
    #: ``transform`` embeds new images whatever the settings (the runner's ``holdout=true``)
    always_parametric: ClassVar[bool] = True

    def __init__(
        self,
        image_shape: Sequence[int] | None = None,
        backbone: str = "small_cnn",
        n_epochs: Sequence[int] = (1000, 50, 450),
        batch_size: int = 512,
        learning_rate: float | str = "auto",
        stage_lr_factors: Sequence[float] = (1.0, 1.0, 1e-3),
        warmup_epochs: Sequence[int] | str = "auto",
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        clip_grad: float | None = 4.0,
        pretrain_dim: int = 128,
        head_hidden: int | str = "auto",
        crop_scale: Sequence[float] = (0.2, 1.0),
        flip: bool | str = "auto",
        jitter_p: float = 0.8,
        brightness: float = 0.4,
        contrast: float = 0.4,
        saturation: float = 0.4,
        hue: float = 0.1,
        grayscale_p: float = 0.2,
        random_state: int = 0,
        accelerator: str = "cpu",
    ):
        self.image_shape = image_shape
        self.backbone = backbone
        self.n_epochs = n_epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.stage_lr_factors = stage_lr_factors
        self.warmup_epochs = warmup_epochs
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.clip_grad = clip_grad
        self.pretrain_dim = pretrain_dim
        self.head_hidden = head_hidden
        self.crop_scale = crop_scale
        self.flip = flip
        self.jitter_p = jitter_p
        self.brightness = brightness
        self.contrast = contrast
        self.saturation = saturation
        self.hue = hue
        self.grayscale_p = grayscale_p
        self.random_state = random_state
        self.accelerator = accelerator

    # -- checks -----------------------------------------------------------------------------
    def _check_params(self) -> None:
        if self.backbone not in BACKBONES:
            raise InputError(f"method.backbone={self.backbone!r}: choose one of {list(BACKBONES)}")
        epochs = self.n_epochs
        if (not isinstance(epochs, (list, tuple)) or len(epochs) != 3
                or not all(_is_count(e) for e in epochs) or sum(epochs) == 0):
            raise InputError(f"method.n_epochs={epochs!r} must be three whole numbers >= 0, the "
                             "epochs of the three stages (not all 0); e.g. method.n_epochs=[1000,50,450]")
        if not _is_count(self.batch_size) or self.batch_size < 2:
            raise InputError(f"method.batch_size={self.batch_size!r} must be a whole number >= 2; "
                             "e.g. method.batch_size=512")
        if self.learning_rate != "auto" and not _is_positive(self.learning_rate):
            raise InputError(f"method.learning_rate={self.learning_rate!r} must be auto or a number > 0")
        factors = self.stage_lr_factors
        if not isinstance(factors, (list, tuple)) or len(factors) != 3 or not all(_is_positive(f) for f in factors):
            raise InputError(f"method.stage_lr_factors={factors!r} must be three numbers > 0; "
                             "e.g. method.stage_lr_factors=[1,1,0.001]")
        warmup = self.warmup_epochs
        if warmup != "auto" and (not isinstance(warmup, (list, tuple)) or len(warmup) != 3
                                 or not all(_is_count(w) and w <= e for w, e in zip(warmup, epochs))):
            raise InputError(f"method.warmup_epochs={warmup!r} must be auto or three whole numbers, "
                             "each at most its stage's epochs")
        lo_hi = self.crop_scale
        if not isinstance(lo_hi, (list, tuple)) or len(lo_hi) != 2 or not 0 < lo_hi[0] <= lo_hi[1] <= 1:
            raise InputError(f"method.crop_scale={lo_hi!r} must be [lo, hi] with 0 < lo <= hi <= 1")
        if self.flip not in ("auto", True, False):
            raise InputError(f"method.flip={self.flip!r} must be auto, true or false")
        if self.head_hidden != "auto" and not (_is_count(self.head_hidden) and self.head_hidden >= 1):
            raise InputError(f"method.head_hidden={self.head_hidden!r} must be auto or a whole number >= 1")
        if not (_is_count(self.pretrain_dim) and self.pretrain_dim >= 1):
            raise InputError(f"method.pretrain_dim={self.pretrain_dim!r} must be a whole number >= 1")
        if self.accelerator not in ("auto", "cpu", "cuda"):
            raise InputError(f"accelerator={self.accelerator!r} must be cpu, cuda or auto")
        if self.accelerator == "cuda" and not torch.cuda.is_available():
            raise InputError("accelerator='cuda' but torch sees no GPU: use trainer.accelerator=cpu")

    def _shape(self) -> tuple[int, int, int]:
        """(C, H, W) from ``image_shape``."""
        shape = self.image_shape
        if shape is None:
            raise InputError(
                "t-SimCNE needs raw images and their shape, but image_shape is not set: use an "
                "image dataset with its pixels (e.g. dataset=mnist dataset.pca=null) or set "
                "method.image_shape=[H,W] (grayscale) or [H,W,C] (rows flattened channels last)"
            )
        shape = tuple(shape)
        if len(shape) not in (2, 3) or not all(_is_count(s) and s >= 1 for s in shape):
            raise InputError(f"method.image_shape={list(shape)} must be [H, W] or [H, W, C] of "
                             "positive whole numbers")
        H, W = shape[:2]
        return (shape[2] if len(shape) == 3 else 1), H, W

    def _images(self, X: np.ndarray, scale: float | None = None) -> tuple[torch.Tensor, float]:
        """X (n x H*W*C) as (n, C, H, W) float32 in [0, 1], and the pixel scale used."""
        C, H, W = self._shape()
        X = np.asarray(X)
        if X.ndim != 2 or X.shape[1] != C * H * W:
            got = X.shape[1] if X.ndim == 2 else f"shape {X.shape}"
            raise InputError(
                f"t-SimCNE needs raw images: image_shape {list(self.image_shape)} means rows of "
                f"{C * H * W} pixels, but X has {got} columns. If the data were reduced (PCA), "
                "set dataset.pca=null; otherwise fix method.image_shape"
            )
        check_data(X, min_points=2 if scale is None else 1)
        lo, hi = float(X.min()), float(X.max())
        if scale is None:
            scale = 255.0 if hi > 1.0 else 1.0
        if lo < 0.0 or hi > 255.0:
            raise InputError(f"t-SimCNE needs pixel intensities in [0, 1] or [0, 255], got values "
                             f"in [{lo:g}, {hi:g}]: pass the raw pixels (no standardisation)")
        x = torch.as_tensor(np.ascontiguousarray(X, dtype=np.float32)) / scale
        x = x.view(len(X), H, W, C).permute(0, 3, 1, 2).contiguous()
        return x, scale

    # -- fit --------------------------------------------------------------------------------
    def fit_transform(self, X: np.ndarray) -> np.ndarray:
        self._check_params()
        self.timings_ = {}
        x, self.pixel_scale_ = self._images(X)
        C = x.shape[1]
        self.device_ = torch.device(
            "cuda" if self.accelerator == "cuda"
            or (self.accelerator == "auto" and torch.cuda.is_available()) else "cpu"
        )
        dev = self.device_
        n, b = len(x), min(int(self.batch_size), len(x))
        self.flip_ = (C == 3) if self.flip == "auto" else bool(self.flip)
        base = LR_PER_256 * b / 256 if self.learning_rate == "auto" else float(self.learning_rate)
        self.learning_rates_ = [base * f for f in self.stage_lr_factors]
        epochs = [int(e) for e in self.n_epochs]
        self.warmup_epochs_ = (
            [min(w, e // 10) for w, e in zip((10, 0, 10), epochs)]
            if self.warmup_epochs == "auto" else [int(w) for w in self.warmup_epochs]
        )
        augment = Augmentation(crop_scale=tuple(self.crop_scale), flip=self.flip_, jitter_p=self.jitter_p,
                               brightness=self.brightness, contrast=self.contrast,
                               saturation=self.saturation, hue=self.hue, grayscale_p=self.grayscale_p)
        generator = torch.Generator(device=dev).manual_seed(int(self.random_state))
        mean = x.mean((0, 2, 3))
        std = x.std((0, 2, 3)).clamp(min=1e-3)
        with torch.random.fork_rng(devices=[]):  # seeded weights, global RNG left as it was
            torch.manual_seed(int(self.random_state))
            body, features = small_cnn(C) if self.backbone == "small_cnn" else resnet18(C)
            hidden = 2 * features if self.head_hidden == "auto" else int(self.head_hidden)
            net = ContrastiveNet(body, features, hidden, int(self.pretrain_dim), mean, std).to(dev)
            self.net_ = net
            x = x.to(dev)
            log.info("t-SimCNE: %d images %s, %s backbone, %s, batch %d, epochs %s, lr %s, flip %s",
                     n, list(x.shape[1:]), self.backbone, dev, b, epochs,
                     [f"{lr:.3g}" for lr in self.learning_rates_], self.flip_)
            self.loss_history_: list[list[float]] = [[], [], []]
            stages = (("pretrain", True), ("readout", False), ("finetune", True))
            for stage, (name, anneal) in enumerate(stages):
                with self._phase(name):
                    if stage == 1:
                        net.requires_grad_(False)
                        params = list(net.replace_readout(2).parameters())
                    else:
                        net.requires_grad_(True)
                        params = list(net.parameters())
                    self._train_stage(stage, name, net, params, x, augment, generator, b,
                                      epochs[stage], self.warmup_epochs_[stage], anneal)
        self.stage_losses_ = [h[-1] if h else float("nan") for h in self.loss_history_]
        with self._phase("embed"):
            self.embedding_ = self._embed(x)
        return self.embedding_

    def _train_stage(self, stage: int, name: str, net: ContrastiveNet, params: list[torch.Tensor],
                     x: torch.Tensor, augment: Augmentation, generator: torch.Generator, b: int,
                     n_epochs: int, warmup: int, anneal: bool) -> None:
        base = self.learning_rates_[stage]
        opt = torch.optim.SGD(params, lr=base, momentum=self.momentum, weight_decay=self.weight_decay)
        loss_fn = InfoNCE(s=0.0)
        n = len(x)
        n_batches = max(1, round(n / b))
        net.train()
        for epoch in range(n_epochs):
            perm = torch.randperm(n, generator=generator, device=x.device)
            total = torch.zeros((), device=x.device)
            for k, rows in enumerate(torch.tensor_split(perm, n_batches)):
                lr = learning_rate_at(epoch + k / n_batches, epoch + (k + 1) / n_batches,
                                      n_epochs, base, warmup, anneal)
                for group in opt.param_groups:
                    group["lr"] = lr
                batch = x[rows]
                views = torch.cat([augment(batch, generator), augment(batch, generator)])
                loss = tsimcne_loss(net(views), loss_fn)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if self.clip_grad is not None:
                    torch.nn.utils.clip_grad_value_(params, self.clip_grad)
                opt.step()
                total += loss.detach()
            mean_loss = float(total) / n_batches
            if not math.isfinite(mean_loss):
                raise RuntimeError(f"t-SimCNE stage {name}: the loss diverged (epoch {epoch + 1}); "
                                   "lower method.learning_rate")
            self.loss_history_[stage].append(mean_loss)
            every = max(1, n_epochs // 10)
            level = logging.INFO if (epoch + 1) % every == 0 or epoch + 1 == n_epochs else logging.DEBUG
            log.log(level, "t-SimCNE %s (stage %d) epoch %d/%d: loss %.4f", name, stage + 1,
                    epoch + 1, n_epochs, mean_loss)

    @torch.no_grad()
    def _embed(self, x: torch.Tensor) -> np.ndarray:
        net = self.net_
        net.eval()
        out = np.empty((len(x), 2), dtype=np.float32)
        for lo in range(0, len(x), _EMBED_BATCH):
            xb = x[lo:lo + _EMBED_BATCH].to(self.device_)
            out[lo:lo + _EMBED_BATCH] = net(xb).float().cpu().numpy()
        return out

    def transform(self, X: np.ndarray) -> np.ndarray:
        """Embed new images (rows as in ``fit_transform``) with the trained network, no
        augmentation: a forward pass with batch norm in evaluation mode."""
        if not hasattr(self, "net_"):
            raise InputError("TSimCNE.transform needs a fitted model: call fit_transform first")
        x, _ = self._images(X, scale=self.pixel_scale_)
        return self._embed(x)


def _is_count(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 0


def _is_positive(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0
