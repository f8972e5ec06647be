"""Fine-tuning the top blocks from a cached map vs the best frozen head, on glyphs.

    .venv/bin/python benchmarks/finetune.py                      # full glyphs, 1500 classes (extract ~10 min + fits)
    .venv/bin/python benchmarks/finetune.py --classes 300 --quick  # a subset and a short schedule, to check it works

Extracts (or reuses) the effnet-lite0 cache of glyphs with layers block4 (the frozen baseline's
layer: logreg on block4 scored 0.543 test accuracy in the demo) and the unpooled maps of --layers,
then fits logreg on block4 and the finetune head on each map, in one run, on the same splits.
Goal (issue 10): finetune >= 10 points over the frozen logreg, fit in <= 15 minutes on 2 CPU cores.
Writes benchmarks/results/finetune.csv and finetune.md (dataset, layer, blocks unfrozen, epochs,
augmentations, fit seconds, CPU seconds of the process (a check on a busy machine), val/test
accuracy, device).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import environment, write_results


def main() -> None:
    from embedpipe.data.glyphs import GlyphsSource
    from embedpipe.extract import run_extract
    from embedpipe.train import train_heads

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--classes", type=int, default=1500, help="glyph classes (1500 = the built-in set)")
    ap.add_argument("--layers", default="block3:map", help="maps to fine-tune from, comma-separated")
    ap.add_argument("--unfreeze", default="-1", help="blocks to unfreeze, comma-separated runs (-1 = all after k)")
    ap.add_argument("--epochs", type=int, default=12, help="finetune epochs (early stopping on val)")
    ap.add_argument("--augment", default="crop,mixup", help="finetune augmentations")
    ap.add_argument("--cache-dir", default="cache", help="cache root")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda")
    ap.add_argument("--quick", action="store_true", help="4 epochs: checks the script, not the goal")
    args = ap.parse_args()
    maps = [m for m in args.layers.split(",") if m]
    epochs = 4 if args.quick else args.epochs
    source = GlyphsSource(args.classes)
    cache, stats = run_extract(source, "effnet-lite0", cache_dir=args.cache_dir, device=args.device,
                               layers=("block4", *maps))
    env = environment()
    base: dict[str, Any] = {"dataset": f"glyphs-{args.classes}", "device": env.get("device", args.device),
                            "extract_s": round(stats.seconds, 1)}
    rows = []
    cpu = time.process_time()
    r = train_heads(cache, ["logreg"], layer="block4", save=False)[0]
    rows.append({**base, "head": "logreg (frozen)", "layer": "block4", "unfrozen": 0, "epochs": "",
                 "augmentations": "", "fit_s": round(r.fit_s, 1), "cpu_s": round(time.process_time() - cpu, 1),
                 "val_acc": r.val_acc, "test_acc": r.test_acc})
    print(rows[-1], file=sys.stderr)
    for layer in maps:
        for unfreeze in (int(u) for u in args.unfreeze.split(",")):
            params = {"epochs": epochs, "unfreeze": unfreeze, "augment": args.augment, "device": args.device,
                      "verbose": True}
            cpu = time.process_time()
            r = train_heads(cache, ["finetune"], layer=layer, save=False, params={"finetune": params})[0]
            head: Any = r.model
            rows.append({**base, "head": "finetune", "layer": layer, "unfrozen": head.n_unfrozen_target_,
                         "epochs": head.n_epochs_, "augmentations": "+".join(head.augmentations_) or "none",
                         "fit_s": round(r.fit_s, 1), "cpu_s": round(time.process_time() - cpu, 1),
                         "val_acc": r.val_acc, "test_acc": r.test_acc})
            print(rows[-1], file=sys.stderr)
    for row in rows:
        row.update({k: env[k] for k in ("date", "machine", "torch") if k in env})
    columns = ["dataset", "head", "layer", "unfrozen", "epochs", "augmentations", "fit_s", "cpu_s", "val_acc", "test_acc", "device"]
    paths = write_results("finetune", rows, columns)
    print(f"wrote {paths[0]} and {paths[1]}", file=sys.stderr)


if __name__ == "__main__":
    main()
