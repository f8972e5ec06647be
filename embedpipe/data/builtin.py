"""Built-in datasets that need no download: ``digits`` (scikit-learn's 1797 8x8 handwritten digits)."""

from __future__ import annotations

import hashlib

import numpy as np
from PIL import Image

from ..registry import Registry
from .sources import Record, Source

BUILTINS: Registry[Source] = Registry("built-in dataset")


class DigitsSource(Source):
    """scikit-learn's digits as RGB images: 8x8 grey levels 0..16 scaled to 0..255, upscaled 4x."""

    upscale = 4  # 32x32 stored; the backbone's own transform resizes further

    def __init__(self) -> None:
        from sklearn.datasets import load_digits

        digits = load_digits()
        self.name = "digits"
        self.description = "scikit-learn digits (1797 images, 10 classes)"
        self.images = (digits.images * (255.0 / 16.0)).round().astype(np.uint8)
        self.records = [
            Record(
                id=f"{int(t)}/{i:04d}",
                label=str(int(t)),
                split=None,
                path=None,
                signature=hashlib.sha256(img.tobytes()).hexdigest()[:16],
            )
            for i, (img, t) in enumerate(zip(self.images, digits.target, strict=True))
        ]

    def open(self, record: Record) -> Image.Image:
        index = int(record.id.split("/")[1])
        img = Image.fromarray(self.images[index], mode="L")
        size = 8 * self.upscale
        return img.resize((size, size), Image.Resampling.NEAREST).convert("RGB")


BUILTINS.register("digits")(DigitsSource)
