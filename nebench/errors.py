"""Errors raised for bad input, before any heavy work starts.

``InputError`` is the library's (:class:`nomad.errors.InputError`), so that the harness catches
the engine's errors and the engine never imports the harness.
"""

from nomad.errors import InputError

__all__ = ["InputError"]
