"""The errors that mean "bad input" (the command line exits with code 2 and one line, no traceback).

Any other exception is a bug or a fault and surfaces with its traceback.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["ConfigError", "DataError", "RunError", "Problems"]


class ConfigError(ValueError):
    """A config key, type or value that is not valid; the message says what is. ``problems``: each problem's
    message, when one error reports several (a config with three wrong keys names all three)."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = problems if problems is not None else [message]


class Problems:
    """Collects the ConfigErrors of independent checks, so that a config reports every problem at once::

    problems = Problems()
    for key in keys:
        with problems.check():
            check(key)
    problems.raise_any()
    """

    def __init__(self) -> None:
        self.found: list[str] = []

    @contextmanager
    def check(self) -> Iterator[None]:
        """Run a block; its ConfigError (one problem or several) is kept instead of raised."""
        try:
            yield
        except ConfigError as exc:
            self.found.extend(exc.problems)

    def __bool__(self) -> bool:
        return bool(self.found)

    def raise_any(self) -> None:
        """Raise one ConfigError with every problem found (its message as is when there is only one)."""
        if len(self.found) == 1:
            raise ConfigError(self.found[0])
        if self.found:
            listed = "\n".join(f"  - {p}" for p in self.found)
            raise ConfigError(f"{len(self.found)} problems in the config:\n{listed}", list(self.found))


class DataError(ValueError):
    """A data set that cannot be read as asked: missing, damaged or inconsistent files, or a bad data option."""


class RunError(ValueError):
    """A run directory or checkpoint that cannot be used as asked: in use by another process, holding another
    run, not writable, or a damaged checkpoint; the message names the path and what to do."""
