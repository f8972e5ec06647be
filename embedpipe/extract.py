"""source -> loader -> backbone -> cache writer.

``extract(data, backbone)`` embeds a dataset once into ``cache/<dataset>/<backbone>-<key>/`` and
returns the Cache. An identical second call reuses it without loading images; an interrupted call
resumes at the first unfinished shard; a dataset that grew embeds only its new images, copying the
rest from the earlier cache of the same backbone and layers.
"""

from __future__ import annotations

import contextlib
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from tqdm import tqdm

from .backbones import DEFAULT_BACKBONE, Backbone, BackboneConfig, create_backbone
from .cache import (
    Cache,
    cache_key,
    cache_path,
    feature_key,
    manifest_digest,
    missing_shards,
    read_meta,
    shard_name,
    write_meta,
    write_shard,
)
from .cache.reader import read_strings
from .data import Source, SplitRule, assign_splits, resolve_source
from .data.loader import DecodeDataset, default_workers, iterate_batches
from .errors import EmbedpipeError
from .locking import exclusive


@dataclass(frozen=True)
class ExtractConfig:
    """How features are computed and stored; every field has a sane default."""

    layers: tuple[str, ...] = ("pooled",)  # layers stored from one forward pass
    dtype: str = "float16"  # storage dtype: float16 (half the disk, ample precision) or float32
    batch_size: int = 64  # images per forward pass
    num_workers: int | None = None  # decoding processes; None = one per CPU core, at most 8
    shard_size: int = 1024  # rows per shard file: the unit of resume after a crash
    split: SplitRule = field(default_factory=SplitRule)  # used when the data brings no split

    def check(self) -> None:
        if self.dtype not in ("float16", "float32"):
            raise EmbedpipeError(f"bad dtype {self.dtype!r}: use float16 or float32")
        if self.batch_size < 1 or self.shard_size < 1:
            raise EmbedpipeError("batch size and shard size must be at least 1")
        if self.num_workers is not None and self.num_workers < 0:
            raise EmbedpipeError(f"--workers must be 0 or more, got {self.num_workers}")


@dataclass
class ExtractStats:
    cache: str
    images: int
    embedded: int
    reused: int
    failed: int
    seconds: float
    images_per_s: float
    resumed_shards: int


def library_versions() -> dict[str, str]:
    import open_clip
    import timm
    import torch

    from . import __version__

    return {
        "embedpipe": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "open_clip": open_clip.__version__,
        "h5py": h5py.__version__,
        "numpy": np.__version__,
    }


def _donors(dataset_dir: Path, fkey: str, own: Path) -> dict[tuple[str, str], tuple[Path, int, int]]:
    """(id, signature) -> (cache, shard, row in shard) for every good row of sibling caches that
    were made by the same backbone, layers and dtype."""
    found: dict[tuple[str, str], tuple[Path, int, int]] = {}
    if not dataset_dir.is_dir():
        return found
    for other in sorted(dataset_dir.iterdir()):
        if other == own or not (other / "meta.h5").is_file():
            continue
        with contextlib.suppress(OSError, KeyError, ValueError):
            meta = read_meta(other)
            if meta.get("feature_key") != fkey:
                continue
            with h5py.File(other / "meta.h5", "r") as f:
                ids, sigs = read_strings(f, "ids"), read_strings(f, "signatures")
            size = int(meta["shard_size"])
            for s in range(int(meta["n_shards"])):
                if not (other / shard_name(s)).is_file():
                    continue
                with h5py.File(other / shard_name(s), "r") as f:
                    ok = f["ok"][()]
                for j in np.flatnonzero(ok):
                    row = s * size + int(j)
                    found.setdefault((ids[row], sigs[row]), (other, s, int(j)))
    return found


def _copy_rows(
    targets: Sequence[int], sources: Sequence[tuple[Path, int, int]], layers: Sequence[str],
    out: dict[str, np.ndarray],
) -> None:
    """Fill ``out[layer][targets[k]]`` from donor rows, reading each donor shard once."""
    groups: dict[tuple[Path, int], list[tuple[int, int]]] = {}
    for t, (path, shard, row) in zip(targets, sources, strict=True):
        groups.setdefault((path, shard), []).append((row, t))
    for (path, shard), pairs in groups.items():
        pairs.sort()
        rows = [r for r, _ in pairs]
        dest = [t for _, t in pairs]
        with h5py.File(path / shard_name(shard), "r") as f:
            for layer in layers:
                out[layer][dest] = f["features"][layer][rows]


def prepare_records(source: Source, rule: SplitRule) -> tuple[list[Any], list[str]]:
    records = sorted(assign_splits(source.records, rule), key=lambda r: r.id)
    ids = [r.id for r in records]
    if len(set(ids)) != len(ids):
        raise EmbedpipeError(f"dataset {source.name} has duplicate ids")
    return records, sorted({r.label for r in records})


