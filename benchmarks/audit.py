"""`embedpipe audit` measured: planted near-duplicates on two data sets built here, and the
near-duplicate search at scale on synthetic features.

    .venv/bin/python benchmarks/audit.py            # planted sets (~1,250 images each) + scale (200k)
    .venv/bin/python benchmarks/audit.py --quick    # small sizes, for development

Writes benchmarks/results/audit.csv and audit.md.

**Planted duplicates.** Two data sets, written to image folders with train/val/test folders:

* ``glyphs``: small grayscale images, the built-in glyphs set's first classes rendered to PNG files
  (8 images per class: 6 train, 1 val, 1 test); different renderings of one character vary face,
  size, rotation, position, grey levels and noise, so none is a copy of another;
* ``shapes``: varied colour images generated here: a two-colour gradient background, 3 to 6 random
  ellipses, rectangles and triangles in random colours, and pixel noise; the class sets the hue of
  the largest shape (70 % train, 15 % val, 15 % test per class), over a smooth random colour
  texture of its own (a 6 x 6 random field upscaled), so that no two are alike.

Into each, ``planted`` test images are copied into train as leaks happen: cropped by up to 5 % (split
at random between the sides), resized by a factor of 1 to 3, brightness changed by up to ±5 %, and
saved as JPEG at quality 70 to 95. The glyphs get a second draw (seed 1 picks other images and other
changes), so that the thresholds are not fitted to one draw. Each set is embedded with
effnet-lite0 (``pooled``), and every candidate pair (a row and its 5 nearest rows with cosine >= 0.5) gets each second signal; then each
rule is scored: recall = planted pairs reported / planted, precision = planted pairs reported / pairs
reported (both sets are free of natural duplicates, so every other pair is a false positive). The
``audit`` row is ``embedpipe.audit`` itself with its defaults.

**Scale.** Synthetic float16 features with planted copies (``synthetic``: non-negative, clustered,
low-rank plus noise, like pooled CNN features; a copy is its source plus noise, cosine about 0.97),
searched by ``search.nearest`` in a fresh child process at each size: seconds, recall of the planted
copies (the source is the copy's nearest row) and the child's peak resident memory
(``resource.getrusage``: FAISS and torch work in threads, so the child is the whole process tree),
which includes building the features; rows also record the features' own bytes and what the search
added above the process's resident memory when it began (``search_rss_mb``), and
the search's CPU seconds over all its threads (on a busy machine the wall time stretches; the CPU
time much less: 2 free cores finish in about half to all of it).
``--skip-planted`` / ``--skip-scale`` re-run one part and keep the other part's committed rows.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as bench

# -- data sets ----------------------------------------------------------------------------------

def glyph_set(root: Path, classes: int) -> None:
    from embedpipe.data.glyphs import GlyphsSource

    src = GlyphsSource()
    for r in src.records[: classes * src.per_class]:
        cls, index = r.id.split("/")
        folder = root / str(r.split) / cls
        folder.mkdir(parents=True, exist_ok=True)
        src.open(r).save(folder / f"{index}.png")


def shape_image(rng: np.random.Generator, label: int, classes: int, size: int = 96) -> Image.Image:
    c1, c2 = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    t = np.linspace(0, 1, size)[:, None, None]
    grad = (c1 * (1 - t) + c2 * t) * np.ones((size, size, 3))
    if rng.random() < 0.5:
        grad = grad.transpose(1, 0, 2)
    field = Image.fromarray(rng.integers(0, 256, (6, 6, 3)).astype(np.uint8)).resize((size, size), Image.Resampling.BICUBIC)
    img = Image.fromarray((0.6 * grad + 0.4 * np.asarray(field, np.float32)).astype(np.uint8))  # a unique texture
    draw = ImageDraw.Draw(img)
    shapes = int(rng.integers(3, 7))
    for s in range(shapes):
        if s == shapes - 1:  # the largest shape carries the class: its hue
            hue = (label + rng.uniform(0.1, 0.9)) / classes
            colour = tuple(int(v) for v in (255 * np.clip(np.abs(((hue * 6 + np.array([0, 4, 2])) % 6) - 3) - 1, 0, 1)))
            w = rng.uniform(0.4, 0.7) * size
        else:
            colour = tuple(int(v) for v in rng.integers(0, 256, 3))
            w = rng.uniform(0.1, 0.4) * size
        x, y = rng.uniform(0, size - w, 2)
        kind = rng.integers(3)
        if kind == 0:
            draw.ellipse([x, y, x + w, y + w * rng.uniform(0.5, 1.5)], fill=colour)
        elif kind == 1:
            draw.rectangle([x, y, x + w, y + w * rng.uniform(0.5, 1.5)], fill=colour)
        else:
            draw.polygon([(x, y + w), (x + w, y + w), (x + w * rng.uniform(0, 1), y)], fill=colour)
    arr = np.asarray(img, np.float32) + rng.normal(0, 6, (size, size, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def shapes_set(root: Path, classes: int, per_class: int) -> None:
    rng = np.random.default_rng(0)
    for c in range(classes):
        for i in range(per_class):
            split = "train" if i < 0.7 * per_class else "val" if i < 0.85 * per_class else "test"
            folder = root / split / f"class{c:02d}"
            folder.mkdir(parents=True, exist_ok=True)
            shape_image(rng, c, classes).save(folder / f"{i:03d}.png")


def leak_copy(img: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, int]:
    """A copy as leaks happen: <= 5 % crop, x1-3 size, +-5 % brightness; returns it and a JPEG quality."""
    w, h = img.size
    cw, ch = rng.uniform(0, 0.05) * w, rng.uniform(0, 0.05) * h
    left, top = rng.uniform(0, cw), rng.uniform(0, ch)
    img = img.crop((round(left), round(top), round(w - (cw - left)), round(h - (ch - top))))
    scale = rng.uniform(1, 3)
    img = img.resize((round(img.width * scale), round(img.height * scale)), Image.Resampling.BICUBIC)
    img = ImageEnhance.Brightness(img).enhance(1 + rng.uniform(-0.05, 0.05))
    return img.convert("RGB"), int(rng.integers(70, 96))


def plant(root: Path, n: int, seed: int = 0) -> set[tuple[str, str]]:
    """Copy ``n`` test images into train (same class); -> {(train copy id, test source id)}."""
    rng = np.random.default_rng(seed)
    tests = sorted(p for p in (root / "test").rglob("*.png"))
    chosen = rng.choice(len(tests), min(n, len(tests)), replace=False)
    pairs = set()
    for k in sorted(chosen):
        src = tests[k]
        copy, quality = leak_copy(Image.open(src).convert("RGB"), rng)
        dst = root / "train" / src.parent.name / f"copy-{src.stem}.jpg"
        copy.save(dst, quality=quality)
        pairs.add((dst.relative_to(root).as_posix(), src.relative_to(root).as_posix()))
    return pairs


# -- signals on candidate pairs -------------------------------------------------------------------

def candidate_signals(cache: Any, opener: Any) -> list[dict[str, Any]]:
    import imagehash

    from embedpipe.audit import duplicates as dup
    from embedpipe.audit.search import nearest, normalised

    rows = cache.rows(None)
    ids = [str(i) for i in cache.ids[rows]]
    X, _ = cache.load(None, "pooled", dtype=np.float16)
    Xn = normalised(X)
    nb = nearest(Xn, dup.NEIGHBOURS)
    pairs = dup.candidate_pairs(nb, 0.5)
    images: dict[int, Any] = {}

    def get(i: int) -> Any:
        if i not in images:
            img = opener(ids[i])
            images[i] = (img, dup.thumbnail(img, 32), dup.thumbnail(img, 64), imagehash.phash(img), dup.thumbnail(img))
        return images[i]

    best = nb.similarity[:, 0]
    second = nb.similarity[:, 1]
    out = []
    for (i, j), cos in pairs.items():
        (_, a32, a64, ha, wa), (_, b32, b64, hb, wb) = get(i), get(j)
        margin = max(cos - (second[i] if nb.index[i, 0] == j else best[i]),
                     cos - (second[j] if nb.index[j, 0] == i else best[j]))
        a16, b16 = dup.thumbnail(get(i)[0], 16), dup.thumbnail(get(j)[0], 16)
        corr16 = dup.thumbnail_correlation(a16, b16, 0)
        reg32 = dup.registered_correlation(wa, wb, 32)  # the audit's signal (dup.THUMB = 32)
        mutual = float(nb.index[i, 0] == j and nb.index[j, 0] == i)
        out.append({"a": ids[i], "b": ids[j], "cosine": cos, "margin": float(margin), "corr16": corr16,
                    "both": float(corr16 >= 0.92 and int(ha - hb) <= 12), "mutual": mutual,
                    "reg16": dup.registered_correlation(wa, wb, 16), "reg32": reg32,
                    "reg64": dup.registered_correlation(wa, wb, 64),
                    "reg32w64": dup.registered_correlation(a64, b64, 32),
                    "reg32_mutual": min(reg32, 2 * mutual - 1),
                    "reg32_phash": float(reg32 >= dup.PIXEL_CORRELATION and int(ha - hb) <= 12),
                    "reg32_gate": reg32 if corr16 >= dup.GATE_CORRELATION else -1.0,
                    "corr32": dup.thumbnail_correlation(a32, b32, 0), "corr32s2": dup.thumbnail_correlation(a32, b32, 2),
                    "corr64s3": dup.thumbnail_correlation(a64, b64, 3), "phash": int(ha - hb)})
    return out


def candidates_at(cache: Any, k: int) -> set[frozenset[str]]:
    """Candidate pairs (cosine >= 0.7) when every row keeps its ``k`` nearest rows."""
    from embedpipe.audit import duplicates as dup
    from embedpipe.audit.search import nearest, normalised

    ids = [str(i) for i in cache.ids[cache.rows(None)]]
    X, _ = cache.load(None, "pooled", dtype=np.float16)
    pairs = dup.candidate_pairs(nearest(normalised(X), k), dup.CANDIDATE_COSINE)
    return {frozenset((ids[i], ids[j])) for i, j in pairs}


RULES = {  # name -> (signal, threshold, larger is a duplicate)
    "cosine >= 0.90": ("cosine", 0.90, True),
    "cosine >= 0.95": ("cosine", 0.95, True),
    "margin >= 0.05": ("margin", 0.05, True),
    "pixel corr 16px >= 0.92": ("corr16", 0.92, True),
    "pixel corr 32px >= 0.90": ("corr32", 0.90, True),
    "pixel corr 32px shift 2 >= 0.90": ("corr32s2", 0.90, True),
    "pixel corr 32px shift 2 >= 0.95": ("corr32s2", 0.95, True),
    "pixel corr 64px shift 3 >= 0.90": ("corr64s3", 0.90, True),
    "pixel corr 64px shift 3 >= 0.95": ("corr64s3", 0.95, True),
    "phash distance <= 10": ("phash", 10, False),
    "phash distance <= 16": ("phash", 16, False),
    "pixel corr 16px >= 0.92 and phash <= 12": ("both", 1, True),
    "mutual nearest neighbours": ("mutual", 1, True),
    "registered corr 16px >= 0.96": ("reg16", 0.96, True),
    "registered corr 32px >= 0.94": ("reg32", 0.94, True),
    "registered corr 32px >= 0.96": ("reg32", 0.96, True),
    "registered corr 32px >= 0.965": ("reg32", 0.965, True),
    "registered corr 32px (from 64px) >= 0.96": ("reg32w64", 0.96, True),
    "registered corr 32px >= 0.97": ("reg32", 0.97, True),
    "registered corr 64px >= 0.92": ("reg64", 0.92, True),
    "registered corr 64px >= 0.94": ("reg64", 0.94, True),
    "registered corr 32px >= 0.92 and mutual": ("reg32_mutual", 0.92, True),
    "registered corr 32px >= 0.965 and phash <= 12": ("reg32_phash", 1, True),
    "16px corr >= 0.6 (gate), then registered 32px >= 0.965": ("reg32_gate", 0.965, True),
}


def score(reported: set[frozenset[str]], planted: set[frozenset[str]]) -> tuple[float, float, int]:
    hits = len(reported & planted)
    return hits / max(1, len(planted)), hits / max(1, len(reported)), len(reported)


def planted_run(name: str, root: Path, planted: set[tuple[str, str]], cache_dir: Path) -> list[dict[str, Any]]:
    import embedpipe
    from embedpipe.data.reopen import ImageOpener, SourceLocation

    t = time.perf_counter()
    cache = embedpipe.extract(str(root), cache_dir=cache_dir, progress=False)
    extract_s = time.perf_counter() - t
    truth = {frozenset(p) for p in planted}
    signals = candidate_signals(cache, ImageOpener(SourceLocation.of(str(root))))
    pos = [s for s in signals if frozenset((s["a"], s["b"])) in truth]
    rows = []
    base = {"set": name, "images": len(cache.ids), "planted": len(truth), "extract_s": round(extract_s, 1)}
    for rule, (key, thr, larger) in RULES.items():
        reported = {frozenset((s["a"], s["b"])) for s in signals if (s[key] >= thr if larger else s[key] <= thr)}
        cand = {frozenset((s["a"], s["b"])) for s in signals if s["cosine"] >= 0.7}
        if not rule.startswith("cosine"):  # verification rules act on the audit's candidates
            reported &= cand
        recall, precision, n = score(reported, truth)
        rows.append({**base, "rule": rule, "reported": n, "recall": round(recall, 3),
                     "precision": round(precision, 3)})
    t = time.perf_counter()
    result = embedpipe.audit(cache, top=None, save=False, report=False)
    audit_s = time.perf_counter() - t
    reported = {frozenset((d["a"], d["b"])) for d in result.duplicates}
    recall, precision, n = score(reported, truth)
    leaks = sum(1 for d in result.duplicates if frozenset((d["a"], d["b"])) in truth and d["leak"])
    rows.append({**base, "rule": "audit (defaults)", "reported": n, "recall": round(recall, 3),
                 "precision": round(precision, 3), "leaks_flagged": leaks, "audit_s": round(audit_s, 1)})
    copies = np.array([s["cosine"] for s in pos]) if pos else np.zeros(1)
    rows[-1]["copy_cosine_min_median"] = f"{copies.min():.3f} / {np.median(copies):.3f}"
    missed = truth - {frozenset((s["a"], s["b"])) for s in signals}
    rows[-1]["planted_not_candidates"] = len(missed)
    rows[-1]["planted_not_candidates_k10"] = len(truth - candidates_at(cache, 10))
    detail = {k: [round(float(s[k]), 3) for s in pos] for k in ("cosine", "reg32", "corr32s2", "corr64s3", "phash", "margin")}
    neg = [s for s in signals if frozenset((s["a"], s["b"])) not in truth and s["cosine"] >= 0.7]
    detail_neg = {k: float(np.percentile([s[k] for s in neg], 99 if k != "phash" else 1)) if neg else None
                  for k in ("cosine", "reg32", "corr32s2", "corr64s3", "phash", "margin")}
    print(name, "planted signals min/median:", {k: (min(v), float(np.median(v))) for k, v in detail.items() if v},
          "| others p99 (phash p1):", detail_neg, flush=True)
    return rows


# -- scale ----------------------------------------------------------------------------------------

def synthetic(n: int, d: int = 1280, copies: int = 500, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Clustered non-negative float16 features (relu of cluster centre + low-rank + noise) with
    ``copies`` planted copies (source + noise) in the last rows."""
    rng = np.random.default_rng(seed)
    k = max(10, n // 200)
    centres = rng.normal(0, 1, (k, 64)).astype(np.float32)
    W = rng.normal(0, 1 / 8, (64, d)).astype(np.float32)
    X = np.empty((n, d), np.float16)
    for a in range(0, n, 8192):
        b = min(n, a + 8192)
        z = centres[rng.integers(0, k, b - a)] + rng.normal(0, 0.7, (b - a, 64)).astype(np.float32)
        X[a:b] = np.maximum(z @ W + rng.normal(0, 0.3, (b - a, d)).astype(np.float32), 0)
    src = rng.choice(n - copies, copies, replace=False)
    dst = n - copies + np.arange(copies)
    for s, t in zip(src, dst, strict=True):
        x = X[s].astype(np.float32)
        X[t] = np.maximum(x + rng.normal(0, 0.35 * x.std(), d), 0)
    return X, src, dst


def scale_child(n: int, method: str) -> None:
    """Run in a child process: build, search, print one JSON line."""
    from embedpipe.audit.search import nearest

    X, src, dst = synthetic(n)
    start = _rss_now_kib()  # imports + the features + what building them left behind
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    t = time.perf_counter()
    nb = nearest(X, 3, method=method, inplace=True)
    seconds = time.perf_counter() - t
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)  # over all threads
    found = nb.index[dst, 0] == src
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux: this process's peak
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # and any child it started (none)
    print(json.dumps({"seconds": round(seconds, 2), "cpu_s": round(cpu, 1), "recall": round(float(found.mean()), 4),
                      "rss_start_mb": round(start / 1024),
                      "features_mb": round(X.nbytes / 1e6), "peak_rss_mb": round(max(own, kids) / 1024)}))


