"""Cache keys: a hash of everything that produced the numbers.

``feature_key`` covers how features are made. What goes in, and where it comes from (this is the
one place that combines them):

* the backbone fingerprint (``Backbone.fingerprint``): spec, weights digest (a local file's sha256;
  for hub weights the tag plus a digest of the loaded state_dict), preprocessing config, precision;
* how the forward pass computes (``Backbone.compute_provenance``): device type, channels_last,
  precision, torch / timm / open_clip versions;
* the decode path (``DecodeOptions.path``): ``pil`` (full PIL decode), ``pil-draft`` (JPEGs decoded
  at reduced DCT scale), ``transform`` (the backbone's own float transform), each prefixed with the
  batch decoder's name when one takes the JPEGs (``gpu-nvjpeg+pil-draft`` on CUDA);
* the stored layers and the storage dtype.

Rows of two caches are interchangeable (a donor may lend rows) only when all of this is equal. ``manifest_digest`` covers what they are made of
(ids, size+mtime or content hash, labels, splits). The cache key hashes both, so the same inputs
reuse a cache and any change gives a new one. Caches that share a ``feature_key`` may lend each
other rows, which is how adding images to a dataset embeds only the new ones.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..data.sources import Record

SCHEMA_VERSION = 2  # meta.h5's layout; 2 added source_kind and source_root (where the images are)
READABLE_SCHEMAS = (1, 2)  # schema 1 reads as 2 with the source's kind and root unknown
KEY_SCHEMA = 1  # part of every feature key: bumped only when what the key hashes changes, never for
# metadata added beside the features, so that caches keep their identity (and their rows) across versions


def digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def feature_key(
    backbone_fingerprint: str, layers: Sequence[str], dtype: str, *,
    compute: dict[str, Any] | None = None, decode: str = "pil-draft",
) -> str:
    """Everything listed in the module docstring; ``compute`` = ``Backbone.compute_provenance()``."""
    return digest({"schema": KEY_SCHEMA, "backbone": backbone_fingerprint, "compute": compute or {},
                   "decode": decode, "layers": sorted(layers), "dtype": dtype})


def manifest_digest(records: Sequence[Record]) -> str:
    h = hashlib.sha256()
    for r in records:
        h.update(f"{r.id}\t{r.signature}\t{r.label}\t{r.split}\n".encode())
    return h.hexdigest()


def cache_key(feature: str, manifest: str) -> str:
    return digest({"feature": feature, "manifest": manifest})


SLUG_MAX = 60  # characters of a readable folder name kept before the hash suffix


def slug(text: str) -> str:
    """A readable ASCII folder name: runs of other characters become ``-``. Lossy (``a b`` and ``a-b``
    give one slug), so fine only where something unique follows it, as the key does for backbones."""
    return re.sub(r"[^A-Za-z0-9._]+", "-", text).strip("-")[:SLUG_MAX]


def unique_slug(text: str) -> str:
    """``slug(text)`` when that is exactly ``text``; otherwise the readable part plus 8 hex digits of
    the exact name, so names that differ (``数据`` and ``画像``, ``a b`` and ``a-b``) get different folders."""
    readable = slug(text)
    if readable == text and readable not in ("", ".", ".."):
        return readable
    tag = hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:8]
    return f"{readable[: SLUG_MAX - 9].rstrip('-')}-{tag}" if readable.strip(".") else tag


def cache_path(root: str | Path, dataset: str, backbone_spec: str, key: str) -> Path:
    """``<root>/<dataset-folder>/<backbone-slug>-<key[:16]>``; the dataset folder is ``unique_slug``
    of the name, since caches in one dataset folder lend each other rows."""
    return Path(root) / unique_slug(dataset) / f"{slug(backbone_spec) or 'backbone'}-{key[:16]}"
