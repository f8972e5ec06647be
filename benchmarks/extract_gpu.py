"""GPU extraction benchmark (issue 7): one run, four numbers, on a machine with CUDA.

    .venv/bin/python benchmarks/extract_gpu.py               # about 2-4 minutes on one GPU
    .venv/bin/python benchmarks/extract_gpu.py --cpu-smoke   # tiny, on CPU: checks the script works

It makes its own data set (20,000 photo-like JPEGs of ImageNet-like sizes, about 450x360 and 40 KB,
in 100 classes, plus camera-size photos of 2 MP and 12 MP, a fifth of them EXIF-rotated, generated
in parallel) and a random-weight open_clip ViT-B-32 saved to a local file, passed as the weights, so
nothing comes from the network. Then, each in its own process:

- ``model_only``: the model's ceiling: uint8 batches of 256 already on the GPU, normalised there,
  ``encode_image`` under bf16 autocast.
- ``decode_only``: the decode ceiling: ``embedpipe.extraction.gpu_decode.decode_batch`` over the set
  (bytes read into memory first), batches of 256, to model-size uint8 on the GPU.
- ``plain_loop``: what a user writes by hand: torchvision ``ImageFolder`` with open_clip's transform,
  ``DataLoader(16 workers, batch 256, pin_memory)``, fp16 autocast, features copied to the host.
- ``embedpipe``: ``embedpipe.extract`` with its defaults, end to end (model build, listing, writing
  the cache), into a fresh cache directory.

Writes benchmarks/results/extract-gpu.csv (every field) and extract-gpu.md (variant, images, img_s,
device). The set is kept in --workdir between runs (made again only when missing).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

VARIANTS = ("model_only", "decode_only", "plain_loop", "embedpipe")
SMALL_SIZES = [(500, 375), (375, 500), (500, 333), (333, 500), (450, 360), (360, 450)]  # ImageNet's common ones


# -- the data set -------------------------------------------------------------------------------
def synth(width: int, height: int, seed: int) -> Any:
    """A photo-like image: a smooth random field, a colour ramp, hard-edged shapes and sensor noise."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(2, height // 48), max(2, width // 48), 3), dtype=np.uint8)
    base = np.asarray(Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC), np.float32)
    ramp = np.linspace(-40, 40, width, dtype=np.float32)[None, :, None] * rng.uniform(-1, 1, 3).astype(np.float32)
    img = Image.fromarray(np.clip(base * 0.7 + 40 + ramp, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(8):
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        x1, y1 = x0 + int(rng.integers(width // 16, width // 3)), y0 + int(rng.integers(height // 16, height // 3))
        fill = tuple(int(v) for v in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=fill)
    noise = rng.standard_normal((height, width, 3), dtype=np.float32) * 5.0
    return Image.fromarray(np.clip(np.asarray(img, np.float32) + noise, 0, 255).astype(np.uint8))


def _write_image(job: tuple[str, int, int, int, int, bool]) -> int:
    from PIL import Image

    path, width, height, seed, quality, rotated = job
    img = synth(width, height, seed)
    kw: dict[str, Any] = {"quality": quality}
    if rotated:
        exif = Image.Exif()
        exif[0x0112] = 6  # as a camera held upright writes it: displayed rotated 90 degrees
        kw["exif"] = exif.tobytes()
    buf = io.BytesIO()
    img.save(buf, "JPEG", **kw)
    Path(path).write_bytes(buf.getvalue())
    return len(buf.getvalue())


def make_dataset(root: Path, images: int, classes: int, camera: int, workers: int) -> dict[str, Any]:
    """ImageFolder layout root/classNNN/*.jpg; made once (a stamp file records the recipe)."""
    recipe = {"images": images, "classes": classes, "camera": camera, "version": 1}
    stamp = root / "dataset.json"
    if stamp.is_file() and json.loads(stamp.read_text()).get("recipe") == recipe:
        return json.loads(stamp.read_text())
    shutil.rmtree(root, ignore_errors=True)
    rng = np.random.default_rng(0)
    jobs = []
    for i in range(images):
        w, h = (SMALL_SIZES[i % len(SMALL_SIZES)] if rng.random() < 0.6
                else (int(rng.integers(300, 501)), int(rng.integers(300, 501))))
        jobs.append((str(root / f"class{i % classes:03d}" / f"img{i:06d}.jpg"), w, h, i, int(rng.integers(85, 96)), False))
    for j in range(camera):  # 2 MP and 12 MP photos, both orientations; every fifth one EXIF-rotated
        w, h = (4000, 3000) if j % 5 == 4 else (1600, 1200)
        w, h = (h, w) if j % 2 else (w, h)
        jobs.append((str(root / f"class{j % classes:03d}" / f"camera{j:04d}.jpg"), w, h, 10**6 + j, 90, j % 5 == 0))
    for c in range(classes):
        (root / f"class{c:03d}").mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with ProcessPoolExecutor(workers) as pool:
        sizes = list(pool.map(_write_image, jobs, chunksize=64))
    info = {"recipe": recipe, "files": len(jobs), "mean_kb": round(float(np.mean(sizes)) / 1e3, 1),
            "seconds": round(time.perf_counter() - t0, 1)}
    stamp.write_text(json.dumps(info))
    return info


def make_weights(path: Path, arch: str) -> None:
    import open_clip
    import torch

    from embedpipe.backbones.open_clip_backbone import CONFIG_DIR

    if path.is_file():
        return
    open_clip.add_model_config(CONFIG_DIR)
    torch.manual_seed(0)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(open_clip.create_model(arch).state_dict(), tmp)
    os.replace(tmp, path)


# -- the variants (each runs in a child process) --------------------------------------------------
def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _amp(device: Any, dtype: Any) -> Any:
    import contextlib

    import torch

    return torch.autocast(device.type, dtype=dtype) if device.type == "cuda" else contextlib.nullcontext()


def _files(root: Path) -> list[Path]:
    return sorted(root.glob("class*/*.jpg"))


def run_model_only(a: argparse.Namespace, device: Any) -> dict[str, Any]:
    import open_clip
    import torch

    from embedpipe.backbones.open_clip_backbone import CONFIG_DIR
    from embedpipe.backbones.preprocess import Preprocess, normalize

    open_clip.add_model_config(CONFIG_DIR)
    model, _, transform = open_clip.create_model_and_transforms(a.arch, pretrained=a.weights)
    model = model.to(device).eval()
    pre = Preprocess.from_transform(transform)
    assert pre is not None
    batch = torch.randint(0, 256, (a.batch_size, 3, *pre.out_size), dtype=torch.uint8, device=device)
    steps = max(3, a.images // a.batch_size)
    with torch.inference_mode(), _amp(device, torch.bfloat16):
        for _ in range(3):  # warm-up: kernels chosen, memory pooled
            model.encode_image(normalize(batch, pre))
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(steps):
            model.encode_image(normalize(batch, pre))
        _sync(device)
    return {"images": steps * a.batch_size, "seconds": time.perf_counter() - t0}


def run_decode_only(a: argparse.Namespace, device: Any) -> dict[str, Any]:
    import open_clip

    from embedpipe.backbones.open_clip_backbone import CONFIG_DIR
    from embedpipe.backbones.preprocess import Preprocess
    from embedpipe.extraction.gpu_decode import decode_batch, decode_path

    open_clip.add_model_config(CONFIG_DIR)
    size = open_clip.get_model_config(a.arch)["vision_cfg"]["image_size"]  # the model's eval preprocessing
    pre = Preprocess.from_transform(open_clip.image_transform(size, is_train=False))
    assert pre is not None
    datas = [p.read_bytes() for p in _files(Path(a.data))]
    decode_batch(datas[: a.batch_size], pre, device)  # warm-up: nvJPEG handles, CUDA context
    _sync(device)
    fallback = 0
    t0 = time.perf_counter()
    for start in range(0, len(datas), a.batch_size):
        _, _, fb = decode_batch(datas[start : start + a.batch_size], pre, device)
        fallback += len(fb)
    _sync(device)
    return {"images": len(datas) - fallback, "seconds": time.perf_counter() - t0, "fallback": fallback,
            "decode_path": decode_path(device)}


def run_plain_loop(a: argparse.Namespace, device: Any) -> dict[str, Any]:
    import open_clip
    import torch
    from torchvision.datasets import ImageFolder

    from embedpipe.backbones.open_clip_backbone import CONFIG_DIR

    open_clip.add_model_config(CONFIG_DIR)
    model, _, transform = open_clip.create_model_and_transforms(a.arch, pretrained=a.weights)
    model = model.to(device).eval()
    loader = torch.utils.data.DataLoader(ImageFolder(a.data, transform=transform), batch_size=a.batch_size,
                                         num_workers=a.workers, pin_memory=device.type == "cuda")
    n = 0
    t0 = time.perf_counter()
    with torch.inference_mode(), _amp(device, torch.float16):
        for x, _ in loader:
            model.encode_image(x.to(device, non_blocking=True)).float().cpu()
            n += len(x)
    return {"images": n, "seconds": time.perf_counter() - t0}


def run_embedpipe(a: argparse.Namespace, device: Any) -> dict[str, Any]:
    """Defaults only: on a GPU machine embedpipe picks CUDA, its batch size, workers and precision."""
    from embedpipe import extract

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        cache = extract(a.data, f"open_clip:{a.arch}", weights=a.weights, cache_dir=tmp, progress=False)
        seconds = time.perf_counter() - t0
        images, failed = int(cache.ok.sum()), len(cache.failed)
    return {"images": images, "seconds": seconds, "failed": failed}


def child(a: argparse.Namespace) -> None:
    import torch

    device = torch.device("cpu" if a.cpu_smoke else "cuda")
    result = {"model_only": run_model_only, "decode_only": run_decode_only, "plain_loop": run_plain_loop,
              "embedpipe": run_embedpipe}[a.variant](a, device)
    rusage = resource.getrusage
    result["peak_rss_mb"] = round(rusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    result["children_peak_rss_mb"] = round(rusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)
    if device.type == "cuda":
        result["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20)
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=20_000, help="small JPEGs (ImageNet-like sizes)")
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--camera", type=int, default=100, help="camera-size photos (2 MP, every fifth 12 MP)")
    parser.add_argument("--arch", default="ViT-B-32", help="open_clip architecture (random weights)")
    parser.add_argument("--batch-size", type=int, default=256, help="batch size of the reference variants")
    parser.add_argument("--workers", type=int, default=16, help="DataLoader workers of plain_loop")
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "embedpipe-extract-gpu"),
                        help="where the data set and weights are kept between runs")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset")
    parser.add_argument("--cpu-smoke", action="store_true",
                        help="tiny set and model on CPU, to check the script; prints, writes no results")
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--weights", help=argparse.SUPPRESS)
    a = parser.parse_args()
    if a.variant:
        return child(a)
    import torch

    if not a.cpu_smoke and not torch.cuda.is_available():
        sys.exit("extract_gpu.py: no CUDA device (torch.cuda.is_available() is False); run it on a GPU "
                 "machine, or pass --cpu-smoke for a tiny check on CPU")
    if a.cpu_smoke:
        a.images, a.classes, a.camera, a.arch = min(a.images, 48), min(a.classes, 4), min(a.camera, 2), "embedpipe-tiny-vit"
        a.batch_size, a.workers = min(a.batch_size, 16), min(a.workers, 2)
        a.workdir = os.path.join(a.workdir, "smoke")
    work = Path(a.workdir)
    work.mkdir(parents=True, exist_ok=True)
    data_root = work / f"jpegs-{a.images}-{a.classes}-{a.camera}"
    info = make_dataset(data_root, a.images, a.classes, a.camera, workers=os.cpu_count() or 1)
    print(f"data: {info['files']} JPEGs, mean {info['mean_kb']} KB, made in {info['seconds']} s -> {data_root}")
    weights = work / f"{a.arch}-random.pt"
    make_weights(weights, a.arch)

    from _common import environment, write_results

    env = environment()
    rows = []
    for variant in a.variants.split(","):
        cmd = [sys.executable, __file__, "--variant", variant, "--data", str(data_root), "--weights", str(weights),
               "--arch", a.arch, "--images", str(a.images), "--batch-size", str(a.batch_size),
               "--workers", str(a.workers), *(["--cpu-smoke"] if a.cpu_smoke else [])]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0:
            sys.exit(f"extract_gpu.py: variant {variant} failed:\n{out.stderr[-3000:]}")
        r = json.loads(out.stdout.strip().splitlines()[-1])
        row = {"variant": variant, "images": r["images"], "img_s": round(r["images"] / r["seconds"], 1),
               "seconds": round(r["seconds"], 2), **{k: v for k, v in r.items() if k not in ("images", "seconds")},
               "arch": a.arch, "set": f"{info['files']} JPEGs, {info['mean_kb']} KB mean", **env}
        rows.append(row)
        print(f"{variant:12s} {row['images']:7d} images {row['img_s']:10.1f} img/s  ({row['seconds']} s)")
    columns = ["variant", "images", "img_s", "device"]
    if a.cpu_smoke:
        from embedpipe.table import format_table

        print(format_table(rows, columns))
        return
    csv_path, md_path = write_results("extract-gpu", rows, columns)
    print(f"wrote {csv_path} and {md_path}")


if __name__ == "__main__":
    main()
