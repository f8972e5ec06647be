"""How many layers to keep frozen: the multilayer head against the best single layer, in one run.

    .venv/bin/python benchmarks/layers.py                                   # digits and glyphs caches under cache/
    .venv/bin/python benchmarks/layers.py --cache /path/to/cache ...        # any caches
    .venv/bin/python benchmarks/layers.py --quick                           # pooled, block3, block4 only
    .venv/bin/python benchmarks/layers.py --layers pooled,block3,block4,block3:grid2,block4:grid2 --cache ...

For each cache (effnet-lite0 with pooled, block0..block4, logits: `embedpipe extract --data digits
--layers pooled,block0,block1,block2,block3,block4,logits`), in one process:
- `logreg` (9-value C sweep on val, refit on train+val) on every vector layer; the best single layer is
  the one with the best **val** accuracy, and its test accuracy is the baseline;
- `multilayer` on every cached layer (the head's default, logits included).
Goal: multilayer's test accuracy above the best single layer's, in at most 2x the fit time of the logreg
sweep on one layer (`ratio_vs_pooled`: against logreg on `pooled`; `ratio_vs_best`: against logreg on
the best layer). `advise` runs on the same cache and its recommendation is recorded.
Writes benchmarks/results/layers.csv and layers.md (timings are compared within the run only).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

LAYERS = "pooled,block0,block1,block2,block3,block4,logits"


def find_caches(names: list[str]) -> list[Path]:
    found = []
    for name in names:
        hits = sorted(Path("cache", name).glob("effnet-lite0-*/meta.h5"))
        if not hits:
            print(f"no cache/{name}/effnet-lite0-*: run `embedpipe extract --data {name} --layers {LAYERS}`")
        found += [h.parent for h in hits[:1]]
    return found


def run_cache(path: Path, quick: bool, env: dict[str, Any], layers: str | None = None) -> list[dict[str, Any]]:
    from embedpipe import open_cache
    from embedpipe.advise import advise, sweep_layers
    from embedpipe.train import default_layer, fit_head, load_splits

    cache = open_cache(path)
    dataset = str(cache.meta.get("dataset"))
    if layers:
        singles = [n for n in layers.split(",") if n]
    else:
        singles = ["pooled", "block3", "block4"] if quick else sweep_layers(cache.layers)
    multi = ",".join(singles) if quick or layers else default_layer(cache, "multilayer")
    rows = []
    warm = load_splits(cache, singles[-1])["train"]  # warm torch up so the first timed fit is not penalised
    fit_head({"train": warm, "val": warm, "test": warm}, "logreg", singles[-1], {"Cs": (1.0,), "max_iter": 5})
    for layer in singles:
        r = fit_head(load_splits(cache, layer), "logreg", layer)
        rows.append({"dataset": dataset, "method": "logreg", "layer": layer, "val_acc": r.val_acc,
                     "test_acc": r.test_acc, "fit_s": round(r.fit_s, 2), **env})
        print(f"{dataset} logreg {layer}: val {r.val_acc:.3f} test {r.test_acc:.3f} {r.fit_s:.1f}s", flush=True)
    best = max(rows, key=lambda r: (r["val_acc"], -rows.index(r)))
    from embedpipe.heads import HEADS

    t0 = time.perf_counter()
    r = fit_head(load_splits(cache, multi), "multilayer", multi, None, HEADS.get("multilayer").context_params(cache, multi))
    print(f"{dataset} multilayer: val {r.val_acc:.3f} test {r.test_acc:.3f} {r.fit_s:.1f}s "
          f"(load {time.perf_counter() - t0 - r.fit_s:.1f}s)", flush=True)
    pooled_s = next(x["fit_s"] for x in rows if x["layer"] == "pooled")
    shares = r.report.get("layer_contributions_", {})
    rows.append({"dataset": dataset, "method": "multilayer", "layer": multi, "val_acc": r.val_acc,
                 "test_acc": r.test_acc, "fit_s": round(r.fit_s, 2),
                 "best_single": f"{best['layer']} ({best['test_acc']:.3f})",
                 "gain_vs_best": round(r.test_acc - best["test_acc"], 4),
                 "ratio_vs_pooled": round(r.fit_s / pooled_s, 2), "ratio_vs_best": round(r.fit_s / best["fit_s"], 2),
                 "contributions": " ".join(f"{k}:{v:.2f}" for k, v in shares.items()),
                 "kept": r.report.get("keep_"), **env})
    out = Path(__file__).resolve().parent / "results" / f"layers-advise-{dataset}.png"
    adv = advise(cache, out=out)
    rec = adv["recommendation"]
    rows.append({"dataset": dataset, "method": "advise", "layer": rec["layer"],
                 "best_single": f"peak {adv['peak_layer']}", "contributions": f"{adv['size']} & {adv['similarity']}: "
                 f"{rec['head']}, fine-tune {rec['finetune_blocks']}", **env})
    return rows


def main() -> None:
    from _common import environment, write_results

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--cache", action="append", help="cache directory (repeatable); default cache/{digits,glyphs}")
    ap.add_argument("--quick", action="store_true", help="single layers pooled, block3, block4 and their multilayer")
    ap.add_argument("--layers", help="single layers to compare (comma-separated), and multilayer over all of them")
    args = ap.parse_args()
    env = environment()
    paths = [Path(p) for p in args.cache] if args.cache else find_caches(["digits", "glyphs"])
    rows = [row for p in paths for row in run_cache(p, args.quick, env, args.layers)]
    _, md_path = write_results("layers", rows, ["dataset", "method", "layer", "val_acc", "test_acc", "fit_s",
                                                       "best_single", "gain_vs_best", "ratio_vs_pooled",
                                                       "ratio_vs_best", "contributions"])
    print(md_path.read_text())


if __name__ == "__main__":
    main()
