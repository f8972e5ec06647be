"""Data sources and the decoding loader. ``resolve_source`` turns a ``--data`` argument into a Source."""

from __future__ import annotations

import os

from ..errors import EmbedpipeError
from .builtin import BUILTINS
from .sources import CsvSource, ImageFolderSource, Record, Source
from .splits import SplitRule, assign_splits


def resolve_source(data: str | os.PathLike[str] | Source) -> Source:
    """A Source, a built-in name (``digits``), an ImageFolder directory or a ``.csv`` manifest."""
    if isinstance(data, Source):
        return data
    data = os.fspath(data)
    if data in BUILTINS:
        return BUILTINS.create(data)
    if data.startswith("torchvision:"):
        from .torchvision_sets import TorchvisionSource

        return TorchvisionSource(data.partition(":")[2])
    if os.path.isdir(data):
        return ImageFolderSource(data)
    if os.path.isfile(data):
        if data.lower().endswith(".csv"):
            return CsvSource(data)
        raise EmbedpipeError(f"{data} is a file but not a .csv manifest; give a folder, a .csv or a built-in")
    raise EmbedpipeError(
        f"data {data!r} not found: give an image folder, a .csv manifest, torchvision:CIFAR10|CIFAR100 "
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
