"""Resolve the ``trainer`` config into the (accelerator, devices) one method runs on.

``trainer.accelerator``: ``auto`` (cuda when a GPU is visible and the method supports it, else
cpu), ``cpu`` or ``cuda`` (alias ``gpu``); ``trainer.devices``: how many (GPUs, or CPU worker
processes); ``trainer.gpus=N`` is short for ``accelerator=cuda devices=N``. Every request a run
cannot honour is an ``InputError`` before any work starts. Only ``torch.cuda.is_available()``
and ``torch.cuda.device_count()`` are called, and only when CUDA is in question.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hydra.utils import get_class
from omegaconf import OmegaConf

from nebench.errors import InputError
from nebench.method import EmbeddingMethod

log = logging.getLogger(__name__)

ACCELERATORS = ("auto", "cpu", "cuda")
ALIASES = {"gpu": "cuda"}
#: the method configs, searched for the methods that can use several devices
METHOD_CONF_DIR = Path(__file__).resolve().parents[1] / "conf" / "method"


def resolve_devices(
    trainer: Mapping[str, Any], method_cls: type[EmbeddingMethod], method_name: str
) -> tuple[str, int]:
    """Return ``(accelerator, devices)`` for ``method_cls``, or raise ``InputError``."""
    accelerator = str(trainer.get("accelerator", "auto")).lower()
    accelerator = ALIASES.get(accelerator, accelerator)
    if accelerator not in ACCELERATORS:
        raise InputError(
            f"trainer.accelerator={accelerator!r} is not one of {', '.join(ACCELERATORS)}; "
            "set trainer.accelerator=auto (or cpu, cuda)."
        )
    devices = _positive_int(trainer.get("devices", 1), "trainer.devices")
    gpus = trainer.get("gpus")
    if gpus is not None:
        devices = _positive_int(gpus, "trainer.gpus")
        if accelerator == "cpu":
            raise InputError(
                f"trainer.gpus={gpus} asks for CUDA but trainer.accelerator=cpu; drop one of the "
                f"two (for {devices} CPU processes: trainer.accelerator=cpu trainer.devices={devices})."
            )
        accelerator = "cuda"

    if accelerator == "auto":
        use_cuda = "cuda" in method_cls.accelerators and _visible_gpus() > 0
        accelerator = "cuda" if use_cuda else "cpu"
    if accelerator == "cuda":
        visible = _visible_gpus()
        if devices > visible:
            fewer = f"ask for at most {visible} with trainer.gpus={visible}, or " if visible else ""
            raise InputError(
                f"{devices} GPU(s) requested but torch sees {visible} "
                f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}); "
                f"{fewer}run {devices} CPU processes instead: trainer.accelerator=cpu "
                f"trainer.devices={devices}."
            )
    if accelerator not in method_cls.accelerators:
        raise InputError(
            f"method {method_name!r} runs on {' or '.join(method_cls.accelerators)} only, not "
            f"{accelerator}; set trainer.accelerator={method_cls.accelerators[0]} "
            "(and leave trainer.gpus unset)."
        )
    if devices > 1 and not method_cls.multi_device:
        raise InputError(
            f"method {method_name!r} runs on one device, so trainer.devices/trainer.gpus={devices} "
            "cannot be honoured; set trainer.devices=1 (and leave trainer.gpus unset). Methods "
            f"that can use several devices: {', '.join(multi_device_methods()) or 'none'}."
        )
    log.info("device: %s x %d", accelerator, devices)
    return accelerator, devices


def multi_device_methods(conf_dir: Path = METHOD_CONF_DIR) -> list[str]:
    """Names of the configured methods whose class sets ``multi_device``."""
    names = []
    for path in sorted(conf_dir.glob("[!_]*.yaml")):  # _name.yaml: shared parts
        conf = OmegaConf.load(path)
        try:
            if get_class(conf["_target_"]).multi_device:
                names.append(path.stem)
        except Exception:  # noqa: BLE001 - a method that cannot load cannot use devices either
            log.debug("skipping %s: its _target_ does not import", path)
    return names


def _positive_int(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"{key}={value!r} must be a positive integer; e.g. {key}=1.")
    return value


def _visible_gpus() -> int:
    import torch  # deferred: CPU-only methods never pay for importing torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0
