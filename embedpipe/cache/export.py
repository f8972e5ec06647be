"""Exporting a cache to Arrow, Parquet or NumPy files that pandas, polars and DuckDB read directly.

One Arrow record batch per shard: the rows of that shard whose image decoded (failed rows are left
out and counted), with columns

* ``id`` (string): the row's id (its path relative to the dataset),
* ``label`` (string): its class name,
* ``split`` (string): ``train``, ``val`` or ``test``,
* one ``fixed_size_list<float32>[dim]`` column per exported layer, named as the layer
  (``pooled``, ``block4``, ...), float32 by default or float16 on request.

Memory stays flat: a shard is read, converted and handed to the writer before the next one is read,
so the peak is a few shards' worth of rows whatever the cache's size. pyarrow is an optional
dependency (``pip install "embedpipe[arrow]"``), imported only when an export runs.

The ``npy`` format writes a folder: ``<layer>.npy`` per layer (rows x dim, in the chosen dtype,
appended shard by shard) and ``rows.csv`` with ``id,label,split`` in the same
row order; it needs no pyarrow.
"""

from __future__ import annotations

import csv
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..core.atomic import publish
from ..core.errors import EmbedpipeError, os_reason

if TYPE_CHECKING:
    import pyarrow as pa

    from .reader import Cache

FORMATS = ("parquet", "arrow", "npy")
DTYPES = ("float32", "float16")
ARROW_MISSING = 'exporting to Arrow or Parquet needs pyarrow: pip install "embedpipe[arrow]"'
PARQUET_COMPRESSION = "zstd"  # ~ as fast as snappy to write, smaller on float features; every reader has it


@dataclass
class ExportStats:
    """What an export wrote: rows, the failed rows left out, layers, bytes and seconds."""

    out: str
    format: str
    rows: int
    skipped_failed: int
    layers: list[str]
    dtype: str
    bytes: int
    seconds: float


def _pyarrow() -> Any:
    try:
        import pyarrow as pa  # optional extra: only an Arrow/Parquet export needs it
    except ImportError:
        raise EmbedpipeError(ARROW_MISSING) from None
    return pa


def _check(cache: Cache, layers: Sequence[str] | str | None, dtype: str) -> list[str]:
    if dtype not in DTYPES:
        raise EmbedpipeError(f"bad export dtype {dtype!r}: use float32 or float16")
    names = cache.layers if layers is None else (layers.split(",") if isinstance(layers, str) else list(layers))
    if not names:
        raise EmbedpipeError(f"no layers to export; the cache has {', '.join(cache.layers)}")
    for name in names:
        if name not in cache.layers:
            raise EmbedpipeError(f"layer {name!r} not in cache {cache.path}; it has {', '.join(cache.layers)}")
        if len(cache.shapes[name]) != 1:
            raise EmbedpipeError(f"layer {name} is an unpooled map; export a vector layer (e.g. its pooled "
                                 f"{name.removesuffix(':map')}) or read the map with Cache.load")
    return list(dict.fromkeys(names))


def iter_shard_rows(cache: Cache, layers: Sequence[str], dtype: str
                    ) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
    """Per shard: (row indices of its good rows, {layer: (n, dim) array in ``dtype``})."""
    ok = cache.ok
    for i, f in cache._shard_files():
        start, stop = cache.layout.rows(i)
        keep = ok[start:stop]
        if not keep.any():
            continue
        block = {}
        for layer in layers:
            with cache._reading(i, f"features/{layer}"):
                block[layer] = f["features"][layer][()][keep].astype(dtype, copy=False)
        yield start + np.flatnonzero(keep), block


def schema(cache: Cache, layers: Sequence[str] | str | None = None, dtype: str = "float32") -> pa.Schema:
    """The Arrow schema of an export of ``cache`` (see the module docstring)."""
    pa = _pyarrow()
    names = _check(cache, layers, dtype)
    value = pa.float32() if dtype == "float32" else pa.float16()
    fields = [pa.field("id", pa.string()), pa.field("label", pa.string()), pa.field("split", pa.string())]
    fields += [pa.field(name, pa.list_(value, cache.dims[name])) for name in names]
    meta = {"embedpipe.cache_key": cache.key, "embedpipe.backbone": str(cache.backbone.get("spec")),
            "embedpipe.dataset": str(cache.meta.get("dataset"))}
    return pa.schema(fields, metadata=meta)


