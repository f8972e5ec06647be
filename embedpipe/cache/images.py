"""The per-image store behind the scikit-learn transformer: features looked up by file content.

A dataset cache (``reader.py``) holds one dataset in row order; this store holds single images, each
found by the sha256 of its file's bytes, so the same picture under any path or name is embedded once,
and an edited file (even with its size and mtime kept) is embedded again. One store per feature key:

``<root>/images/<backbone-slug>-<key[:16]>/``

* ``meta.json``: what produced the numbers: ``schema_version``, ``key`` (``key.feature_key`` over the
  backbone fingerprint (spec, weights digest, preprocessing, precision), how the forward pass
  computes (device type, channels_last, library versions), the decode path and the layer, in
  float32), ``backbone`` (its config), ``layer``, ``dim``, ``dtype`` (float32), ``decode``,
  ``created_at``. Written once, atomically.
* ``rows/<stamp>-<pid>-<n>.h5``: append-only row files, one per embedded batch, each written in
  memory and renamed into place whole (``writer.atomic_h5``), never changed afterwards. Datasets:
  ``sha256`` (n strings: the hex digest of each file's bytes), ``features`` (n x dim float32,
  Fletcher-32 checksummed), ``ok`` (n bools) and ``errors`` (n strings: ``""``, or why the image
  could not be decoded, as ``extract`` records it). A failed image is stored too, so the same bytes
  are not decoded again. Plain h5py reads every file.
* ``.lock``: the writer lock. Readers never take it. A writer holds it while it embeds, and before
  embedding it re-reads the index, so no image is ever written twice, whatever number of processes
  share the store. A writer waiting for another waits as long as new row files keep appearing, and
  gives up after ``WAIT_WITHOUT_PROGRESS_S`` without one (``core.locking.exclusive``).

``<root>/images/keys/<identity>.json`` remembers which key a backbone configuration gave (identified
by its config, its weights file's path, size and mtime, device, precision, layer and library
versions), so a process whose images are all stored never loads the model.

Row files are immutable, so a process keeps what it has read (the index always, features up to
``MEMO_BYTES``) and only ever reads the files that are new since it last looked.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..core.atomic import atomic_write_bytes
from ..core.errors import EmbedpipeError, first_line
from ..core.locking import exclusive
from .key import slug
from .reader import read_strings
from .writer import atomic_h5, put_array

STORE_SCHEMA = 1
STORE_FOLDER = "images"  # under the cache root, beside the dataset folders
WAIT_WITHOUT_PROGRESS_S = 300.0  # a writer waits this long for another one that stopped adding row files
MEMO_BYTES = 512 << 20  # features of row files kept in memory per process (files never change)


@dataclass(frozen=True)
class Entry:
    """Where one image's row lives: its row file and the row in it."""

    file: str
    row: int


@dataclass
class StoreStats:
    """What a store holds: ``rows`` (distinct images, embedded once each), of which ``failed``
    could not be decoded, in ``files`` row files; ``duplicates`` is always 0 (checked, not assumed)."""

    path: str
    rows: int
    failed: int
    files: int
    duplicates: int


_MEMO: dict[Path, tuple[dict[str, Entry], set[str]]] = {}  # store -> (sha256 -> entry, row files read)
_FEATURES: dict[Path, tuple[np.ndarray, np.ndarray, list[str]]] = {}  # row file -> (features, ok, errors)
_LOCK = threading.Lock()


def store_path(root: Path, backbone_spec: str, key: str) -> Path:
    return root / STORE_FOLDER / f"{slug(backbone_spec) or 'backbone'}-{key[:16]}"


