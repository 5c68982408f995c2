"""The contract every method run by the harness follows: the library's base class
(:class:`nomad.base.EmbeddingMethod`), re-exported so that baselines and the runner name it here."""

from nomad.base import EmbeddingMethod

__all__ = ["EmbeddingMethod"]