def iter_arrow(cache: Cache, layers: Sequence[str] | str | None = None,
               dtype: str = "float32") -> Iterator[pa.RecordBatch]:
    """One ``pyarrow.RecordBatch`` per shard, failed rows left out (see the module docstring)."""
    pa = _pyarrow()
    names = _check(cache, layers, dtype)
    sch = schema(cache, names, dtype)
    label_names = np.array(cache.label_names, dtype=object)
    for rows, block in iter_shard_rows(cache, names, dtype):
        columns = [pa.array(cache.ids[rows], pa.string()), pa.array(label_names[cache.labels[rows]], pa.string()),
                   pa.array(cache.splits[rows], pa.string())]
        for name in names:
            values = np.ascontiguousarray(block[name]).reshape(-1)
            columns.append(pa.FixedSizeListArray.from_arrays(pa.array(values), cache.dims[name]))
        yield pa.RecordBatch.from_arrays(columns, schema=sch)


def to_arrow(cache: Cache, layers: Sequence[str] | str | None = None, dtype: str = "float32") -> pa.Table:
    """The whole export as one ``pyarrow.Table`` (in memory; ``iter_arrow`` streams instead)."""
    pa = _pyarrow()
    return pa.Table.from_batches(list(iter_arrow(cache, layers, dtype)), schema=schema(cache, layers, dtype))


def export(cache: Cache, out: str | Path, format: str = "parquet", layers: Sequence[str] | str | None = None,
           dtype: str = "float32") -> ExportStats:
    """Write ``cache`` to ``out`` as Parquet, an Arrow IPC file, or a folder of ``.npy`` files.

    The file is written next to its final name and renamed into place when complete, so a reader
    never sees half an export.
    """
    t0 = time.perf_counter()
    if format not in FORMATS:
        raise EmbedpipeError(f"unknown export format {format!r}: use parquet, arrow or npy")
    names = _check(cache, layers, dtype)
    out = Path(out).expanduser().absolute()
    if not out.parent.is_dir():
        raise EmbedpipeError(f"cannot write {out}: folder {out.parent} does not exist; create it first")
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    try:
        if format == "npy":
            rows = _write_npy(cache, tmp, names, dtype)
        else:
            rows = _write_arrow(cache, tmp, format, names, dtype)
        if out.is_dir() and format == "npy":
            _remove_tree(out)
        publish(tmp, out)
    except OSError as e:
        _remove_tree(tmp)
        raise EmbedpipeError(f"writing {out} failed ({os_reason(e)}); free space or choose another --out") from None
    except BaseException:
        _remove_tree(tmp)
        raise
    size = sum(p.stat().st_size for p in out.iterdir()) if out.is_dir() else out.stat().st_size
    return ExportStats(str(out), format, rows, int((~cache.ok).sum()), names, dtype, size,
                       time.perf_counter() - t0)


def _write_arrow(cache: Cache, tmp: Path, format: str, names: list[str], dtype: str) -> int:
    pa = _pyarrow()
    sch = schema(cache, names, dtype)
    rows = 0
    if format == "parquet":
        import pyarrow.parquet as pq  # optional extra, as pyarrow itself

        with pq.ParquetWriter(tmp, sch, compression=PARQUET_COMPRESSION) as writer:
            for batch in iter_arrow(cache, names, dtype):
                writer.write_batch(batch)  # one row group per shard: flat memory
                rows += batch.num_rows
        return rows
    with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, sch) as writer:
        for batch in iter_arrow(cache, names, dtype):
            writer.write_batch(batch)
            rows += batch.num_rows
    return rows


def _write_npy(cache: Cache, tmp: Path, names: list[str], dtype: str) -> int:
    """Each layer's .npy written as it streams: the header for the final shape first, then the rows of
    each shard appended (no memory map, whose written pages would count against the process)."""
    n = int(cache.ok.sum())
    tmp.mkdir()
    files = {name: open(tmp / f"{name.replace(':', '_')}.npy", "wb") for name in names}  # noqa: SIM115 (closed below)
    at = 0
    try:
        for name, f in files.items():
            header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False,
                      "shape": (n, cache.dims[name])}
            np.lib.format.write_array_header_1_0(f, header)
        with open(tmp / "rows.csv", "w", newline="") as table:
            writer = csv.writer(table)
            writer.writerow(["id", "label", "split"])
            for rows, block in iter_shard_rows(cache, names, dtype):
                for name in names:
                    files[name].write(np.ascontiguousarray(block[name]).tobytes())
                writer.writerows(zip(cache.ids[rows], (cache.label_names[j] for j in cache.labels[rows]),
                                     cache.splits[rows], strict=True))
                at += len(rows)
    finally:
        for f in files.values():
            f.close()
    return at


def _remove_tree(path: Path) -> None:
    if path.is_dir():
        for p in path.iterdir():
            p.unlink()
        path.rmdir()
    elif path.exists():
        path.unlink()
