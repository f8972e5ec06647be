"""How long the CLI takes to answer: each command run in a fresh process, the median of 5 runs after
one untimed run (warm disk cache).

    .venv/bin/python benchmarks/startup.py

Writes benchmarks/results/startup.csv and startup.md, one row per command: ``embedpipe --help``,
``list heads|backbones|datasets``, ``info --cache`` on a small cache this script builds (18 photos,
effnet-lite0), ``python -c "import embedpipe"``; and ``predict`` on 4 images with a logreg head next
to what it is made of: the model load alone (a fresh process that builds the head's backbone and
loads its weights), the model load plus embedding the 4 images (predict without a head), and
``import sklearn.base`` (what loading any head needs), so that predict's cost beyond the model shows.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

RUNS = 5
CLASSES, PER_CLASS = 3, 6
# The console script installed beside this Python (what a user types), else its module.
SCRIPT = shutil.which("embedpipe", path=str(Path(sys.executable).parent))
CLI = [SCRIPT] if SCRIPT else [sys.executable, "-m", "embedpipe"]


def seconds(cmd: list[str], cwd: Path) -> tuple[list[float], list[float]]:
    """Wall and CPU (user + system) seconds of ``cmd`` in a fresh process, RUNS times, after one untimed
    run. CPU time is the steadier of the two where other work shares the cores."""
    wall, cpu = [], []
    for i in range(RUNS + 1):
        r0, t0 = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
        subprocess.run(cmd, cwd=cwd, check=True, capture_output=True, timeout=300)
        t1, r1 = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
        if i:
            wall.append(t1 - t0)
            cpu.append(r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime)
    return wall, cpu


def build(work: Path) -> tuple[Path, Path, list[Path], dict[str, Any]]:
    """A small photo folder, its effnet-lite0 cache and a logreg head -> (cache, head, 4 images, backbone)."""
    from _common import camera_jpeg

    from embedpipe.extract import extract
    from embedpipe.heads.io import load_head
    from embedpipe.train import train_heads

    for c in range(CLASSES):
        (work / "photos" / f"class{c}").mkdir(parents=True)
        for i in range(PER_CLASS):
            (work / "photos" / f"class{c}" / f"{i}.jpg").write_bytes(camera_jpeg(c * PER_CLASS + i, (320, 240)))
    cache = extract(str(work / "photos"), cache_dir=work / "cache", progress=False)
    head = Path(train_heads(cache.path, ["logreg"], out=str(work / "logreg.npz"))[0].path)
    images = sorted((work / "photos" / "class0").glob("*.jpg"))[:4]
    return cache.path, head, images, dict(load_head(head)[1]["backbone"])


# The head's backbone built and its weights loaded in a fresh process, then (with any image given) the
# images embedded as predict does: predict without the head.
LOAD_MODEL = """
import json, sys
from embedpipe.backbones import BackboneConfig, create_backbone
config = json.loads(sys.argv[1])
bb = create_backbone(**{k: v for k, v in config.items() if k in BackboneConfig.__dataclass_fields__})
bb.fingerprint
if sys.argv[2:]:
    import torch
    from PIL import Image
    bb.embed(torch.stack([bb.transform(Image.open(p).convert("RGB")) for p in sys.argv[2:]]), ["pooled"])
"""


def main() -> None:
    from _common import environment, write_results

    env = environment()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        cache, head, images, backbone = build(work)
        commands = {
            "embedpipe --help": ([*CLI, "--help"], "argument parsing only"),
            "embedpipe list heads": ([*CLI, "list", "heads"], "registry entries, no head imported"),
            "embedpipe list backbones": ([*CLI, "list", "backbones"], "registry entries, no torch"),
            "embedpipe list datasets": ([*CLI, "list", "datasets"], "built-in sets"),
            "embedpipe info --cache CACHE": ([*CLI, "info", "--cache", str(cache)], "h5py reads the cache's metadata"),
            'python -c "import embedpipe"': ([sys.executable, "-c", "import embedpipe"], "public names load on use"),
            'python -c "import sklearn.base"': ([sys.executable, "-c", "import sklearn.base"],
                                                "what any head's class needs (heads are scikit-learn estimators)"),
            "model load (effnet-lite0)": ([sys.executable, "-c", LOAD_MODEL, json.dumps(backbone)],
                                          "fresh process: import torch and timm, build the model, load its weights"),
            "model load + embed 4 images": ([sys.executable, "-c", LOAD_MODEL, json.dumps(backbone), *map(str, images)],
                                            "the same, then decode 4 photos and one forward pass: predict without a head"),
            "embedpipe predict (4 images)": ([*CLI, "predict", "--head-file", str(head), *map(str, images)],
                                             "load the head and the model, embed 4 photos, classify"),
        }
        for name, (cmd, what) in commands.items():
            times, cpu = seconds(cmd, work)
            rows.append({"command": name, "median_s": round(statistics.median(times), 3),
                         "min_s": round(min(times), 3), "max_s": round(max(times), 3),
                         "cpu_median_s": round(statistics.median(cpu), 3), "runs": RUNS,
                         "times_s": " ".join(f"{t:.3f}" for t in times), "what": what,
                         "load_1min": round(os.getloadavg()[0], 2), **env})  # other work on the machine, if any
            print(f"{name:34s} median {rows[-1]['median_s']:.3f} s, cpu {rows[-1]['cpu_median_s']:.3f} s  "
                  f"({rows[-1]['times_s']})", flush=True)
    csv_path, md_path = write_results("startup", rows, ["command", "median_s", "min_s", "max_s", "cpu_median_s", "runs", "what",
                                                        "load_1min", "machine"])
    print(f"-> {csv_path}, {md_path}")


if __name__ == "__main__":
    main()
