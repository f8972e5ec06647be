"""Opening a cached row's image again, through the source that the cache recorded.

A cache stores ids, not pixels. From schema 2 on its metadata records the source's ``kind`` and
``root`` (``Source.kind`` / ``Source.root``), which is enough to find a row again:

==============  ======================  ===============================================================
kind            root                    the image of row ``id``
==============  ======================  ===============================================================
``folder``      the image folder        the file ``root/id`` (ids are paths relative to the folder)
``csv``         the manifest file       the file ``id`` relative to the manifest's folder
``builtin``     ``digits``, ``glyphs``  rendered again by the built-in set (it has no files)
``torchvision`` ``CIFAR10``...          read from the downloaded set (never downloads)
==============  ======================  ===============================================================

Caches written before schema 2 (or from a custom ``Source``) have kind ``unknown``; give the data
again (``SourceLocation.of(data)``) to open their images. A file that is gone, unreadable or not an
image opens as None: callers report it and go on.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any

from PIL import Image

from ..core.errors import EmbedpipeError
from .builtin import BUILTINS
from .sources import Record, Source

KINDS = ("folder", "csv", "builtin", "torchvision", "unknown")
FILE_KINDS = ("folder", "csv")


@dataclass(frozen=True)
class SourceLocation:
    """Where a cache's images are: a source ``kind`` (see the module docstring) and its ``root``."""

    kind: str = "unknown"
    root: str = ""

    @classmethod
    def of(cls, data: str | os.PathLike[str] | Source) -> SourceLocation:
        """The location of ``data`` as ``extract`` takes it (a Source, a folder, a ``.csv`` or a
        built-in name), without listing it."""
        if isinstance(data, Source):
            return cls(data.kind if data.kind in KINDS else "unknown", data.root)
        text = os.fspath(data)
        if text in BUILTINS:
            return cls("builtin", text)
        if text.startswith("torchvision:"):
            return cls("torchvision", text.partition(":")[2])
        if os.path.isdir(text):
            return cls("folder", os.path.abspath(text))
        if os.path.isfile(text) and text.lower().endswith(".csv"):
            return cls("csv", os.path.abspath(text))
        raise EmbedpipeError(f"data {text!r} not found: give the image folder, .csv manifest or built-in "
                             "name the cache was extracted from")

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> SourceLocation:
        """The location recorded in a cache's metadata (``unknown`` for caches before schema 2)."""
        kind = str(meta.get("source_kind") or "unknown")
        return cls(kind if kind in KINDS else "unknown", str(meta.get("source_root") or ""))

    @property
    def has_files(self) -> bool:
        return self.kind in FILE_KINDS

    def path(self, id: str) -> str | None:
        """The file of row ``id``, or None when the source has no files (built-in sets) or is unknown."""
        if self.kind == "folder":
            return os.path.join(self.root, *id.split("/"))
        if self.kind == "csv":
            return os.path.normpath(os.path.join(os.path.dirname(self.root), id))
        return None


class ImageOpener:
    """``opener(id) -> PIL.Image.Image | None``: a cached row's image, loaded, in RGB.

    Files are opened by path; built-in and torchvision sets are built once (on the first call) and
    render or read the row. None when the file is gone or cannot be decoded, or when the location is
    unknown.
    """

    def __init__(self, location: SourceLocation) -> None:
        self.location = location
        self._source: Source | None = None
        self._records: dict[str, Record] = {}

    def _built(self) -> Source | None:
        if self._source is None and self.location.kind in ("builtin", "torchvision"):
            with contextlib.suppress(EmbedpipeError):
                if self.location.kind == "builtin":
                    self._source = BUILTINS.create(self.location.root)
                else:
                    from .torchvision_sets import (
                        TorchvisionSource,  # torchvision.datasets: only for torchvision: sources
                    )

                    self._source = TorchvisionSource(self.location.root, download=False)
            if self._source is not None:
                self._records = {r.id: r for r in self._source.records}
        return self._source

    def read_bytes(self, id: str) -> bytes | None:
        """The file's bytes (None for sources without files, or a file that is gone)."""
        path = self.location.path(id)
        if path is None:
            return None
        try:
            with open(path, "rb") as f:
                return f.read()
        except OSError:
            return None

    def __call__(self, id: str) -> Image.Image | None:
        path = self.location.path(id)
        try:
            if path is not None:
                with Image.open(path) as img:
                    return img.convert("RGB")
            source = self._built()
            record = self._records.get(id)
            if source is None or record is None:
                return None
            return source.open(record).convert("RGB")
        except (OSError, ValueError, Image.DecompressionBombError):
            return None
