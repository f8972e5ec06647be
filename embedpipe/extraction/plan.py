"""Plan stage: manifest + cache folder + feature key -> one ShardPlan per shard that needs work.

The plan asks the cache two questions (``cache/rows.py``; it never opens a file itself): which
shards need work (missing or failing the cheap check: recomputed whole; holding failed rows: a re-run
retries them, its good rows copied from itself and only the failed rows recomputed, so fixing a
file's permissions and re-running fixes the cache), and who can lend rows (a sibling cache of the
same dataset with the same feature key: same backbone, decode path, device type, precision, layers,
dtype, versions). A row a donor holds is copied instead of computed.

Invariants: the plan is deterministic (same records and caches -> equal plans; donors are searched
in sorted order and the first one wins); batches never cross a shard (each shard's rows to compute
are cut into batches of its own); cheap (reads only metadata and ``ok`` flags).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..cache.rows import Donor, find_donors, read_lent_rows, shards_needing_work
from ..data.sources import Record


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


def plan_shards(
    records: Sequence[Record], path: Path, key: str, fkey: str, shard_size: int, batch_size: int,
) -> list[ShardPlan]:
    """The plan for the cache at ``path`` (key ``key``): every shard that is missing or holds failed rows."""
    n = len(records)
    todo = shards_needing_work(path, (n + shard_size - 1) // shard_size, key)
    if not todo:
        return []
    donors = find_donors(path.parent, fkey, path)
    plans = []
    for s, existing in todo.items():
        start, stop = s * shard_size, min(n, (s + 1) * shard_size)
        copy: list[tuple[int, Donor]] = []
        compute: list[int] = []
        previous: list[tuple[int, str]] = []
        for r in range(start, stop):
            if existing is not None and existing.ok[r - start]:
                copy.append((r, (str(path), s, r - start)))  # a good row of this very shard
                continue
            if existing is not None:
                previous.append((r, existing.errors[r - start]))
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
        lent = read_lent_rows(cache, shard, [j for j, _ in pairs], layers)
        dest = [t for _, t in pairs]
        for layer in layers:
            out[layer][dest] = lent[layer]
