"""The GPU decode path (embedpipe/extraction/gpu_decode.py) on real JPEG files, on CPU tensors and,
where CUDA is available, on the GPU too: header routing, tensor geometry against the PIL path (pixels
and features of real backbones), batch decoding with per-image fallback and order."""

from __future__ import annotations

import functools
import io
import warnings

import numpy as np
import pytest
import torch
from conftest import TINY_TIMM
from PIL import Image, ImageDraw

from embedpipe import create_backbone
from embedpipe.backbones.preprocess import Preprocess, normalize, pil_geometry, pil_to_uint8
from embedpipe.data.loader import to_rgb
from embedpipe.extraction.gpu_decode import (
    CPU_DECODE_PATH,
    DECODE_PATH,
    decode_batch,
    decode_path,
    gpu_decodable,
    jpeg_info,
    tensor_geometry,
)

DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]
# torchvision 0.29 deprecates its decoders (TorchCodec has the same nvJPEG path); not our concern here
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding:DeprecationWarning")


def photo_like(width: int, height: int, seed: int) -> Image.Image:
    """Smooth gradients, soft blobs, hard-edged shapes and sensor-like noise: what JPEG is made for."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32) / max(width, height)
    img = np.stack([255 * (rng.uniform(0.2, 0.8) + rng.uniform(-0.4, 0.4) * xx + rng.uniform(-0.4, 0.4) * yy)
                    for _ in range(3)], axis=-1)
    coarse = rng.normal(0, 40, (height // 40 + 2, width // 40 + 2, 3)).astype(np.float32)
    for c in range(3):  # low-frequency texture, upsampled smoothly
        img[..., c] += np.asarray(Image.fromarray(coarse[..., c], mode="F").resize((width, height), Image.BICUBIC))
    pil = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(pil)
    for _ in range(12):
        x0, y0 = rng.integers(0, width), rng.integers(0, height)
        x1, y1 = x0 + rng.integers(width // 20, width // 3), y0 + rng.integers(height // 20, height // 3)
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=colour)
    arr = np.asarray(pil, dtype=np.float32) + rng.normal(0, 6, (height, width, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def encode(img: Image.Image, fmt: str = "JPEG", **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def corrupt_quant_table(data: bytes) -> bytes:
    """A JPEG whose frame header names a quantisation table that does not exist: the header sniff
    passes, every decoder fails (libjpeg: 'Quantization table 0x03 was not defined')."""
    sof = data.find(b"\xff\xc0")
    broken = bytearray(data)
    broken[sof + 12] = 3  # first component's quantisation table selector
    return bytes(broken)


# ImageNet-like sizes (both orientations, a few odd ones) and camera-size photos, quality 75-95
SIZES = [(500, 375), (375, 500), (500, 333), (480, 360), (353, 500), (500, 500), (640, 427), (2000, 1500)]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """name -> the bytes of a file written to disk and read back, as the read stage does."""
    root = tmp_path_factory.mktemp("jpegs")
    out: dict[str, bytes] = {}
    for k, (w, h) in enumerate(SIZES):
        out[f"photo{k}"] = encode(photo_like(w, h, k), quality=75 + (20 * k) // (len(SIZES) - 1))
    base = photo_like(500, 375, 99)
    out["progressive"] = encode(base, quality=90, progressive=True)
    out["subsampling444"] = encode(base, quality=90, subsampling=0)
    out["grayscale"] = encode(base.convert("L"), quality=85)
    out["cmyk"] = encode(base.convert("CMYK"), quality=85)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW to display
    out["exif_rotated"] = encode(base, quality=85, exif=exif.tobytes())
    exif[0x0112] = 1
    out["exif_upright"] = encode(base, quality=85, exif=exif.tobytes())
    out["png"] = encode(base, "PNG")
    whole = encode(base, quality=85)
    out["truncated"] = whole[: len(whole) * 6 // 10]
    out["corrupt"] = corrupt_quant_table(whole)
    paths = {name: root / f"{name}.{'png' if name == 'png' else 'jpg'}" for name in out}
    for name, path in paths.items():
        path.write_bytes(out[name])
    return {name: path.read_bytes() for name, path in paths.items()}


PHOTOS = [f"photo{k}" for k in range(len(SIZES))]
GPU_OK = [*PHOTOS, "progressive", "subsampling444", "grayscale", "exif_upright", "corrupt"]
GPU_NOT = ["cmyk", "exif_rotated", "png", "truncated"]


def pil_decode(data: bytes) -> Image.Image:
    """The CPU path's decode, as the loader does it (EXIF orientation applied, RGB)."""
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        return to_rgb(img)


def tv_decode(data: bytes, device: str = "cpu") -> torch.Tensor:
    from torchvision.io import ImageReadMode, decode_jpeg

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB, device=device)


