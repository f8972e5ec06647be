"""Read and decode stages: a record -> uint8 pixels at model size, or its raw bytes for a batch decoder.

``load_sample`` is what a decoding worker runs per row:

1. a record that the listing already found unusable (``Record.error``) fails with that reason, and
   its file is never opened;
2. a file-backed record is read into memory once; an empty file fails as ``empty file``; its
   signature is checked against the bytes just read (``sha256:<32 hex>`` content signatures) or a
   fresh ``stat`` (``size:mtime_ns``): a file that changed since it was listed fails as
   ``changed while reading`` (it is never embedded under a stale signature);
3. when ``route(data)`` says so (the GPU decoder can take it), the bytes go on as they are;
4. otherwise PIL decodes them: a JPEG larger than needed is decoded at a reduced DCT scale
   (``Image.draft``) that never goes below the size the Resize step needs; then EXIF orientation and
   mode (``to_rgb``), resize + crop (``pil_geometry``) and a (3, H, W) uint8 tensor.

Every failure is data: ``Sample.reason`` holds ``"<Exception>: <first line>"``.
When the backbone's transform cannot be split into geometry + normalisation (``pre is None``), the
backbone's own float transform runs instead (``decode="transform"``).
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image

from ..backbones.preprocess import Preprocess, pil_geometry, pil_to_uint8
from ..core.errors import describe
from ..data.loader import to_rgb
from ..data.safety import check_size
from ..data.sources import Record, Source, display_name, file_signature

CHANGED = "changed while reading"
EXIF_ORIENTATION = 0x0112
Route = Callable[[bytes], bool]  # True: hand this file's bytes to the batch decoder


@dataclass(frozen=True)
class DecodeOptions:
    """How the CPU decoder turns an image into model input; ``path`` names it in the cache key."""

    pre: Preprocess | None  # geometry + normalisation; None = the backbone's own float transform
    transform: Callable[[Any], torch.Tensor] | None = None  # used only when pre is None
    draft: bool = True  # JPEG: decode at reduced DCT scale when the image is larger than needed

    @property
    def path(self) -> str:
        if self.pre is None:
            return "transform"
        return "pil-draft" if self.draft else "pil"


@dataclass
class Sample:
    """One row after the read/decode stage: pixels, or raw bytes, or the reason it failed."""

    row: int
    pixels: torch.Tensor | None = None  # (3, H, W) uint8 (float when decode path is "transform")
    data: bytes | None = None  # raw file bytes for the batch decoder
    reason: str = ""  # "" unless the row failed
    name: str = ""  # the file the bytes came from (named in decode errors)


@dataclass
class Batch:
    """Samples of one batch (never more than one shard), grouped by what the embed stage does with them."""

    rows: list[int]  # every row of the batch, in plan order
    pixels: torch.Tensor | None  # (len(good), 3, H, W) decoded on the CPU
    good: list[int]  # rows of ``pixels``
    raw: list[tuple[int, bytes, str]] = field(default_factory=list)  # (row, bytes, file) for the batch decoder
    failed: list[tuple[int, str]] = field(default_factory=list)  # (row, reason)


def failure_reason(e: BaseException) -> str:
    """One line; a non-UTF-8 path inside the message becomes \\xNN, so HDF5 can store it."""
    return display_name(describe(e))[:300]


def signature_matches(path: str, data: bytes, signature: str) -> bool:
    """Content signatures are checked on the bytes themselves, stat signatures on a fresh stat."""
    if signature.startswith("sha256:"):
        return signature == "sha256:" + hashlib.sha256(data).hexdigest()[:32]
    return file_signature(path) == signature


def _draft(img: Image.Image, pre: Preprocess) -> None:
    """Let a JPEG decode at 1/2, 1/4 or 1/8 scale, never smaller than what Resize needs."""
    if img.format != "JPEG":
        return
    w, h = img.size
    rotated = img.getexif().get(EXIF_ORIENTATION, 1) in (5, 6, 7, 8)  # exif_transpose swaps w and h
    need_w, need_h = pre.resized_size(h, w)[::-1] if rotated else pre.resized_size(w, h)
    img.draft("RGB", (need_w, need_h))


def decode_image(img: Image.Image, opts: DecodeOptions) -> torch.Tensor:
    """An opened (not yet loaded) PIL image -> model input for one image."""
    check_size(img)  # absurd dimensions / decompression bombs: refused from the header, before decoding
    if opts.pre is not None and opts.draft:
        _draft(img, opts.pre)
    img.load()
    rgb = to_rgb(img)
    if opts.pre is None:
        assert opts.transform is not None
        return opts.transform(rgb)
    return pil_to_uint8(pil_geometry(rgb, opts.pre))


def decode_bytes_cpu(row: int, data: bytes, opts: DecodeOptions, name: str = "") -> Sample:
    """The CPU decoder on bytes already read (also the batch decoder's per-image fallback). ``name``
    (the file) replaces the in-memory buffer in PIL's messages, so a reason is the same every run."""
    buf = io.BytesIO(data)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(buf) as img:
                return Sample(row, pixels=decode_image(img, opts))
    except Exception as e:  # any decode failure is data, not a crash
        return Sample(row, reason=failure_reason(e).replace(repr(buf), repr(name or "<bytes>")))


def reads_files(source: Source) -> bool:
    """True when the source opens records from their files (so bytes can be read and checked)."""
    return type(source).open is Source.open


def load_sample(source: Source, record: Record, row: int, opts: DecodeOptions, route: Route | None = None) -> Sample:
    """Read + decode one row (see the module docstring for the order of checks)."""
    if record.error:
        return Sample(row, reason=record.error)
    try:
        if record.path is not None and reads_files(source):
            with open(record.path, "rb") as f:
                data = f.read()
            if not data:
                return Sample(row, reason="empty file")
            if not signature_matches(record.path, data, record.signature):
                return Sample(row, reason=CHANGED)
            if route is not None and route(data):
                return Sample(row, data=data, name=record.path)
            return decode_bytes_cpu(row, data, opts, record.path)
        if record.path is not None and os.path.getsize(record.path) == 0:
            return Sample(row, reason="empty file")
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with source.open(record) as img:
                return Sample(row, pixels=decode_image(img, opts))
    except Exception as e:  # any read or decode failure is data, not a crash
        return Sample(row, reason=failure_reason(e))


def collate(samples: Sequence[Sample]) -> Batch:
    good = [s for s in samples if s.pixels is not None]
    return Batch(
        rows=[s.row for s in samples],
        pixels=torch.stack([s.pixels for s in good]) if good else None,  # type: ignore[misc]
        good=[s.row for s in good],
        raw=[(s.row, s.data, s.name) for s in samples if s.data is not None],
        failed=[(s.row, s.reason) for s in samples if s.pixels is None and s.data is None],
    )


class SampleDataset(torch.utils.data.Dataset[Sample]):
    """Rows of the record list as Samples, for a DataLoader whose batch_sampler is the plan's batches."""

    def __init__(self, source: Source, records: Sequence[Record], opts: DecodeOptions, route: Route | None = None):
        self.source, self.records, self.opts, self.route = source, records, opts, route

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, row: int) -> Sample:
        return load_sample(self.source, self.records[row], row, self.opts, self.route)


def decode_batch_cpu(source: Source, records: Sequence[Record], rows: Sequence[int], opts: DecodeOptions,
                     route: Route | None = None) -> Batch:
    """Read + decode one batch in this process, without decoding workers."""
    return collate([load_sample(source, records[r], r, opts, route) for r in rows])
