"""Errors raised for bad input, before any heavy work starts."""


class InputError(ValueError):
    """Bad data or configuration. The message names the problem and the fix."""
