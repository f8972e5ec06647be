"""The extraction stages alone and together: uint8 path, JPEG draft, plan, retry, signatures,
writer errors and the batch-decoder (GPU) plumbing, all on CPU with real files and real models."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from conftest import TINY_TIMM, make_image, make_image_folder
from PIL import Image

from embedpipe import create_backbone
from embedpipe.backbones.preprocess import Preprocess
from embedpipe.data import SplitRule, resolve_source
from embedpipe.data.loader import to_rgb
from embedpipe.data.sources import ImageFolderSource, Record
from embedpipe.extract import prepare_records, run_extract
from embedpipe.extraction.decode import CHANGED, DecodeOptions, decode_batch_cpu, load_sample
from embedpipe.extraction.embed import BatchDecoder
from embedpipe.extraction.plan import plan_shards

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from _common import camera_jpeg

FAST = {"precision": "fp32", "num_workers": 0, "batch_size": 4, "progress": False}


def test_uint8_path_equals_float_path(image_folder: Path, tiny_timm_weights: str) -> None:
    """PNG pixels through uint8 + on-device normalisation give the float transform's features."""
    bb = create_backbone(TINY_TIMM, weights=tiny_timm_weights, precision="fp32")
    src = resolve_source(str(image_folder))
    records = src.records[:6]
    opts = DecodeOptions(bb.pixel_preprocess, bb.transform, draft=True)
    batch = decode_batch_cpu(src, records, range(6), opts)
    assert batch.pixels is not None and batch.pixels.dtype == torch.uint8 and not batch.failed
    floats = torch.stack([bb.transform(to_rgb(Image.open(r.path))) for r in records])  # type: ignore[arg-type]
    layers = ["pooled", "block2"]
    new, old = bb.embed(batch.pixels, layers), bb.embed(floats, layers)
    for name in layers:
        np.testing.assert_allclose(new[name], old[name], rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_draft_decode_is_close_to_full_decode(tmp_path: Path) -> None:
    """Camera-size JPEGs decoded at reduced DCT scale: mean cosine to the full decode >= 0.99 with
    effnet-lite0's real weights (measured: mean 0.9983, min 0.9975 on these 8 images)."""
    bb = create_backbone("effnet-lite0", precision="fp32")
    pre = bb.pixel_preprocess
    assert pre is not None
    sizes = [(4000, 3000), (1600, 1200), (3000, 4000), (2000, 1500)] * 2
    datas = [camera_jpeg(i, s) for i, s in enumerate(sizes)]
    full = torch.stack([load_from_bytes(d, DecodeOptions(pre, draft=False)) for d in datas])
    draft = torch.stack([load_from_bytes(d, DecodeOptions(pre, draft=True)) for d in datas])
    assert not torch.equal(full, draft)  # the draft path really decoded something else
    a, b = bb.embed(full, ["pooled"])["pooled"], bb.embed(draft, ["pooled"])["pooled"]
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    print(f"draft vs full decode, effnet-lite0 pooled: mean cosine {cos.mean():.4f}, min {cos.min():.4f}")
    assert cos.mean() >= 0.99


def load_from_bytes(data: bytes, opts: DecodeOptions) -> torch.Tensor:
    from embedpipe.extraction.decode import decode_bytes_cpu

    sample = decode_bytes_cpu(0, data, opts)
    assert sample.pixels is not None, sample.reason
    return sample.pixels


def test_draft_never_goes_below_resize_size(tmp_path: Path) -> None:
    pre = Preprocess(resize=256, interpolation="bicubic", max_size=None, crop=(224, 224),
                     mean=(0.5,) * 3, std=(0.5,) * 3)  # type: ignore[arg-type]
    data = camera_jpeg(0, (4000, 3000))
    with Image.open(io.BytesIO(data)) as img:
        img.draft("RGB", pre.resized_size(*img.size))
        assert img.size == (500, 375) and min(img.size) >= 256  # 1/8 scale still covers the 256 side
    assert load_from_bytes(data, DecodeOptions(pre)).shape == (3, 224, 224)


def test_plan_is_deterministic_and_batches_stay_in_shards(image_folder: Path, tiny_timm_weights: str,
                                                         tmp_path: Path) -> None:
    root = tmp_path / "cache"
    first, _ = run_extract(str(image_folder), TINY_TIMM, weights=tiny_timm_weights, cache_dir=root,
                           shard_size=5, **FAST)
    # one shard run alone in this process (what a Ray actor does) gives the bytes the whole run wrote
    from embedpipe.engines.local import run_local
    from embedpipe.extraction.embed import Embedder
    from embedpipe.extraction.shard import ShardExecutor

    bb = create_backbone(TINY_TIMM, weights=tiny_timm_weights, precision="fp32")
    src0 = resolve_source(str(image_folder))
    records0, _ = prepare_records(src0, SplitRule())
    (plan0, *_) = plan_shards(records0, tmp_path / "elsewhere" / "x", "k", "no-donors", 5, 4)
    opts = DecodeOptions(bb.pixel_preprocess, bb.transform)
    executor = ShardExecutor(src0, records0, Embedder(bb, ["pooled"], opts), {"pooled": bb.dims["pooled"]})
    alone = tmp_path / "alone"
    alone.mkdir()
    run_local([plan0], src0, records0, executor, alone, "k", "float16", 0, progress=False)
    with h5py.File(first.path / "shards" / "00000.h5") as f, h5py.File(alone / "shards" / "00000.h5") as g:
        assert np.array_equal(g["features/pooled"][()], f["features/pooled"][()])
    for i in range(8, 11):
        make_image(2, i).save(image_folder / "class2" / f"img{i:03d}.png")
    src = resolve_source(str(image_folder))
    records, _ = prepare_records(src, SplitRule())
    fkey = str(first.meta["feature_key"])
    target = root / "shapes" / "new"
    plans = [plan_shards(records, target, "k", fkey, 5, 3) for _ in range(2)]
    assert plans[0] == plans[1] and len(plans[0]) == 6  # 27 rows, 6 shards, all missing
    computed = [r for p in plans[0] for r in p.compute]
    assert len(computed) == 3 and {records[r].id for r in computed} == {f"class2/img{i:03d}.png" for i in (8, 9, 10)}
    for p in plans[0]:
        rows = sorted(list(p.compute) + [r for r, _ in p.copy])
        assert rows == list(range(p.start, p.stop))  # every row exactly once
        assert all(p.start <= r < p.stop for b in p.batches for r in b)  # batches never cross a shard
    # a donor shard that claims another cache's key lends nothing
    for shard in sorted(first.path.glob("shards/*.h5")):
        with h5py.File(shard, "r+") as f:
            f.attrs["key"] = "someone-else"
    assert sum(len(p.compute) for p in plan_shards(records, target, "k", fkey, 5, 3)) == 27


def test_failed_rows_are_retried_on_rerun(tmp_path: Path, tiny_timm_weights: str) -> None:
    """A file that failed is fixed (same size and mtime, so the same cache): the re-run embeds only it."""
    root = make_image_folder(tmp_path / "data", classes=2, per_class=5)
    good = io.BytesIO()
    make_image(1, 77).save(good, format="PNG")
    path = root / "class1" / "fixme.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * (len(good.getvalue()) - 8))
    os.utime(path, ns=(1_700_000_000_000_000_000,) * 2)
    cache, stats = run_extract(str(root), TINY_TIMM, weights=tiny_timm_weights, cache_dir=tmp_path / "c",
                               shard_size=4, **FAST)
    assert dict(cache.failed).keys() == {"class1/fixme.png"} and stats.embedded == 10
    shard_files = sorted(cache.path.glob("shards/*.h5"))
    stamps = [p.stat().st_mtime_ns for p in shard_files]
    # still broken: retried, fails the same way, the shard is left as it was
    again, stats = run_extract(str(root), TINY_TIMM, weights=tiny_timm_weights, cache_dir=tmp_path / "c",
                               shard_size=4, **FAST)
    assert again.path == cache.path and stats.retried == 1 and stats.embedded == 0
    assert [p.stat().st_mtime_ns for p in shard_files] == stamps
    # fixed: same signature, so the same cache; only that row is embedded, its shard rewritten
    path.write_bytes(good.getvalue())
    os.utime(path, ns=(1_700_000_000_000_000_000,) * 2)
    fixed, stats = run_extract(str(root), TINY_TIMM, weights=tiny_timm_weights, cache_dir=tmp_path / "c",
                               shard_size=4, **FAST)
    assert fixed.path == cache.path and (stats.embedded, stats.retried, stats.failed) == (1, 1, 0)
    fresh, _ = run_extract(str(root), TINY_TIMM, weights=tiny_timm_weights, cache_dir=tmp_path / "fresh",
                           shard_size=4, **FAST)
    a, b = fixed.load(None), fresh.load(None)
    np.testing.assert_allclose(a[0], b[0], rtol=1e-3, atol=1e-3)
    assert np.array_equal(a[1], b[1]) and not fixed.failed


def test_changed_files_are_not_embedded_with_stale_signatures(tmp_path: Path, tiny_timm_weights: str) -> None:
    root = make_image_folder(tmp_path / "data", classes=2, per_class=3)
    src = ImageFolderSource(str(root))  # listed now ...
    make_image(0, 50).save(root / "class0" / "img001.png")  # ... changed before it is read
    cache, stats = run_extract(src, TINY_TIMM, weights=tiny_timm_weights, cache_dir=tmp_path / "c", **FAST)
    assert dict(cache.failed) == {"class0/img001.png": CHANGED} and stats.failed == 1
    # content signatures are checked on the very bytes that were decoded
    import hashlib

    file = root / "class1" / "img000.png"
    data = file.read_bytes()
    opts = DecodeOptions(create_backbone(TINY_TIMM, weights=tiny_timm_weights).pixel_preprocess)
    same = Record("a", "x", None, str(file), "sha256:" + hashlib.sha256(data).hexdigest()[:32])
    stale = Record("a", "x", None, str(file), "sha256:" + hashlib.sha256(data + b"!").hexdigest()[:32])
    assert load_sample(src, same, 0, opts).pixels is not None
    assert load_sample(src, stale, 0, opts).reason == CHANGED
    # an entry the listing found unusable fails with its reason, without opening the file
    listed = Record("b", "x", None, str(tmp_path / "nowhere.png"), "missing", error="unreadable: permission denied")
    assert load_sample(src, listed, 3, opts).reason == "unreadable: permission denied"


WRITE_UNDER_LIMIT = """
import resource, signal, sys
import h5py
import numpy as np
from pathlib import Path
from embedpipe.core.errors import EmbedpipeError
from embedpipe.extraction.write import ShardResult, ShardWriter
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
path = Path(sys.argv[1])
path.mkdir(parents=True)  # the cache folder exists (meta.h5 is written first); shards/ is made by the writer
writer = ShardWriter(path, "k", "float32")
small = ShardResult(0, 0, {"pooled": np.ones((4, 8), np.float32)}, np.ones(4, bool), [""] * 4)
big = ShardResult(1, 4, {"pooled": np.ones((1000, 1000), np.float32)}, np.ones(1000, bool), [""] * 1000)
try:
    writer.put(small)
    writer.put(big)
    writer.close()
except EmbedpipeError as e:
    print(e)
    sys.exit(1)
"""


def test_write_error_stops_with_one_line_and_no_partial_shard(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(WRITE_UNDER_LIMIT), str(tmp_path / "cache")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 1, out.stderr[-2000:]
    line = out.stdout.strip()
    assert "\n" not in line and "File too large" in line and str(tmp_path / "cache") in line
    assert "shards/00001.h5" in line and "re-run" in line
    shards = sorted(p.name for p in (tmp_path / "cache" / "shards").iterdir())
    assert shards == ["00000.h5"]  # the shard before is whole; no partial or temp file of the failed one


# -- the batch-decoder (GPU) plumbing, with a CPU stand-in for the GPU decoder -------------------

def standin_route(data: bytes) -> bool:
    return data[:2] == b"\xff\xd8"  # JPEG SOI marker


def standin_decode(datas: list[bytes], pre: Preprocess, device: torch.device) -> tuple[torch.Tensor, list[int], list[int]]:
    """torchvision.io.decode_jpeg on CPU + the Preprocess geometry on tensors. Like nvImageCodec, an
    image it cannot decode goes to the fallback list instead of failing the batch."""
    from torchvision.io import ImageReadMode, decode_jpeg
    from torchvision.transforms.v2 import functional as F

    out, ok, fallback = [], [], []
    for i, data in enumerate(datas):
        try:
            img = decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
        except RuntimeError:
            fallback.append(i)
            continue
        w, h = pre.resized_size(img.shape[2], img.shape[1])
        img = F.resize(img, [h, w], interpolation=F.InterpolationMode(pre.interpolation), antialias=True)
        out.append(F.center_crop(img, list(pre.crop)) if pre.crop else img)
        ok.append(i)
    return (torch.stack(out).to(device) if out else torch.empty(0, 3, 1, 1, dtype=torch.uint8)), ok, fallback


def test_bytes_routing_and_fallback(tmp_path: Path, tiny_timm_weights: str) -> None:
    root = make_image_folder(tmp_path / "data", classes=2, per_class=3)  # PNGs: decoded in the workers
    for i in range(3):
        make_image(i % 2, 40 + i, size=120).save(root / f"class{i % 2}" / f"photo{i}.jpg", quality=92)
    good = (root / "class0" / "photo0.jpg").read_bytes()
    (root / "class1" / "broken.jpg").write_bytes(good[: len(good) // 3])  # routed, stand-in fails, CPU fails
    kw = {"weights": tiny_timm_weights, "layers": ("pooled",), **FAST}
    cpu, _ = run_extract(str(root), TINY_TIMM, cache_dir=tmp_path / "cpu", **kw)
    decoder = BatchDecoder(standin_route, standin_decode, path="standin")
    routed, stats = run_extract(str(root), TINY_TIMM, cache_dir=tmp_path / "routed", decoder=decoder, **kw)
    assert routed.path != cpu.path  # the decode path is part of the key
    assert routed.failed == cpu.failed and len(routed.failed) == 1
    assert "broken.jpg" in routed.failed[0][0] and routed.failed[0][1].startswith("OSError")
    ids = list(cpu.ids)
    assert list(routed.ids) == ids
    (xa, _), (xb, _) = cpu.load(None), routed.load(None)
    good_ids = [i for i in ids if not i.endswith("broken.jpg")]  # load() returns the good rows in order
    png = [k for k, i in enumerate(good_ids) if i.endswith(".png")]
    jpg = [k for k, i in enumerate(good_ids) if i.endswith(".jpg")]
    np.testing.assert_array_equal(xa[png], xb[png])  # CPU-decoded rows: the same bytes
    cos = (xa[jpg] * xb[jpg]).sum(1) / np.linalg.norm(xa[jpg], axis=1) / np.linalg.norm(xb[jpg], axis=1)
    assert cos.min() > 0.98  # decoded by the stand-in: close to PIL, not equal
    assert stats.embedded == len(ids) - 1


def test_extract_stops_on_a_full_disk_with_one_line(tmp_path: Path, tiny_timm_weights: str) -> None:
    """The CLI under a 64 KB file size limit: meta.h5 fits, the first shard does not."""
    import resource
    import signal

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # inherited through exec: writes fail with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 << 10, 64 << 10))

    data = make_image_folder(tmp_path / "data", classes=2, per_class=6)
    cache_dir = tmp_path / "c"
    out = subprocess.run(
        [sys.executable, "-m", "embedpipe", "extract", "--data", str(data), "--backbone", TINY_TIMM, "--weights",
         tiny_timm_weights, "--cache-dir", str(cache_dir), "--layers", "pooled,logits", "--dtype", "float32",
         "--workers", "0", "--precision", "fp32", "--quiet"],
        capture_output=True, text=True, timeout=300, preexec_fn=limit)
    assert out.returncode == 1, out.stderr[-2000:]
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "File too large" in lines[0] and str(cache_dir) in lines[0], out.stderr[-2000:]
    (path,) = cache_dir.glob("data/*")
    assert (path / "meta.h5").is_file() and not list(path.glob("shards/*"))  # no partial shard, no temp file
