"""The HDF5 feature cache: keys, the shard writer and the reader."""

from .key import SCHEMA_VERSION, cache_key, cache_path, feature_key, manifest_digest
from .reader import (
    Cache,
    DamagedShard,
    missing_shards,
    open_cache,
    read_meta,
    unfinished_shards,
    verify_cache,
    verify_message,
)
from .writer import atomic_h5, shard_name, write_meta, write_shard

__all__ = [
    "SCHEMA_VERSION",
    "Cache",
    "DamagedShard",
    "atomic_h5",
    "cache_key",
    "cache_path",
    "feature_key",
    "manifest_digest",
    "missing_shards",
    "open_cache",
    "read_meta",
    "shard_name",
    "unfinished_shards",
    "verify_cache",
    "verify_message",
    "write_meta",
    "write_shard",
]
