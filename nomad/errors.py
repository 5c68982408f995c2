"""The library's error for bad input, raised before any heavy work starts.

The harness (``nebench``) re-exports this class as ``nebench.errors.InputError``, so one type
covers a bad array given to :class:`nomad.NOMAD` and a bad config given to ``run.py``.
"""


class InputError(ValueError):
    """Bad data or configuration. The message names the problem and the fix."""