@functools.cache
def preprocesses() -> dict[str, Preprocess]:
    import open_clip
    import timm
    import timm.data

    out = {}
    model = timm.create_model("test_efficientnet")
    out["timm-tiny"] = Preprocess.from_transform(timm.data.create_transform(
        **timm.data.resolve_data_config(model=model), is_training=False))
    out["open_clip-224"] = Preprocess.from_transform(open_clip.image_transform(224, is_train=False))
    out["effnet-lite0"] = Preprocess.from_transform(create_backbone("effnet-lite0").transform)
    assert all(p is not None for p in out.values())
    return out  # type: ignore[return-value]


# -- routing -----------------------------------------------------------------------------------
def test_gpu_decodable_routes_each_file(files: dict[str, bytes]) -> None:
    assert [n for n in GPU_OK if not gpu_decodable(files[n])] == []
    assert [n for n in GPU_NOT if gpu_decodable(files[n])] == []
    info = jpeg_info(files["photo7"])
    assert info is not None and (info.width, info.height, info.components) == (2000, 1500, 3)
    assert jpeg_info(files["grayscale"]).components == 1  # type: ignore[union-attr]
    # Routing is right where it matters: what goes to the GPU path decodes (on CPU, same call) to
    # exactly PIL's pixels; the rotated file would not (PIL turns it upright), the CMYK one is inverted
    # Adobe CMYK that decoders treat differently, and the corrupt one fails in both decoders.
    for name in [n for n in GPU_OK if n != "corrupt"]:
        assert torch.equal(tv_decode(files[name]), pil_to_uint8(pil_decode(files[name]))), name
    assert tv_decode(files["exif_rotated"]).shape[1:] == (375, 500)
    assert pil_decode(files["exif_rotated"]).size == (375, 500)  # (w, h): rotated to portrait
    with pytest.raises(RuntimeError):
        tv_decode(files["corrupt"])
    with pytest.raises(OSError):
        pil_decode(files["corrupt"])


def test_header_sniff_refuses_odd_headers(files: dict[str, bytes]) -> None:
    photo = files["photo0"]
    assert not gpu_decodable(b"")
    assert not gpu_decodable(b"\xff\xd8\xff")
    assert not gpu_decodable(photo[:200])  # header cut short
    sof = photo.find(b"\xff\xc0")
    as_arithmetic = photo[:sof + 1] + b"\xc9" + photo[sof + 2:]  # SOF9: arithmetic coding
    assert not gpu_decodable(as_arithmetic)
    zero_height = bytearray(photo)
    zero_height[sof + 5 : sof + 7] = b"\0\0"  # height 0 (defined later by a DNL marker)
    assert not gpu_decodable(bytes(zero_height))
    assert not gpu_decodable(photo + b"x" * 5000)  # EOI not near the end: not sure it is whole
    assert gpu_decodable(photo + b"\0" * 100)  # a short trailer is fine


# -- geometry ----------------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
def test_tensor_geometry_matches_pil_geometry(files: dict[str, bytes], device: str) -> None:
    """Antialiased tensor resize + crop against PIL's resize + crop, per backbone preprocessing."""
    for name, pre in preprocesses().items():
        diffs = []
        for photo in [*PHOTOS, "progressive", "grayscale"]:
            img = pil_decode(files[photo])
            ref = pil_to_uint8(pil_geometry(img, pre))
            got = tensor_geometry(pil_to_uint8(img).to(device), pre).cpu()
            assert got.shape == ref.shape == (3, *pre.out_size) and got.dtype == torch.uint8
            diffs.append((got.float() - ref.float()).abs().mean().item())
        # uint8 on CPU follows PIL's fixed-point filter (about 0.1 grey levels apart); CUDA goes
        # through float32 and rounds, which is close too
        print(f"{name} on {device}: mean |tensor - PIL| per image, grey levels: max {max(diffs):.3f}")
        assert max(diffs) < (0.1 if device == "cpu" else 0.75), (name, diffs)


def test_tensor_geometry_batch_equals_one_by_one(files: dict[str, bytes]) -> None:
    pre = preprocesses()["open_clip-224"]
    imgs = [tv_decode(files["photo0"]), tv_decode(encode(photo_like(500, 375, 7), quality=80))]
    together = tensor_geometry(torch.stack(imgs), pre)
    assert torch.equal(together, torch.stack([tensor_geometry(i, pre) for i in imgs]))


# -- batch decoding ----------------------------------------------------------------------------
MIXED = ["photo0", "png", "photo1", "corrupt", "cmyk", "progressive", "grayscale", "truncated",
         "exif_rotated", "photo7", "exif_upright"]


