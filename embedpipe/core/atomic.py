"""Files that appear whole or not at all: write a temporary file beside the target, flush, fsync,
rename it over the target atomically, then fsync the folder. After a crash a ``.tmp`` may remain;
nothing reads one, and the next write of that file replaces it."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO


def fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_file(path: str | Path, mode: str = "wb", suffix: str = ".tmp", **open_kw: object) -> Iterator[IO]:
    """Yield a file open for writing that becomes ``path`` only once the block ends without an error.

    The temporary file is ``<name><suffix>`` in the same folder (``suffix`` lets a writer that
    insists on an extension, such as ``np.save``, keep it). On any error it is removed and ``path``
    is untouched; OSErrors propagate for the caller to word."""
    path = Path(path)
    tmp = path.with_name(path.name + suffix)
    try:
        with open(tmp, mode, **open_kw) as f:  # type: ignore[call-overload]
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | Path, data: bytes | memoryview) -> Path:
    """Write ``data`` to ``path`` atomically (see ``atomic_file``)."""
    with atomic_file(path) as f:
        f.write(data)
    return Path(path)


def publish(tmp: str | Path, path: str | Path) -> None:
    """Rename a finished temporary file or folder that a library wrote itself (pyarrow's writers, a
    folder of ``.npy`` files) over ``path`` atomically: its files are fsync'ed first, the folder after."""
    tmp, path = Path(tmp), Path(path)
    for file in (sorted(tmp.iterdir()) if tmp.is_dir() else [tmp]):
        fd = os.open(file, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)
