"""The audit's pictures: a Markdown report with PNG contact sheets beside it.

``write_report`` takes the audit's JSON result (``duplicates``, ``label_issues``, ``outliers``,
``summary``) and a function that opens an image by id, and writes into one folder:

- ``audit.md``: the summary, then one section per finding with its sheet and a table of its top rows;
- ``duplicates.png``: the top near-duplicate pairs side by side, each with its splits and similarity
  (a leak, a test or val image with a near-copy in train, is marked in red);
- ``label_issues.png``: the top label suspects, each with ``given -> suggested`` and its score;
- ``outliers.png``: the top outliers with their scores.

A sheet holds at most ``per_sheet`` entries (the table lists the same rows). An image that cannot be
opened (``open_image`` returns None or raises OSError: the file is gone or unreadable) becomes a grey
tile that says so, and the report still completes. A finding with no rows gets a line, not a sheet.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from ..core.atomic import atomic_write_bytes

_logger = logging.getLogger(__name__)

PER_SHEET = 24  # entries per contact sheet: enough to see a pattern, small enough to load at once
THUMB = 112  # pixels per side of one image's thumbnail
COLUMNS = 6  # entries per row of a sheet (a duplicate pair counts as one entry, two thumbnails wide)
CAPTION_LINES = 3  # text lines under each entry
LINE = 13  # pixels per caption line
PAD = 6  # pixels between entries
LEAK = (200, 30, 30)  # the colour of a leaked pair's frame and caption
MISSING = (200, 200, 200)  # the grey of a tile whose image could not be opened


def write_report(
    result: dict[str, Any], open_image: Callable[[str], Image.Image | None], out_dir: str | Path,
    *, per_sheet: int = PER_SHEET,
) -> Path:
    """Write ``audit.md`` and its PNG contact sheets into ``out_dir``; return the path of ``audit.md``.

    Parameters
    ----------
    result : dict
        The audit's JSON contract: ``duplicates`` (``{"a", "b", "similarity", "splits", "leak"}``),
        ``label_issues`` (``{"id", "given", "suggested", "score"}``, label names), ``outliers``
        (``{"id", "score"}``) and ``summary`` (a dict shown as a list). Missing lists count as empty.
    open_image : callable
        ``open_image(id) -> PIL.Image.Image or None``: the image of a cache id, None when it is gone
        (an OSError it raises counts as gone too).
    out_dir : str or Path
        Folder to write into (created when missing); existing sheets of the same names are replaced.
    per_sheet : int, default=24
        Entries per sheet and per table.

    Returns
    -------
    Path
        ``out_dir / "audit.md"``.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> from PIL import Image
    >>> from embedpipe.audit.sheets import write_report
    >>> result = {"duplicates": [{"a": "x.png", "b": "y.png", "similarity": 0.98, "splits": ["train", "test"],
    ...                           "leak": True}],
    ...           "label_issues": [{"id": "x.png", "given": "cat", "suggested": "dog", "score": 0.91}],
    ...           "outliers": [{"id": "gone.png", "score": 2.5}], "summary": {"rows": 3}}
    >>> opener = lambda i: None if i == "gone.png" else Image.new("RGB", (40, 30), "white")
    >>> out = write_report(result, opener, tempfile.mkdtemp())
    >>> sorted(p.name for p in out.parent.iterdir())
    ['audit.md', 'duplicates.png', 'label_issues.png', 'outliers.png']
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    opener = _Opener(open_image)
    dups = list(result.get("duplicates") or [])[:per_sheet]
    issues = list(result.get("label_issues") or [])[:per_sheet]
    outliers = list(result.get("outliers") or [])[:per_sheet]
    md = ["# Data audit", ""]
    summary = result.get("summary") or {}
    if summary:
        md += ["## Summary", "", *(f"- **{k}**: {_plain(v)}" for k, v in summary.items()), ""]

    md += ["## Near-duplicates", ""]
    if dups:
        _save(out_dir / "duplicates.png", _sheet([_pair_entry(d, opener) for d in dups], wide=2))
        leaks = sum(bool(d.get("leak")) for d in dups)
        md += [f"The top {len(dups)} pairs, most similar first ({leaks} of them leaks: a val or test image with "
               "a near-copy in train, framed in red).", "", "![near-duplicates](duplicates.png)", "",
               "| a | b | similarity | splits | leak |", "|---|---|---|---|---|",
               *(f"| {_cell(d['a'])} | {_cell(d['b'])} | {d['similarity']:.4f} | {' / '.join(map(str, d.get('splits', [])))} "
                 f"| {'yes' if d.get('leak') else 'no'} |" for d in dups), ""]
    else:
        md += ["No near-duplicates found.", ""]

    md += ["## Likely label errors", ""]
    if issues:
        _save(out_dir / "label_issues.png", _sheet([_issue_entry(r, opener) for r in issues]))
        md += [f"The top {len(issues)} suspects, most likely wrong first.", "", "![label issues](label_issues.png)", "",
               "| id | given | suggested | score |", "|---|---|---|---|",
               *(f"| {_cell(r['id'])} | {_cell(r['given'])} | {_cell(r['suggested'])} | {r['score']:.4f} |"
                 for r in issues), ""]
    else:
        md += ["No likely label errors found.", ""]

    md += ["## Outliers", ""]
    if outliers:
        _save(out_dir / "outliers.png", _sheet([_outlier_entry(r, opener) for r in outliers]))
        md += [f"The top {len(outliers)} outliers, most outlying first.", "", "![outliers](outliers.png)", "",
               "| id | score |", "|---|---|", *(f"| {_cell(r['id'])} | {r['score']:.4f} |" for r in outliers), ""]
    else:
        md += ["No outliers listed.", ""]

    if opener.missing:
        md += ["## Images that could not be opened", "",
               f"{len(opener.missing)} image(s) shown as grey tiles (moved or deleted since the cache was made):", "",
               *(f"- {_cell(i)}: {why}" for i, why in sorted(opener.missing.items())), ""]
    path = atomic_write_bytes(out_dir / "audit.md", "\n".join(md).encode())
    _logger.info("audit report: %s (%d image(s) missing)", path, len(opener.missing))
    return path


