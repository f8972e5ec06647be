"""JPEG bytes -> uint8 (3, H, W) tensors at model size, decoded in batches on the device.

On CUDA the bytes go through nvJPEG (``torchvision.io.decode_jpeg(list, device="cuda")``); on CPU the
same call decodes with libjpeg-turbo, which is what the tests exercise. Resize and center crop then
run as tensor ops (``tensor_geometry``) following the backbone's ``Preprocess``; normalisation is
``preprocess.normalize``, on the device, in the embed stage.

What does not take this path goes back to the caller as "fallback" positions, to be decoded per
image by the CPU decoder (PIL, as today), which records any failure:

- ``gpu_decodable`` is a cheap header sniff: baseline or progressive 8-bit JPEG, 1 or 3 components
  (not CMYK/YCCK, not RGB-coded), sampling that nvJPEG supports, dimensions within PIL's
  decompression-bomb limit, no EXIF orientation other than 1 (PIL's path rotates those), and an EOI
  marker after the scan data (a truncated file fails in PIL; nvJPEG might decode it silently).
- torchvision raises for the whole batch when one JPEG is corrupt ("does not return partial
  results in case of an error", its docstring); ``decode_batch`` then retries image by image and
  sends only the failures to the fallback. A decoded image whose shape is not the header's also
  falls back.

Provenance: ``decode_path(device)`` names the path (``DECODE_PATH`` on CUDA) for the fingerprint.
"""

from __future__ import annotations

import contextlib
import re
import threading
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from PIL import Image

from ..backbones.preprocess import Preprocess

DECODE_PATH = "gpu-nvjpeg"  # nvJPEG decode + torchvision tensor resize/crop (antialiased)
CPU_DECODE_PATH = "cpu-libjpeg"  # the same function on CPU: torchvision's libjpeg-turbo decode
# Decoded pixels held at once per call (full-size RGB uint8, before resizing): 2**27 px = 384 MiB,
# about 700 ImageNet-size images or 10 photos of 12 MP; a batch with more is decoded in chunks.
DECODE_PIXEL_BUDGET = 2**27

# torchvision 0.29 deprecates its image decoders in favour of TorchCodec (which has the same
# nvJPEG batch decoder); the warning would fire on every batch. Filtered by message, not globally.
warnings.filterwarnings("ignore", message=r".*decoding and encoding capabilities of TorchVision",
                        category=DeprecationWarning)

_SOF_OK = {0xC0, 0xC2}  # baseline, progressive (Huffman). Not: extended, lossless, arithmetic
_XMP_ORIENTATION = re.compile(rb'tiff:Orientation(="|>)([0-9])')  # the pattern PIL's getexif() uses
_LUMA_SAMPLING = {0x11, 0x21, 0x12, 0x22, 0x41, 0x42}  # 4:4:4, 4:2:2, 4:4:0, 4:2:0, 4:1:1, 4:1:0


@dataclass(frozen=True)
class JpegInfo:
    width: int
    height: int
    components: int


def decode_path(device: torch.device) -> str:
    """The name of the path ``decode_batch`` takes on ``device``, for provenance."""
    return DECODE_PATH if device.type == "cuda" else CPU_DECODE_PATH


# -- header sniff ------------------------------------------------------------------------------
def _exif_orientation(tiff: bytes) -> int | None:
    """IFD0 tag 0x0112 of an EXIF TIFF block: its value, 0 when absent, None when malformed."""
    if tiff[:4] not in (b"II*\0", b"MM\0*"):
        return None
    order: Literal["little", "big"] = "little" if tiff[:2] == b"II" else "big"
    ifd = int.from_bytes(tiff[4:8], order)
    if ifd + 2 > len(tiff):
        return None
    for k in range(int.from_bytes(tiff[ifd : ifd + 2], order)):
        entry = tiff[ifd + 2 + 12 * k : ifd + 14 + 12 * k]
        if len(entry) < 12:
            return None
        if int.from_bytes(entry[:2], order) == 0x0112:
            return int.from_bytes(entry[8:10], order)  # a SHORT, left-justified in the value field
    return 0


