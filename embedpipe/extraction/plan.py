"""Plan stage: manifest + cache folder + feature key -> one ShardPlan per shard that needs work.

A shard needs work when its file is missing or fails the reader's cheap check (truncated, another
cache's key, wrong rows or shapes: ``unfinished_shards``; it is then recomputed whole), or when it holds failed rows (a re-run retries them:
the shard is planned again with its good rows copied from itself and only the failed rows
recomputed, so fixing a file's permissions and re-running fixes the cache). A row is copied instead
of computed when a donor holds it: a sibling cache of the same dataset with the same feature key
(same backbone, decode path, device type, precision, layers, dtype, versions) that has the same
(id, signature) as a good row, in a shard whose own ``key`` attribute matches its cache's key.

Invariants: the plan is deterministic (same records and caches -> equal plans; donors are searched
in sorted order and the first one wins); batches never cross a shard (each shard's rows to compute
are cut into batches of its own); cheap (reads only metadata and ``ok`` flags).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from ..cache import read_meta, shard_name, unfinished_shards
from ..cache.reader import read_strings
from ..data.sources import Record
from ..errors import EmbedpipeError

Donor = tuple[str, int, int]  # (cache folder, shard index, row within that shard)


@dataclass(frozen=True)
class ShardPlan:
    """The work for one shard: rows [start, stop) of the manifest."""

    index: int
    start: int
    stop: int
    compute: tuple[int, ...]  # rows to decode and embed
    copy: tuple[tuple[int, Donor], ...]  # (row, donor) pairs: rows taken from finished caches
    batches: tuple[tuple[int, ...], ...]  # ``compute`` cut into batches, in order
    previous_failures: tuple[tuple[int, str], ...] = ()  # retry: (row, reason) recorded last time


def _shard_rows(path: Path, index: int, key: str) -> tuple[np.ndarray, list[str]] | None:
    """(ok, errors) of a shard that belongs to the cache with ``key``; None otherwise."""
    with contextlib.suppress(OSError, KeyError, ValueError), h5py.File(path / shard_name(index), "r") as f:
        if f.attrs.get("key") != key:
            return None
        return f["ok"][()].astype(bool), list(f["errors"].asstr()[()])
    return None


def find_donors(dataset_dir: Path, fkey: str, own: Path) -> dict[tuple[str, str], Donor]:
    """(id, signature) -> donor for every good row of the sibling caches with feature key ``fkey``."""
    found: dict[tuple[str, str], Donor] = {}
    if not dataset_dir.is_dir():
        return found
    for other in sorted(dataset_dir.iterdir()):
        if other == own or not (other / "meta.h5").is_file():
            continue
        with contextlib.suppress(Exception):
            meta = read_meta(other)
            if meta.get("feature_key") != fkey:
                continue
            with h5py.File(other / "meta.h5", "r") as f:
                ids, sigs = read_strings(f, "ids"), read_strings(f, "signatures")
            size = int(meta["shard_size"])
            for s in range(int(meta["n_shards"])):
                rows = _shard_rows(other, s, str(meta["key"])) if (other / shard_name(s)).is_file() else None
                if rows is None:
                    continue  # missing, unreadable, or from another cache: lend nothing
                for j in np.flatnonzero(rows[0]):
                    row = s * size + int(j)
                    found.setdefault((ids[row], sigs[row]), (str(other), s, int(j)))
    return found


def plan_shards(
    records: Sequence[Record], path: Path, key: str, fkey: str, shard_size: int, batch_size: int,
) -> list[ShardPlan]:
    """The plan for the cache at ``path`` (key ``key``): every shard that is missing or holds failed rows."""
    n = len(records)
    n_shards = (n + shard_size - 1) // shard_size
    todo: list[tuple[int, tuple[np.ndarray, list[str]] | None]] = []
    unfinished = set(unfinished_shards(path, n_shards, key))
    for s in range(n_shards):
        if s in unfinished:
            todo.append((s, None))
            continue
        existing = _shard_rows(path, s, key)
        if existing is not None and not existing[0].all():
            todo.append((s, existing))  # retry its failed rows
    if not todo:
        return []
    donors = find_donors(path.parent, fkey, path)
    plans = []
    for s, existing in todo:
        start, stop = s * shard_size, min(n, (s + 1) * shard_size)
        copy: list[tuple[int, Donor]] = []
        compute: list[int] = []
        previous: list[tuple[int, str]] = []
        for r in range(start, stop):
            if existing is not None and existing[0][r - start]:
                copy.append((r, (str(path), s, r - start)))  # a good row of this very shard
                continue
            if existing is not None:
                previous.append((r, existing[1][r - start]))
            donor = donors.get((records[r].id, records[r].signature))
            if donor is not None:
                copy.append((r, donor))
            else:
                compute.append(r)
        batches = tuple(tuple(compute[i : i + batch_size]) for i in range(0, len(compute), batch_size))
        plans.append(ShardPlan(s, start, stop, tuple(compute), tuple(copy), batches, tuple(previous)))
    return plans


def reused_rows(plan: ShardPlan, own: Path) -> int:
    """Rows of ``plan`` copied from other caches (not from the cache's own shard on a retry)."""
    return sum(1 for _, (cache, _, _) in plan.copy if cache != str(own))


def copy_rows(plan: ShardPlan, layers: Sequence[str], out: dict[str, np.ndarray]) -> None:
    """Fill ``out[layer][row - plan.start]`` from the donors, reading each donor shard once."""
    groups: dict[tuple[str, int], list[tuple[int, int]]] = {}
    for row, (cache, shard, j) in plan.copy:
        groups.setdefault((cache, shard), []).append((j, row - plan.start))
    for (cache, shard), pairs in sorted(groups.items()):
        pairs.sort()
        src = [j for j, _ in pairs]
        dest = [t for _, t in pairs]
        try:
            with h5py.File(Path(cache) / shard_name(shard), "r") as f:
                for layer in layers:
                    out[layer][dest] = f["features"][layer][src]
        except (OSError, KeyError) as e:  # a checksum mismatch or a damaged file in a donor cache
            raise EmbedpipeError(
                f"donor shard {shard_name(shard)} of {cache} is damaged ({str(e).splitlines()[0][:120]}); "
                "delete that file and re-run the same extract command") from None
