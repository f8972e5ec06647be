"""Extraction throughput on CPU: `embedpipe extract` (defaults) against hand-written loops, same
images, same backbone (effnet-lite0), one run. Writes benchmarks/results/extract.csv and extract.md.

    .venv/bin/python benchmarks/extract.py                          # all three scenarios, full size
    .venv/bin/python benchmarks/extract.py --scenario camera --camera 8 --png 64 --limit 128   # quick check

Scenarios (each compared as a ratio against its own baseline, measured in the same run):

* ``digits``: the built-in 1797 digits (64x64, in memory). Baseline ``plain_loop``: PIL + the
  backbone's transform in the main process, batches of 64, fp32, torch.inference_mode.
* ``pngs``: an ImageFolder of small PNGs (10 classes, 48-160 px; 1500 by default). Same baseline.
* ``camera``: camera-size JPEGs (60 of 4000x3000 and 60 of 1600x1200 by default; real photos,
  cropped and scaled, with sensor-like noise, quality 90). Baseline ``dataloader_loop``: a competent
  hand-written loop: DataLoader with 2 workers, PIL + the transform, channels_last, bf16 autocast
  where the CPU has native bf16 (fp32 otherwise).

``embedpipe`` runs with its defaults; ``--workers-sweep`` adds ``embedpipe_w0`` / ``embedpipe_w2``
(0 or 2 decoding workers: how the CPU default was chosen). Each variant runs in its own subprocess,
sampled from outside over its whole process tree (benchmarks/_common.py ``run_measured``):
``peak_tree_pss_mb`` is the peak of the summed PSS of the process and its decoding workers (shared
pages counted once), ``peak_tree_rss_mb`` the summed RSS (shared pages counted in every process).
Generated images are kept in --data-dir (default /tmp/embedpipe-bench-data) and reused.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

BACKBONE = "effnet-lite0"
VARIANTS = {
    "digits": ["plain_loop", "embedpipe"],
    "pngs": ["plain_loop", "embedpipe"],
    "camera": ["dataloader_loop", "embedpipe"],
}
# --workers-sweep adds embedpipe with 0 and 2 decoding workers (how the CPU default was chosen)
SWEEP = ["embedpipe_w0", "embedpipe_w2"]


# -- data --------------------------------------------------------------------------------------
def make_pngs(root: Path, n: int) -> Path:
    """n small PNGs in 10 class folders: class-coloured shapes with noise, 48-160 px."""
    import numpy as np
    from PIL import Image, ImageDraw

    folder = root / f"pngs-{n}"
    if (folder / ".done").is_file():
        return folder
    rng = np.random.default_rng(0)
    for i in range(n):
        c = i % 10
        w, h = (int(v) for v in rng.integers(48, 161, 2))
        img = Image.new("RGB", (w, h), tuple(int(v) for v in rng.integers(0, 256, 3)))
        draw = ImageDraw.Draw(img)
        colour = ((c * 97) % 256, (c * 53 + 80) % 256, (c * 29 + 160) % 256)
        for _ in range(3):
            x0, y0 = rng.integers(0, w // 2), rng.integers(0, h // 2)
            box = (int(x0), int(y0), int(x0 + w // 2), int(y0 + h // 2))
            (draw.ellipse if c % 2 else draw.rectangle)(box, fill=colour)
        arr = np.clip(np.asarray(img, np.float32) + rng.normal(0, 10, (h, w, 3)), 0, 255).astype(np.uint8)
        (folder / f"class{c}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).save(folder / f"class{c}" / f"img{i:05d}.png")
    (folder / ".done").touch()
    return folder


def make_camera(root: Path, n: int) -> Path:
    """n 12 MP (4000x3000) and n 2 MP (1600x1200) JPEGs in 2 class folders."""
    from _common import camera_jpeg

    folder = root / f"camera-{n}"
    if (folder / ".done").is_file():
        return folder
    for i in range(2 * n):
        size = (4000, 3000) if i < n else (1600, 1200)
        (folder / f"class{i % 2}").mkdir(parents=True, exist_ok=True)
        (folder / f"class{i % 2}" / f"photo{i:04d}.jpg").write_bytes(camera_jpeg(i, size))
    (folder / ".done").touch()
    return folder


# -- variants (each in its own subprocess) -----------------------------------------------------
def run_plain_loop(data: str, limit: int) -> dict[str, float]:
    """PIL + the backbone's transform in this process, fp32, contiguous, batches of 64."""
    import torch

    from embedpipe import create_backbone
    from embedpipe.data import resolve_source

    source = resolve_source(data)
    records = source.records[:limit]
    bb = create_backbone(BACKBONE, precision="fp32", channels_last=False)
    model, transform = bb.model, bb.transform
    t0 = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(records), 64):
            batch = torch.stack([transform(source.open(r).convert("RGB")) for r in records[i : i + 64]])
            model.forward_head(model.forward_features(batch), pre_logits=True)
    return {"images": len(records), "seconds": time.perf_counter() - t0}


