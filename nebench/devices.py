"""Resolve the ``trainer`` config into the (accelerator, devices) one method runs on.

``trainer.accelerator``: ``auto`` (cuda when a GPU is visible and the method supports it, else
cpu), ``cpu`` or ``cuda`` (alias ``gpu``); ``trainer.devices``: how many (GPUs, or CPU worker
processes); ``trainer.gpus=N`` is short for ``accelerator=cuda devices=N``. Every request a run
cannot honour is an ``InputError`` before any work starts. Only ``torch.cuda.is_available()``
and ``torch.cuda.device_count()`` are called, and only when CUDA is in question.

Under ``torchrun`` every process is one device: ``trainer.devices`` must equal the launch's
``WORLD_SIZE`` (over all nodes), a node needs as many GPUs as it runs processes
(``LOCAL_WORLD_SIZE``), and only rank 0 (``launch_rank``) evaluates and records the run.
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
    _, world = launch_rank()
    if accelerator == "cuda":
        visible = _visible_gpus()
        per_node = int(os.environ.get("LOCAL_WORLD_SIZE", devices)) if world > 1 else devices
        if per_node > visible:
            fewer = f"ask for at most {visible} with trainer.gpus={visible}, or " if visible else ""
            raise InputError(
                f"{per_node} GPU(s) requested{' on this node' if world > 1 else ''} but torch "
                f"sees {visible} "
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
    if world > 1 and devices != world:
        one = "" if method_cls.multi_device else f"method {method_name!r} runs on one device: "
        raise InputError(
            f"torchrun started {world} processes (WORLD_SIZE={world}) but trainer.devices="
            f"{devices}; {one}each process is one device, so set trainer.devices={world}"
            f"{' (trainer.gpus for CUDA)' if accelerator == 'cuda' else ''}, or run with "
            "python run.py instead of torchrun."
        )
    log.info("device: %s x %d", accelerator, devices)
    return accelerator, devices


def launch_rank() -> tuple[int, int]:
    """``(rank, world size)`` of this process in a torchrun launch (its ``RANK`` and
    ``WORLD_SIZE``), ``(0, 1)`` otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return (int(os.environ.get("RANK", "0")), world) if world > 1 else (0, 1)


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
