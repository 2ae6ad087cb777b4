"""eqprop's messages (run headers, epoch lines, notes, warnings) go through the standard :mod:`logging` module,
under the ``eqprop`` logger and its children (``eqprop.training.trainer``, ...).

Out of the box they are shown, as Hugging Face's libraries do: the ``eqprop`` logger has its own handler, which
prints INFO and DEBUG to stdout and WARNING and above to stderr, through tqdm so that progress bars stay intact,
and does not pass records on to the root logger. An application that routes logging itself (``basicConfig``, a
file, a log service) calls :func:`use_root_logging` to receive them instead. The level chooses how much is said:
:func:`set_verbosity` (``eqprop train --quiet`` is WARNING, ``--verbose`` DEBUG)::

    import logging, eqprop
    eqprop.set_verbosity(logging.WARNING)   # only warnings and errors
"""

from __future__ import annotations

import logging
import sys

__all__ = ["get_logger", "set_verbosity", "use_root_logging", "LOGGER_NAME"]

LOGGER_NAME = "eqprop"


class _ConsoleHandler(logging.Handler):
    """INFO and DEBUG to stdout, WARNING and above to stderr, written with ``tqdm.write`` (progress bars redrawn)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = self.format(record)
            stream = sys.stderr if record.levelno >= logging.WARNING else sys.stdout
            try:
                from tqdm import tqdm
            except ImportError:  # pragma: no cover - tqdm is a dependency
                print(message, file=stream, flush=True)
            else:
                tqdm.write(message, file=stream)
        except Exception:  # a logging call never raises into training (logging's own convention)
            self.handleError(record)


def get_logger(name: str = LOGGER_NAME) -> logging.Logger:
    """The logger of an eqprop module (``get_logger(__name__)``), a child of ``eqprop``."""
    return logging.getLogger(name)


def set_verbosity(level: int | str) -> None:
    """How much eqprop says: ``logging.DEBUG`` (solver and checkpoint details), ``INFO`` (the default: the run
    header, one line per epoch, the summary), ``WARNING`` (only what went wrong), or their names."""
    if isinstance(level, str):
        named = logging.getLevelName(level.upper())
        if not isinstance(named, int):
            raise ValueError(f"unknown logging level {level!r}; use DEBUG, INFO, WARNING, ERROR or CRITICAL")
        level = named
    logging.getLogger(LOGGER_NAME).setLevel(level)


def use_root_logging() -> None:
    """Drop eqprop's own console handler and pass its records to the root logger's handlers (an application's
    ``logging.basicConfig``, a file, a log service)."""
    logger = logging.getLogger(LOGGER_NAME)
    for handler in [h for h in logger.handlers if isinstance(h, _ConsoleHandler)]:
        logger.removeHandler(handler)
    logger.propagate = True


def _install_default_handler() -> None:
    logger = logging.getLogger(LOGGER_NAME)
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)
    if not logger.handlers:
        handler = _ConsoleHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.propagate = False


_install_default_handler()
