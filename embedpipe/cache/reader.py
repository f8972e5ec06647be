"""Reading a cache: one logical dataset over its shards.

``open_cache(path).load(split, layer) -> (X, y)`` reads contiguous blocks shard by shard;
``iter_blocks`` streams the same rows for data larger than RAM. Opening checks the schema version and
that every expected shard exists, and refuses an incomplete cache with a one-line error.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from functools import cached_property
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..errors import EmbedpipeError
from .key import SCHEMA_VERSION
from .writer import shard_name

JSON_ATTRS = ("layers", "dims", "shapes", "backbone", "split_rule", "versions", "preprocess")


def read_strings(f: h5py.File, name: str) -> np.ndarray:
    return np.array(f[name].asstr()[()], dtype=object)


def read_meta(path: Path) -> dict[str, Any]:
    try:
        with h5py.File(path / "meta.h5", "r") as f:
            meta = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
        for k in JSON_ATTRS:
            if k in meta:
                meta[k] = json.loads(meta[k])
    except (OSError, ValueError) as e:
        raise EmbedpipeError(f"{path}/meta.h5 is not a readable embedpipe cache ({e}); remove the folder and re-extract") from None
    return {k: v.item() if isinstance(v, np.generic) else v for k, v in meta.items()}


def missing_shards(path: Path, n_shards: int) -> list[int]:
    return [i for i in range(n_shards) if not (path / shard_name(i)).is_file()]


class Cache:
    """A finished cache directory. Construct with ``open_cache(path)``."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not (self.path / "meta.h5").is_file():
            raise EmbedpipeError(f"{self.path} is not an embedpipe cache (no meta.h5); run `embedpipe extract` first")
        self.meta = read_meta(self.path)
        if self.meta.get("schema_version") != SCHEMA_VERSION:
            raise EmbedpipeError(
                f"{self.path} has cache schema {self.meta.get('schema_version')}, this embedpipe reads "
                f"{SCHEMA_VERSION}; re-run extract to rebuild it"
            )
        missing = missing_shards(self.path, self.n_shards)
        if missing:
            raise EmbedpipeError(
                f"cache {self.path} is incomplete: {len(missing)} of {self.n_shards} shards missing "
                f"(first {shard_name(missing[0])}); re-run the same extract command to resume"
            )
        with h5py.File(self.path / "meta.h5", "r") as f:
            self.ids = read_strings(f, "ids")
            self.labels = f["labels"][()].astype(np.int64)
            self.label_names: list[str] = list(read_strings(f, "label_names"))
            self.splits = read_strings(f, "split")

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
        recorded = self.meta.get("shapes") or {}
        return {name: tuple(recorded.get(name, (dim,))) for name, dim in self.dims.items()}

    def disk_bytes(self) -> int:
        """Bytes on disk of meta.h5 and every shard."""
        files = [self.path / "meta.h5"] + [self.path / shard_name(i) for i in range(self.n_shards)]
        return sum(p.stat().st_size for p in files if p.is_file())

    @property
    def backbone(self) -> dict[str, Any]:
        return dict(self.meta["backbone"])

    def _shard_files(self) -> Iterator[h5py.File]:
        for i in range(self.n_shards):
            with h5py.File(self.path / shard_name(i), "r") as f:
                yield f

    @cached_property
    def _status(self) -> tuple[np.ndarray, list[str]]:
        ok, errors = [], []
        for i, f in enumerate(self._shard_files()):
            if f.attrs.get("key") != self.key:  # a shard copied in from another cache
                raise EmbedpipeError(f"{self.path}/{shard_name(i)} belongs to another cache; remove it and re-extract")
            ok.append(f["ok"][()])
            errors += list(f["errors"].asstr()[()])
        return np.concatenate(ok) if ok else np.zeros(0, bool), errors

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
        for f in self._shard_files():
            start, stop = int(f.attrs["start"]), int(f.attrs["stop"])
            keep = wanted[start:stop]
            if keep.any():
                block = f["features"][layer][()]
                yield block[keep].astype(dtype, copy=False), self.labels[start:stop][keep]

    def load(
        self, split: str | None = "train", layer: str = "pooled", dtype: Any = np.float32
    ) -> tuple[np.ndarray, np.ndarray]:
        """All usable rows of a split as ``(X, y)``: X (n, *shape) in ``dtype`` ((n, dim) for vector
        layers), y integer labels."""
        self._check_layer(layer)
        n = len(self.rows(split))
        X = np.empty((n, *self.shapes[layer]), dtype=dtype)
        y = np.empty(n, dtype=np.int64)
        at = 0
        for xb, yb in self.iter_blocks(split, layer, dtype):
            X[at : at + len(xb)], y[at : at + len(yb)] = xb, yb
            at += len(xb)
        return X, y

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
