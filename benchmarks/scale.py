"""Local engine vs Ray engine on this machine, and on a simulated multi-node cluster; same images,
same backbone, same shards. Writes benchmarks/results/scale.csv and scale.md.

    .venv/bin/python benchmarks/scale.py                          # glyphs, 2,000 images, effnet-lite0
    .venv/bin/python benchmarks/scale.py --limit 200 --nodes 2    # quicker

Variants, each in its own subprocess with a fresh cache directory:
  local   run_extract(engine="local"), the default engine
  ray     a local Ray instance (the engine's start_local_ray(<cores>)), one actor pool sized from it
  ray-Nn  ray.cluster_utils.Cluster: N worker nodes on this machine sharing its cores (head: 0 CPUs)
Ray start-up (ray.init, or starting the simulated cluster) is timed apart from the extraction:
``seconds`` is run_extract's wall time (planning, actor start, embedding, writing), ``ray_start_s``
the start-up before it, ``overhead`` the extraction time relative to local (expected: at most 15%),
``overhead_e2e`` the same including start-up. ``max_abs_diff`` compares every feature with the local
cache (0 means bit-identical).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def child(variant: str, args: argparse.Namespace, cache_dir: str) -> dict[str, object]:
    from embedpipe.data import resolve_source
    from embedpipe.extract import run_extract

    source = resolve_source(args.data)
    source.records = source.records[: args.limit]
    t0 = time.perf_counter()
    engine, cluster = "local", None
    if variant != "local":
        # the engine's own start-up: 127.0.0.1 only, workers at the driver's priority
        from embedpipe.engines.ray_cluster import connect_ray, local_node_args, start_local_ray

        engine = "ray"
        cores = os.cpu_count() or 1
        if variant == "ray":
            start_local_ray(cores)
        else:
            from ray.cluster_utils import Cluster

            cluster = Cluster(initialize_head=True, head_node_args={**local_node_args(), "num_cpus": 0})
            for _ in range(args.nodes):
                cluster.add_node(num_cpus=max(1, cores // args.nodes), **local_node_args(head=False))
            connect_ray(cluster.address)
    ray_start_s = time.perf_counter() - t0
    cache, stats = run_extract(source, args.backbone, cache_dir=cache_dir, progress=False, engine=engine,
                               shard_size=args.shard_size, batch_size=args.batch_size)
    if engine == "ray":
        import ray

        ray.shutdown()
        if cluster is not None:
            cluster.shutdown()
    return {"images": stats.embedded + stats.failed, "seconds": round(stats.seconds, 2),
            "ray_start_s": round(ray_start_s, 2) if engine == "ray" else 0.0,
            "workers": getattr(stats, "workers", 1), "nodes": getattr(stats, "nodes", 1),
            "shards": cache.n_shards, "path": str(cache.path)}


def max_abs_diff(a: str, b: str) -> float:
    from embedpipe import open_cache

    ca, cb = open_cache(a), open_cache(b)
    worst = 0.0
    for layer in ca.layers:
        for split in ("train", "val", "test"):
            xa, _ = ca.load(split, layer)
            xb, _ = cb.load(split, layer)
            if len(xa):
                worst = max(worst, float(abs(xa.astype("float64") - xb.astype("float64")).max()))
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="glyphs", help="dataset (default glyphs: 12,000 images to take from)")
    parser.add_argument("--limit", type=int, default=2000, help="images to extract (default 2000)")
    parser.add_argument("--backbone", default="effnet-lite0")
    parser.add_argument("--shard-size", type=int, default=256, help="rows per shard, same for every variant")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--nodes", type=int, default=2, help="worker nodes of the simulated cluster (0: skip)")
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--cache-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(child(args.variant, args, args.cache_dir)))
        return
    from _common import environment, write_results

    env = environment()
    variants = ["local", "ray"] + ([f"ray-{args.nodes}n"] if args.nodes > 0 else [])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for variant in variants:
            cmd = [sys.executable, __file__, "--variant", variant, "--cache-dir", f"{tmp}/{variant}",
                   "--data", args.data, "--limit", str(args.limit), "--backbone", args.backbone,
                   "--shard-size", str(args.shard_size), "--batch-size", str(args.batch_size),
                   "--nodes", str(args.nodes)]
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode != 0:
                sys.exit(f"{variant} failed:\n{out.stderr[-3000:]}")
            r = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append({"variant": variant, "dataset": args.data, "backbone": args.backbone, **r,
                         "img_s": round(r["images"] / r["seconds"], 1)})
            print(f"{variant}: {r['images']} images in {r['seconds']} s (+{r['ray_start_s']} s start-up)",
                  file=sys.stderr)
        local, local_path = rows[0], rows[0]["path"]
        for r in rows:
            r["overhead"] = round(r["seconds"] / local["seconds"] - 1, 3)
            r["overhead_e2e"] = round((r["seconds"] + r["ray_start_s"]) / local["seconds"] - 1, 3)
            r["max_abs_diff"] = max_abs_diff(local_path, r.pop("path"))
            r.update(env)
    csv_path, md_path = write_results("scale", rows, [
        "variant", "images", "workers", "nodes", "shards", "ray_start_s", "seconds", "img_s", "overhead",
        "overhead_e2e", "max_abs_diff", "machine"])
    print(md_path.read_text())
    print(f"wrote {csv_path}")


if __name__ == "__main__":
    main()
