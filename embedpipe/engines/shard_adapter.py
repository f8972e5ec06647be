"""The seam between an engine and the extraction code: "compute one shard of the plan".

TEMPORARY ADAPTER. It builds that one function on today's ``extract.py`` internals (donor lookup,
row copy, the DataLoader decode, ``Backbone.embed``, the atomic ``write_shard``) so that the Ray
engine can be built and tested now; when the staged pipeline (plan -> read -> decode -> embed ->
write, DESIGN.md "Extraction as stages") lands, its ``execute_shard`` replaces ``ShardRunner``
and ``make_context`` here, and nothing in ``ray_engine.py`` needs to change beyond the import.

Contract (what the Ray engine relies on):
- ``make_context(...)`` runs on the driver, after ``meta.h5`` exists; the context is picklable and
  holds everything an actor needs (source, records, backbone config, per-shard donor rows).
- ``ShardRunner(ctx)`` loads the backbone once; ``runner.run(s)`` computes shard ``s`` exactly as
  the local engine does (same batches, which never cross a shard; same failure records) and writes
  it with ``write_shard``, so the file appears whole or not at all and a retry is harmless.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..backbones import Backbone, BackboneConfig, create_backbone
from ..cache import shard_name, write_shard
from ..data import Source
from ..data.loader import DecodeDataset, default_workers, iterate_batches
from ..data.sources import Record
from ..errors import EmbedpipeError

Donor = tuple[Path, int, int]  # (donor cache, shard, row in shard)


@dataclass(frozen=True)
class ShardContext:
    """Everything needed to compute any pending shard of one cache; made once by the driver."""

    source: Source
    records: list[Record]
    backbone: BackboneConfig  # rebuilt on each worker with create_backbone
    fingerprint: str  # the driver's; a worker whose backbone differs refuses to write
    layers: list[str]
    dims: dict[str, int]
    dtype: str
    batch_size: int
    num_workers: int | None  # decoding processes per worker; None = one per CPU the worker holds
    path: Path
    key: str
    shard_size: int
    reuse: dict[int, list[tuple[int, Donor]]] = field(default_factory=dict)  # shard -> (row, donor)

    def rows(self, shard: int) -> range:
        return range(shard * self.shard_size, min(len(self.records), (shard + 1) * self.shard_size))

    def to_compute(self, shard: int) -> int:
        return len(self.rows(shard)) - len(self.reuse.get(shard, ()))


@dataclass
class ShardOutcome:
    shard: int
    computed: int  # images embedded (or found unreadable) by this call
    reused: int  # rows copied from donor caches
    failed: int  # unreadable images recorded in the shard
    seconds: float


def make_context(
    source: Source, records: list[Record], bb: Backbone, layers: list[str], config: Any, path: Path,
    key: str, fkey: str, size: int, pending: list[int],
) -> ShardContext:
    """The driver's plan for ``pending`` shards, in the form a worker can execute one shard of."""
    from ..extract import _donors

    donors = _donors(path.parent, fkey, path)
    reuse: dict[int, list[tuple[int, Donor]]] = {}
    for s in pending:
        for r in range(s * size, min(len(records), (s + 1) * size)):
            donor = donors.get((records[r].id, records[r].signature))
            if donor is not None:
                reuse.setdefault(s, []).append((r, donor))
    return ShardContext(
        source=source, records=records, backbone=bb.config, fingerprint=bb.fingerprint, layers=layers,
        dims={name: bb.dims[name] for name in layers}, dtype=config.dtype, batch_size=config.batch_size,
        num_workers=config.num_workers, path=path, key=key, shard_size=size, reuse=reuse,
    )


class ShardRunner:
    """Holds one loaded backbone and computes shard after shard (what an actor keeps)."""

    def __init__(self, ctx: ShardContext, cpus: int | None = None) -> None:
        self.ctx = ctx
        options = {k: v for k, v in ctx.backbone.to_dict().items() if k != "spec"}
        self.bb = create_backbone(ctx.backbone.spec, **options)
        if self.bb.fingerprint != ctx.fingerprint:
            raise EmbedpipeError(
                f"backbone {ctx.backbone.spec} on this worker differs from the driver's (precision "
                f"{self.bb.precision}, preprocessing or weights); pass --precision explicitly and give "
                "every node the same weights file and library versions")
        self.bb.transform  # noqa: B018 - load the model now, once, not inside the first shard
        cores = cpus if cpus is not None else default_workers()
        self.workers = min(8, cores) if ctx.num_workers is None else ctx.num_workers

    def run(self, shard: int) -> ShardOutcome:
        """Compute shard ``shard`` and write it atomically (skipped when its file already exists)."""
        ctx, t0 = self.ctx, time.perf_counter()
        if (ctx.path / shard_name(shard)).is_file():  # a retry after the write already happened
            return ShardOutcome(shard, 0, 0, 0, 0.0)
        from ..extract import _copy_rows

        rows = ctx.rows(shard)
        start = rows.start
        feats = {name: np.zeros((len(rows), ctx.dims[name]), np.float32) for name in ctx.layers}
        ok = np.ones(len(rows), bool)
        errors = [""] * len(rows)
        reuse = ctx.reuse.get(shard, [])
        _copy_rows([r - start for r, _ in reuse], [d for _, d in reuse], ctx.layers, feats)
        reused = {r for r, _ in reuse}
        compute = [r for r in rows if r not in reused]
        batches = [compute[i : i + ctx.batch_size] for i in range(0, len(compute), ctx.batch_size)]
        dataset = DecodeDataset(ctx.source, ctx.records, self.bb.transform)
        failed = 0
        for _, batch, good, bad in iterate_batches(dataset, batches, self.workers):
            if batch is not None:
                out = self.bb.embed(batch, ctx.layers)
                local = np.asarray(good) - start
                for name in ctx.layers:
                    feats[name][local] = out[name]
            for r, reason in bad:
                ok[r - start] = False
                errors[r - start] = reason
                failed += 1
        write_shard(ctx.path, shard, start, ctx.key, feats, ok, errors, ctx.dtype)
        return ShardOutcome(shard, len(compute), len(reuse), failed, time.perf_counter() - t0)


def compute_shard(ctx: ShardContext, shard: int) -> ShardOutcome:
    """One shard with a freshly loaded backbone (tests and one-off use; actors keep a ShardRunner)."""
    return ShardRunner(ctx, os.cpu_count()).run(shard)
