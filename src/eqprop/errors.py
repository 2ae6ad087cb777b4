"""The errors that mean "bad input" (the command line exits with code 2 and one line, no traceback).

Any other exception is a bug or a fault and surfaces with its traceback.
"""

from __future__ import annotations

__all__ = ["ConfigError", "DataError", "RunError"]


class ConfigError(ValueError):
    """A config key, type or value that is not valid; the message says what is."""


class DataError(ValueError):
    """A data set that cannot be read as asked: missing, damaged or inconsistent files, or a bad data option."""


class RunError(ValueError):
    """A run directory or checkpoint that cannot be used as asked: in use by another process, holding another
    run, not writable, or a damaged checkpoint; the message names the path and what to do."""
