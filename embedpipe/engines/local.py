"""The local engine: the stages wired into one pipeline with bounded queues, in this process.

    DataLoader workers (read + decode, uint8 across the process boundary, ``PREFETCH_FACTOR``
    batches ahead each) -> main thread (embed: device normalise, forward, async host copy; shard
    assembly) -> ShardWriter thread (atomic HDF5 writes, ``WRITER_QUEUE`` shards deep)

Shards with nothing to compute (all rows from donors) are written first. Batches arrive in plan
order, so at most one shard is being filled at a time; a finished shard goes to the writer and the
main thread goes straight on with the next batch.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from ..data.sources import Record, Source
from ..extraction.decode import Route, SampleDataset, collate
from ..extraction.defaults import PREFETCH_FACTOR, default_workers
from ..extraction.plan import ShardPlan, reused_rows
from ..extraction.shard import ShardExecutor, ShardState, unchanged_retry
from ..extraction.write import ShardWriter
from .base import ExtractJob, ExtractStats


@dataclass
class EngineStats:
    embedded: int = 0  # rows embedded now
    reused: int = 0  # rows copied from other caches
    failed_now: int = 0  # rows that failed in this run
    retried: int = 0  # failed rows of earlier runs tried again
    computed: int = 0  # rows decoded (embedded or failed)
    seconds: float = 0.0  # time in the decode/embed loop


def run_local(
    plans: Sequence[ShardPlan], source: Source, records: Sequence[Record], executor: ShardExecutor,
    path: Path, key: str, dtype: str, num_workers: int, *, route: Route | None = None, progress: bool = True,
) -> EngineStats:
    stats = EngineStats()
    by_index = {p.index: p for p in plans}
    writer = ShardWriter(path, key, dtype)
    try:
        for plan in plans:
            stats.reused += reused_rows(plan, path)
            stats.retried += len(plan.previous_failures)
            if not plan.compute:
                writer.put(executor.finish(executor.start(plan)))
        batches = [list(b) for p in plans for b in p.batches]
        n_compute = sum(len(b) for b in batches)
        if not n_compute:
            return stats
        loader = torch.utils.data.DataLoader(
            SampleDataset(source, records, executor.opts, route),
            batch_sampler=batches,
            num_workers=num_workers,
            collate_fn=collate,
            pin_memory=False,  # CUDA pins into the embedder's fixed ring instead
            prefetch_factor=PREFETCH_FACTOR if num_workers > 0 else None,
            persistent_workers=False,
        )
        owner = {r: p.index for p in plans for r in (b[0] for b in p.batches)}  # first row of a batch -> shard
        states: dict[int, ShardState] = {}
        t0 = time.perf_counter()
        with tqdm(total=n_compute, unit="img", desc=f"extract {source.name}", disable=not progress,
                  dynamic_ncols=True, file=sys.stderr) as bar:
            for batch in loader:
                s = owner[batch.rows[0]]
                state = states.get(s) or states.setdefault(s, executor.start(by_index[s]))
                before = len(state.failed)
                executor.add(state, batch)
                stats.failed_now += len(state.failed) - before
                stats.computed += len(batch.rows)
                if state.left == 0:
                    result = executor.finish(state)
                    stats.embedded += state.embedded
                    if not unchanged_retry(state.plan, result):
                        writer.put(result)
                    del states[s]
                bar.update(len(batch.rows))
                if stats.failed_now:
                    bar.set_postfix(skipped=stats.failed_now, refresh=False)
        stats.seconds = time.perf_counter() - t0
    finally:
        writer.close()
    return stats


class LocalEngine:
    """Computes every shard of a job in this process (the default engine)."""

    name = "local"

    def close(self) -> None:
        """Nothing to release: the decoding processes end with each run."""

    def fill(self, job: ExtractJob) -> ExtractStats:
        stats = ExtractStats(str(job.path), len(job.records))
        if not job.plans:
            return stats
        ex = job.executor
        executor = ShardExecutor.build(job.source, job.records, ex.backbone, ex.layers, ex.decode, ex.decoder)
        workers = default_workers(ex.backbone.device) if ex.num_workers is None else ex.num_workers
        run = run_local(job.plans, job.source, job.records, executor, job.path, job.key, job.dtype, workers,
                        route=ex.decoder.route if ex.decoder else None, progress=job.progress)
        stats.embedded, stats.reused, stats.retried = run.embedded, run.reused, run.retried
        stats.images_per_s = run.computed / run.seconds if run.seconds > 0 and run.computed else 0.0
        return stats
