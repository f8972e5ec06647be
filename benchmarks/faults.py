"""Kill loop: SIGKILL a real `embedpipe extract` at random moments of one run, re-run the same command
each time, and check that the finished cache equals an uninterrupted run's, byte for byte.

Moments are drawn in turn from three kinds: ``start`` (a random delay after launch, usually before
the first shard), ``write`` (as soon as a shard's ``.tmp`` appears: inside a shard write) and ``between``
(after a random number of new shards). Each kill records where it landed (shards done, whether a
``.tmp`` was left). tests/test_faults.py runs a short loop; this script runs the long one:

    PYTHONPATH=. python benchmarks/faults.py --kills 20        # -> results/faults.csv, faults.md
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import h5py
import numpy as np

KINDS = ("start", "write", "between")  # where a kill is aimed, taken in turn


@dataclass
class Kill:
    kind: str
    shards_before: int
    shards_after: int
    tmp_left: bool
    killed: bool  # False when the run finished before the kill landed


def make_folder(root: Path, classes: int = 3, per_class: int = 16, size: int = 32) -> Path:
    """A small labelled image folder (class-dependent colours plus noise)."""
    from PIL import Image

    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            rng = np.random.default_rng(100 * c + i)
            img = np.clip(rng.normal(60 * c + 40, 30, (size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / f"class{c}" / f"img{i:03d}.png")
    return root


def extract_cmd(data: Path, cache_dir: Path, weights: str, shard_size: int) -> list[str]:
    return [sys.executable, "-m", "embedpipe", "extract", "--data", str(data), "--backbone", "timm:test_efficientnet",
            "--weights", weights, "--cache-dir", str(cache_dir), "--shard-size", str(shard_size),
            "--batch-size", "4", "--workers", "0", "--precision", "fp32", "--quiet"]


def _shards(cache_dir: Path) -> tuple[int, bool, bool]:
    """(finished shard files, a shard .tmp is present, any .tmp is present) under the cache root."""
    done, shard_tmp, any_tmp = 0, False, False
    for folder, _, files in os.walk(cache_dir):
        in_shards = Path(folder).name == "shards"
        for name in files:
            done += in_shards and name.endswith(".h5")
            shard_tmp |= in_shards and name.endswith(".tmp")
            any_tmp |= name.endswith(".tmp")
    return done, shard_tmp, any_tmp


def kill_once(cmd: list[str], cache_dir: Path, kind: str, rng: random.Random, timeout: float = 300) -> Kill:
    """Launch ``cmd``, SIGKILL it at a moment of ``kind``, and say where the kill landed."""
    before, _, _ = _shards(cache_dir)
    target = before + rng.randint(1, 3)
    delay = rng.uniform(0.0, 3.0)
    env = {**os.environ, "PYTHONPATH": os.environ.get("PYTHONPATH", str(Path(__file__).resolve().parents[1]))}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    t0 = time.monotonic()
    while proc.poll() is None and time.monotonic() - t0 < timeout:
        done, tmp, _ = _shards(cache_dir)
        if ((kind == "start" and time.monotonic() - t0 >= delay) or (kind == "write" and tmp)
                or (kind == "between" and done >= target)):
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.0005 if kind == "write" else 0.005)
    _, err = proc.communicate(timeout=timeout)
    if proc.returncode not in (0, -signal.SIGKILL):
        raise AssertionError(f"extract failed (exit {proc.returncode}): {err.decode()[-2000:]}")
    after, _, tmp_left = _shards(cache_dir)
    return Kill(kind, before, after, tmp_left, proc.returncode == -signal.SIGKILL)


def run_to_end(cmd: list[str], timeout: float = 600) -> Path:
    env = {**os.environ, "PYTHONPATH": os.environ.get("PYTHONPATH", str(Path(__file__).resolve().parents[1]))}
    proc = subprocess.run(cmd, capture_output=True, timeout=timeout, env=env)
    if proc.returncode != 0:
        raise AssertionError(f"extract failed (exit {proc.returncode}): {proc.stderr.decode()[-2000:]}")
    return Path(proc.stdout.decode().strip())


def cache_differences(a: Path, b: Path) -> list[str]:
    """Everything that differs between two caches (empty when equal): meta arrays and attributes
    (but the creation time and host), and every shard's attributes, ok, errors and feature bytes."""
    diffs: list[str] = []
    with h5py.File(a / "meta.h5", "r") as fa, h5py.File(b / "meta.h5", "r") as fb:
        for name in sorted(set(fa) | set(fb)):
            if name not in fa or name not in fb or not np.array_equal(fa[name][()], fb[name][()]):
                diffs.append(f"meta.h5/{name}")
        skip = {"created_at", "host"}
        for k in sorted((set(fa.attrs) | set(fb.attrs)) - skip):
            if str(fa.attrs.get(k)) != str(fb.attrs.get(k)):
                diffs.append(f"meta.h5 attr {k}")
    names_a = sorted(p.name for p in (a / "shards").iterdir())
    names_b = sorted(p.name for p in (b / "shards").iterdir())
    if names_a != names_b:
        return [*diffs, f"shard files {names_a} vs {names_b}"]
    for name in names_a:
        with h5py.File(a / "shards" / name, "r") as fa, h5py.File(b / "shards" / name, "r") as fb:
            for k in ("start", "stop", "key"):
                if fa.attrs.get(k) != fb.attrs.get(k):
                    diffs.append(f"{name} attr {k}")
            for ds in ["ok", "errors", *(f"features/{layer}" for layer in fa["features"])]:
                x, y = fa[ds][()], fb[ds][()]
                if x.dtype != y.dtype or x.shape != y.shape or x.tobytes() != y.tobytes():
                    diffs.append(f"{name}/{ds}")
    return diffs


