"""One writer at a time: an advisory file lock that fails fast with a clear error.

Readers never take the lock; they only probe it (``held_by_another``) to say whether an incomplete
cache is still being written. The probe holds a shared lock for microseconds, so a writer starting at
that instant retries for ``WRITER_PATIENCE_S`` before concluding that another writer holds it.

A writer that should wait for another instead of failing (the per-image store behind the
scikit-learn transformer, shared by joblib workers) passes ``patience`` and ``progress``: it waits as
long as ``progress()`` keeps changing (the holder keeps writing), and gives up with one line only
after ``patience`` seconds without a change, so a crashed or hung holder cannot block it forever
(a crashed holder's lock is released by the operating system at once).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from .errors import EmbedpipeError

WRITER_PATIENCE_S = 2.0  # how long a writer retries a lock held by someone else before giving up


def _cannot_write(folder: Path, e: OSError) -> EmbedpipeError:
    reason = e.strerror or str(e)
    if isinstance(e, (FileExistsError, NotADirectoryError)):
        reason = "a file is in the way of the folder"
    return EmbedpipeError(f"cannot write to cache folder {folder} ({reason}); make it writable or pass "
                          "another cache_dir")


@contextlib.contextmanager
def exclusive(lock_file: Path, what: str, patience: float = WRITER_PATIENCE_S,
              progress: Callable[[], object] | None = None) -> Iterator[None]:
    """Hold ``lock_file`` exclusively; raise when another process holds it for ``patience`` seconds
    (counted from the last change of ``progress()``, when given)."""
    try:
        lock_file.parent.mkdir(parents=True, exist_ok=True)
        lock = open(lock_file, "w")  # noqa: SIM115 (closed below, after the body has run)
    except OSError as e:
        raise _cannot_write(lock_file.parent, e) from None
    with lock:
        deadline = time.monotonic() + patience
        seen = progress() if progress is not None else None
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if progress is not None and (now := progress()) != seen:
                    seen, deadline = now, time.monotonic() + patience  # the holder is still writing
                if time.monotonic() > deadline:
                    waited = f" for {patience:.0f} s without progress" if progress is not None else ""
                    raise EmbedpipeError(
                        f"another embedpipe process is writing {what}{waited}; wait for it to finish") from None
                time.sleep(0.05)
        yield


def held_by_another(lock_file: Path) -> bool:
    """True when some process holds ``lock_file`` (a writer is running); never blocks or creates it."""
    try:
        fd = os.open(lock_file, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)  # closing releases the shared lock, if we got it
    return False
