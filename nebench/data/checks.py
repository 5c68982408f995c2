"""Input checks on a data matrix: the library's (:mod:`nomad.checks`), re-exported for the harness."""

from nomad.checks import CHUNK_BYTES, check_data

__all__ = ["CHUNK_BYTES", "check_data"]
