"""Embed stage: a decoded Batch -> features per layer, written into the shard's buffers.

uint8 pixels go to the device (on CUDA through a fixed ring of pinned slots, copied
``non_blocking``), raw bytes go to the batch decoder (``decode_bytes``, the GPU JPEG decoder) whose
fallback positions are re-decoded here by the CPU decoder (failures recorded exactly as in the
workers), the backbone normalises on the device and runs its forward under autocast, and the
features are copied back to the host. On CUDA that copy is asynchronous, into a fixed ring of pinned
slots; a slot's copy is awaited only when the slot is needed again or when the shard is handed to
the writer (``flush``). On CPU the features are handed over at once.

Rows inside a batch are ordered by row number, whatever mix of CPU-decoded, GPU-decoded and fallback
rows it holds, so the same plan gives the same batches and the same bytes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..backbones.base import Backbone
from ..backbones.preprocess import Preprocess
from .decode import Batch, DecodeOptions, decode_bytes_cpu
from .defaults import INPUT_RING, OUTPUT_RING
from .gpu_decode import DECODE_PATH, decode_batch, gpu_decodable

# (datas, pre, device) -> (uint8 (n_ok, 3, H, W) on device, positions decoded, positions to fall back)
DecodeBytes = Callable[[list[bytes], Preprocess, torch.device], tuple[torch.Tensor, list[int], list[int]]]
# (rows, {layer: (len(rows), *shape) float32}) -> None: where finished features go (the shard buffer);
# shape is (dim,) for vectors, the unpooled map's for ``block<k>:map`` layers
Sink = Callable[[list[int], dict[str, np.ndarray]], None]


@dataclass(frozen=True)
class BatchDecoder:
    """A batch decoder for raw bytes (the GPU JPEG decoder): which files it takes and how it decodes.
    ``path`` is its name in the feature key (rows it cannot take fall back to the CPU decoder)."""

    route: Callable[[bytes], bool]
    decode_bytes: DecodeBytes
    path: str = "gpu"


@dataclass
class _Pending:
    rows: list[int]
    sink: Sink
    event: torch.cuda.Event | None


class Embedder:
    """The embed stage for one backbone and layer list; holds the rings, so make one and reuse it."""

    def __init__(self, backbone: Backbone, layers: Sequence[str], opts: DecodeOptions,
                 decode_bytes: DecodeBytes | None = None) -> None:
        self.bb, self.layers, self.opts, self.decode_bytes = backbone, list(layers), opts, decode_bytes
        self.device = backbone.device
        self.cuda = self.device.type == "cuda"
        self._in: list[torch.Tensor | None] = [None] * INPUT_RING  # pinned uint8 slots (CUDA)
        self._in_events: list[torch.cuda.Event | None] = [None] * INPUT_RING
        self._out: list[dict[str, torch.Tensor] | None] = [None] * OUTPUT_RING  # pinned feature slots (CUDA)
        self._pending: list[_Pending | None] = [None] * OUTPUT_RING
        self._i = self._o = 0

    # -- input -------------------------------------------------------------------------------
    def _to_device(self, pixels: torch.Tensor) -> torch.Tensor:
        if not self.cuda:
            return pixels
        k = self._i = (self._i + 1) % INPUT_RING
        slot, event = self._in[k], self._in_events[k]
        if event is not None:
            event.synchronize()  # the copy that used this slot is done
        if slot is None or slot.shape[1:] != pixels.shape[1:] or slot.shape[0] < pixels.shape[0]:
            slot = self._in[k] = torch.empty(
                (max(pixels.shape[0], slot.shape[0] if slot is not None else 0), *pixels.shape[1:]),
                dtype=pixels.dtype, pin_memory=True)
        view = slot[: pixels.shape[0]]
        view.copy_(pixels)
        x = view.to(self.device, non_blocking=True)
        ev = self._in_events[k] = torch.cuda.Event()
        ev.record()
        return x

    def _assemble(self, batch: Batch) -> tuple[list[int], torch.Tensor | None, list[tuple[int, str]]]:
        """All decodable rows of the batch as one device tensor in row order, and extra failures."""
        parts: list[tuple[list[int], torch.Tensor]] = []
        failed: list[tuple[int, str]] = []
        if batch.pixels is not None:
            parts.append((list(batch.good), self._to_device(batch.pixels)))
        if batch.raw:
            rows = [r for r, _, _ in batch.raw]
            datas = [d for _, d, _ in batch.raw]
            fallback = list(range(len(datas)))
            if self.decode_bytes is not None and self.opts.pre is not None:
                decoded, ok, fallback = self.decode_bytes(datas, self.opts.pre, self.device)
                if ok:
                    parts.append(([rows[p] for p in ok], decoded))
            cpu = [decode_bytes_cpu(rows[p], datas[p], self.opts, batch.raw[p][2]) for p in fallback]
            good = [s for s in cpu if s.pixels is not None]
            failed += [(s.row, s.reason) for s in cpu if s.pixels is None]
            if good:
                parts.append(([s.row for s in good], self._to_device(torch.stack([s.pixels for s in good]))))  # type: ignore[misc]
        if not parts:
            return [], None, failed
        rows = [r for p, _ in parts for r in p]
        x = parts[0][1] if len(parts) == 1 else torch.cat([t.to(self.device) for _, t in parts])
        order = sorted(range(len(rows)), key=rows.__getitem__)
        if order != list(range(len(rows))):
            x = x[torch.tensor(order, device=x.device)]
            rows = [rows[i] for i in order]
        return rows, x, failed

    # -- output ------------------------------------------------------------------------------
    def _resolve(self, k: int) -> None:
        pending = self._pending[k]
        if pending is None:
            return
        if pending.event is not None:
            pending.event.synchronize()
        slot = self._out[k]
        assert slot is not None
        n = len(pending.rows)
        pending.sink(pending.rows, {name: slot[name][:n].numpy() for name in self.layers})
        self._pending[k] = None

    def _to_host(self, rows: list[int], out: dict[str, torch.Tensor], sink: Sink) -> None:
        if not self.cuda:
            sink(rows, {name: out[name].float().numpy() for name in self.layers})  # maps keep their (B, *shape)
            return
        k = self._o = (self._o + 1) % OUTPUT_RING
        self._resolve(k)  # the slot's previous copy lands in its shard before the slot is reused
        slot = self._out[k]
        if slot is None or any(slot[n].shape[0] < len(rows) or slot[n].shape[1:] != out[n].shape[1:] for n in self.layers):
            slot = self._out[k] = {n: torch.empty((max(len(rows), 1), *out[n].shape[1:]), dtype=torch.float32,
                                                  pin_memory=True) for n in self.layers}
        for name in self.layers:
            slot[name][: len(rows)].copy_(out[name].float(), non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        self._pending[k] = _Pending(rows, sink, event)

    # -- the stage ---------------------------------------------------------------------------
    def submit(self, batch: Batch, sink: Sink) -> list[tuple[int, str]]:
        """Embed a batch; features reach ``sink`` now (CPU) or by the next ``flush`` (CUDA).
        Returns the rows that failed here (fallback decodes)."""
        rows, x, failed = self._assemble(batch)
        if x is not None:
            out = self.bb.forward(x, self.layers)
            self._to_host(rows, out, sink)
        return failed

    def flush(self) -> None:
        """Wait for every host copy in flight and hand it to its sink (call before a shard is written)."""
        for k in range(OUTPUT_RING):
            self._resolve(k)


def gpu_decoder() -> BatchDecoder:
    """nvJPEG through torchvision: the files ``gpu_decodable`` accepts go to the GPU in batches."""
    return BatchDecoder(gpu_decodable, decode_batch, DECODE_PATH)
