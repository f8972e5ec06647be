"""Exporting a large cache streams with flat memory: a synthetic 100,000-row x 1,280 cache (float16,
1,024-row shards, written directly with the cache writer) exported to Parquet, Arrow and .npy.

    .venv/bin/python benchmarks/export.py            # 100,000 rows: about a minute to build, then the exports
    .venv/bin/python benchmarks/export.py --n 20000  # a quick run

Writes benchmarks/results/export.csv and export.md. Each export runs in a child process that reports
its resident memory just before exporting (after imports and opening the cache: the baseline) and its
peak resident memory (``ru_maxrss``) after; the parent also samples the child's memory from /proc.
Goal: Parquet within 500 MB peak above the baseline. Each row records the CPU's ISA and the
1-minute load average (other work on the machine slows the time, not the memory).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as bench

DIM = 1280  # effnet-lite0's pooled width
SHARD = 1024  # extract's default shard size
GOAL_MB = 500  # peak above baseline allowed for the Parquet export


def build_cache(path: Path, n: int, seed: int = 0) -> None:
    """A finished cache of ``n`` random float16 rows in 1,024-row shards, 1 % of them failed rows."""
    from embedpipe.cache import SCHEMA_VERSION, write_meta, write_shard

    path.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    n_shards = (n + SHARD - 1) // SHARD
    key = f"synthetic-export-{n}"
    labels = rng.integers(0, 10, n).astype(np.int32)
    write_meta(path, arrays={
        "ids": np.array([f"class{c}/img{i:07d}.jpg" for i, c in enumerate(labels)], dtype=object),
        "labels": labels,
        "label_names": np.array([f"class{c}" for c in range(10)], dtype=object),
        "split": np.array([("train", "train", "train", "val", "test")[i % 5] for i in range(n)], dtype=object),
        "signatures": np.array(["0:0"] * n, dtype=object),
    }, attrs={
        "schema_version": SCHEMA_VERSION, "key": key, "feature_key": key, "dataset": "synthetic",
        "backbone": json.dumps({"spec": "synthetic"}), "layers": json.dumps(["pooled"]),
        "dims": json.dumps({"pooled": DIM}), "shapes": json.dumps({"pooled": [DIM]}), "dtype": "float16",
        "n_rows": n, "shard_size": SHARD, "n_shards": n_shards,
    })
    for s in range(n_shards):
        start, stop = s * SHARD, min(n, (s + 1) * SHARD)
        ok = np.ones(stop - start, bool)
        ok[::100] = False  # 1 % failed rows: the export leaves them out
        feats = rng.standard_normal((stop - start, DIM), dtype=np.float32).astype(np.float16)
        write_shard(path, s, start, key, {"pooled": feats}, ok,
                    ["" if g else "OSError: synthetic failure" for g in ok], "float16")


def status_mb(field: str) -> float:
    """VmRSS (resident now) or VmHWM (peak resident) of this process, in MiB."""
    with open("/proc/self/status") as f:
        line = next(x for x in f if x.startswith(f"{field}:"))
    return int(line.split()[1]) / 1024


def reset_peak() -> None:
    """Start VmHWM afresh at the current RSS (Linux: writing 5 to clear_refs). ru_maxrss cannot be used:
    it carries the parent's high-water mark across fork and exec."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def child(cache: str, fmt: str, out: str, dtype: str) -> None:
    """Run one export in this process and print its memory and time as JSON."""
    from embedpipe.cache import open_cache

    if fmt != "npy":
        import pyarrow.parquet  # noqa: F401  (imported before the baseline, as a user's session would have it)
    opened = open_cache(cache)
    reset_peak()
    baseline = status_mb("VmRSS")
    t0 = time.perf_counter()
    stats = opened.export(out, fmt, dtype=dtype)
    seconds = time.perf_counter() - t0
    peak = status_mb("VmHWM")
    json.dump({"rows": stats.rows, "skipped_failed": stats.skipped_failed, "bytes": stats.bytes,
               "seconds": seconds, "baseline_mb": baseline, "peak_mb": peak}, sys.stdout)


def run(n: int, formats: list[str], keep: bool) -> list[dict[str, Any]]:
    from embedpipe.bench import cpu_isa

    path = bench.ROOT / "cache" / "bench-export" / f"synthetic-{n}"
    if not (path / "meta.h5").is_file():
        t0 = time.perf_counter()
        build_cache(path, n)
        print(f"built {path} in {time.perf_counter() - t0:.0f}s", flush=True)
    env = bench.environment()
    rows = []
    out_dir = Path(tempfile.mkdtemp(prefix="embedpipe-export-"))
    try:
        for fmt in formats:
            out = out_dir / f"features.{fmt}"
            load = os.getloadavg()[0]
            stdout, _, tree = bench.run_measured(
                [sys.executable, __file__, "--child", str(path), fmt, str(out), "float32"], timeout=1800)
            r = json.loads(stdout)
            above = r["peak_mb"] - r["baseline_mb"]
            rows.append({"format": fmt, "rows": r["rows"], "dim": DIM, "dtype": "float32",
                         "skipped_failed": r["skipped_failed"], "out_mb": round(r["bytes"] / 2**20),
                         "seconds": round(r["seconds"], 1), "rows_per_s": round(r["rows"] / r["seconds"]),
                         "baseline_mb": round(r["baseline_mb"]), "peak_mb": round(r["peak_mb"]),
                         "peak_above_baseline_mb": round(above), "goal_mb": GOAL_MB if fmt == "parquet" else "",
                         "sampled_peak_rss_mb": tree["peak_tree_rss_mb"], "cpu_isa": cpu_isa(),
                         "load_1min": round(load, 2), **env})
            print({k: rows[-1][k] for k in ("format", "rows", "seconds", "peak_above_baseline_mb", "out_mb")},
                  flush=True)
            shutil.rmtree(out, ignore_errors=True) if out.is_dir() else out.unlink(missing_ok=True)
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
        if not keep:
            shutil.rmtree(path, ignore_errors=True)
    return rows


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(*sys.argv[2:6])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="rows of the synthetic cache (default: %(default)s)")
    parser.add_argument("--formats", default="parquet,arrow,npy", help="comma-separated (default: %(default)s)")
    parser.add_argument("--keep", action="store_true", help="keep the synthetic cache under cache/ (default: off)")
    args = parser.parse_args()
    rows = run(args.n, args.formats.split(","), args.keep)
    csv_path, md_path = bench.write_results("export", rows, [
        "format", "rows", "dim", "dtype", "skipped_failed", "out_mb", "seconds", "rows_per_s", "baseline_mb",
        "peak_above_baseline_mb", "goal_mb", "cpu_isa", "load_1min"])
    print(f"wrote {csv_path} and {md_path}")


if __name__ == "__main__":
    main()
