"""Logging, not print: library modules log to ``logging.getLogger(__name__)``; the CLI (or a user)
decides what is shown. ``show_progress`` is the one switch the CLI flips."""

from __future__ import annotations

import logging
import sys

ROOT = "embedpipe"


def get_logger(name: str) -> logging.Logger:
    """The module's logger (``get_logger(__name__)``)."""
    return logging.getLogger(name)


class _Stderr(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at the time of the message (it may be replaced later,
    e.g. by a test's capture), not to the stream it was created with."""

    @property  # type: ignore[override]
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value: object) -> None:
        pass


class _OneLine(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        return text if record.levelno < logging.WARNING else f"embedpipe: {record.levelname.lower()}: {text}"


def show_progress(level: int = logging.INFO) -> None:
    """Print embedpipe's messages of ``level`` and above on stderr, one line each (what the CLI and
    ``progress=True`` want). Idempotent; a handler the user attached is left alone."""
    logger = logging.getLogger(ROOT)
    logger.setLevel(min(level, logger.level) if logger.level else level)
    if not any(getattr(h, "_embedpipe", False) for h in logger.handlers):
        handler = _Stderr()
        handler.setFormatter(_OneLine())
        handler._embedpipe = True  # type: ignore[attr-defined]
        logger.addHandler(handler)


def level(progress: bool) -> int:
    """The level of a progress message: INFO when the caller asked for progress, DEBUG otherwise
    (so ``progress=False`` stays quiet even after another call turned progress on)."""
    return logging.INFO if progress else logging.DEBUG
