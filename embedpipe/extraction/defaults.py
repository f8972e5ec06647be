"""Defaults of the extraction pipeline, chosen per device so that no flag is needed for speed.

Every number the stages use lives here, with the reason for it. Memory is bounded by these numbers
alone, never by the dataset size:

* decoded batches in flight: at most ``workers * PREFETCH_FACTOR`` uint8 batches
  (``batch * 3 * 224 * 224`` bytes each: 9.6 MB at batch 64, 38.5 MB at batch 256);
* CUDA: ``INPUT_RING`` pinned uint8 input slots and ``OUTPUT_RING`` pinned feature slots, allocated
  once (a fixed ring, so torch's caching host allocator never grows);
* shard buffers: the shard being filled, plus at most ``WRITER_QUEUE`` finished shards waiting for
  the background writer (``shard_size * sum(dims) * 4`` bytes each: 5 MB for 1024 x 1280 floats;
  a ``block<k>:map`` layer counts its flat size C*H*W: 90 MB for 1024 rows of effnet-lite0's
  block3:map at 224 px, so spatial caches may want a smaller ``shard_size``).
"""

from __future__ import annotations

import os

import torch

CUDA_BATCH = 256  # images per forward pass on a GPU: keeps a ViT-B/32 busy at bf16
CPU_BATCH = 64  # on CPU larger batches give no more throughput and delay the first shard
CUDA_MAX_WORKERS = 16  # decoding processes on a GPU machine (one per core, at most this many)
# On CPU one decoding process overlaps PIL with the model's forward; more processes compete with the
# model's own threads for the same cores (benchmarks/extract.py measured 0, 1 and 2 on 2 cores).
CPU_WORKERS = 1
PREFETCH_FACTOR = 2  # batches each worker decodes ahead: enough to hide jitter, bounded memory
INPUT_RING = 2  # pinned uint8 input slots (CUDA): one being copied to the device while one fills
OUTPUT_RING = 3  # pinned feature slots (CUDA): device->host copies in flight before one is awaited
WRITER_QUEUE = 2  # finished shards waiting for the background writer before the pipeline waits


def default_batch_size(device: torch.device) -> int:
    return CUDA_BATCH if device.type == "cuda" else CPU_BATCH


def default_workers(device: torch.device) -> int:
    cores = os.cpu_count() or 1
    if device.type == "cuda":
        return max(1, min(CUDA_MAX_WORKERS, cores))
    return min(CPU_WORKERS, max(0, cores - 1))
