"""Per-image decoding to RGB: ``to_rgb`` (EXIF orientation, any mode -> RGB) and ``DecodeDataset``
(record -> the backbone's own float transform, or the reason it failed).

Extraction's read/decode stage (uint8 at model size, JPEG draft, signature checks, bytes for a batch
decoder) lives in ``embedpipe/extraction/decode.py`` and uses ``to_rgb`` from here.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps

from .sources import Record, Source, display_name

Item = tuple[int, torch.Tensor | None, str]


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode to RGB: EXIF orientation applied, transparency onto white, 16-bit/float rescaled."""
    img = ImageOps.exif_transpose(img) or img
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(arr)
        img = Image.fromarray(arr.astype(np.uint8), mode="L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return img.convert("RGB")


class DecodeDataset(torch.utils.data.Dataset[Item]):
    def __init__(self, source: Source, records: Sequence[Record], transform: Callable[[Any], torch.Tensor]):
        self.source, self.records, self.transform = source, records, transform

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> Item:
        record = self.records[index]
        if record.error:  # found unusable while listing: never opened (it may be a FIFO)
            return index, None, record.error
        try:
            if record.path is not None and os.path.getsize(record.path) == 0:
                return index, None, "empty file"
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with self.source.open(record) as img:
                    img.load()
                    return index, self.transform(to_rgb(img)), ""
        except Exception as e:  # any decode failure is data, not a crash
            reason = str(e).splitlines()[0] if str(e) else ""
            reason = display_name(reason)  # a non-UTF-8 path in the message: \xNN, so HDF5 can store it
            return index, None, f"{type(e).__name__}: {reason}"[:300]
