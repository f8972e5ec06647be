"""Extraction engines: ``local`` (one process, the default) and ``ray`` (a Ray cluster).

Both run the same plan (``extract.run_extract`` makes it: manifest, split, key, ``meta.h5``, pending
shards, donor rows) and write the same cache; an engine only decides where shards are computed.
The Ray engine is an optional extra (``pip install "embedpipe[ray]"``): nothing here imports Ray
until a Ray extraction starts.
"""

from __future__ import annotations

from ..core.errors import EmbedpipeError

ENGINES = ("local", "ray")  # "local" is the default and needs nothing beyond embedpipe itself


def check_engine(engine: str) -> str:
    if engine not in ENGINES:
        raise EmbedpipeError(f"unknown engine {engine!r}: use {' or '.join(ENGINES)}")
    return engine
