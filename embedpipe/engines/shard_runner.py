"""What a distributed engine runs: "execute one shard of the plan", with a backbone loaded once.

The driver plans exactly as the local engine (``extraction/plan.py``) and packs what a worker needs
into a picklable ``ShardContext``; each worker holds a ``ShardRunner`` (backbone loaded once,
fingerprint checked against the driver's) and runs shard after shard through the local engine's own
stages (``run_local`` on a one-shard plan: decode in this worker's DataLoader processes, embed,
atomic write). So a shard computed on a cluster is computed by the same code as locally: same
batches (they never cross a shard), same failure records, the file appears whole or not at all,
and a retry after the write already happened is skipped.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from ..backbones import BackboneConfig, create_backbone
from ..cache import shard_name
from ..core.errors import EmbedpipeError
from ..data import Source
from ..data.sources import Record
from ..extraction.decode import DecodeOptions
from ..extraction.defaults import default_workers
from ..extraction.embed import gpu_decoder
from ..extraction.plan import ShardPlan
from ..extraction.shard import ShardExecutor
from .local import run_local


@dataclass(frozen=True)
class ShardContext:
    """Everything needed to compute any planned shard of one cache; made once by the driver."""

    source: Source
    records: list[Record]
    backbone: BackboneConfig  # rebuilt on each worker with create_backbone
    fingerprint: str  # the driver's; a worker whose backbone differs refuses to write
    layers: list[str]
    dtype: str
    jpeg_draft: bool
    gpu_decode: bool  # the driver put the GPU decoder's path in the feature key
    num_workers: int | None  # decoding processes per worker; None = the device's default
    path: Path
    key: str
    plans: dict[int, ShardPlan]
    planned_files: dict[int, int | None]  # shard -> its file's mtime_ns when planned (None: no file)

    def to_compute(self, shard: int) -> int:
        return len(self.plans[shard].compute)


@dataclass
class ShardOutcome:
    shard: int
    computed: int  # images decoded by this call (embedded or found unreadable)
    reused: int  # rows copied from donor caches or from the shard itself (retries)
    failed: int  # unreadable images recorded in the shard by this call
    seconds: float


def file_mtime(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        return None


class ShardRunner:
    """Holds one loaded backbone and computes shard after shard (what an actor keeps)."""

    def __init__(self, ctx: ShardContext, cpus: int | None = None) -> None:
        self.ctx = ctx
        options = {k: v for k, v in ctx.backbone.to_dict().items() if k != "spec"}
        bb = create_backbone(ctx.backbone.spec, **options)
        if bb.fingerprint != ctx.fingerprint:
            raise EmbedpipeError(
                f"backbone {ctx.backbone.spec} on this worker differs from the driver's (precision "
                f"{bb.precision}, preprocessing or weights); pass --precision explicitly and give "
                "every node the same weights file and library versions")
        opts = DecodeOptions(bb.pixel_preprocess, bb.transform, ctx.jpeg_draft)
        decoder = gpu_decoder() if ctx.gpu_decode and bb.device.type == "cuda" else None
        self.executor = ShardExecutor.build(ctx.source, ctx.records, bb, ctx.layers, opts, decoder)
        workers = default_workers(bb.device) if ctx.num_workers is None else ctx.num_workers
        self.workers = workers if cpus is None else min(workers, max(0, cpus - 1))

    def run(self, shard: int) -> ShardOutcome:
        """Compute shard ``shard`` and write it atomically (skipped when a retry finds it written)."""
        ctx, t0 = self.ctx, time.perf_counter()
        plan = ctx.plans[shard]
        if file_mtime(ctx.path / shard_name(shard)) != ctx.planned_files.get(shard):
            return ShardOutcome(shard, 0, 0, 0, 0.0)  # a retry after this run's write already happened
        run = run_local([plan], ctx.source, ctx.records, self.executor, ctx.path, ctx.key, ctx.dtype,
                        self.workers, route=self.executor.route, progress=False)
        return ShardOutcome(shard, run.computed, len(plan.copy), run.failed_now, time.perf_counter() - t0)
