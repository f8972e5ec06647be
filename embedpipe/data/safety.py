"""Opening untrusted images with bounded memory: the pixel count is checked from the header, before
anything is decoded.

``PIL.Image.open`` reads only the header; ``load()`` then allocates width x height x bands bytes
whatever the file's size on disk, so a 100 kB PNG of zeros or a JPEG whose frame header claims
60000 x 60000 pixels can ask for gigabytes. ``open_image`` refuses an image over ``max_pixels``
(``MAX_PIXELS`` by default) with ``UnsafeImage`` and a reason, before ``load()``. PIL's own guard
(``Image.MAX_IMAGE_PIXELS``, about 89.5 megapixels) only warns up to twice that; here its warning is an
error too, and its ``DecompressionBombError`` becomes ``UnsafeImage``. Compressed text chunks are
capped by PIL (``ImageFile.MAX_TEXT_CHUNK``). Only the first frame of animated or multi-page files is
decoded.

``embedpipe predict`` opens every image through ``open_image``; the extraction loader
(``data/loader.py``) should call it (or ``check_size`` on an opened image) the same way.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from PIL import Image

# 64 megapixels (8000 x 8000): above any common camera or phone photo, about 192 MB decoded as RGB
# (and 512 MB for 16-bit or float images, which to_rgb rescales in float64).
MAX_PIXELS = 64_000_000


class UnsafeImage(ValueError):
    """An image refused before decoding (its header claims more pixels than allowed)."""


def check_size(img: Image.Image, max_pixels: int = MAX_PIXELS) -> None:
    """Raise UnsafeImage when an opened (not yet loaded) image claims more than ``max_pixels``."""
    width, height = img.size
    if width <= 0 or height <= 0:
        raise UnsafeImage(f"the header claims {width} x {height} pixels")
    if width * height > max_pixels:
        raise UnsafeImage(f"the header claims {width} x {height} = {width * height / 1e6:.0f} megapixels, "
                          f"over the limit of {max_pixels / 1e6:.0f} (a decompression bomb or an absurd size; "
                          "raise max_pixels if the image is genuine)")


def open_image(path: str | Path, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Open, check the claimed size, then decode the first frame. Raises UnsafeImage (a refused
    size) or PIL's own errors (OSError, ValueError, ...) for files that are not images."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(path)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise UnsafeImage(f"refused by PIL's decompression-bomb guard: {e}") from None
        try:
            check_size(img, max_pixels)
            img.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            img.close()
            raise UnsafeImage(f"refused by PIL's decompression-bomb guard: {e}") from None
        except BaseException:
            img.close()
            raise
    return img