class _Folder:  # a picklable dataset for the DataLoader loop
    def __init__(self, paths: list[str], transform: Any) -> None:
        self.paths, self.transform = paths, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> Any:
        from PIL import Image

        with Image.open(self.paths[i]) as img:
            return self.transform(img.convert("RGB"))


def run_dataloader_loop(data: str, limit: int) -> dict[str, float]:
    """DataLoader(2 workers) + PIL + transform, channels_last, bf16 autocast where the CPU has it."""
    import contextlib

    import torch

    from embedpipe import create_backbone
    from embedpipe.core.device import cpu_has_bf16
    from embedpipe.data import resolve_source

    source = resolve_source(data)
    records = source.records[:limit]
    bb = create_backbone(BACKBONE, precision="fp32", channels_last=True)
    model, transform = bb.model, bb.transform
    loader = torch.utils.data.DataLoader(_Folder([r.path for r in records], transform),  # type: ignore[misc]
                                         batch_size=64, num_workers=2)
    amp = torch.autocast("cpu", dtype=torch.bfloat16) if cpu_has_bf16() else contextlib.nullcontext()
    t0 = time.perf_counter()
    with torch.inference_mode(), amp:
        for batch in loader:
            x = batch.contiguous(memory_format=torch.channels_last)
            model.forward_head(model.forward_features(x), pre_logits=True)
    return {"images": len(records), "seconds": time.perf_counter() - t0}


def run_embedpipe(data: str, limit: int, workers: int | None) -> dict[str, float]:
    from embedpipe.data import resolve_source
    from embedpipe.extract import run_extract

    source = resolve_source(data)
    source.records = source.records[:limit]
    options = {} if workers is None else {"num_workers": workers}
    with tempfile.TemporaryDirectory() as tmp:
        _, stats = run_extract(source, BACKBONE, cache_dir=tmp, progress=False, **options)
    return {"images": stats.embedded, "seconds": stats.seconds, "loop_img_s": round(stats.images_per_s, 1)}


def child(variant: str, data: str, limit: int) -> None:
    if variant == "plain_loop":
        result = run_plain_loop(data, limit)
    elif variant == "dataloader_loop":
        result = run_dataloader_loop(data, limit)
    else:
        workers = {"embedpipe": None, "embedpipe_w0": 0, "embedpipe_w1": 1, "embedpipe_w2": 2}[variant]
        result = run_embedpipe(data, limit, workers)
    print(json.dumps(result))  # memory is measured from outside, over the whole process tree


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", choices=["digits", "pngs", "camera", "all"], default="all")
    parser.add_argument("--limit", type=int, default=1797, help="images per scenario at most")
    parser.add_argument("--png", type=int, default=1500, help="small PNGs to generate")
    parser.add_argument("--camera", type=int, default=60, help="JPEGs of each camera size to generate")
    parser.add_argument("--workers-sweep", action="store_true", help="also embedpipe with 0 and 2 workers")
    parser.add_argument("--data-dir", default=str(Path(tempfile.gettempdir()) / "embedpipe-bench-data"))
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        return child(args.variant, args.data, args.limit)
    from _common import environment, run_measured, write_results

    env = environment()
    root = Path(args.data_dir)
    scenarios = ["digits", "pngs", "camera"] if args.scenario == "all" else [args.scenario]
    rows = []
    for scenario in scenarios:
        data = {"digits": lambda: "digits", "pngs": lambda: str(make_pngs(root, args.png)),
                "camera": lambda: str(make_camera(root, args.camera))}[scenario]()
        base = None
        for variant in VARIANTS[scenario] + (SWEEP if args.workers_sweep else []):
            cmd = [sys.executable, __file__, "--variant", variant, "--data", data, "--limit", str(args.limit)]
            try:  # peak memory of the variant's whole process tree (main process + decoding workers)
                stdout, _, mem = run_measured(cmd)
            except subprocess.CalledProcessError as e:
                raise SystemExit(f"{scenario}/{variant} failed:\n{e.stderr[-3000:]}") from None
            r = json.loads(stdout.strip().splitlines()[-1])
            img_s = r["images"] / r["seconds"]
            base = base or img_s
            rows.append({"scenario": scenario, "variant": variant, "backbone": BACKBONE, **r, **mem,
                         "img_s": round(img_s, 1), "speedup": round(img_s / base, 2), **env})
            print(f"{scenario:7s} {variant:16s} {img_s:8.1f} img/s  x{img_s / base:.2f}  "
                  f"tree peak {mem['peak_tree_pss_mb']} MB PSS over {mem['peak_processes']} processes", file=sys.stderr)
    csv_path, md_path = write_results("extract", rows, [
        "scenario", "variant", "images", "seconds", "img_s", "loop_img_s", "speedup", "peak_tree_pss_mb",
        "peak_tree_rss_mb", "peak_processes", "device", "machine"])
    print(md_path.read_text())
    print(f"wrote {csv_path}")


if __name__ == "__main__":
    main()