def jpeg_info(data: bytes) -> JpegInfo | None:
    """The frame header of a JPEG that the GPU path decodes to the image PIL gives (up to the
    decoders' rounding); None for anything else."""
    if not data.startswith(b"\xff\xd8"):
        return None
    pos, n = 2, len(data)
    exif: int | None = None  # EXIF orientation (0 = no tag); PIL reads only the first EXIF block
    xmp = 0  # XMP tiff:Orientation, which PIL's getexif() uses when EXIF has no orientation tag
    adobe_transform, frame = None, None
    while True:
        if pos + 4 > n or data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # standalone markers
            pos += 2
            continue
        if marker in (0xD8, 0xD9):  # a second SOI, or EOI before any scan
            return None
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        if length < 2 or pos + 2 + length > n:
            return None
        segment = data[pos + 4 : pos + 2 + length]
        if marker == 0xE1 and segment.startswith(b"Exif\0\0") and exif is None:
            exif = _exif_orientation(segment[6:])
            if exif is None:
                return None  # unreadable EXIF: let PIL decide what it means
        elif marker == 0xE1 and segment.startswith(b"http://ns.adobe.com/xap/1.0/"):
            found = _XMP_ORIENTATION.search(segment)
            xmp = int(found[2]) if found and found[2] != b"1" else xmp  # any rotating one counts
        elif marker == 0xEE and segment.startswith(b"Adobe") and len(segment) >= 12:
            adobe_transform = segment[11]
        elif 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # SOFn (not DHT/JPG/DAC)
            if marker not in _SOF_OK or frame is not None:
                return None
            frame = segment
        elif marker == 0xDA:  # start of scan: the header is over
            scan_start = pos + 2 + length
            break
        pos += 2 + length
    orientation = exif or xmp  # EXIF's tag wins; XMP only when EXIF has none
    if frame is None or len(frame) < 6 or frame[0] != 8 or orientation in range(2, 9):
        return None  # not 8-bit, or needs rotation (PIL's path applies it)
    height, width, comps = int.from_bytes(frame[1:3], "big"), int.from_bytes(frame[3:5], "big"), frame[5]
    if comps not in (1, 3) or len(frame) < 6 + 3 * comps:
        return None
    if min(width, height) < 1 or width * height > (Image.MAX_IMAGE_PIXELS or 2**31):
        return None
    if comps == 3:
        ids = bytes(frame[6 + 3 * c] for c in range(3))
        sampling = [frame[7 + 3 * c] for c in range(3)]
        if adobe_transform == 0 or ids == b"RGB":  # RGB-coded, not YCbCr: libjpeg and nvJPEG may differ
            return None
        if sampling[0] not in _LUMA_SAMPLING or sampling[1] != 0x11 or sampling[2] != 0x11:
            return None
    # Entropy-coded data never holds FF D9 (0xFF is stuffed), so an EOI near the end means the file
    # is whole; a longer trailer than this window only costs the fast path.
    if data.find(b"\xff\xd9", max(scan_start, n - 4096)) == -1:
        return None
    return JpegInfo(width=width, height=height, components=comps)


def gpu_decodable(data: bytes) -> bool:
    """True for a JPEG the GPU path decodes as the PIL path would (see ``jpeg_info``)."""
    return jpeg_info(data) is not None


# -- geometry on tensors -----------------------------------------------------------------------
def tensor_geometry(img: torch.Tensor, pre: Preprocess) -> torch.Tensor:
    """``pre``'s Resize + CenterCrop on a uint8 (3, h, w) tensor (or a (B, 3, h, w) batch of one size),
    on any device: antialiased torchvision resize with the same interpolation and size rounding as the
    PIL path (``Preprocess.resized_size``), then the same center crop."""
    from torchvision.transforms.v2 import (
        InterpolationMode,  # torchvision: only on the GPU decode path
    )
    from torchvision.transforms.v2 import functional as F

    h, w = img.shape[-2:]
    new_w, new_h = pre.resized_size(int(w), int(h))
    out = F.resize(img, [new_h, new_w], interpolation=InterpolationMode(pre.interpolation), antialias=True)
    if pre.crop is not None:
        out = F.center_crop(out, list(pre.crop))
    return out


# -- batch decode ------------------------------------------------------------------------------
_LOCAL = threading.local()  # per thread: {device index: its decode stream}