class _Opener:
    """``open_image`` with a memory of what could not be opened, and thumbnails cached by id."""

    def __init__(self, open_image: Callable[[str], Image.Image | None]) -> None:
        self.open_image = open_image
        self.missing: dict[str, str] = {}
        self._thumbs: dict[str, Image.Image | None] = {}

    def thumb(self, image_id: str) -> Image.Image | None:
        if image_id not in self._thumbs:
            self._thumbs[image_id] = self._load(image_id)
        return self._thumbs[image_id]

    def _load(self, image_id: str) -> Image.Image | None:
        try:
            img = self.open_image(image_id)
        except OSError as e:  # unreadable or gone: a tile that says so, not a failed report
            self.missing[image_id] = f"could not be read ({type(e).__name__})"
            return None
        if img is None:
            self.missing[image_id] = "file not found"
            return None
        img = img.convert("RGB")
        scale = THUMB / max(img.size)
        size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
        # small images (digits are 8 x 8) are enlarged with crisp pixels; large ones shrunk smoothly
        return img.resize(size, Image.Resampling.NEAREST if scale > 1 else Image.Resampling.LANCZOS)


def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default()


def _tile(img: Image.Image | None) -> Image.Image:
    """A THUMB x THUMB square with the image centred on white, or a grey 'missing' square."""
    tile = Image.new("RGB", (THUMB, THUMB), "white" if img is not None else MISSING)
    if img is None:
        draw = ImageDraw.Draw(tile)
        draw.text((THUMB // 2, THUMB // 2), "image\nmissing", fill="black", font=_font(), anchor="mm", align="center")
    else:
        tile.paste(img, ((THUMB - img.width) // 2, (THUMB - img.height) // 2))
    return tile


_Entry = tuple[list[Image.Image | None], list[str], tuple[int, int, int] | None]  # images, caption, frame colour


def _pair_entry(d: dict[str, Any], opener: _Opener) -> _Entry:
    splits = list(d.get("splits") or ["?", "?"])
    caption = [f"{splits[0]} | {splits[1]}", f"cos {d['similarity']:.3f}" + ("  LEAK" if d.get("leak") else ""),
               f"{d['a']} | {d['b']}"]
    return [opener.thumb(str(d["a"])), opener.thumb(str(d["b"]))], caption, LEAK if d.get("leak") else None


def _issue_entry(r: dict[str, Any], opener: _Opener) -> _Entry:
    return [opener.thumb(str(r["id"]))], [f"given: {r['given']}", f"-> {r['suggested']} ({r['score']:.3f})", str(r["id"])], None


def _outlier_entry(r: dict[str, Any], opener: _Opener) -> _Entry:
    return [opener.thumb(str(r["id"]))], [f"score {r['score']:.3f}", str(r["id"])], None


def _sheet(entries: Sequence[_Entry], wide: int = 1) -> Image.Image:
    """Entries in a grid of COLUMNS // wide columns: each its thumbnails side by side over its caption."""
    cols = max(1, COLUMNS // wide)
    w_entry, h_entry = wide * THUMB, THUMB + CAPTION_LINES * LINE
    rows = (len(entries) + cols - 1) // cols
    sheet = Image.new("RGB", (cols * (w_entry + PAD) + PAD, rows * (h_entry + PAD) + PAD), "white")
    draw, font = ImageDraw.Draw(sheet), _font()
    for n, (images, caption, frame) in enumerate(entries):
        x, y = PAD + (n % cols) * (w_entry + PAD), PAD + (n // cols) * (h_entry + PAD)
        for j, img in enumerate(images):
            sheet.paste(_tile(img), (x + j * THUMB, y))
            if j:  # a line between the two images of a pair
                draw.line([x + j * THUMB, y, x + j * THUMB, y + THUMB - 1], fill=MISSING)
        if frame is not None:
            draw.rectangle([x - 2, y - 2, x + w_entry + 1, y + THUMB + 1], outline=frame, width=2)
        for j, text in enumerate(caption[:CAPTION_LINES]):
            draw.text((x, y + THUMB + 1 + j * LINE), _fit(draw, text, w_entry, font), fill=frame or "black", font=font)
    return sheet


def _fit(draw: ImageDraw.ImageDraw, text: str, width: int, font: Any) -> str:
    """``text`` cut from the left (ids keep their file name) with '...' until it fits ``width`` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength("..." + text, font=font) > width:
        text = text[1:]
    return "..." + text


def _save(path: Path, img: Image.Image) -> None:
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    atomic_write_bytes(path, buf.getvalue())


def _cell(value: Any) -> str:
    """A value safe inside a Markdown table cell."""
    return str(value).replace("|", "\\|").replace("\n", " ")


SHOWN_ITEMS = 12  # entries of a long summary list or dict (per-class counts) written into audit.md


def _plain(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        items = list(value.items())
        more = f", ... ({len(items) - SHOWN_ITEMS} more in the JSON)" if len(items) > SHOWN_ITEMS else ""
        return ", ".join(f"{k}: {_plain(v)}" for k, v in items[:SHOWN_ITEMS]) + more
    if isinstance(value, list | tuple):
        more = f", ... ({len(value) - SHOWN_ITEMS} more in the JSON)" if len(value) > SHOWN_ITEMS else ""
        return (", ".join(map(_plain, value[:SHOWN_ITEMS])) + more) or "none"
    return str(value)
