"""The public extraction verb: resolve the data and the backbone, make the cache's identity and plan,
then hand an ``ExtractJob`` to an engine (``engines/``: local or Ray), which runs the stages.

``extract(data, backbone)`` embeds a dataset once into ``<root>/<dataset>/<backbone>-<key>/`` and
returns the Cache; the root is ``cache_dir``, else ``$EMBEDPIPE_CACHE``, else
``$XDG_CACHE_HOME/embedpipe`` (``~/.cache/embedpipe``): ``core.paths.cache_root``. An identical second call reuses it without loading images; an interrupted call
resumes at the first unfinished shard; a dataset that grew embeds only its new images, copying the
rest from the earlier cache of the same backbone and layers.
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from .backbones import DEFAULT_BACKBONE, Backbone, BackboneConfig, create_backbone
from .cache import (
    SCHEMA_VERSION,
    Cache,
    cache_key,
    cache_path,
    feature_key,
    manifest_digest,
    read_meta,
    write_meta,
)
from .core.errors import EmbedpipeError, os_reason
from .core.locking import exclusive
from .core.log import get_logger, level, show_progress
from .core.paths import cache_root
from .core.provenance import library_versions
from .data import Source, SplitRule, assign_splits, resolve_source
from .data.sources import Record
from .engines import Engine, ExecutorOptions, ExtractJob, ExtractStats, LocalEngine, check_engine
from .engines.ray import RayEngine
from .extraction.decode import DecodeOptions
from .extraction.defaults import default_batch_size
from .extraction.embed import BatchDecoder, gpu_decoder
from .extraction.plan import plan_shards

_logger = get_logger(__name__)

@dataclass(frozen=True)
class ExtractConfig:
    """How features are computed and stored; every field has a sane default.

    ``extract(data, **options)`` and ``run_extract`` take these fields as keyword options (next to
    the fields of ``BackboneConfig``); the ``embedpipe extract`` flags set the same.

    Attributes
    ----------
    layers : tuple of str
        Layers stored from one forward pass: ``pooled``, ``block<k>``, ``block<k>:grid<G>``,
        ``block<k>:map``, ``logits``.
    dtype : {"float16", "float32"}
        Storage dtype of the features (float16: half the disk, ample precision).
    batch_size : int or None
        Images per forward pass; None = per device (256 on a GPU, 64 on a CPU).
    num_workers : int or None
        Decoding processes; 0 = decode in the calling process; None = per device.
    jpeg_draft : bool
        Decode large JPEGs at a reduced DCT scale, never below the model's input size (part of the
        cache key).
    gpu_decode : bool
        On CUDA, decode JPEGs in batches with nvJPEG, the rest on the CPU (part of the cache key).
    shard_size : int
        Rows per shard file: the unit of resume after a crash.
    split : SplitRule
        The seeded per-class split (15 % val, 15 % test) used when the data brings no split of its own.
    signature : {"stat", "content"}
        What identifies a file in the key: its size and modification time, or the sha256 of its bytes
        (catches edits that keep both; reads every file on every run).
    """

    layers: tuple[str, ...] = ("pooled",)  # layers stored from one forward pass
    dtype: str = "float16"  # storage dtype: float16 (half the disk, ample precision) or float32
    batch_size: int | None = None  # images per forward pass; None = per device (extraction/defaults.py)
    num_workers: int | None = None  # decoding processes; None = per device (extraction/defaults.py)
    jpeg_draft: bool = True  # decode large JPEGs at reduced DCT scale (never below model size; in the key)
    gpu_decode: bool = True  # on CUDA: JPEGs decoded by nvJPEG in batches, the rest on CPU (in the key)
    shard_size: int = 1024  # rows per shard file: the unit of resume after a crash
    split: SplitRule = field(default_factory=SplitRule)  # used when the data brings no split
    signature: str = "stat"  # a file's identity in the key: stat (size+mtime) or content (sha256; reads every file)

    def check(self) -> None:
        """Raise ``EmbedpipeError`` for a bad dtype, batch size, shard size or worker count."""
        if self.dtype not in ("float16", "float32"):
            raise EmbedpipeError(f"bad dtype {self.dtype!r}: use float16 or float32")
        if (self.batch_size is not None and self.batch_size < 1) or self.shard_size < 1:
            raise EmbedpipeError("batch size and shard size must be at least 1")
        if self.num_workers is not None and self.num_workers < 0:
            raise EmbedpipeError(f"num_workers must be 0 or more, got {self.num_workers}")


def prepare_records(source: Source, rule: SplitRule) -> tuple[list[Record], list[str]]:
    """The manifest in cache-row order (sorted by id, split assigned) and the sorted label names."""
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
    if isinstance(config.layers, str):  # one layer name; several are a list (the CLI splits commas)
        if "," in config.layers:
            raise EmbedpipeError(f"layers takes a list of names, e.g. layers={config.layers.split(',')}")
        config = replace(config, layers=(config.layers,))
    config = replace(config, layers=tuple(config.layers))
    config.check()
    return {k: v for k, v in options.items() if k in bb_fields}, config


def extract(
    data: str | Source,
    backbone: str | Backbone = DEFAULT_BACKBONE,
    *,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    engine: str = "local",
    ray_address: str | None = None,
    ray_cpus_per_worker: int | None = None,
    **options: Any,
) -> Cache:
    """Embed a dataset once with a frozen backbone into the cache, and return the cache.

    Every image of ``data`` goes through ``backbone`` once, and the features of the requested layers
    are stored in ``<root>/<dataset>/<backbone>-<key>/``. The key hashes everything that produced the
    numbers (backbone, weights, preprocessing, layers, dtype, and each image's path, size and
    modification time), so a second call with the same inputs reuses the cache without loading an
    image, an interrupted call resumes at the first unfinished shard, and a dataset that grew embeds
    only its new images. Images that cannot be read are recorded with their reason
    (``Cache.failed``) and skipped; the others are embedded.

    Parameters
    ----------
    data : str or Source
        What to embed: an image folder (one sub-folder per class, optionally under ``train/``,
        ``val/`` and ``test/``), a CSV manifest (columns ``path,label[,split]``), a built-in set
        (``"digits"``, ``"glyphs"``), ``"torchvision:CIFAR10"`` or ``"torchvision:CIFAR100"``, or a
        ``Source`` (``embedpipe.data``).
    backbone : str or Backbone, default="effnet-lite0"
        A backbone spec: ``"effnet-lite0"``, ``"timm:<name>"``, ``"open_clip:<arch>[/<tag>]"``
        (``list_backbones()``), or a backbone built with ``create_backbone``.
    cache_dir : str, Path or None, default=None
        The cache root. None = ``$EMBEDPIPE_CACHE``, else ``$XDG_CACHE_HOME/embedpipe``
        (``~/.cache/embedpipe``), so that every working folder shares one cache.
    progress : bool, default=True
        Show a progress bar, the size estimate and a summary line on stderr.
    engine : {"local", "ray"}, default="local"
        Where the shards are computed: this process, or a Ray cluster (``pip install
        "embedpipe[ray]"``). The cache is the same either way.
    ray_address : str or None, default=None
        With ``engine="ray"``: the cluster to join, e.g. ``"ray://head:10001"``; None = start a local
        Ray instance.
    ray_cpus_per_worker : int or None, default=None
        With ``engine="ray"``: CPUs per Ray worker; None = one worker per GPU, or 1-CPU workers on
        CPU-only nodes.
    **options
        Backbone options, the fields of ``BackboneConfig``: ``weights`` (a local weights file),
        ``device`` (``"auto"``, ``"cpu"``, ``"cuda[:N]"``), ``precision`` (``"auto"``, ``"fp32"``,
        ``"bf16"``, ``"fp16"``), ``channels_last``, ``image_size``. Extraction options, the fields
        of ``ExtractConfig``: ``layers`` (a list of names, default ``["pooled"]``), ``dtype``,
        ``batch_size``, ``num_workers``, ``jpeg_draft``, ``gpu_decode``, ``shard_size``, ``split``
        (a ``SplitRule``), ``signature``.

    Returns
    -------
    Cache
        The cache, ready to read (``load``, ``iter_blocks``, ``counts``); its ``path`` is absolute.

    Raises
    ------
    EmbedpipeError
        An unknown option or layer, data that cannot be found, an unknown backbone, or a cache folder
        that cannot be written; the one-line message names the problem and the fix. After a failed
        write, the same call resumes where it stopped.

    See Also
    --------
    run_extract : The same, also returning what the run did (images embedded, reused, failed).
    open_cache : Open an existing cache by its path.

    Examples
    --------
    With a folder ``photos/`` holding one sub-folder of images per class:

    >>> import embedpipe
    >>> cache = embedpipe.extract("photos", layers=["pooled", "block4"], progress=False)
    >>> cache.layers, cache.dims["pooled"]
    (['pooled', 'block4'], 1280)
    >>> X, y = cache.load("train", "block4")           # float32 features, integer labels
    >>> X.dtype.name, X.shape[0] == len(y)
    ('float32', True)
    >>> again = embedpipe.extract("photos", layers=["pooled", "block4"], progress=False)
    >>> again.path == cache.path                        # the same inputs: the same cache, nothing recomputed
    True
    """
    return run_extract(data, backbone, cache_dir=cache_dir, progress=progress, engine=engine,
                       ray_address=ray_address, ray_cpus_per_worker=ray_cpus_per_worker, **options)[0]


def run_extract(
    data: str | Source,
    backbone: str | Backbone = DEFAULT_BACKBONE,
    *,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    decoder: BatchDecoder | None = None,
    engine: str = "local",
    ray_address: str | None = None,
    ray_cpus_per_worker: int | None = None,
    **options: Any,
) -> tuple[Cache, ExtractStats]:
    """Embed ``data`` into the cache, as ``extract`` does, and also return what this run did.

    A re-run retries failed rows: a shard holding failed rows is planned again, its good rows copied
    from itself and only the failed rows decoded again (so fixing a file and re-running fixes the
    cache); a shard whose rows fail again for the same reasons is left as it is.

    Parameters
    ----------
    data : str or Source
        What to embed, as for ``extract``.
    backbone : str or Backbone, default="effnet-lite0"
        A backbone spec or a built backbone, as for ``extract``.
    cache_dir : str, Path or None, default=None
        The cache root; None = ``$EMBEDPIPE_CACHE``, else ``$XDG_CACHE_HOME/embedpipe``
        (``~/.cache/embedpipe``).
    progress : bool, default=True
        Show a progress bar, the size estimate and a summary line on stderr.
    decoder : BatchDecoder or None, default=None
        A batch decoder for the raw bytes of the images; None = the GPU JPEG decoder on CUDA (unless
        ``gpu_decode=False``), decoding on the CPU elsewhere.
    engine : {"local", "ray"}, default="local"
        Where the shards are computed: this process, or a Ray cluster (the same plan, the same cache).
    ray_address : str or None, default=None
        With ``engine="ray"``: the cluster to join; None = start a local Ray instance.
    ray_cpus_per_worker : int or None, default=None
        With ``engine="ray"``: CPUs per Ray actor; None = one actor per GPU, or 1-CPU actors on
        CPU-only nodes.
    **options
        Fields of ``BackboneConfig`` (``weights``, ``device``, ``precision``, ``channels_last``,
        ``image_size``) and of ``ExtractConfig`` (``layers``, ``dtype``, ``batch_size``,
        ``num_workers``, ``jpeg_draft``, ``gpu_decode``, ``shard_size``, ``split``, ``signature``).

    Returns
    -------
    cache : Cache
        The cache; its ``path`` is absolute.
    stats : ExtractStats
        What this run did: ``embedded``, ``reused`` (copied from an earlier cache of the same
        dataset), ``retried``, ``failed``, ``resumed_shards``, ``seconds`` and ``images_per_s``.

    Raises
    ------
    EmbedpipeError
        As for ``extract``.

    Examples
    --------
    >>> from embedpipe.extract import run_extract
    >>> cache, stats = run_extract("photos", progress=False)
    >>> stats.failed, sorted(cache.counts())
    (0, ['test', 'train', 'val'])
    """
    t0 = time.perf_counter()
    if progress:
        show_progress()
    bb_options, config = _configs(options)
    source = resolve_source(data, signature=config.signature)
    records, label_names = prepare_records(source, config.split)
    runner, bb_options = _engine(engine, ray_address, ray_cpus_per_worker, bb_options)
    try:
        return _run(runner, source, records, label_names, backbone, bb_options, config, cache_dir,
                    decoder, progress, t0)
    finally:
        runner.close()


def _run(runner: Engine, source: Source, records: list[Record], label_names: list[str],
         backbone: str | Backbone, bb_options: dict[str, Any], config: ExtractConfig,
         cache_dir: str | Path | None, decoder: BatchDecoder | None, progress: bool,
         t0: float) -> tuple[Cache, ExtractStats]:
    """Build the backbone, fix the cache's identity, write its metadata when new, plan, and let the
    engine fill the shards (under the cache's writer lock)."""
    bb = _backbone(backbone, bb_options)
    layers = bb.check_layers(config.layers)
    opts = DecodeOptions(bb.pixel_preprocess, bb.transform, config.jpeg_draft)
    if decoder is None and config.gpu_decode and opts.pre is not None and bb.device.type == "cuda":
        decoder = gpu_decoder()
    decode_path = opts.path if decoder is None or opts.pre is None else f"{decoder.path}+{opts.path}"
    fkey = feature_key_for(bb, layers, config.dtype, decode_path)
    if config.batch_size is None:
        config = replace(config, batch_size=default_batch_size(bb.device))
    key = cache_key(fkey, manifest_digest(records))
    path = cache_path(cache_root(cache_dir), source.name, bb.spec, key)

    with exclusive(path / ".lock", str(path)):
        existing = read_meta(path) if (path / "meta.h5").is_file() else None
        if existing is not None and existing.get("key") != key:
            raise EmbedpipeError(f"{path} holds a different cache (key {existing.get('key')}); remove it")
        size = int(existing["shard_size"]) if existing is not None else config.shard_size  # resume keeps its shards
        n_shards = (len(records) + size - 1) // size
        if existing is None:
            _write_new_meta(path, records, label_names, _meta_attrs(
                source, bb, layers, config, key, fkey, len(records), n_shards, decode_path))
        assert config.batch_size is not None
        plans = plan_shards(records, path, key, fkey, size, config.batch_size)
        if plans:  # a re-run with nothing to compute says only that the cache is up to date
            _logger.log(level(progress), size_estimate_line(bb, layers, config.dtype, len(records)))
        job = ExtractJob(tuple(plans), source, tuple(records),
                         ExecutorOptions(bb, tuple(layers), opts, decoder, config.num_workers),
                         path, key, config.dtype, progress)
        stats = runner.fill(job)
    missing = sum(1 for p in plans if not p.previous_failures)
    stats.resumed_shards = n_shards - missing if 0 < missing < n_shards else 0
    stats.seconds = time.perf_counter() - t0
    cache = Cache(path)
    stats.failed = len(cache.failed)
    _logger.log(level(progress), _summary_line(stats, not plans))
    return cache, stats


def _engine(engine: str, ray_address: str | None, ray_cpus_per_worker: int | None,
            bb_options: dict[str, Any]) -> tuple[Engine, dict[str, Any]]:
    """The engine that fills the shards, and the backbone options the driver plans with (the Ray
    engine resolves precision on the cluster's GPUs, where the features are computed)."""
    if check_engine(engine) == "ray":
        remote = RayEngine(ray_address, bb_options, ray_cpus_per_worker)
        return remote, remote.driver_options
    if ray_address or ray_cpus_per_worker is not None:
        raise EmbedpipeError("ray_address and ray_cpus_per_worker need engine='ray'")
    return LocalEngine(), bb_options


def _backbone(backbone: str | Backbone, bb_options: dict[str, Any]) -> Backbone:
    if isinstance(backbone, Backbone):
        if bb_options:
            raise EmbedpipeError(f"backbone options {sorted(bb_options)} apply to a spec, not to a built Backbone")
        return backbone
    return create_backbone(backbone, **bb_options)


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
    n: int, n_shards: int, decode_path: str,
) -> dict[str, Any]:
    return {
        "schema_version": SCHEMA_VERSION,
        "key": key,
        "feature_key": fkey,
        "dataset": source.name,
        "source": source.description,
        "source_kind": source.kind,  # with source_root: where the images are (data/reopen.py opens them)
        # HDF5 text is UTF-8: a root that is not (undecodable bytes) is kept as ids are, backslash-escaped
        "source_root": source.root.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace"),
        "backbone": json.dumps({**bb.config.to_dict(), "precision": bb.precision}),
        "backbone_fingerprint": bb.fingerprint,
        "preprocess": json.dumps(bb.preprocess, default=str),
        "decode": decode_path,
        "compute": json.dumps(bb.compute_provenance()),
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


def feature_key_for(bb: Backbone, layers: Sequence[str], dtype: str, decode: str) -> str:
    """The feature key of this extraction (what goes in is documented in cache/key.py)."""
    return feature_key(bb.fingerprint, layers, dtype, compute=bb.compute_provenance(), decode=decode)


def _write_new_meta(path: Path, records: Sequence[Record], label_names: list[str], attrs: dict[str, Any]) -> None:
    """meta.h5 of a new cache: the manifest (ids, labels, splits, file signatures) and its provenance."""
    label_index = {name: i for i, name in enumerate(label_names)}
    arrays = {
        "ids": np.array([r.id for r in records], dtype=object),
        "labels": np.array([label_index[r.label] for r in records], dtype=np.int32),
        "label_names": np.array(label_names, dtype=object),
        "split": np.array([r.split for r in records], dtype=object),
        "signatures": np.array([r.signature for r in records], dtype=object),
    }
    try:
        write_meta(path, arrays=arrays, attrs=attrs)
    except OSError as e:
        raise EmbedpipeError(f"cannot write meta.h5 in cache folder {path}: {os_reason(e)}; "
                             "free space and re-run") from None


def _summary_line(stats: ExtractStats, up_to_date: bool) -> str:
    if up_to_date:
        return f"cache up to date, nothing recomputed: {stats.cache} ({stats.failed} images skipped)"
    parts = [f"embedded {stats.embedded} images in {stats.seconds:.1f}s ({stats.images_per_s:.1f} img/s)"]
    if stats.reused:
        parts.append(f"reused {stats.reused} from an earlier cache")
    if stats.resumed_shards:
        parts.append(f"resumed after {stats.resumed_shards} finished shards")
    if stats.retried:
        parts.append(f"retried {stats.retried} rows that failed before")
    parts.append(f"skipped {stats.failed} unreadable" + (" (see `embedpipe info`)" if stats.failed else ""))
    return "; ".join(parts) + f" -> {stats.cache}"
