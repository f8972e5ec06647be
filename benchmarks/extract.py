"""Extraction throughput: `embedpipe extract` against a plain hand-written timm loop, same images,
same backbone, one run. Writes benchmarks/results/extract.csv and extract.md.

    .venv/bin/python benchmarks/extract.py                 # digits, effnet-lite0, 1797 images
    .venv/bin/python benchmarks/extract.py --limit 256     # quicker

Each variant runs in its own subprocess so its peak memory (the process and its decoding workers)
is measured separately. The baseline is what a user writes by hand: decode with PIL in the main
process, timm's transform, batches of 64, fp32, contiguous memory, torch.inference_mode.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def run_baseline(data: str, limit: int) -> dict[str, float]:
    import torch

    from embedpipe import create_backbone
    from embedpipe.data import resolve_source

    source = resolve_source(data)
    records = source.records[:limit]
    bb = create_backbone("effnet-lite0", precision="fp32", channels_last=False)
    model, transform = bb.model, bb.transform
    t0 = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(records), 64):
            batch = torch.stack([transform(source.open(r).convert("RGB")) for r in records[i : i + 64]])
            model.forward_head(model.forward_features(batch), pre_logits=True)
    return {"images": len(records), "seconds": time.perf_counter() - t0}


def run_embedpipe(data: str, limit: int) -> dict[str, float]:
    from embedpipe.data import resolve_source
    from embedpipe.extract import run_extract

    source = resolve_source(data)
    source.records = source.records[:limit]
    with tempfile.TemporaryDirectory() as tmp:
        _, stats = run_extract(source, "effnet-lite0", cache_dir=tmp, progress=False)
    return {"images": stats.embedded, "seconds": stats.seconds, "pure_img_s": stats.images_per_s}


def child(variant: str, data: str, limit: int) -> None:
    result = (run_baseline if variant == "baseline" else run_embedpipe)(data, limit)
    peak = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, 0)
    workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(json.dumps({**result, "peak_rss_mb": round(peak / 1024), "worker_peak_rss_mb": round(workers / 1024)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default="digits")
    parser.add_argument("--limit", type=int, default=1797)
    parser.add_argument("--variant", choices=["baseline", "embedpipe"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        return child(args.variant, args.data, args.limit)
    from _common import environment, write_results

    env = environment()
    rows = []
    for variant in ("baseline", "embedpipe"):
        out = subprocess.run([sys.executable, __file__, "--variant", variant, "--data", args.data,
                              "--limit", str(args.limit)], capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append({"variant": variant, "dataset": args.data, "backbone": "effnet-lite0", **r,
                     "img_s": round(r["images"] / r["seconds"], 1), **env})
    base = rows[0]["img_s"]
    for r in rows:
        r["speedup"] = round(r["img_s"] / base, 2)
    csv_path, md_path = write_results(
        "extract", rows, ["variant", "dataset", "images", "seconds", "img_s", "speedup", "peak_rss_mb", "device", "machine"])
    print(md_path.read_text())
    print(f"wrote {csv_path}")


if __name__ == "__main__":
    main()