def _configs(options: dict[str, Any]) -> tuple[dict[str, Any], ExtractConfig]:
    bb_fields = {f.name for f in fields(BackboneConfig)} - {"spec"}
    ex_fields = {f.name for f in fields(ExtractConfig)}
    unknown = set(options) - bb_fields - ex_fields
    if unknown:
        raise EmbedpipeError(f"unknown extract option(s) {sorted(unknown)}; known: {sorted(bb_fields | ex_fields)}")
    config = replace(ExtractConfig(), **{k: v for k, v in options.items() if k in ex_fields})
    if isinstance(config.layers, str):
        config = replace(config, layers=tuple(config.layers.split(",")))
    config.check()
    return {k: v for k, v in options.items() if k in bb_fields}, config


def extract(
    data: str | Source,
    backbone: str | Backbone = DEFAULT_BACKBONE,
    *,
    cache_dir: str | Path = "cache",
    progress: bool = True,
    **options: Any,
) -> Cache:
    """Embed ``data`` with ``backbone`` into the cache and return it (see ``run_extract``)."""
    return run_extract(data, backbone, cache_dir=cache_dir, progress=progress, **options)[0]


def run_extract(
    data: str | Source,
    backbone: str | Backbone = DEFAULT_BACKBONE,
    *,
    cache_dir: str | Path = "cache",
    progress: bool = True,
    **options: Any,
) -> tuple[Cache, ExtractStats]:
    """Options are fields of BackboneConfig (weights, device, precision, channels_last) and of
    ExtractConfig (layers, dtype, batch_size, num_workers, shard_size, split)."""
    t0 = time.perf_counter()
    bb_options, config = _configs(options)
    source = resolve_source(data)
    records, label_names = prepare_records(source, config.split)
    if isinstance(backbone, Backbone) and bb_options:
        raise EmbedpipeError(f"backbone options {sorted(bb_options)} apply to a spec, not to a built Backbone")
    bb = backbone if isinstance(backbone, Backbone) else create_backbone(backbone, **bb_options)
    layers = bb.check_layers(config.layers)
    fkey = feature_key(bb.fingerprint, layers, config.dtype)
    key = cache_key(fkey, manifest_digest(records))
    path = cache_path(cache_dir, source.name, bb.spec, key)
    n = len(records)
    if progress:
        print(size_estimate_line(bb, layers, config.dtype, n), file=sys.stderr)

    with exclusive(path / ".lock", str(path)):
        existing = read_meta(path) if (path / "meta.h5").is_file() else None
        if existing is not None and existing.get("key") != key:
            raise EmbedpipeError(f"{path} holds a different cache (key {existing.get('key')}); remove it")
        size = int(existing["shard_size"]) if existing is not None else config.shard_size  # resume keeps its shards
        n_shards = (n + size - 1) // size
        if existing is None:
            label_index = {name: i for i, name in enumerate(label_names)}
            write_meta(
                path,
                arrays={
                    "ids": np.array([r.id for r in records], dtype=object),
                    "labels": np.array([label_index[r.label] for r in records], dtype=np.int32),
                    "label_names": np.array(label_names, dtype=object),
                    "split": np.array([r.split for r in records], dtype=object),
                    "signatures": np.array([r.signature for r in records], dtype=object),
                },
                attrs=_meta_attrs(source, bb, layers, config, key, fkey, n, n_shards),
            )
        pending = missing_shards(path, n_shards)
        stats = _fill_shards(source, records, bb, layers, config, path, key, fkey, size, pending, progress)
    stats.resumed_shards = n_shards - len(pending) if 0 < len(pending) < n_shards else 0
    stats.seconds = time.perf_counter() - t0
    cache = Cache(path)
    stats.failed = len(cache.failed)
    if progress:
        print(_summary_line(stats, len(pending) == 0), file=sys.stderr)
    return cache, stats


def size_estimate_line(bb: Backbone, layers: Sequence[str], dtype: str, rows: int) -> str:
    """'cache size estimate: ...' (rows x per-row bytes of every layer); informs, refuses nothing."""
    item = np.dtype(dtype).itemsize
    per_row = {name: bb.dims[name] * item for name in layers}
    total = rows * sum(per_row.values())
    parts = ", ".join(f"{name} {'x'.join(map(str, bb.shapes[name]))} = {b:,} B" for name, b in per_row.items())
    return f"cache size estimate: {rows} rows x {sum(per_row.values()):,} B/row = {format_bytes(total)} ({parts})"