def _decode_stream(device: torch.device) -> torch.cuda.Stream:
    """A side stream per (thread, CUDA device), used only by ``decode_batch``. Per thread, because the
    guard in ``_decode`` (stream idle before the decode) only holds if no other thread queues work
    and frees memory on the same stream in between."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    streams = _LOCAL.__dict__.setdefault("streams", {})
    if index not in streams:
        streams[index] = torch.cuda.Stream(device=index)
    return streams[index]


def _decode(tensors: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    from torchvision.io import (  # torchvision.io: only on the GPU decode path
        ImageReadMode,
        decode_jpeg,
    )

    if device.type == "cuda":
        # vision PR #9606 / torchcodec PR #1634: on GPUs with a hardware JPEG engine (A100, H100)
        # nvJPEG writes its output buffers without waiting for work already queued on the stream,
        # and those buffers come from torch's caching allocator, which recycles a block freed on a
        # stream while kernels queued on that stream may still read it: the decoder then overwrites
        # memory still in use (silently wrong pixels/features). torchcodec's fix waits for the
        # stream before the decode; we do the same from Python: the current stream here is our own
        # decode stream, and synchronising it means every block freed on it is really idle.
        torch.cuda.current_stream(device).synchronize()
    out = decode_jpeg(tensors, mode=ImageReadMode.RGB, device=device)
    return list(out) if isinstance(out, list | tuple) else [out]


def _chunks(infos: Sequence[tuple[int, JpegInfo]], budget: int) -> Iterator[list[tuple[int, JpegInfo]]]:
    chunk: list[tuple[int, JpegInfo]] = []
    pixels = 0
    for item in infos:
        size = item[1].width * item[1].height
        if chunk and pixels + size > budget:
            yield chunk
            chunk, pixels = [], 0
        chunk.append(item)
        pixels += size
    if chunk:
        yield chunk


def _decode_chunk(datas: list[bytes], device: torch.device) -> list[torch.Tensor | None]:
    """Decode a list of JPEGs; None for each one that fails. One failure does not lose the others."""
    tensors = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in datas]
    try:
        return list(_decode(tensors, device))
    except RuntimeError:  # torchvision gives no partial results: find the culprit(s) one by one
        out: list[torch.Tensor | None] = []
        for t in tensors:
            try:
                out.append(_decode([t], device)[0])
            except RuntimeError:
                out.append(None)
        return out


def decode_batch(
    datas: list[bytes],
    pre: Preprocess,
    device: torch.device,
    *,
    consumer_stream: torch.cuda.Stream | None = None,
    pixel_budget: int = DECODE_PIXEL_BUDGET,
) -> tuple[torch.Tensor, list[int], list[int]]:
    """Decode JPEG bytes on ``device`` and bring each to model size.

    Returns ``(batch, decoded, fallback)``: ``batch`` is (len(decoded), 3, H, W) uint8 on ``device`` in
    the order of ``decoded`` (ascending positions into ``datas``); ``fallback`` lists the positions the
    CPU decoder must handle (not ``gpu_decodable``, or failed here). Every position is in exactly one.

    CUDA: the work runs on a side stream; ``consumer_stream`` (default: the calling thread's current
    stream) is made to wait for it, and the batch is recorded on it so that the allocator does not hand
    its memory to a later decode while the consumer still reads it.
    """
    if not isinstance(pre.resize, tuple) and pre.crop is None:
        raise ValueError("decode_batch needs a fixed output size: Resize(int) without a crop varies per image")
    H, W = pre.out_size
    infos: list[tuple[int, JpegInfo]] = []
    fallback: list[int] = []
    for i, data in enumerate(datas):
        info = jpeg_info(data)
        if info is None:
            fallback.append(i)
        else:
            infos.append((i, info))
    cuda = device.type == "cuda"
    stream = _decode_stream(device) if cuda else None
    results: dict[int, torch.Tensor] = {}
    with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
        for chunk in _chunks(infos, pixel_budget):
            images = _decode_chunk([datas[i] for i, _ in chunk], device)
            by_shape: dict[tuple[int, int], list[tuple[int, torch.Tensor]]] = {}
            for (i, info), img in zip(chunk, images, strict=True):
                if img is None or tuple(img.shape) != (3, info.height, info.width):
                    fallback.append(i)
                else:
                    by_shape.setdefault((info.height, info.width), []).append((i, img))
            del images
            for group in by_shape.values():  # one resize per size: ImageNet-like sets share a few sizes
                stacked = group[0][1][None] if len(group) == 1 else torch.stack([img for _, img in group])
                resized = tensor_geometry(stacked, pre)
                for k, (i, _) in enumerate(group):
                    results[i] = resized[k]
            del by_shape
        order = sorted(results)
        batch = (torch.stack([results[i] for i in order]) if order
                 else torch.empty((0, 3, H, W), dtype=torch.uint8, device=device))
        del results
    if stream is not None:
        consumer = consumer_stream if consumer_stream is not None else torch.cuda.current_stream(device)
        consumer.wait_stream(stream)
        if batch.numel():  # an empty tensor has no memory to guard
            batch.record_stream(consumer)
    return batch, order, sorted(fallback)
