"""NOMAD Projection and the contrastive neighbour-embedding family on one engine.

    from nomad import NOMAD
    Y = NOMAD(n_epochs=200).fit_transform(X)

The library stands alone: it never imports the harness (``nebench``), Hydra or OmegaConf.
The methods are loaded on first use (PEP 562), so ``import nomad.errors`` stays light (the
harness imports the error type without torch).
"""

from __future__ import annotations

import importlib

_METHODS = {"NOMAD": "NOMAD", "InfoNCTSNE": "InfoNCTSNE", "NCVis": "NCVis",
            "NegTSNE": "NegTSNEMethod", "UMAPLoss": "UMAPLossMethod"}

__all__ = ["NOMAD", "InfoNCTSNE", "InputError", "NCVis", "NegTSNE", "UMAPLoss"]


def __getattr__(name: str):
    if name in _METHODS:
        return getattr(importlib.import_module(".methods", __name__), _METHODS[name])
    if name == "InputError":
        from .errors import InputError

        return InputError
    raise AttributeError(f"module 'nomad' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