def kill_loop(data: Path, work: Path, weights: str, kills: int, shard_size: int, seed: int) -> tuple[list[Kill], Path]:
    """``kills`` random SIGKILLs of one run (re-running the same command each time), then the run to
    the end. Returns the kills and the finished cache; compare it with a clean run's."""
    rng = random.Random(seed)
    cmd = extract_cmd(data, work / "killed", weights, shard_size)
    log = []
    for i in range(kills):
        log.append(kill_once(cmd, work / "killed", KINDS[i % len(KINDS)], rng))
    return log, run_to_end(cmd)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20, help="random kills in the loop (default 20)")
    parser.add_argument("--images", type=int, default=32, help="images per class, 3 classes (default 32)")
    parser.add_argument("--shard-size", type=int, default=8, help="rows per shard (default 8)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import timm
    import torch
    from _common import environment, write_results

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        torch.manual_seed(0)
        weights = str(work / "test_efficientnet.pth")
        torch.save(timm.create_model("test_efficientnet").state_dict(), weights)
        data = make_folder(work / "images", per_class=args.images)
        t0 = time.perf_counter()
        log, killed = kill_loop(data, work, weights, args.kills, args.shard_size, args.seed)
        seconds = time.perf_counter() - t0
        clean = run_to_end(extract_cmd(data, work / "clean", weights, args.shard_size))
        diffs = cache_differences(killed, clean)
    landed = [k for k in log if k.killed]
    row = {
        **environment(), "kills": args.kills, "landed": len(landed),
        "inside_write": sum(k.tmp_left for k in landed),
        "before_first_shard": sum(k.shards_after == 0 for k in landed),
        "survived": len(landed) if not diffs else 0, "identical": not diffs,
        "images": 3 * args.images, "shard_size": args.shard_size, "seconds": round(seconds, 1),
        "differences": "; ".join(diffs[:5]),
    }
    for k in log:
        print(asdict(k))
    csv_path, md_path = write_results("faults", [row], [
        "kills", "landed", "before_first_shard", "inside_write", "survived", "identical", "images",
        "shard_size", "seconds"])
    print(f"{row['survived']} of {row['landed']} kills survived (identical={row['identical']}) -> {csv_path}, {md_path}")
    if diffs:
        sys.exit(1)


if __name__ == "__main__":
    main()