@pytest.mark.parametrize("device", DEVICES)
def test_decode_batch_falls_back_per_image_and_keeps_order(files: dict[str, bytes], device: str) -> None:
    pre = preprocesses()["open_clip-224"]
    datas = [files[n] for n in MIXED]
    # what the retry is for: one corrupt JPEG fails torchvision's whole batch
    with pytest.raises(RuntimeError):
        from torchvision.io import ImageReadMode, decode_jpeg

        decode_jpeg([torch.frombuffer(bytearray(files[n]), dtype=torch.uint8) for n in ("photo0", "corrupt")],
                    mode=ImageReadMode.RGB, device=device)
    batch, decoded, fallback = decode_batch(datas, pre, torch.device(device))
    expect_ok = [i for i, n in enumerate(MIXED) if n in GPU_OK and n != "corrupt"]
    assert decoded == expect_ok
    assert fallback == [i for i in range(len(MIXED)) if i not in expect_ok]
    assert batch.shape == (len(decoded), 3, 224, 224) and batch.dtype == torch.uint8
    assert batch.device.type == device
    for row, i in enumerate(decoded):  # row k is image decoded[k]: compare with the PIL path
        ref = pil_to_uint8(pil_geometry(pil_decode(datas[i]), pre)).float()
        diff = (batch[row].cpu().float() - ref).abs().mean().item()
        assert diff < (0.75 if device == "cpu" else 2.0), (MIXED[i], diff)  # nvJPEG's IDCT/upsampling differ a little


@pytest.mark.parametrize("device", DEVICES)
def test_decode_batch_chunks_edges_and_names(files: dict[str, bytes], device: str) -> None:
    pre = preprocesses()["timm-tiny"]
    dev = torch.device(device)
    datas = [files[n] for n in ("photo0", "photo7", "corrupt", "photo1", "grayscale")]
    whole, ok, fb = decode_batch(datas, pre, dev)
    # a pixel budget below one photo decodes one image per chunk: same result
    chunked, ok2, fb2 = decode_batch(datas, pre, dev, pixel_budget=1)
    assert (ok, fb) == (ok2, fb2) == ([0, 1, 3, 4], [2])
    assert torch.equal(whole, chunked)
    empty, ok3, fb3 = decode_batch([files["png"], files["cmyk"]], pre, dev)
    assert empty.shape == (0, 3, 160, 160) and ok3 == [] and fb3 == [0, 1]
    assert decode_batch([], pre, dev)[0].shape == (0, 3, 160, 160)
    with pytest.raises(ValueError, match="fixed output size"):
        decode_batch(datas, Preprocess(224, "bicubic", None, None, pre.mean, pre.std), dev)
    assert decode_path(dev) == (DECODE_PATH if device == "cuda" else CPU_DECODE_PATH)


# -- features through real backbones -----------------------------------------------------------
def _cosines(bb: object, files: dict[str, bytes], device: str) -> np.ndarray:
    from typing import Any

    b: Any = bb
    pre = Preprocess.from_transform(b.transform)
    assert pre is not None
    names = [*PHOTOS, "progressive", "grayscale", "subsampling444"]
    reference = torch.stack([b.transform(pil_decode(files[n])) for n in names])  # the PIL path
    batch, decoded, fallback = decode_batch([files[n] for n in names], pre, torch.device(device))
    assert decoded == list(range(len(names))) and fallback == []
    fast = normalize(batch, pre)
    a, f = b.embed(reference, ["pooled"])["pooled"], b.embed(fast, ["pooled"])["pooled"]
    return np.sum(a * f, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(f, axis=1))


@pytest.mark.parametrize("device", DEVICES)
def test_features_match_the_pil_path(files: dict[str, bytes], tiny_timm_weights: str, device: str,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    """Mean cosine >= 0.99 between features of the PIL path and of decode_batch + normalize.
    Measured on CPU: effnet-lite0 0.9999+, the tiny random-weight timm model 0.999+ (printed)."""
    backbones = {
        "effnet-lite0": create_backbone("effnet-lite0", precision="fp32", device=device),
        "timm-tiny": create_backbone(TINY_TIMM, weights=tiny_timm_weights, precision="fp32", device=device),
    }
    for name, bb in backbones.items():
        cos = _cosines(bb, files, device)
        with capsys.disabled():
            print(f"\n{name} on {device}: mean cosine {cos.mean():.6f}, min {cos.min():.6f}")
        assert cos.mean() >= 0.99 and cos.min() >= 0.98, (name, cos)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_decode_does_not_overwrite_memory_in_use(files: dict[str, bytes]) -> None:
    """vision PR #9606's scenario: tensors freed while reads of them are still queued, then a decode.
    The reads must see their own data and the decode its own pixels."""
    pre = preprocesses()["open_clip-224"]
    datas = [files[n] for n in PHOTOS[:4]] * 8
    reference, _, _ = decode_batch(datas, pre, torch.device("cpu"))
    big = torch.randn(4096, 4096, device="cuda")
    for _ in range(20):
        victims = [torch.full((1 << 20,), float(k + 1), device="cuda") for k in range(8)]
        torch.cuda.synchronize()
        for _ in range(8):  # long kernels, so that the reductions below are still queued
            big = big @ big / 4096
        sums = [v.sum() for v in victims]
        del victims
        batch, ok, _ = decode_batch(datas, pre, torch.device("cuda"))
        torch.cuda.synchronize()
        assert [s.item() for s in sums] == [float((k + 1) << 20) for k in range(8)]
        assert ok == list(range(len(datas)))
        assert (batch.cpu().float() - reference.float()).abs().mean().item() < 2.0