def format_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def _meta_attrs(
    source: Source, bb: Backbone, layers: list[str], config: ExtractConfig, key: str, fkey: str,
    n: int, n_shards: int,
) -> dict[str, Any]:
    import json

    from .cache import SCHEMA_VERSION

    return {
        "schema_version": SCHEMA_VERSION,
        "key": key,
        "feature_key": fkey,
        "dataset": source.name,
        "source": source.description,
        "backbone": json.dumps({**bb.config.to_dict(), "precision": bb.precision}),
        "backbone_fingerprint": bb.fingerprint,
        "preprocess": json.dumps(bb.preprocess, default=str),
        "layers": json.dumps(layers),
        "dims": json.dumps({name: bb.dims[name] for name in layers}),
        "shapes": json.dumps({name: list(bb.shapes[name]) for name in layers}),
        "dtype": config.dtype,
        "n_rows": n,
        "shard_size": config.shard_size,
        "n_shards": n_shards,
        "split_rule": json.dumps(
            {"provided_by_source": True} if any(r.split for r in source.records) else config.split.to_dict()),
        "versions": json.dumps(library_versions()),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "host": platform.node(),
    }


def _fill_shards(
    source: Source, records: list[Any], bb: Backbone, layers: list[str], config: ExtractConfig,
    path: Path, key: str, fkey: str, size: int, pending: list[int], progress: bool,
) -> ExtractStats:
    n = len(records)
    stats = ExtractStats(str(path), n, 0, 0, 0, 0.0, 0.0, 0)
    if not pending:
        return stats
    donors = _donors(path.parent, fkey, path)
    shapes = {name: bb.shapes[name] for name in layers}
    # Plan each pending shard: rows to copy from donor caches and rows to compute. A shard's buffer
    # exists only from its first batch until it is written, so memory is bounded by the shard size.
    plan: dict[int, tuple[int, int, list[int]]] = {}  # shard -> (start, stop, rows to reuse)
    left: dict[int, int] = {}  # shard -> rows still to compute
    batches: list[list[int]] = []
    for s in pending:
        start, stop = s * size, min(n, (s + 1) * size)
        reuse = [r for r in range(start, stop) if (records[r].id, records[r].signature) in donors]
        compute = [r for r in range(start, stop) if (records[r].id, records[r].signature) not in donors]
        plan[s], left[s] = (start, stop, reuse), len(compute)
        stats.reused += len(reuse)
        batches += [compute[i : i + config.batch_size] for i in range(0, len(compute), config.batch_size)]
    buffers: dict[int, dict[str, Any]] = {}

    def buffer(s: int) -> dict[str, Any]:
        if s not in buffers:
            start, stop, reuse = plan[s]
            feats = {name: np.zeros((stop - start, *shapes[name]), np.float32) for name in layers}
            donor_rows = [donors[(records[r].id, records[r].signature)] for r in reuse]
            _copy_rows([r - start for r in reuse], donor_rows, layers, feats)
            buffers[s] = {"start": start, "feats": feats, "ok": np.ones(stop - start, bool),
                          "errors": [""] * (stop - start)}
        return buffers[s]

    def finish(s: int) -> None:
        b = buffer(s)
        write_shard(path, s, b["start"], key, b["feats"], b["ok"], b["errors"], config.dtype)
        del buffers[s]

    for s in [s for s in pending if left[s] == 0]:
        finish(s)
    workers = default_workers() if config.num_workers is None else config.num_workers
    dataset = DecodeDataset(source, records, bb.transform)
    n_compute = sum(len(b) for b in batches)
    t0 = time.perf_counter()
    with tqdm(total=n_compute, unit="img", desc=f"extract {source.name}", disable=not progress,
              dynamic_ncols=True, file=sys.stderr) as bar:
        for rows, batch, good, failed in iterate_batches(dataset, batches, workers):
            s = rows[0] // size
            b = buffer(s)
            if batch is not None:
                out = bb.embed(batch, layers)
                local = np.asarray(good) - b["start"]
                for name in layers:
                    b["feats"][name][local] = out[name]
            for r, reason in failed:
                b["ok"][r - b["start"]] = False
                b["errors"][r - b["start"]] = reason
                stats.failed += 1
            left[s] -= len(rows)
            stats.embedded += len(good)
            if left[s] == 0:
                finish(s)
            bar.update(len(rows))
            if stats.failed:
                bar.set_postfix(skipped=stats.failed, refresh=False)
    elapsed = time.perf_counter() - t0
    stats.images_per_s = n_compute / elapsed if elapsed > 0 and n_compute else 0.0
    return stats


def _summary_line(stats: ExtractStats, up_to_date: bool) -> str:
    if up_to_date:
        return f"cache up to date, nothing recomputed: {stats.cache} ({stats.failed} images skipped)"
    parts = [f"embedded {stats.embedded} images in {stats.seconds:.1f}s ({stats.images_per_s:.1f} img/s)"]
    if stats.reused:
        parts.append(f"reused {stats.reused} from an earlier cache")
    if stats.resumed_shards:
        parts.append(f"resumed after {stats.resumed_shards} finished shards")
    parts.append(f"skipped {stats.failed} unreadable" + (" (see `embedpipe info`)" if stats.failed else ""))
    return "; ".join(parts) + f" -> {stats.cache}"
