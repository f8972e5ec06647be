"""The HDF5 feature cache: keys, the shard writer and the reader."""

from .key import SCHEMA_VERSION, cache_key, cache_path, feature_key, manifest_digest
from .reader import Cache, missing_shards, open_cache, read_meta
from .writer import shard_name, write_meta, write_shard

__all__ = [
    "SCHEMA_VERSION",
    "Cache",
    "cache_key",
    "cache_path",
    "feature_key",
    "manifest_digest",
    "missing_shards",
    "open_cache",
    "read_meta",
    "shard_name",
    "write_meta",
    "write_shard",
]