def recall_key(root: Path, identity: str) -> str | None:
    """The feature key remembered for ``identity`` (a digest of what decides the key without loading
    the model: the backbone's config, its weights file's path, size and mtime, device, precision,
    layer and library versions), or None. Lets a process whose images are all stored skip loading
    the model just to compute its fingerprint."""
    try:
        return str(json.loads((root / STORE_FOLDER / "keys" / f"{identity}.json").read_text())["key"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def remember_key(root: Path, identity: str, key: str) -> None:
    """Record ``identity`` -> ``key`` (atomically; concurrent writers write the same text)."""
    folder = root / STORE_FOLDER / "keys"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(folder / f"{identity}.json", json.dumps({"key": key}).encode())
    except OSError:
        pass  # only a shortcut: without it the next process loads the model to find the key


class ImageStore:
    """One feature key's store (see the module docstring). ``open`` creates it when missing."""

    def __init__(self, path: Path, meta: dict[str, Any]) -> None:
        self.path, self.meta = path, meta
        self.dim = int(meta["dim"])

    @classmethod
    def open(cls, root: Path, backbone_spec: str, key: str, meta: dict[str, Any] | None) -> ImageStore | None:
        """The store for ``key`` under ``root``, created with ``meta`` (plus schema, key, date) if new;
        with ``meta=None`` an existing store only (None when there is none)."""
        path = store_path(root, backbone_spec, key)
        meta_file = path / "meta.json"
        if meta is None and not meta_file.is_file():
            return None
        if meta is not None and not meta_file.is_file():
            full = {"schema_version": STORE_SCHEMA, "key": key, **meta,
                    "created_at": datetime.now(UTC).isoformat(timespec="seconds")}
            try:
                (path / "rows").mkdir(parents=True, exist_ok=True)
                if not meta_file.is_file():  # two processes may race here: both write the same content
                    atomic_write_bytes(meta_file, json.dumps(full, indent=1, sort_keys=True).encode())
            except OSError as e:
                raise EmbedpipeError(f"cannot write the image store {path} ({e.strerror or e}); make the "
                                     "cache folder writable or pass another cache_dir") from None
        try:
            stored = json.loads(meta_file.read_text())
        except (OSError, ValueError) as e:
            raise EmbedpipeError(f"{meta_file} is damaged ({first_line(e)}); delete that folder to rebuild "
                                 "the store") from None
        if stored.get("key") != key or stored.get("schema_version") != STORE_SCHEMA:
            raise EmbedpipeError(f"{path} holds another store (key {str(stored.get('key'))[:16]}); delete it")
        return cls(path, stored)

    # -- the index ---------------------------------------------------------------------------
    def _row_files(self) -> list[str]:
        try:
            return sorted(n for n in os.listdir(self.path / "rows") if n.endswith(".h5"))
        except FileNotFoundError:
            return []

    def index(self) -> dict[str, Entry]:
        """sha256 -> Entry for every image in the store (reads only row files new since last time)."""
        with _LOCK:
            names = self._row_files()
            entries, seen = _MEMO.setdefault(self.path, ({}, set()))
            if not seen <= set(names):  # row files deleted (the store was removed): start afresh
                entries.clear()
                seen.clear()
                for file in [f for f in _FEATURES if f.parent.parent == self.path]:
                    del _FEATURES[file]
            for name in names:
                if name in seen:
                    continue
                try:
                    with h5py.File(self.path / "rows" / name, "r") as f:
                        digests = read_strings(f, "sha256")
                except (OSError, ValueError, KeyError) as e:
                    raise EmbedpipeError(f"row file {self.path / 'rows' / name} is damaged ({first_line(e)}); "
                                         "delete it (its images are embedded again)") from None
                for j, d in enumerate(digests):
                    entries.setdefault(str(d), Entry(name, j))
                seen.add(name)
            return entries

    def _file(self, name: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
        file = self.path / "rows" / name
        with _LOCK:
            if file in _FEATURES:
                return _FEATURES[file]
        try:
            with h5py.File(file, "r") as f:
                loaded = (f["features"][()].astype(np.float32, copy=False), f["ok"][()].astype(bool),
                          [str(e) for e in read_strings(f, "errors")])
        except (OSError, ValueError, KeyError) as e:
            raise EmbedpipeError(f"row file {file} is damaged ({first_line(e)}); delete it (its images are "
                                 "embedded again)") from None
        with _LOCK:
            held = sum(v[0].nbytes for v in _FEATURES.values())
            if held + loaded[0].nbytes <= MEMO_BYTES:
                _FEATURES[file] = loaded
        return loaded

    def get(self, digests: Sequence[str]) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """Rows of ``digests`` (all present in the store): features (n, dim) float32, ok, errors."""
        index = self.index()
        X = np.empty((len(digests), self.dim), np.float32)
        ok = np.zeros(len(digests), bool)
        errors = [""] * len(digests)
        by_file: dict[str, list[int]] = {}
        for i, d in enumerate(digests):
            by_file.setdefault(index[d].file, []).append(i)
        for name, wanted in by_file.items():
            feats, good, errs = self._file(name)
            rows = [index[digests[i]].row for i in wanted]
            X[wanted], ok[wanted] = feats[rows], good[rows]
            for i, r in zip(wanted, rows, strict=True):
                errors[i] = errs[r]
        return X, ok, errors

    def missing(self, digests: Sequence[str]) -> list[str]:
        """Distinct digests not in the store yet, in first-seen order."""
        index = self.index()
        return [d for d in dict.fromkeys(digests) if d not in index]

    # -- writing -----------------------------------------------------------------------------
    @contextmanager
    def writing(self) -> Iterator[None]:
        """Hold the store's writer lock, waiting for another writer while it keeps adding row files."""
        with exclusive(self.path / ".lock", f"the image store {self.path}", WAIT_WITHOUT_PROGRESS_S,
                       progress=lambda: len(self._row_files())):
            yield

    def append(self, digests: Sequence[str], features: np.ndarray, ok: np.ndarray, errors: Sequence[str]) -> None:
        """Write one row file (call inside ``writing()``, after checking ``missing``)."""
        name = f"{time.time_ns():020d}-{os.getpid()}-{len(digests)}.h5"
        with atomic_h5(self.path / "rows" / name) as f:
            f.attrs.update({"key": self.meta["key"], "n": len(digests)})
            put_array(f, "sha256", np.array(list(digests), dtype=object))
            put_array(f, "features", np.ascontiguousarray(features, dtype=np.float32))
            put_array(f, "ok", np.asarray(ok, bool))
            put_array(f, "errors", np.array(list(errors), dtype=object))

    def stats(self) -> StoreStats:
        """Counts read from the row files themselves (every file, not this process's memory)."""
        digests: list[str] = []
        failed = 0
        files = self._row_files()
        for name in files:
            with h5py.File(self.path / "rows" / name, "r") as f:
                digests += [str(d) for d in read_strings(f, "sha256")]
                failed += int((~f["ok"][()].astype(bool)).sum())
        return StoreStats(str(self.path), len(digests), failed, len(files), len(digests) - len(set(digests)))
