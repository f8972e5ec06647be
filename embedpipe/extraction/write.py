"""Write stage: finished shards -> atomic HDF5 files, on a background thread (the only stage that
touches the cache's shard files).

Invariant: a shard file appears whole or not at all (``write_shard`` writes ``<name>.tmp``, fsyncs,
renames atomically and fsyncs the folder; the temp file is removed on any error). The queue is
bounded (``WRITER_QUEUE``), so a slow disk slows the pipeline down instead of growing memory.

A write that fails (ENOSPC, EFBIG, EIO, ...) stops the run: the next ``put`` or ``close`` raises one
``EmbedpipeError`` line naming the cause and the cache folder. Shards written before stay; shards not
yet written are simply computed again by the next run (resume).
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..cache import shard_name, write_shard
from ..core.errors import EmbedpipeError, os_reason
from .defaults import WRITER_QUEUE


@dataclass
class ShardResult:
    """A whole shard, ready to be written."""

    index: int
    start: int
    features: dict[str, np.ndarray]  # layer -> (rows, dim) float32
    ok: np.ndarray  # (rows,) bool
    errors: list[str]  # "" for good rows, else the reason


def write_error(path: Path, index: int, e: BaseException) -> EmbedpipeError:
    if isinstance(e, EmbedpipeError):  # atomic_h5 already named the cause and the folder
        return e
    return EmbedpipeError(
        f"cannot write {shard_name(index)} in cache folder {path}: {os_reason(e)}; "
        "free space (or raise the file size limit) and re-run the same command to resume"
    )


class ShardWriter:
    """Background writer: ``put`` hands over a finished shard, ``close`` waits for all of them."""

    def __init__(self, path: Path, key: str, dtype: str, depth: int = WRITER_QUEUE) -> None:
        self.path, self.key, self.dtype = path, key, dtype
        self._queue: queue.Queue[ShardResult | None] = queue.Queue(maxsize=depth)
        self._error: EmbedpipeError | None = None
        self.written: list[int] = []
        self._thread = threading.Thread(target=self._run, name="embedpipe-shard-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            if self._error is not None:
                continue  # after a failure: drain, write nothing more
            try:
                write_shard(self.path, item.index, item.start, self.key, item.features, item.ok, item.errors, self.dtype)
                self.written.append(item.index)
            except Exception as e:  # OSError from the file system, also as h5py wraps it
                self._error = write_error(self.path, item.index, e)

    def _check(self) -> None:
        if self._error is not None:
            raise self._error

    def put(self, result: ShardResult) -> None:
        self._check()
        self._queue.put(result)

    def close(self) -> None:
        """Write what is queued, stop the thread, raise the write error if there was one."""
        self._queue.put(None)
        self._thread.join()
        self._check()