def _rss_now_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def scale_run(n: int, method: str) -> dict[str, Any]:
    """One search in a fresh child process (synthetic features built there); its own peak RSS is the
    process tree's (FAISS and torch use threads, not processes)."""
    proc = subprocess.run([sys.executable, __file__, "--scale-child", str(n), method],
                          capture_output=True, text=True, timeout=3600, env={**os.environ})
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"set": f"synthetic {n:,} x 1280 float16", "rule": method, "images": n, "planted": 500,
            "recall": out["recall"], "search_s": out["seconds"], "search_cpu_s": out["cpu_s"],
            "features_mb": out["features_mb"],
            "peak_rss_mb": out["peak_rss_mb"], "rss_minus_features_mb": out["peak_rss_mb"] - out["features_mb"],
            "search_rss_mb": out["peak_rss_mb"] - out["rss_start_mb"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (development)")
    parser.add_argument("--scale-child", nargs=2, metavar=("N", "METHOD"), help=argparse.SUPPRESS)
    parser.add_argument("--skip-planted", action="store_true", help="only the scale runs")
    parser.add_argument("--skip-scale", action="store_true", help="only the planted runs")
    parser.add_argument("--sets", help="planted sets to run, comma-separated name prefixes (default: all)")
    parser.add_argument("--sizes", help="scale sizes, comma-separated (default: 50000,100000,200000)")
    parser.add_argument("--methods", help="scale methods, comma-separated (default: faiss-ivf; ivf-pca and "
                                          "exact too at 50,000 rows or fewer)")
    args = parser.parse_args()
    if args.scale_child:
        scale_child(int(args.scale_child[0]), args.scale_child[1])
        return
    env = bench.environment()
    facts = {"date": env["date"], "machine": env["machine"], "versions": env["versions"]}
    rows: list[dict[str, Any]] = []
    glyph_classes, shape_classes, per_class, planted_n = (40, 10, 40, 20) if args.quick else (150, 20, 60, 60)
    if not args.skip_planted:
        with tempfile.TemporaryDirectory() as tmp:
            tmp_path = Path(tmp)
            sets = (("glyphs (grayscale)", lambda r: glyph_set(r, glyph_classes), 0),
                    ("shapes (colour)", lambda r: shapes_set(r, shape_classes, per_class), 0),
                    ("glyphs (grayscale; plant seed 1)", lambda r: glyph_set(r, glyph_classes), 1))
            for k, (name, build, seed) in enumerate(sets):
                if args.sets and not any(name.startswith(w) for w in args.sets.split(",")):
                    continue
                root = tmp_path / f"{name.split()[0]}{k}"
                build(root)
                truth = plant(root, planted_n, seed)
                for row in planted_run(name, root, truth, tmp_path / "cache"):
                    rows.append({**row, **facts, "load_1min": round(os.getloadavg()[0], 2)})
                    print(row, flush=True)
    if not args.skip_scale:
        sizes = (20_000, 50_000) if args.quick else (50_000, 100_000, 200_000)
        if args.sizes:
            sizes = tuple(int(v) for v in args.sizes.split(","))
        for n in sizes:
            methods = ("faiss-ivf", *(("ivf-pca", "exact") if n <= 50_000 else ()))
            for method in args.methods.split(",") if args.methods else methods:
                row = {**scale_run(n, method), **facts, "load_1min": round(os.getloadavg()[0], 2)}
                rows.append(row)
                print(row, flush=True)
    name = "audit-quick" if args.quick else "audit"
    old = bench.RESULTS / f"{name}.csv"
    if old.is_file() and (args.skip_planted or args.skip_scale or args.sizes or args.methods):
        fresh = {(r["set"], r["rule"]) for r in rows}
        with open(old, newline="") as f:  # rows not measured again this time stay
            rows = [r for r in csv.DictReader(f) if (r["set"], r["rule"]) not in fresh] + rows
    write(name, rows)


def write(name: str, rows: list[dict[str, Any]]) -> None:
    """results/<name>.csv (every field) and .md (a planted table and a scale table)."""
    from embedpipe.table import format_table

    planted = [r for r in rows if not r.get("search_s")]
    scale = [r for r in rows if r.get("search_s")]
    csv_path, md_path = bench.write_results(name, [*planted, *scale], ["set"])
    parts = []
    if planted:
        parts += ["## Planted duplicates", "", format_table(planted, ["set", "rule", "images", "planted", "reported",
                                                                      "recall", "precision", "load_1min"])]
    if scale:
        parts += ["", "## Near-duplicate search at scale (2 CPU cores)", "",
                  format_table(scale, ["set", "rule", "recall", "search_s", "search_cpu_s", "peak_rss_mb", "features_mb",
                                       "search_rss_mb", "load_1min"])]
    md_path.write_text("\n".join(parts) + "\n")
    print(f"wrote {csv_path} and {md_path}")


if __name__ == "__main__":
    main()
