"""Reference methods wrapped in the harness contract (``nebench.method.EmbeddingMethod``).

``OpenTSNE`` (openTSNE), ``UMAP`` (umap-learn) and ``PCA`` (scikit-learn). The classes are
loaded on first access so that ``import baselines`` stays fast (umap-learn imports numba).
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_MODULES = {"OpenTSNE": "baselines.opentsne", "UMAP": "baselines.umap", "PCA": "baselines.pca"}

__all__ = list(_MODULES)


def __getattr__(name: str) -> Any:
    if name in _MODULES:
        return getattr(import_module(_MODULES[name]), name)
    raise AttributeError(f"module 'baselines' has no attribute {name!r}")
