"""Content hashes of a cache's images, kept beside the cache for the next run.

A cache identifies files by size and modification time (free to read, but two copies of one photo
have different mtimes), so exact duplicates need the bytes: every file is read and hashed with
sha256, ``HASH_THREADS`` at a time. Built-in sets have no files; their images are rendered and the
pixels hashed. The hashes go to ``<cache>/audit/hashes.json`` (written atomically), keyed by id
with the file's current size and mtime (or the cache's signature for rendered sets), so a second
audit re-hashes only files that changed. ``HashStats`` says what it cost.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from ..core.atomic import atomic_write_bytes
from ..core.log import get_logger
from ..data.reopen import ImageOpener

_logger = get_logger(__name__)

STORE = "audit/hashes.json"  # beside meta.h5; deleting it only costs the next audit a re-read
STORE_VERSION = 1
HASH_THREADS = 8  # file reads and sha256 release the GIL: threads overlap disk and hashing
HASH_BLOCK = 1 << 20  # bytes per read: a huge file is hashed in bounded memory


@dataclass
class HashStats:
    """What hashing cost: rows hashed now, rows whose stored hash was reused, rows that could not be
    read (gone or unreadable), bytes read and seconds."""

    hashed: int = 0
    reused: int = 0
    unreadable: int = 0
    bytes: int = 0
    seconds: float = 0.0
    what: str = "files"  # "files" (sha256 of the bytes) or "pixels" (rendered built-in images)

    def to_dict(self) -> dict[str, object]:
        return {"hashed": self.hashed, "reused": self.reused, "unreadable": self.unreadable,
                "bytes": self.bytes, "seconds": round(self.seconds, 3), "of": self.what}


def _stat_key(path: str) -> str | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return f"{st.st_size}:{st.st_mtime_ns}"


def _file_hash(path: str) -> tuple[str | None, int]:
    h = hashlib.sha256()
    n = 0
    try:
        with open(path, "rb") as f:
            while block := f.read(HASH_BLOCK):
                h.update(block)
                n += len(block)
    except OSError:
        return None, 0
    return h.hexdigest()[:32], n


def load_store(path: Path) -> dict[str, list[str]]:
    """id -> [key, hash] from a store file; empty when missing or unreadable (it is only a cache)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("version") != STORE_VERSION:
        return {}
    rows = data.get("rows")
    return rows if isinstance(rows, dict) else {}


def save_store(path: Path, rows: dict[str, list[str]]) -> None:
    try:
        path.parent.mkdir(exist_ok=True)
        atomic_write_bytes(path, json.dumps({"version": STORE_VERSION, "rows": rows}).encode())
    except OSError as e:  # a read-only cache folder: the hashes are only a speed-up
        _logger.warning("could not keep the content hashes in %s (%s); the next audit hashes again", path, e)


def content_hashes(ids: Sequence[str], signatures: Sequence[str], opener: ImageOpener,
                   cache_dir: Path, progress: bool = False) -> tuple[list[str | None], HashStats]:
    """The content hash of every row (None where the image cannot be read), and what it cost.

    Parameters
    ----------
    ids, signatures : sequence of str
        The rows' ids and the cache's signatures of them.
    opener : ImageOpener
        Where the images are.
    cache_dir : Path
        The cache folder; the hashes are kept in ``STORE`` below it.
    progress : bool, default=False
        A progress bar over the files to hash.
    """
    t0 = time.perf_counter()
    loc = opener.location
    store_path = cache_dir / STORE
    stored = load_store(store_path)
    stats = HashStats(what="files" if loc.has_files else "pixels")
    out: list[str | None] = [None] * len(ids)
    keys: list[str | None] = []
    todo: list[int] = []
    for i, (rid, sig) in enumerate(zip(ids, signatures, strict=True)):
        path = loc.path(rid)
        key = _stat_key(path) if path is not None else f"sig:{sig}"
        keys.append(key)
        if key is None:
            stats.unreadable += 1
            continue
        old = stored.get(rid)
        if old is not None and old[0] == key:
            out[i] = old[1]
            stats.reused += 1
        else:
            todo.append(i)

    def one(i: int) -> tuple[str | None, int]:
        path = loc.path(ids[i])
        if path is not None:
            return _file_hash(path)
        img = opener(ids[i])
        if img is None:
            return None, 0
        raw = img.tobytes()
        return hashlib.sha256(f"{img.mode}{img.size}".encode() + raw).hexdigest()[:32], len(raw)

    if todo:
        shown = "files" if loc.has_files else "rendered images"
        _logger.info("hashing %d %s for exact duplicates (kept in %s for the next run)", len(todo), shown, store_path)
        threads = HASH_THREADS if loc.has_files else 1  # rendering holds the GIL
        with ThreadPoolExecutor(threads, thread_name_prefix="embedpipe-hash") as pool:
            results = pool.map(one, todo)
            if progress:
                from tqdm.auto import tqdm  # only when a bar is shown

                results = tqdm(results, total=len(todo), desc="hashing", unit="image", leave=False)
            for i, (digest, n) in zip(todo, results, strict=True):
                out[i] = digest
                stats.bytes += n
                if digest is None:
                    stats.unreadable += 1
                else:
                    stats.hashed += 1
    if todo or len(stored) != sum(k is not None for k in keys):
        save_store(store_path, {rid: [k, h] for rid, k, h in zip(ids, keys, out, strict=True)
                                if k is not None and h is not None})
    stats.seconds = time.perf_counter() - t0
    return out, stats
