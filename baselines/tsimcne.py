"""The authors' t-SimCNE package (``tsimcne``, Böhm, Berens & Kobak, ICLR 2023) as a harness
method: a cross-check for :class:`tsimcne_lite.TSimCNE`.

``tsimcne.TSimCNE`` trains on a torch ``Dataset`` of PIL images with torchvision augmentations
and PyTorch Lightning; this adapter turns the rows of X (flattened ``(H, W)`` or ``(H, W, C)``
images, the convention of :mod:`tsimcne_lite`) into such a dataset (grayscale images as RGB,
since the package's ResNet takes three channels) and passes the stage epochs, batch size and
backbone; everything else keeps the package's defaults (SGD, lr 0.03 b / 256 per stage
[1, 1, 1/1000], warm-up [10, 0, 10], clipping at 4). ``transform`` embeds new images.

Optional: ``pip install tsimcne`` (it needs torchvision and lightning built for the installed
torch; with the CPU torch of this environment pip finds no matching torchvision). Without it the
run stops with a clear error. Not exercised here: as read from its 0.4.24 wheel, ``TSimCNE.fit``
passes ``warmup=`` to ``PLtSimCNE``, whose signature names it ``warmup_epochs``, and reads
``self.use_ffcv`` that ``__init__`` never sets (set below), so that release may need a patch.
Seeding: torch's global generator (Lightning's ``seed_everything``); the data loader runs in
the main process (``num_workers=0``, the package's default is 8 workers) so that the seed covers
the augmentations, which then run in series with the training.
Device: the package builds its Lightning ``Trainer`` with Lightning's default accelerator
("auto": a visible GPU if there is one), so the adapter refuses to run where that would differ
from the run's ``accelerator``: the row's device is then the one that trained.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import ClassVar

import numpy as np

from nebench.errors import InputError
from nebench.method import EmbeddingMethod

log = logging.getLogger(__name__)

INSTALL = "pip install tsimcne"


def _import_tsimcne():
    try:
        import tsimcne
    except ImportError as exc:
        raise InputError(
            f"method tsimcne_ref needs the authors' package: {INSTALL} (it brings torchvision and "
            "lightning, which must match the installed torch); or use method=tsimcne, this "
            f"harness's own implementation ({exc})"
        ) from exc
    return tsimcne


class TSimCNERef(EmbeddingMethod):
    """``tsimcne.TSimCNE`` on the rows of X; phases ``"fit"`` and ``"embed"``."""

    accelerators: ClassVar[tuple[str, ...]] = ("cpu", "cuda")
    multi_device: ClassVar[bool] = False
    always_parametric: ClassVar[bool] = True

    def __init__(
        self,
        image_shape: Sequence[int] | None = None,
        total_epochs: Sequence[int] = (1000, 50, 450),
        batch_size: int = 512,
        backbone: str = "resnet18_sm_kernel",
        random_state: int = 0,
        accelerator: str = "cpu",
    ):
        self.image_shape = image_shape
        self.total_epochs = total_epochs
        self.batch_size = batch_size
        self.backbone = backbone
        self.random_state = random_state
        self.accelerator = accelerator

    def _dataset(self, X: np.ndarray):
        import torch
        from PIL import Image

        if self.image_shape is None or int(np.prod(self.image_shape)) != np.asarray(X).shape[1]:
            raise InputError(
                f"tsimcne_ref needs raw images: image_shape {self.image_shape} does not match X "
                f"with {np.asarray(X).shape[1]} columns; set dataset.pca=null (or method.image_shape)"
            )
        X = np.asarray(X, dtype=np.float32)
        if X.max() <= 1.0:
            X = X * 255.0
        images = np.clip(np.rint(X), 0, 255).astype(np.uint8).reshape(len(X), *self.image_shape)

        class Images(torch.utils.data.Dataset):
            def __len__(self) -> int:
                return len(images)

            def __getitem__(self, i: int):
                img = images[i]
                pil = Image.fromarray(img if img.ndim == 2 or img.shape[2] == 3 else img[..., 0])
                return pil.convert("RGB"), 0

        return Images()

    def _check_device(self) -> None:
        """Lightning's "auto" picks a visible GPU: the run's accelerator must say the same."""
        import torch

        gpu = torch.cuda.is_available()
        if (self.accelerator == "cuda") != gpu:
            raise InputError(
                f"tsimcne_ref trains where Lightning's 'auto' puts it, on the "
                f"{'GPU' if gpu else 'CPU'} here, but the run asks for accelerator="
                f"{self.accelerator!r}: set trainer.accelerator={'cuda' if gpu else 'cpu'}"
                + (", or hide the GPU (CUDA_VISIBLE_DEVICES=) to train on the CPU" if gpu else "")
            )

    def fit_transform(self, X: np.ndarray) -> np.ndarray:
        self._check_device()
        tsimcne = _import_tsimcne()
        import lightning

        self.timings_ = {}
        data = self._dataset(X)
        lightning.seed_everything(int(self.random_state), workers=True)
        with self._phase("fit"):
            model = tsimcne.TSimCNE(backbone=self.backbone, total_epochs=list(self.total_epochs),
                                    batch_size=int(self.batch_size), num_workers=0)
            model.use_ffcv = False  # read by make_dataloader, never set by 0.4.24's __init__
            model.fit(data)
        self.model_ = model
        with self._phase("embed"):
            return np.asarray(model.transform(data), dtype=np.float32)

    def transform(self, X: np.ndarray) -> np.ndarray:
        if not hasattr(self, "model_"):
            raise InputError("TSimCNERef.transform needs a fitted model: call fit_transform first")
        return np.asarray(self.model_.transform(self._dataset(X)), dtype=np.float32)
