"""One writer at a time: an advisory file lock that fails fast with a clear error."""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from pathlib import Path

from .errors import EmbedpipeError


@contextlib.contextmanager
def exclusive(lock_file: Path, what: str) -> Iterator[None]:
    """Hold ``lock_file`` exclusively, or raise at once when another process holds it."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_file, "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise EmbedpipeError(f"another embedpipe process is writing {what}; wait for it to finish") from None
        yield
