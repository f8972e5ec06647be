"""What a plan asks the cache: which rows of which shards are good, who can lend rows, and the lent
rows themselves. Only this package opens the cache's files; the plan (``extraction/plan.py``) works
on the answers.

A shard needs work when its file is missing or fails the reader's cheap check (it is recomputed
whole), or when it holds failed rows (a re-run retries them). A donor is a sibling cache of the same
dataset with the same feature key whose shard, carrying that cache's own key, holds the row as good.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from ..core.errors import EmbedpipeError, first_line
from .reader import read_meta, read_strings, unfinished_shards
from .writer import shard_name

Donor = tuple[str, int, int]  # (cache folder, shard index, row within that shard)


@dataclass(frozen=True)
class ShardRows:
    """A finished shard's row flags: ``ok[j]`` for row j, and the recorded reason where it failed."""

    ok: np.ndarray
    errors: list[str]


def shard_rows(path: Path, index: int, key: str) -> ShardRows | None:
    """The row flags of shard ``index`` of the cache at ``path`` (key ``key``); None when the file is
    missing, unreadable or another cache's."""
    with contextlib.suppress(OSError, KeyError, ValueError), h5py.File(path / shard_name(index), "r") as f:
        if f.attrs.get("key") != key:
            return None
        return ShardRows(f["ok"][()].astype(bool), list(f["errors"].asstr()[()]))
    return None


def shards_needing_work(path: Path, n_shards: int, key: str) -> dict[int, ShardRows | None]:
    """Every shard a run must touch, in order: None = (re)compute it whole (missing or failing the
    cheap check); ``ShardRows`` = a finished shard with failed rows to retry."""
    unfinished = set(unfinished_shards(path, n_shards, key))
    todo: dict[int, ShardRows | None] = {}
    for s in range(n_shards):
        if s in unfinished:
            todo[s] = None
            continue
        rows = shard_rows(path, s, key)
        if rows is not None and not rows.ok.all():
            todo[s] = rows
    return todo


def find_donors(dataset_dir: Path, fkey: str, own: Path) -> dict[tuple[str, str], Donor]:
    """(id, signature) -> donor for every good row of the sibling caches with feature key ``fkey``.
    Deterministic: caches are searched in sorted order and the first one wins."""
    found: dict[tuple[str, str], Donor] = {}
    if not dataset_dir.is_dir():
        return found
    for other in sorted(dataset_dir.iterdir()):
        if other == own or not (other / "meta.h5").is_file():
            continue
        with contextlib.suppress(Exception):  # a damaged sibling lends nothing
            meta = read_meta(other)
            if meta.get("feature_key") != fkey:
                continue
            with h5py.File(other / "meta.h5", "r") as f:
                ids, sigs = read_strings(f, "ids"), read_strings(f, "signatures")
            size = int(meta["shard_size"])
            for s in range(int(meta["n_shards"])):
                rows = shard_rows(other, s, str(meta["key"])) if (other / shard_name(s)).is_file() else None
                if rows is None:
                    continue  # missing, unreadable, or from another cache: lend nothing
                for j in np.flatnonzero(rows.ok):
                    row = s * size + int(j)
                    found.setdefault((ids[row], sigs[row]), (str(other), s, int(j)))
    return found


def read_lent_rows(cache: str, shard: int, rows: Sequence[int], layers: Sequence[str]) -> dict[str, np.ndarray]:
    """Rows ``rows`` (sorted) of shard ``shard`` of the cache folder ``cache``, per layer."""
    try:
        with h5py.File(Path(cache) / shard_name(shard), "r") as f:
            return {layer: f["features"][layer][list(rows)] for layer in layers}
    except (OSError, KeyError) as e:  # a checksum mismatch or a damaged file in a donor cache
        raise EmbedpipeError(
            f"donor shard {shard_name(shard)} of {cache} is damaged ({first_line(e, 120)}); "
            "delete that file and re-run the same extract command") from None
