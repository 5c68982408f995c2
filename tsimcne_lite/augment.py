"""Image augmentations for contrastive learning, as batched torch ops (no torchvision).

The SimCLR set that t-SimCNE uses (t-simcne sec. 3.3: "the same set of data augmentations as in
Chen et al. (2020)"; the authors' ``imagedistortions.py``): a random resized crop (area 0.2-1 of
the image, aspect ratio 3/4-4/3, resized back to the image size), a horizontal flip (p = 0.5),
colour jitter (brightness, contrast and saturation factors in [0.6, 1.4], hue shift up to
+-0.1 of the colour circle) applied with p = 0.8, and grayscale with p = 0.2.

Images are ``(B, C, H, W)`` float tensors in [0, 1]. Every image of a batch draws its own
parameters from one ``torch.Generator`` on the images' device, so a seed fixes the views. Where
this differs from torchvision (documented, deliberate): crop boxes larger than the image are
clipped to it instead of being re-drawn (torchvision tries 10 draws, then falls back to a
centre crop); the jitter operations run in a fixed order (brightness, contrast, saturation, hue;
torchvision shuffles it); hue is rotated in YIQ space (a linear approximation of torchvision's
HSV hue shift). Saturation, hue and grayscale need colour: images with C != 3 get brightness
and contrast jitter only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

#: ITU-R 601 luma weights (torchvision's rgb_to_grayscale)
_LUMA = (0.299, 0.587, 0.114)
_RGB_TO_YIQ = torch.tensor(
    [[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]]
)


def _uniform(n: int, lo: float, hi: float, generator: torch.Generator, device) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=generator, device=device)


def _gray(x: torch.Tensor) -> torch.Tensor:
    """Luma, (B, 1, H, W); single-channel images are their own gray."""
    if x.shape[1] != 3:
        return x.mean(1, keepdim=True)
    w = torch.tensor(_LUMA, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


def random_resized_crop(
    x: torch.Tensor,
    generator: torch.Generator,
    scale: tuple[float, float] = (0.2, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    flip: bool = False,
) -> torch.Tensor:
    """A crop of area fraction ``U(scale)`` and aspect ratio log-uniform in ``ratio`` per image,
    resized (bilinear) to the input size; with ``flip`` half of them mirrored left-right."""
    B, _, H, W = x.shape
    dev = x.device
    area = _uniform(B, scale[0], scale[1], generator, dev)
    r = torch.exp(_uniform(B, math.log(ratio[0]), math.log(ratio[1]), generator, dev))
    # width and height as fractions of the image's, for a crop of area * H * W pixels
    w = torch.sqrt(area * r * H / W).clamp(max=1.0)
    h = torch.sqrt(area / r * W / H).clamp(max=1.0)
    cx = (1.0 - w) * _uniform(B, -1.0, 1.0, generator, dev)  # box stays inside [-1, 1]
    cy = (1.0 - h) * _uniform(B, -1.0, 1.0, generator, dev)
    sign = torch.ones(B, device=dev)
    if flip:
        sign = torch.where(torch.rand(B, generator=generator, device=dev) < 0.5, -sign, sign)
    theta = torch.zeros(B, 2, 3, device=dev, dtype=x.dtype)
    theta[:, 0, 0] = w * sign
    theta[:, 0, 2] = cx
    theta[:, 1, 1] = h
    theta[:, 1, 2] = cy
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def color_jitter(
    x: torch.Tensor,
    generator: torch.Generator,
    p: float = 0.8,
    brightness: float = 0.4,
    contrast: float = 0.4,
    saturation: float = 0.4,
    hue: float = 0.1,
) -> torch.Tensor:
    """torchvision's ``RandomApply([ColorJitter(b, c, s, h)], p)`` in a fixed order; saturation
    and hue only for 3-channel images."""
    B, C = x.shape[:2]
    dev = x.device

    def factor(strength: float) -> torch.Tensor:
        return _uniform(B, 1.0 - strength, 1.0 + strength, generator, dev).view(B, 1, 1, 1)

    applied = (torch.rand(B, generator=generator, device=dev) < p).view(B, 1, 1, 1)
    y = (x * factor(brightness)).clamp(0.0, 1.0)
    mean = _gray(y).mean((1, 2, 3), keepdim=True)
    y = ((y - mean) * factor(contrast) + mean).clamp(0.0, 1.0)
    if C == 3:
        gray = _gray(y)
        y = ((y - gray) * factor(saturation) + gray).clamp(0.0, 1.0)
        angle = 2 * math.pi * _uniform(B, -hue, hue, generator, dev)
        cos, sin = torch.cos(angle), torch.sin(angle)
        rot = torch.zeros(B, 3, 3, device=dev)
        rot[:, 0, 0] = 1.0
        rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = cos, -sin, sin, cos
        to_yiq = _RGB_TO_YIQ.to(dev)
        m = torch.linalg.inv(to_yiq) @ rot @ to_yiq  # (B, 3, 3): rotate I, Q about the Y axis
        y = torch.einsum("bij,bjhw->bihw", m.to(y.dtype), y).clamp(0.0, 1.0)
    return torch.where(applied, y, x)


def random_grayscale(x: torch.Tensor, generator: torch.Generator, p: float = 0.2) -> torch.Tensor:
    """Replace a fraction ``p`` of the (3-channel) images by their luma in all channels."""
    if x.shape[1] != 3:
        return x
    applied = (torch.rand(x.shape[0], generator=generator, device=x.device) < p).view(-1, 1, 1, 1)
    return torch.where(applied, _gray(x).expand_as(x), x)


@dataclass(frozen=True)
class Augmentation:
    """One random view per image: crop (+ flip), colour jitter, grayscale (module docstring)."""

    crop_scale: tuple[float, float] = (0.2, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: bool = True
    jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    grayscale_p: float = 0.2

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        x = random_resized_crop(x, generator, self.crop_scale, self.crop_ratio, self.flip)
        x = color_jitter(
            x, generator, self.jitter_p, self.brightness, self.contrast, self.saturation, self.hue
        )
        return random_grayscale(x, generator, self.grayscale_p)
