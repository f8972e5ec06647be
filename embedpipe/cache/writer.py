"""Writing a cache: metadata once, then shards, each made durable before it becomes visible.

Invariants (the reader and resume rely on them):

- A file appears whole or not at all: it is written to ``<name>.tmp``, flushed, fsync'ed, atomically
  renamed and the directory fsync'ed. After a crash a ``.tmp`` may remain; nothing ever opens one, and
  the next write of that shard overwrites it. Resume = recompute every shard that fails the cheap
  check (``reader.unfinished_shards``).
- Files are built in memory and reach the disk through one plain write (see ``atomic_h5``).
- Every byte a reader uses is checksummed: numeric datasets carry HDF5's Fletcher-32 filter (chunked,
  at most ``CHUNK_BYTES`` a chunk, whole rows only: ``(rows, *shape)`` maps included), string
  datasets a ``sha256`` attribute over their text, and the object headers holding attributes are in
  the v1.10 file format, whose metadata HDF5 checksums itself.
- A failing write (full disk, file-size limit, vanished or read-only folder) becomes one
  ``EmbedpipeError`` naming the cause and the cache folder, with no partial file left behind; every
  engine writes through ``atomic_h5`` and gets this for free.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
from collections.abc import Iterator, Sequence
from pathlib import Path

import h5py
import numpy as np

from ..core.atomic import atomic_write_bytes
from ..core.errors import EmbedpipeError, os_reason

STR = h5py.string_dtype("utf-8")
CHUNK_BYTES = 1 << 20  # at most 1 MiB a chunk: fits HDF5's default chunk cache, one checksum per chunk
LIBVER = ("v110", "latest")  # v1.10 object headers carry checksums over attributes and layout


def shard_name(index: int) -> str:
    return f"shards/{index:05d}.h5"


def strings_digest(values: Sequence[str]) -> str:
    """sha256 over the strings, each length-prefixed so that no two lists share a digest."""
    h = hashlib.sha256()
    for v in values:
        b = str(v).encode("utf-8", "surrogateescape")
        h.update(len(b).to_bytes(8, "little") + b)
    return h.hexdigest()


def put_array(f: h5py.File | h5py.Group, name: str, values: np.ndarray) -> None:
    """Store ``values`` checksummed: strings with a sha256 attribute, numbers with Fletcher-32."""
    if values.dtype.kind in "OU":
        texts = [str(v) for v in values]
        ds = f.create_dataset(name, data=np.array(texts, dtype=object), dtype=STR)
        ds.attrs["sha256"] = strings_digest(texts)
        return
    if values.size == 0:
        f.create_dataset(name, data=values)
        return
    rows = chunk_rows(values.shape, values.itemsize)
    f.create_dataset(name, data=values, chunks=(rows, *values.shape[1:]), fletcher32=True)


def chunk_rows(shape: Sequence[int], itemsize: int) -> int:
    """Rows per HDF5 chunk of a (rows, *row_shape) dataset: as many whole rows as fit in
    ``CHUNK_BYTES`` (at least one). A chunk never splits a row, so an N-D ``block<k>:map`` row (a
    whole feature map) is read, and checksummed, with its chunk: e.g. 23 rows of effnet-lite0's
    block3:map (43,904 B each in float16); a map row over 1 MiB is a chunk of its own."""
    row_bytes = max(1, itemsize * int(np.prod(shape[1:], dtype=np.int64)))
    return max(1, min(int(shape[0]), CHUNK_BYTES // row_bytes))


@contextlib.contextmanager
def atomic_h5(path: Path) -> Iterator[h5py.File]:
    """Yield an open HDF5 file that becomes ``path`` only once fully written and synced.

    The file is built in memory (a shard is a few MB) and written with one plain ``write``: when the
    disk fails HDF5 would be left with a half-closed file (h5py raises from ``close`` and the process
    can crash later), whereas a Python write fails cleanly with the operating system's errno.

    The parent folder is created when missing, but not its parents: a cache folder that vanished
    during a run is an error, not silently recreated. Any OSError (ENOSPC, EFBIG, EACCES, ENOENT)
    becomes a one-line EmbedpipeError naming the cause and the folder; the ``.tmp`` is removed.
    """
    folder = path.parent.parent if path.parent.name == "shards" else path.parent
    image = io.BytesIO()
    with h5py.File(image, "w", libver=LIBVER) as f:  # built in memory: HDF5 itself never meets a failing disk
        yield f
    try:
        path.parent.mkdir(exist_ok=True)
        atomic_write_bytes(path, image.getbuffer())
    except OSError as e:
        raise EmbedpipeError(
            f"writing {path.relative_to(folder)} failed ({os_reason(e)}) in cache folder {folder}; "
            "nothing partial was kept: fix that (free disk space, permissions) and re-run the same command to resume"
        ) from None


def write_shard(
    cache_dir: Path,
    index: int,
    start: int,
    key: str,
    features: dict[str, np.ndarray],
    ok: np.ndarray,
    errors: list[str],
    dtype: str,
) -> None:
    with atomic_h5(cache_dir / shard_name(index)) as f:
        f.attrs.update({"start": start, "stop": start + len(ok), "key": key, "checksums": "fletcher32+sha256"})
        group = f.create_group("features")
        for layer, values in features.items():
            put_array(group, layer, np.ascontiguousarray(values.astype(dtype, copy=False)))
        put_array(f, "ok", np.asarray(ok, dtype=bool))
        put_array(f, "errors", np.array(list(errors), dtype=object))


def write_meta(cache_dir: Path, arrays: dict[str, np.ndarray], attrs: dict[str, object]) -> None:
    with atomic_h5(cache_dir / "meta.h5") as f:
        for name, values in arrays.items():
            put_array(f, name, values)
        f.attrs.update(attrs)
