"""Execute one shard of the plan: donor rows copied, the rest decoded and embedded, failures recorded.

``ShardExecutor`` is what an engine holds: the backbone is loaded once, then shard after shard. An
engine feeds it the batches of a shard, decoded by worker processes or in-line (``start`` / ``add``
/ ``finish``); both engines do this through ``engines/local.py``'s ``run_local``.

Invariants kept here: a shard's buffer exists only from ``start`` until ``finish`` hands a whole
ShardResult over (memory bounded by the shard size); every row of the shard is accounted for
exactly once (copied, embedded or failed with a reason); batches come from the plan and never cross
a shard, so the same plan gives the same bytes. Buffers are ``(rows, *shape)`` float32 per layer:
``(rows, dim)`` for vectors, ``(rows, C, H, W)`` / ``(rows, L, C)`` for ``:map`` layers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..backbones.base import Backbone
from ..data.sources import Record, Source
from .decode import Batch, DecodeOptions, Route
from .embed import BatchDecoder, Embedder
from .plan import ShardPlan, copy_rows
from .write import ShardResult


@dataclass
class ShardState:
    plan: ShardPlan
    features: dict[str, np.ndarray]
    ok: np.ndarray
    errors: list[str]
    left: int  # rows still to compute
    embedded: int = 0
    failed: list[tuple[int, str]] = field(default_factory=list)


class ShardExecutor:
    def __init__(self, source: Source, records: Sequence[Record], embedder: Embedder,
                 shapes: Mapping[str, int | tuple[int, ...]], route: Route | None = None) -> None:
        self.source, self.records, self.embedder, self.route = source, records, embedder, route
        self.layers = embedder.layers
        # Per-row shape of every layer: (dim,) for vectors (a plain int is taken as one), the map's
        # (C, H, W) or (L, C) for a ``block<k>:map`` layer.
        self.shapes = {name: (v,) if isinstance(v, int) else tuple(v) for name, v in shapes.items()}

    @classmethod
    def build(cls, source: Source, records: Sequence[Record], backbone: Backbone, layers: Sequence[str],
              opts: DecodeOptions, decoder: BatchDecoder | None = None) -> ShardExecutor:
        """An executor for one backbone (loaded once, then shard after shard: what an actor holds)."""
        embedder = Embedder(backbone, layers, opts, decoder.decode_bytes if decoder else None)
        shapes = {name: backbone.shapes[name] for name in embedder.layers}
        return cls(source, records, embedder, shapes, decoder.route if decoder else None)

    @property
    def opts(self) -> DecodeOptions:
        return self.embedder.opts

    def start(self, plan: ShardPlan) -> ShardState:
        n = plan.stop - plan.start
        feats = {name: np.zeros((n, *self.shapes[name]), np.float32) for name in self.layers}
        copy_rows(plan, self.layers, feats)
        return ShardState(plan, feats, np.ones(n, bool), [""] * n, len(plan.compute))

    def add(self, state: ShardState, batch: Batch) -> None:
        start = state.plan.start

        def sink(rows: list[int], out: dict[str, np.ndarray]) -> None:
            local = np.asarray(rows) - start
            for name in self.layers:
                state.features[name][local] = out[name]
            state.embedded += len(rows)

        failed = list(batch.failed) + self.embedder.submit(batch, sink)
        for r, reason in failed:
            state.ok[r - start] = False
            state.errors[r - start] = reason
        state.failed += failed
        state.left -= len(batch.rows)

    def finish(self, state: ShardState) -> ShardResult:
        assert state.left == 0, "a shard is handed over only when all its rows are done"
        self.embedder.flush()  # async host copies of this shard's batches land before it is written
        return ShardResult(state.plan.index, state.plan.start, state.features, state.ok, state.errors)


def unchanged_retry(plan: ShardPlan, result: ShardResult) -> bool:
    """A retried shard whose failed rows failed again for the same reasons: no need to rewrite it."""
    if not plan.previous_failures:
        return False
    now = [(plan.start + int(j), result.errors[int(j)]) for j in np.flatnonzero(~result.ok)]
    return now == list(plan.previous_failures)
