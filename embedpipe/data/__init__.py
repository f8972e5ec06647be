"""Data sources and the decoding loader. ``resolve_source`` turns a ``--data`` argument into a Source."""

from __future__ import annotations

import os

from ..core.errors import EmbedpipeError
from .builtin import BUILTINS
from .sources import SIGNATURES, CsvSource, ImageFolderSource, Record, Source, display_name
from .splits import SplitRule, assign_splits


def resolve_source(data: str | os.PathLike[str] | Source, signature: str = "stat") -> Source:
    """A Source, a built-in name (``digits``), an ImageFolder directory or a ``.csv`` manifest.

    ``signature`` says how a file's identity (part of the cache key) is taken: ``stat`` (size and
    mtime) or ``content`` (sha256 of its bytes). It applies to folders and manifests; built-in and
    torchvision sets are identified by their content already, and a given Source keeps its own.
    """
    if signature not in SIGNATURES:
        raise EmbedpipeError(f"unknown signature {signature!r}: use {' or '.join(SIGNATURES)}")
    if isinstance(data, Source):
        return data
    data = os.fspath(data)
    if data in BUILTINS:
        return BUILTINS.create(data)
    if data.startswith("torchvision:"):
        from .torchvision_sets import (
            TorchvisionSource,  # torchvision.datasets: only for torchvision: sources
        )

        return TorchvisionSource(data.partition(":")[2])
    if os.path.isdir(data):
        return ImageFolderSource(data, signature=signature)
    shown = display_name(data)
    if os.path.isfile(data):
        if data.lower().endswith(".csv"):
            return CsvSource(data, signature=signature)
        raise EmbedpipeError(f"{shown} is a file but not a .csv manifest; give a folder, a .csv or a built-in")
    raise EmbedpipeError(
        f"data {shown!r} not found: give an image folder, a .csv manifest, torchvision:CIFAR10|CIFAR100 "
        f"or a built-in ({', '.join(BUILTINS.names())})"
    )


def list_datasets() -> list[str]:
    return BUILTINS.names()


__all__ = [
    "CsvSource",
    "ImageFolderSource",
    "Record",
    "Source",
    "SplitRule",
    "assign_splits",
    "list_datasets",
    "resolve_source",
]
