"""Decoding in DataLoader workers: bytes -> PIL (EXIF-rotated, RGB) -> the backbone's tensor.

A sample that cannot be read or decoded comes back with its reason instead of a tensor; the caller
records it and goes on. Batches are given explicitly (a list of index lists) so that they never
cross a cache shard, which makes an interrupted-and-resumed run compute exactly the same batches.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator, Sequence
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


def collate(items: list[Item]) -> tuple[list[int], torch.Tensor | None, list[int], list[tuple[int, str]]]:
    """-> (all indices, stacked good tensors or None, indices of the good ones, (index, reason) failures)."""
    good = [(i, t) for i, t, _ in items if t is not None]
    failed = [(i, err) for i, t, err in items if t is None]
    batch = torch.stack([t for _, t in good]) if good else None
    return [i for i, _, _ in items], batch, [i for i, _ in good], failed


def default_workers() -> int:
    return min(8, max(0, (os.cpu_count() or 1)))


def iterate_batches(
    dataset: DecodeDataset, batches: list[list[int]], num_workers: int
) -> Iterator[tuple[list[int], torch.Tensor | None, list[int], list[tuple[int, str]]]]:
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_sampler=batches,
        num_workers=num_workers,
        collate_fn=collate,
        pin_memory=torch.cuda.is_available(),
        prefetch_factor=4 if num_workers > 0 else None,
        persistent_workers=False,
    )
    yield from loader
