"""Built-in ``glyphs``: 1500 Unicode characters rendered from the DejaVu fonts that matplotlib ships.

A dataset with more classes than effnet-lite0's 1000 ImageNet classes, made locally and
deterministically: the same images on any machine for a given embedpipe version, seed and font files
(their digests are part of every image's signature, so a different font build gives a new cache key).

Classes are printable, non-combining characters that DejaVu Sans and at least two other DejaVu faces
draw, minus homoglyphs (a character whose DejaVu Sans bitmap equals an earlier one's, such as Cyrillic
'А' for Latin 'A'). Each class has 8 images (6 train, 1 val, 1 test) that vary the face (sans, serif,
mono; regular, bold, oblique), size, position, rotation, ink and paper grey levels and noise.
"""

from __future__ import annotations

import hashlib
import os
import unicodedata
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..core.errors import EmbedpipeError
from .sources import Record, Source

VERSION = 1  # bump when the rendering changes: it is part of every image's signature
FACES = (  # the 12 text faces of DejaVu shipped in matplotlib's mpl-data/fonts/ttf
    "DejaVuSans", "DejaVuSans-Bold", "DejaVuSans-Oblique", "DejaVuSans-BoldOblique",
    "DejaVuSerif", "DejaVuSerif-Bold", "DejaVuSerif-Italic", "DejaVuSerif-BoldItalic",
    "DejaVuSansMono", "DejaVuSansMono-Bold", "DejaVuSansMono-Oblique", "DejaVuSansMono-BoldOblique",
)
SKIP_CATEGORIES = {"Cc", "Cf", "Cs", "Co", "Cn", "Zs", "Zl", "Zp", "Mn", "Me", "Mc"}


def font_dir() -> Path:
    try:
        import matplotlib  # heavy; the fonts ship with it
    except ImportError as e:
        raise EmbedpipeError("the glyphs dataset needs matplotlib's fonts: pip install matplotlib") from e
    return Path(matplotlib.__file__).parent / "mpl-data" / "fonts" / "ttf"


@cache
def _font(face: str, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(font_dir() / f"{face}.ttf"), size)


def _bitmap(ch: str, face: str, size: int) -> Image.Image | None:
    font = _font(face, size)
    box = font.getbbox(ch)
    if box[2] <= box[0] or box[3] <= box[1]:
        return None
    img = Image.new("L", (box[2] - box[0] + 2, box[3] - box[1] + 2), 0)
    ImageDraw.Draw(img).text((1 - box[0], 1 - box[1]), ch, font=font, fill=255)
    return img if img.getbbox() else None


@cache
def glyph_classes(n_classes: int) -> tuple[tuple[int, tuple[str, ...]], ...]:
    """(codepoint, faces that draw it) for the first ``n_classes`` usable, distinct characters."""
    from fontTools.ttLib import TTFont  # heavy; only when glyphs are drawn

    cmaps = {face: set(TTFont(str(font_dir() / f"{face}.ttf"), lazy=True).getBestCmap()) for face in FACES}
    seen: set[bytes] = set()
    chosen: list[tuple[int, tuple[str, ...]]] = []
    for cp in sorted(cmaps["DejaVuSans"]):
        ch = chr(cp)
        if cp < 0x21 or unicodedata.category(ch) in SKIP_CATEGORIES:
            continue
        faces = tuple(face for face in FACES if cp in cmaps[face])
        if len(faces) < 3:
            continue
        bitmap = _bitmap(ch, "DejaVuSans", 32)
        if bitmap is None:
            continue
        digest = hashlib.sha256(bitmap.tobytes() + bytes(bitmap.size)).digest()
        if digest in seen:
            continue
        seen.add(digest)
        chosen.append((cp, faces))
        if len(chosen) == n_classes:
            return tuple(chosen)
    raise EmbedpipeError(f"the fonts draw only {len(chosen)} distinct characters, fewer than {n_classes}")


def render(cp: int, faces: tuple[str, ...], index: int, seed: int, size: int = 64) -> Image.Image:
    """Image ``index`` of character ``cp``: deterministic in (cp, index, seed)."""
    rng = np.random.default_rng([seed, cp, index])
    face = faces[(index + int(rng.integers(len(faces)))) % len(faces)]
    glyph = _bitmap(chr(cp), face, int(rng.integers(26, 44)))
    if glyph is None:  # this face draws nothing for it: fall back to the reference face
        glyph = _bitmap(chr(cp), "DejaVuSans", 34)
    assert glyph is not None
    glyph = glyph.rotate(float(rng.uniform(-15, 15)), resample=Image.Resampling.BICUBIC, expand=True)
    scale = min(1.0, (size - 6) / max(glyph.size))
    if scale < 1.0:
        glyph = glyph.resize((max(1, round(glyph.width * scale)), max(1, round(glyph.height * scale))),
                             Image.Resampling.BICUBIC)
    mask = np.zeros((size, size), np.float32)
    x = (size - glyph.width) // 2 + int(rng.integers(-4, 5))
    y = (size - glyph.height) // 2 + int(rng.integers(-4, 5))
    x, y = min(max(x, 0), size - glyph.width), min(max(y, 0), size - glyph.height)
    mask[y : y + glyph.height, x : x + glyph.width] = np.asarray(glyph, np.float32) / 255.0
    paper, ink = float(rng.uniform(190, 255)), float(rng.uniform(0, 80))
    img = paper + (ink - paper) * mask + rng.normal(0, rng.uniform(2, 12), mask.shape)
    return Image.fromarray(np.clip(img, 0, 255).round().astype(np.uint8), mode="L").convert("RGB")


class GlyphsSource(Source):
    per_class = 8  # images per class: indices 0-5 train, 6 val, 7 test

    def __init__(self, n_classes: int = 1500, seed: int = 0) -> None:
        self.name = "glyphs"
        if (n_classes, seed) == (1500, 0):  # what `--data glyphs` builds, so the set can be rebuilt by name
            self.kind, self.root = "builtin", "glyphs"
        self.seed = seed
        self.classes = dict(glyph_classes(n_classes))
        self.description = f"glyphs v{VERSION}: {n_classes} Unicode characters x {self.per_class}, DejaVu fonts"
        fonts = hashlib.sha256()
        for face in FACES:
            fonts.update((font_dir() / f"{face}.ttf").read_bytes())
        base = f"v{VERSION}:seed{seed}:{fonts.hexdigest()[:16]}"
        split = ["train"] * (self.per_class - 2) + ["val", "test"]
        self.records = [
            Record(id=f"U+{cp:04X}/{i}", label=f"U+{cp:04X}", split=split[i], path=None, signature=f"{base}:{i}")
            for cp in sorted(self.classes)
            for i in range(self.per_class)
        ]

    def open(self, record: Record) -> Image.Image:
        code, _, index = record.id.partition("/")
        cp = int(code[2:], 16)
        return render(cp, self.classes[cp], int(index), self.seed)


def preview(path: str | os.PathLike[str], n: int = 40) -> None:
    """Save a contact sheet of the first ``n`` classes' first image (for the README)."""
    src = GlyphsSource()
    tiles = [src.open(r) for r in src.records[: n * src.per_class : src.per_class]]
    sheet = Image.new("RGB", (64 * 10, 64 * ((len(tiles) + 9) // 10)), "white")
    for i, tile in enumerate(tiles):
        sheet.paste(tile, (64 * (i % 10), 64 * (i // 10)))
    sheet.save(path)
