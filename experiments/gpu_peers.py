"""TorchDR's InfoTSNE and UMAP on any device, for the GPU check (``experiments/gpu_check.py``).

The harness's wrappers (``baselines/torchdr.py``) run TorchDR on the CPU only. These subclasses
take the harness's ``accelerator`` ("cpu" or "cuda") and hand it to the TorchDR estimator as its
``device``; everything else (parameters, phases, seeding) is the wrapper's own:

    python run.py method=torchdr_infotsne \\
        method._target_=experiments.gpu_peers.TorchDRInfoTSNEOnDevice \\
        trainer.accelerator=cuda method.backend=null

``method.backend=null`` keeps the kNN search in torch on the same device (TorchDR's faiss backend
would need faiss-gpu there).
"""

from __future__ import annotations

from typing import Any, ClassVar

from baselines.torchdr import TorchDRInfoTSNE, TorchDRUMAP, _TimedInfoTSNE, _TimedUMAP


class _OnDevice:
    """Mixin: the TorchDR estimator is built on ``self.accelerator`` instead of the CPU."""

    accelerators: ClassVar[tuple[str, ...]] = ("cpu", "cuda")
    _timed: ClassVar[type]

    def __init__(self, accelerator: str = "cpu", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.accelerator = accelerator

    def _estimator(self, **kwargs: Any):  # called by the wrapper's fit_transform
        kwargs["device"] = self.accelerator
        return self._timed(**kwargs)


class TorchDRInfoTSNEOnDevice(_OnDevice, TorchDRInfoTSNE):
    """``baselines.torchdr.TorchDRInfoTSNE`` on ``accelerator``."""

    _timed = _TimedInfoTSNE


class TorchDRUMAPOnDevice(_OnDevice, TorchDRUMAP):
    """``baselines.torchdr.TorchDRUMAP`` on ``accelerator``."""

    _timed = _TimedUMAP
