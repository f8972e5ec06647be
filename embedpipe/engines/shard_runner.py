"""What a distributed engine runs: "execute one shard of the plan", with a backbone loaded once.

The driver plans exactly as for the local engine and sends each worker the job itself (a
``ShardContext``: the ``ExtractJob``, whose backbone pickles as its config, plus what the worker
checks); each worker holds a ``ShardRunner`` (backbone rebuilt once on the worker's device,
fingerprint checked against the driver's) and runs shard after shard through the local engine's own
stages (``run_local`` on a one-shard plan: decode in this worker's DataLoader processes, embed,
atomic write). So a shard computed on a cluster is computed by the same code as locally: same
batches (they never cross a shard), same failure records, the file appears whole or not at all,
and a retry after the write already happened is skipped.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..backbones import create_backbone
from ..cache import shard_name
from ..core.errors import EmbedpipeError
from ..extraction.decode import DecodeOptions
from ..extraction.defaults import default_workers
from ..extraction.embed import gpu_decoder
from ..extraction.plan import ShardPlan
from ..extraction.shard import ShardExecutor
from .base import ExtractJob
from .local import run_local


@dataclass(frozen=True)
class ShardContext:
    """The job as a worker gets it; made once by the driver."""

    job: ExtractJob
    fingerprint: str  # the driver's backbone fingerprint: a worker whose backbone differs refuses to write
    device: str  # where the worker runs the backbone: cpu, or cuda on a GPU worker
    planned_files: dict[int, int | None]  # shard -> its file's mtime_ns when planned (None: no file)
    plans: dict[int, ShardPlan] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "plans", {p.index: p for p in self.job.plans})

    @classmethod
    def of(cls, job: ExtractJob, device: str) -> ShardContext:
        """The job with what a worker rebuilds itself left out (the backbone pickles as its config, the
        decode recipe as its draft flag: the worker takes both from its own backbone)."""
        ex = job.executor
        sent = replace(job, executor=replace(ex, decode=DecodeOptions(None, None, ex.decode.draft)))
        return cls(sent, ex.backbone.fingerprint, device,
                   {p.index: file_mtime(job.path / shard_name(p.index)) for p in job.plans})


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
        ex = ctx.job.executor
        config = replace(ex.backbone.config, device=ctx.device)
        bb = create_backbone(config.spec, **{k: v for k, v in config.to_dict().items() if k != "spec"})
        if bb.fingerprint != ctx.fingerprint:
            raise EmbedpipeError(
                f"backbone {config.spec} on this worker differs from the driver's (precision "
                f"{bb.precision}, preprocessing or weights); set precision='fp32' (or bf16, fp16) explicitly "
                "and give every node the same weights file and library versions")
        opts = DecodeOptions(bb.pixel_preprocess, bb.transform, ex.decode.draft)
        decoder = gpu_decoder() if ex.decoder is not None and bb.device.type == "cuda" else None
        self.executor = ShardExecutor.build(ctx.job.source, ctx.job.records, bb, ex.layers, opts, decoder)
        workers = default_workers(bb.device) if ex.num_workers is None else ex.num_workers
        self.workers = workers if cpus is None else min(workers, max(0, cpus - 1))

    def run(self, shard: int) -> ShardOutcome:
        """Compute shard ``shard`` and write it atomically (skipped when a retry finds it written)."""
        ctx, job, t0 = self.ctx, self.ctx.job, time.perf_counter()
        plan = ctx.plans[shard]
        if file_mtime(job.path / shard_name(shard)) != ctx.planned_files.get(shard):
            return ShardOutcome(shard, 0, 0, 0, 0.0)  # a retry after this run's write already happened
        run = run_local([plan], job.source, job.records, self.executor, job.path, job.key, job.dtype,
                        self.workers, route=self.executor.route, progress=False)
        return ShardOutcome(shard, run.computed, len(plan.copy), run.failed_now, time.perf_counter() - t0)
