"""The engine interface: an ``ExtractJob`` goes in, ``ExtractStats`` come out.

``extract.run_extract`` makes the job (manifest, split, key, ``meta.h5``, the plan of pending shards
and donor rows); an engine only decides where the shards of that plan are computed. Every engine
runs the same stages (``extraction/``) and writes the same bytes for the same job:

* ``local`` (``engines/local.py``): one process, decoding processes feeding the model;
* ``ray`` (``engines/ray.py``): an actor pool on a Ray cluster, one shard per task.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ..backbones import Backbone
from ..core.errors import EmbedpipeError
from ..data.sources import Record, Source
from ..extraction.decode import DecodeOptions
from ..extraction.embed import BatchDecoder
from ..extraction.plan import ShardPlan

ENGINES = ("local", "ray")  # "local" is the default and needs nothing beyond embedpipe itself


@dataclass(frozen=True)
class ExecutorOptions:
    """How rows become features: the same for every shard of a job."""

    backbone: Backbone  # built by the driver (loads lazily); the Ray engine rebuilds it from its config
    layers: tuple[str, ...]  # stored from one forward pass
    decode: DecodeOptions  # the CPU decoder's recipe (its path is in the feature key)
    decoder: BatchDecoder | None  # a batch decoder for raw bytes (nvJPEG on CUDA), or None
    num_workers: int | None  # decoding processes; None = the device's default (extraction/defaults.py)


@dataclass(frozen=True)
class ExtractJob:
    """Everything an engine needs to fill the planned shards of one cache."""

    plans: tuple[ShardPlan, ...]  # the shards to write, in order; empty = the cache is up to date
    source: Source
    records: tuple[Record, ...]  # the manifest, sorted by id: row r of the cache is records[r]
    executor: ExecutorOptions
    path: Path  # the cache folder (meta.h5 already written)
    key: str  # the cache key every shard file carries
    dtype: str  # storage dtype of the features
    progress: bool = True  # a progress bar on stderr

    @property
    def to_compute(self) -> int:
        """Rows to decode and embed (the rest are copied from donors)."""
        return sum(len(p.compute) for p in self.plans)


@dataclass
class ExtractStats:
    """What one extraction did (``--json`` prints it)."""

    cache: str
    images: int
    embedded: int = 0  # rows embedded by this run
    reused: int = 0  # rows copied from an earlier cache of the same backbone and layers
    failed: int = 0  # unreadable images in the cache
    seconds: float = 0.0  # the whole call, planning included
    images_per_s: float = 0.0  # rows decoded and embedded per second of the compute loop
    resumed_shards: int = 0  # shards an interrupted run had finished
    retried: int = 0  # failed rows of an earlier run tried again


class Engine(Protocol):
    """Fills the shards of a job; the same job gives the same cache on every engine."""

    name: str

    def fill(self, job: ExtractJob) -> ExtractStats: ...

    def close(self) -> None:
        """Release what the engine holds (a Ray connection it opened); called once the run ends."""


def check_engine(engine: str) -> str:
    if engine not in ENGINES:
        raise EmbedpipeError(f"unknown engine {engine!r}: use {' or '.join(ENGINES)}")
    return engine
