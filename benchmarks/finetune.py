"""Fine-tuning the top blocks from a cached map vs the best frozen head, on glyphs and digits.

    .venv/bin/python benchmarks/finetune.py                          # glyphs and digits (extract ~10 min + fits)
    .venv/bin/python benchmarks/finetune.py --cache PATH --cache PATH2 --epochs 9,12   # existing caches
    .venv/bin/python benchmarks/finetune.py --data glyphs --classes 300 --quick        # a quick check of the script

For each dataset, extracts (or reuses) an effnet-lite0 cache at 224 px with the vector layers pooled,
block3, block4, block3:grid2, block4:grid2 and the unpooled maps of --layers (a --cache must hold at least one vector layer and the
maps), then, in one process on the same splits:
- the frozen baseline: `logreg` (C swept on val, refit on train+val) on every cached vector layer, or
  on --frozen; the best frozen head is the one with the best *val* accuracy (the issue's reference is
  the demo's best frozen head, logreg on glyphs' block4: 0.543 test accuracy);
- `finetune` from each map, for each --unfreeze and each --epochs value.
Goal (issue 10): on glyphs, finetune >= 10 points of test accuracy over the best frozen head, fitted
in <= 15 minutes on 2 CPU cores. Writes benchmarks/results/finetune.csv and finetune.md (dataset,
head, layer, blocks unfrozen, epochs run, augmentations, fit seconds, CPU seconds of the process (a
check on a busy machine), val/test accuracy, gain over the best frozen head, device, machine with
its CPU flags).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import environment, write_results

VECTOR_LAYERS = ("pooled", "block3", "block4", "block3:grid2", "block4:grid2")


def caches(args: argparse.Namespace, maps: list[str]) -> list[Any]:
    from embedpipe import open_cache
    from embedpipe.data import resolve_source
    from embedpipe.data.glyphs import GlyphsSource
    from embedpipe.extract import run_extract

    if args.cache:
        out = []
        for path in args.cache:
            cache = open_cache(path)
            missing = [m for m in maps if m not in cache.layers]
            if missing or not vector_layers(cache):
                sys.exit(f"{path} lacks layer(s) {missing or list(VECTOR_LAYERS)}; extract them or leave out --cache")
            out.append(cache)
        return out
    out = []
    for name in (d for d in args.data.split(",") if d):
        source = GlyphsSource(args.classes) if name == "glyphs" and args.classes != 1500 else resolve_source(name)
        cache, _ = run_extract(source, "effnet-lite0", cache_dir=args.cache_dir, device=args.device,
                               layers=(*VECTOR_LAYERS, *maps))
        out.append(cache)
    return out


def vector_layers(cache: Any) -> list[str]:
    return [n for n in cache.layers if len(cache.shapes[n]) == 1 and n != "logits"]


def main() -> None:
    from embedpipe.train import train_heads

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="glyphs,digits", help="built-in datasets, comma-separated")
    ap.add_argument("--classes", type=int, default=1500, help="glyph classes (1500 = the built-in set)")
    ap.add_argument("--cache", action="append", help="use this cache instead of extracting (repeatable)")
    ap.add_argument("--layers", default="block3:map", help="maps to fine-tune from, comma-separated")
    ap.add_argument("--frozen", help="vector layers for the frozen logreg baseline, comma-separated "
                                     "(default: every cached vector layer, grids included)")
    ap.add_argument("--unfreeze", default="-1", help="blocks to unfreeze, comma-separated runs (-1 = all after k)")
    ap.add_argument("--epochs", default="9",
                    help="finetune epochs, comma-separated runs (early stopping on val); 9 fit in 15 min on 2 "
                         "AVX2 cores from glyphs' block3:map")
    ap.add_argument("--augment", default="crop,mixup", help="finetune augmentations")
    ap.add_argument("--cache-dir", default="cache", help="cache root")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda")
    ap.add_argument("--quick", action="store_true", help="4 epochs: checks the script, not the goal")
    args = ap.parse_args()
    maps = [m for m in args.layers.split(",") if m]
    epoch_runs = [4] if args.quick else [int(e) for e in args.epochs.split(",") if e]
    env = environment()
    rows = []
    for cache in caches(args, maps):
        base: dict[str, Any] = {"dataset": f"{cache.meta.get('dataset')}-{len(cache.label_names)}",
                                "device": env.get("device", args.device)}
        frozen = []
        for layer in args.frozen.split(",") if args.frozen else vector_layers(cache):
            cpu = time.process_time()
            r = train_heads(cache, ["logreg"], layer=layer, save=False)[0]
            frozen.append({**base, "head": "logreg (frozen)", "layer": layer, "unfrozen": 0, "epochs": "",
                           "augmentations": "", "fit_s": round(r.fit_s, 1),
                           "cpu_s": round(time.process_time() - cpu, 1), "val_acc": r.val_acc, "test_acc": r.test_acc})
            print(frozen[-1], file=sys.stderr, flush=True)
        best = max(frozen, key=lambda r: r["val_acc"])
        best["head"] = "logreg (frozen, best on val)"
        rows += frozen
        for layer, unfreeze, epochs in [(m, int(u), e) for m in maps for u in args.unfreeze.split(",") for e in epoch_runs]:
            params = {"epochs": epochs, "unfreeze": unfreeze, "augment": args.augment, "device": args.device,
                      "verbose": True}
            cpu = time.process_time()
            r = train_heads(cache, ["finetune"], layer=layer, save=False, params={"finetune": params})[0]
            head: Any = r.model
            rows.append({**base, "head": "finetune", "layer": layer, "unfrozen": head.n_unfrozen_target_,
                         "epochs": f"{head.n_epochs_} of {epochs}", "augmentations": "+".join(head.augmentations_),
                         "fit_s": round(r.fit_s, 1), "cpu_s": round(time.process_time() - cpu, 1),
                         "val_acc": r.val_acc, "test_acc": r.test_acc,
                         "gain_vs_frozen": round(r.test_acc - best["test_acc"], 3)})
            print(rows[-1], file=sys.stderr, flush=True)
    for row in rows:
        row.update({k: env[k] for k in ("date", "machine", "torch") if k in env})
    columns = ["dataset", "head", "layer", "unfrozen", "epochs", "augmentations", "fit_s", "cpu_s", "val_acc",
               "test_acc", "gain_vs_frozen", "device", "machine"]
    paths = write_results("finetune", rows, columns)
    print(f"wrote {paths[0]} and {paths[1]}", file=sys.stderr)


if __name__ == "__main__":
    main()
