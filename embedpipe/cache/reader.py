"""Reading a cache: one logical dataset over its shards, and the checks that keep it honest.

``open_cache(path).load(split, layer) -> (X, y)`` reads contiguous blocks shard by shard;
``iter_blocks`` streams the same rows for data larger than RAM. Opening checks the schema version and
runs the cheap check on every shard (file opens, attributes, key, row range, dataset shapes, N-D for
``block<k>:map`` layers, whose per-row shapes meta.h5 records in ``shapes``): a cache
with shards not written yet is refused as incomplete (how many rows are missing, and whether an
extract is still writing it); a shard that fails the check is named as damaged. Reading a block
verifies its checksums (Fletcher-32 on numbers, sha256 on strings); ``verify_cache`` reads every
byte of every shard. Only final shard names are ever opened, never a ``.tmp`` being written. Every
refusal is one ``EmbedpipeError`` line that says what to do.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..core.errors import EmbedpipeError, first_line
from ..core.locking import held_by_another
from . import export as _export
from .key import READABLE_SCHEMAS, SCHEMA_VERSION
from .writer import shard_name, strings_digest

# meta.h5 attributes stored as JSON text (HDF5 attributes hold no nested objects); read_meta decodes them
JSON_ATTRS = ("layers", "dims", "shapes", "backbone", "split_rule", "versions", "preprocess", "compute")
RERUN = "re-run the same extract command to recompute it"
DELETE_AND_RERUN = "delete that file and re-run the same extract command to recompute it"


class DamagedShard(EmbedpipeError):
    """A shard on disk that cannot be trusted (truncated, flipped bytes, another cache's)."""


def _first_line(e: BaseException, what: str = "") -> str:
    """The first line of a read error, with HDF5's words for a failed checksum said plainly."""
    line = first_line(e)
    if "filter returned failure" in line or "fletcher32" in line:  # how HDF5 reports a checksum mismatch
        return f"checksum mismatch in {what or 'a dataset'}"
    return line


def read_strings(f: h5py.File | h5py.Group, name: str) -> np.ndarray:
    """A string dataset; raises ValueError when its sha256 attribute (if any) does not match."""
    ds = f[name]
    values = np.array(ds.asstr()[()], dtype=object)
    stored = ds.attrs.get("sha256")
    if stored is not None and strings_digest(list(values)) != stored:
        raise ValueError(f"checksum mismatch in {name}")
    return values


def read_meta(path: Path) -> dict[str, Any]:
    try:
        with h5py.File(path / "meta.h5", "r") as f:
            meta = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
        for k in JSON_ATTRS:
            if k in meta:
                meta[k] = json.loads(meta[k])
    except (OSError, ValueError) as e:
        raise EmbedpipeError(
            f"{path}/meta.h5 is damaged or not a readable embedpipe cache ({_first_line(e)}); delete that file and "
            "re-run the same extract command (finished shards are kept)"
        ) from None
    return {k: v.item() if isinstance(v, np.generic) else v for k, v in meta.items()}


def layer_shapes(meta: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Per-row shape of every layer from a cache's metadata; caches written before ``shapes`` was
    recorded hold vectors only, so a layer missing there is ``(dim,)``."""
    recorded = meta.get("shapes") or {}
    return {name: tuple(int(d) for d in recorded.get(name, (dim,))) for name, dim in dict(meta["dims"]).items()}


@dataclass(frozen=True)
class ShardLayout:
    """What every shard of one cache must look like; the cheap check compares against it."""

    key: str
    n_rows: int
    shard_size: int
    n_shards: int
    dims: dict[str, int]
    shapes: dict[str, tuple[int, ...]]  # per-row shape: (dim,) for vectors, the map's for ``:map`` layers

    @classmethod
    def of(cls, meta: dict[str, Any]) -> ShardLayout:
        dims = {k: int(v) for k, v in dict(meta["dims"]).items()}
        return cls(str(meta["key"]), int(meta["n_rows"]), int(meta["shard_size"]), int(meta["n_shards"]),
                   dims, layer_shapes(meta))

    def rows(self, index: int) -> tuple[int, int]:
        return index * self.shard_size, min(self.n_rows, (index + 1) * self.shard_size)


def _check_open(f: h5py.File, index: int, layout: ShardLayout) -> str | None:
    """The cheap check on an open shard: attributes, key, row range and every dataset's shape."""
    key = f.attrs.get("key")
    key = key.decode() if isinstance(key, bytes) else key
    if key != layout.key:
        return f"it belongs to another cache (key {str(key)[:16]}), not this one ({layout.key[:16]})"
    start, stop = layout.rows(index)
    if (int(f.attrs.get("start", -1)), int(f.attrs.get("stop", -1))) != (start, stop):
        return f"it holds rows [{f.attrs.get('start')}, {f.attrs.get('stop')}) instead of [{start}, {stop})"
    expected = {"ok": (stop - start,), "errors": (stop - start,)}
    expected |= {f"features/{layer}": (stop - start, *shape) for layer, shape in layout.shapes.items()}
    for name, shape in expected.items():
        if name not in f:
            return f"{name} is missing"
        if f[name].shape != shape:
            return f"{name} has shape {f[name].shape} instead of {shape}"
    return None


def shard_problem(path: Path, index: int, layout: ShardLayout, full: bool = False) -> str | None:
    """Why shard ``index`` is not usable ("missing", or the damage), or None when it is.

    The cheap check opens the file and compares attributes and shapes: it catches truncation, a
    shard from another cache and a half-copied file. ``full=True`` also reads every dataset, which
    verifies every checksum (the only way to find a flipped byte inside the data)."""
    file = path / shard_name(index)
    what = ""
    if not file.is_file():
        return "missing"
    try:
        with h5py.File(file, "r") as f:
            problem = _check_open(f, index, layout)
            if problem is None and full:  # reading a dataset verifies its checksums
                for what in [*(f"features/{layer}" for layer in layout.dims), "ok"]:
                    f[what][()]
                what = "errors"
                read_strings(f, what)
            return problem
    except (OSError, ValueError, KeyError, TypeError) as e:
        return _first_line(e, what)


def unfinished_shards(path: Path, n_shards: int, key: str) -> list[int]:
    """Shards a run must (re)compute: missing ones and those failing the cheap check (truncated,
    another cache's key, wrong rows or shapes). Flipped bytes inside the data are found by
    ``verify_cache`` / the reader, not here, so this stays cheap enough for every run. No meta.h5 at
    ``path`` (no cache there yet): every shard."""
    if not (path / "meta.h5").is_file():
        return list(range(n_shards))
    meta = read_meta(path)
    layout = ShardLayout.of({**meta, "key": key, "n_shards": n_shards})
    return [i for i in range(n_shards) if shard_problem(path, i, layout) is not None]


def missing_shards(path: Path, n_shards: int) -> list[int]:
    """Shards with no file at all (kept for callers that only need existence)."""
    return [i for i in range(n_shards) if not (path / shard_name(i)).is_file()]


def damaged_message(path: Path, index: int, reason: str, found_by_checksum: bool) -> str:
    what_to_do = DELETE_AND_RERUN if found_by_checksum else RERUN
    return f"shard {shard_name(index)} of {path} is damaged ({reason}); {what_to_do}"


def _folder_meta(path: Path) -> dict[str, Any]:
    """The metadata of the cache folder ``path``, or one line saying why it is not one."""
    if not path.is_dir():
        what = "is a file, not a cache folder" if path.exists() else "does not exist"
        raise EmbedpipeError(f"cache {path} {what}; pass the folder printed by `embedpipe extract`")
    if not (path / "meta.h5").is_file():
        raise EmbedpipeError(f"{path} is not an embedpipe cache (no meta.h5); run `embedpipe extract` first")
    return read_meta(path)


def verify_cache(path: str | Path) -> list[tuple[int, str]]:
    """Read every byte of every shard (checksums included): ``[(shard, reason)]``, empty when all is well.
    Missing shards are listed with reason "missing"."""
    path = Path(path)
    layout = ShardLayout.of(_folder_meta(path))
    return [(i, p) for i in range(layout.n_shards) if (p := shard_problem(path, i, layout, full=True))]


def verify_message(path: str | Path, problems: list[tuple[int, str]]) -> str:
    """One line for ``verify_cache``'s findings."""
    path = Path(path)
    missing = [i for i, p in problems if p == "missing"]
    damaged = [(i, p) for i, p in problems if p != "missing"]
    parts = []
    if damaged:
        listed = ", ".join(f"{shard_name(i)} ({p})" for i, p in damaged[:3])
        more = f" and {len(damaged) - 3} more" if len(damaged) > 3 else ""
        parts.append(f"{len(damaged)} damaged shard(s) in {path}: {listed}{more}; delete those files and "
                     "re-run the same extract command to recompute them")
    if missing:
        then = ("an extract is still writing them" if held_by_another(path / ".lock")
                else "re-run the same extract command to resume")
        parts.append(f"{len(missing)} shard(s) of {path} not written yet (first {shard_name(missing[0])}); {then}")
    return "; ".join(parts)


class Cache:
    """A finished cache directory. Construct with ``open_cache(path)``; ``path`` is kept absolute."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser().resolve()
        self.meta = _folder_meta(self.path)
        if self.meta.get("schema_version") not in READABLE_SCHEMAS:
            raise EmbedpipeError(
                f"{self.path} has cache schema {self.meta.get('schema_version')}, this embedpipe reads "
                f"{' and '.join(map(str, READABLE_SCHEMAS))} (writes {SCHEMA_VERSION}); re-run extract to rebuild it"
            )
        self.layout = ShardLayout.of(self.meta)
        self._check_shards()
        try:
            with h5py.File(self.path / "meta.h5", "r") as f:
                self.ids = read_strings(f, "ids")
                self.labels = f["labels"][()].astype(np.int64)
                self.label_names: list[str] = list(read_strings(f, "label_names"))
                self.splits = read_strings(f, "split")
        except (OSError, ValueError, KeyError) as e:
            raise EmbedpipeError(
                f"{self.path}/meta.h5 is damaged ({_first_line(e)}); delete that file and re-run the same "
                "extract command (finished shards are kept)"
            ) from None

    def _check_shards(self) -> None:
        """Refuse an incomplete cache (rows missing, writer still running?) or a damaged shard."""
        problems = [(i, p) for i in range(self.n_shards) if (p := shard_problem(self.path, i, self.layout))]
        missing = [i for i, p in problems if p == "missing"]
        damaged = [(i, p) for i, p in problems if p != "missing"]
        if missing:
            rows = sum(stop - start for start, stop in map(self.layout.rows, missing))
            writing = held_by_another(self.path / ".lock")
            then = ("an extract is still writing it: wait for it to finish" if writing
                    else "re-run the same extract command to resume")
            raise EmbedpipeError(
                f"cache {self.path} is incomplete: {len(missing)} of {self.n_shards} shards missing "
                f"({rows} of {self.layout.n_rows} rows; first {shard_name(missing[0])}); {then}"
            )
        if damaged:
            i, reason = damaged[0]
            more = f" (and {len(damaged) - 1} more shard(s))" if len(damaged) > 1 else ""
            raise DamagedShard(damaged_message(self.path, i, reason + more, found_by_checksum=False))

    @contextlib.contextmanager
    def _reading(self, index: int, what: str = "") -> Iterator[None]:
        """Turn a checksum failure (or any read error) of ``what`` in shard ``index`` into one line."""
        try:
            yield
        except DamagedShard:
            raise
        except (OSError, ValueError, KeyError) as e:
            reason = _first_line(e, what)
            raise DamagedShard(damaged_message(self.path, index, reason, found_by_checksum=True)) from None

    # -- metadata ----------------------------------------------------------------------------
    @property
    def key(self) -> str:
        return str(self.meta["key"])

    @property
    def n_shards(self) -> int:
        return int(self.meta["n_shards"])

    @property
    def layers(self) -> list[str]:
        return list(self.meta["layers"])

    @property
    def dims(self) -> dict[str, int]:
        return dict(self.meta["dims"])

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Per-row shape of every layer: (dim,) for vectors, (C, H, W) or (L, C) for ``:map`` layers
        (caches written before shapes were recorded hold vectors only)."""
        return dict(self.layout.shapes)

    def disk_bytes(self) -> int:
        """Bytes on disk of meta.h5 and every shard."""
        files = [self.path / "meta.h5"] + [self.path / shard_name(i) for i in range(self.n_shards)]
        return sum(p.stat().st_size for p in files if p.is_file())

    @property
    def source_kind(self) -> str:
        """Where the images are: ``folder``, ``csv``, ``builtin``, ``torchvision``, or ``unknown``
        (caches written before schema 2, or from a custom Source); see ``data/reopen.py``."""
        return str(self.meta.get("source_kind") or "unknown")

    @property
    def source_root(self) -> str:
        """The image folder, the manifest file or the set's name; "" when unknown."""
        return str(self.meta.get("source_root") or "")

    @property
    def backbone(self) -> dict[str, Any]:
        return dict(self.meta["backbone"])

    def _shard_files(self) -> Iterator[tuple[int, h5py.File]]:
        for i in range(self.n_shards):
            with self._reading(i), h5py.File(self.path / shard_name(i), "r") as f:
                problem = _check_open(f, i, self.layout)  # replaced since opening? never trust blindly
                if problem is not None:
                    raise DamagedShard(damaged_message(self.path, i, problem, found_by_checksum=False))
                yield i, f

    @cached_property
    def _status(self) -> tuple[np.ndarray, list[str]]:
        ok, errors = [], []
        for i, f in self._shard_files():
            with self._reading(i, "ok"):
                ok.append(f["ok"][()])
            with self._reading(i, "errors"):
                errors += list(read_strings(f, "errors"))
        return np.concatenate(ok) if ok else np.zeros(0, bool), errors

    @cached_property
    def checksummed(self) -> bool:
        """Whether the shards carry checksums (caches written before they existed read without)."""
        if self.n_shards == 0:
            return True
        with self._reading(0), h5py.File(self.path / shard_name(0), "r") as f:
            return "checksums" in f.attrs

    def verify(self) -> list[tuple[int, str]]:
        """Read every shard fully (all checksums): ``[(shard, reason)]``, empty when all is well."""
        return verify_cache(self.path)

    @property
    def ok(self) -> np.ndarray:
        """Mask of rows whose image decoded (the others are listed in ``failed``)."""
        return self._status[0]

    @property
    def failed(self) -> list[tuple[str, str]]:
        ok, errors = self._status
        return [(str(self.ids[i]), errors[i]) for i in np.flatnonzero(~ok)]

    def rows(self, split: str | None = "train") -> np.ndarray:
        """Indices of the usable rows of a split (None = every split)."""
        if split is not None and split not in ("train", "val", "test"):
            raise EmbedpipeError(f"unknown split {split!r}: use train, val or test")
        mask = self.ok.copy()
        if split is not None:
            mask &= self.splits == split
        return np.flatnonzero(mask)

    def counts(self) -> dict[str, int]:
        return {s: len(self.rows(s)) for s in ("train", "val", "test")}

    def _check_layer(self, layer: str) -> None:
        if layer not in self.layers:
            raise EmbedpipeError(f"layer {layer!r} not in cache {self.path}; it has {', '.join(self.layers)}")

    # -- features ----------------------------------------------------------------------------
    def iter_blocks(
        self, split: str | None = "train", layer: str = "pooled", dtype: Any = np.float32
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield ``(X, y)`` one shard at a time (contiguous reads; memory bounded by shard size)."""
        self._check_layer(layer)
        wanted = np.zeros(len(self.ids), bool)
        wanted[self.rows(split)] = True
        for i, f in self._shard_files():
            start, stop = self.layout.rows(i)
            keep = wanted[start:stop]
            if keep.any():
                with self._reading(i, f"features/{layer}"):
                    block = f["features"][layer][()]
                yield block[keep].astype(dtype, copy=False), self.labels[start:stop][keep]

    def load(
        self, split: str | None = "train", layer: str | Sequence[str] = "pooled", dtype: Any = np.float32
    ) -> tuple[np.ndarray, np.ndarray]:
        """All usable rows of a split as ``(X, y)``: X (n, *shape) in ``dtype`` ((n, dim) for vector
        layers, (n, C, H, W) or (n, L, C) for a ``block<k>:map``), y integer labels.

        Several vector layers (a list, or names joined by commas: ``"pooled,block4"``) are concatenated
        column-wise in the order given: X is (n, sum of their widths), the first layer's columns first.
        A ``:map`` layer is loaded alone.
        """
        names = layer.split(",") if isinstance(layer, str) else list(layer)
        if len(names) != 1:
            for name in names:
                self._check_layer(name)
            maps = [name for name in names if len(self.shapes[name]) != 1]
            if maps:
                raise EmbedpipeError(
                    f"layer {maps[0]} is an unpooled map and cannot be concatenated with other layers; "
                    f"load it alone, or use its pooled {maps[0].removesuffix(':map')}")
            parts = [self.load(split, name, dtype) for name in names]
            return np.concatenate([p[0] for p in parts], axis=1), parts[0][1]
        layer = names[0]
        self._check_layer(layer)
        n = len(self.rows(split))
        X = np.empty((n, *self.shapes[layer]), dtype=dtype)
        y = np.empty(n, dtype=np.int64)
        at = 0
        for xb, yb in self.iter_blocks(split, layer, dtype):
            X[at : at + len(xb)], y[at : at + len(yb)] = xb, yb
            at += len(xb)
        return X, y

    # -- Arrow / Parquet ---------------------------------------------------------------------
    def iter_arrow(self, layers: str | Sequence[str] | None = None, dtype: str = "float32") -> Iterator[Any]:
        """Stream the cache as ``pyarrow.RecordBatch`` es, one per shard, with flat memory.

        Columns: ``id``, ``label`` (the class name), ``split`` and one ``fixed_size_list`` column per
        layer. Rows whose image failed to decode are left out (``Cache.failed`` lists them).

        Parameters
        ----------
        layers : str, list of str or None, default=None
            Vector layers to include; None = every layer of the cache. A ``block<k>:map`` layer is
            refused (export its pooled ``block<k>``).
        dtype : {"float32", "float16"}, default="float32"
            Value type of the feature columns.

        Yields
        ------
        pyarrow.RecordBatch
            The good rows of one shard, in cache order.

        Raises
        ------
        EmbedpipeError
            pyarrow is not installed (``pip install "embedpipe[arrow]"``), or an unknown layer or dtype.

        Examples
        --------
        >>> import embedpipe
        >>> cache = embedpipe.extract("photos", progress=False)
        >>> sum(batch.num_rows for batch in cache.iter_arrow()) == len(cache.rows(None))
        True
        """
        return _export.iter_arrow(self, layers, dtype)

    def to_arrow(self, layers: str | Sequence[str] | None = None, dtype: str = "float32") -> Any:
        """The cache as one ``pyarrow.Table`` (columns as for ``iter_arrow``; failed rows left out).

        Parameters
        ----------
        layers : str, list of str or None, default=None
            Vector layers to include; None = every layer of the cache.
        dtype : {"float32", "float16"}, default="float32"
            Value type of the feature columns.

        Returns
        -------
        pyarrow.Table
            ``id``, ``label``, ``split`` and one fixed-size-list column per layer; the schema's
            metadata records the cache key, backbone and dataset.

        Examples
        --------
        >>> import embedpipe
        >>> table = embedpipe.extract("photos", progress=False).to_arrow()
        >>> table.column_names
        ['id', 'label', 'split', 'pooled']
        >>> df = table.to_pandas()     # or polars.from_arrow(table), or duckdb.sql("SELECT ... FROM table")
        """
        return _export.to_arrow(self, layers, dtype)

    def export(self, out: str | Path, format: str = "parquet", layers: str | Sequence[str] | None = None,
               dtype: str = "float32") -> _export.ExportStats:
        """Write the cache to a Parquet file, an Arrow IPC file, or a folder of ``.npy`` files.

        Parameters
        ----------
        out : str or Path
            The file (parquet, arrow) or folder (npy) to write; replaced when it exists.
        format : {"parquet", "arrow", "npy"}, default="parquet"
            ``npy`` writes ``<layer>.npy`` per layer and ``rows.csv`` (id, label, split) into ``out``.
        layers : str, list of str or None, default=None
            Vector layers to write; None = every layer of the cache.
        dtype : {"float32", "float16"}, default="float32"
            Value type of the features.

        Returns
        -------
        ExportStats
            ``rows`` written, ``skipped_failed`` (rows whose image failed, left out), ``bytes``, ``seconds``.
        """
        return _export.export(self, out, format, layers, dtype)

    def load_ids(self, split: str | None = "train") -> np.ndarray:
        return self.ids[self.rows(split)]

    def summary(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "key": self.key,
            "dataset": self.meta.get("dataset"),
            "backbone": self.backbone.get("spec"),
            "layers": {name: list(shape) for name, shape in self.shapes.items()},
            "disk_bytes": self.disk_bytes(),
            "classes": len(self.label_names),
            "rows": self.counts(),
            "failed": len(self.failed),
        }

    def __repr__(self) -> str:
        return f"Cache({str(self.path)!r}, rows={self.counts()}, layers={self.layers})"


def open_cache(path: str | Path) -> Cache:
    return Cache(path)
