"""Planted label errors: embedpipe's find_label_issues beside cleanlab's two usual routes, on the
same cached features, in one run.

    .venv/bin/python benchmarks/audit_labels.py                  # digits + glyphs (100 classes), 3 flips each
    .venv/bin/python benchmarks/audit_labels.py --data glyphs --glyph-classes 0 --methods embedpipe,datalab --seeds 1 --append
                                                                 # then all 1,500 glyph classes, beside Datalab
    .venv/bin/python benchmarks/audit_labels.py --quick          # digits only, one flip

scikit-learn's LogisticRegression is the slow part: 2-6 minutes per flip on 2 busy cores (about 25
minutes in all). ``--methods`` and ``--append`` re-measure some methods and keep the other rows.

Each case takes the ``train`` rows of a cache's ``pooled`` layer, flips ``--flip`` (5 %) of their labels
to another class chosen at random (seeded), and asks each method for its ranked list of likely label
errors:

- ``embedpipe``: ``embedpipe.audit.labels.find_label_issues`` (out-of-fold probabilities of the
  closed-form ridge head over 5 stratified folds, its alpha chosen once; cleanlab ranks them);
- ``embedpipe-logreg``: the same with the logreg head (``--heads``);
- ``sklearn-logreg``: ``cleanlab.filter.find_label_issues`` on out-of-fold probabilities of
  scikit-learn's ``LogisticRegression(max_iter=1000)`` from ``cross_val_predict`` (5 stratified folds);
- ``datalab``: cleanlab's ``Datalab(data, label_name).find_issues(features=X, issue_types={"label": {}})``,
  its flagged rows ranked by ``label_score`` (Datalab imports ``datasets``: ``pip install datasets``; it
  is not an embedpipe dependency).

With k = the number of flipped rows: ``precision_at_k`` = flipped rows among the first k of the list,
divided by the list's length up to k (min(k, flagged)); ``recall_at_k`` = the same hits divided by k.
(When a list is at least k long the two are equal.) ``flagged`` is the list's full length. Each row
records the seconds (probabilities and ranking together), the 1-minute load average and the CPU's ISA.
Glyphs has 1,500 classes of 8 images (6 in train); ``--glyph-classes`` keeps the first N classes (said in the row).
Writes benchmarks/results/audit-labels.csv and audit-labels.md.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
ROOT = Path(__file__).resolve().parents[1]
FOLDS = 5


def find_cache(name: str) -> Path | None:
    hits = sorted((ROOT / "cache" / name).glob("effnet-lite0-*/meta.h5"))
    return hits[-1].parent if hits else None


def load(path: Path, classes: int | None) -> tuple[np.ndarray, np.ndarray]:
    from embedpipe import open_cache

    X, y = open_cache(path).load("train", "pooled")
    if classes is not None:
        keep = y < classes
        X, y = X[keep], y[keep]
    return X, np.unique(y, return_inverse=True)[1]


def flip(y: np.ndarray, share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``share`` of the rows get another class, chosen uniformly; -> (noisy labels, flipped rows)."""
    rng = np.random.default_rng(seed)
    k = int(y.max()) + 1
    rows = rng.choice(len(y), round(share * len(y)), replace=False)
    noisy = y.copy()
    noisy[rows] = (y[rows] + rng.integers(1, k, len(rows))) % k
    return noisy, rows


def embedpipe_method(head: str) -> Callable[[np.ndarray, np.ndarray], list[int]]:
    def run(X: np.ndarray, y: np.ndarray) -> list[int]:
        from embedpipe.audit.labels import find_label_issues

        rows, _ = find_label_issues(X, y, folds=FOLDS, head=head)
        return [r["index"] for r in rows]
    return run


def sklearn_logreg(X: np.ndarray, y: np.ndarray) -> list[int]:
    import cleanlab.filter
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    probs = cross_val_predict(LogisticRegression(max_iter=1000), X, y, cv=StratifiedKFold(FOLDS, shuffle=True, random_state=0),
                              method="predict_proba")
    return [int(i) for i in cleanlab.filter.find_label_issues(y, probs, return_indices_ranked_by="self_confidence")]


def datalab(X: np.ndarray, y: np.ndarray) -> list[int]:
    from cleanlab import Datalab

    lab = Datalab(data={"label": y}, label_name="label", verbosity=0)
    lab.find_issues(features=X, issue_types={"label": {}})
    issues = lab.get_issues("label")
    flagged = issues[issues["is_label_issue"]].sort_values("label_score", kind="stable")
    return [int(i) for i in flagged.index]


def measure(cases: list[tuple[str, Path, int | None]], seeds: list[int], heads: list[str], share: float,
            only: list[str] | None = None) -> list[dict[str, Any]]:
    from _common import environment

    from embedpipe.bench import cpu_isa

    env = environment()
    methods: dict[str, Callable[[np.ndarray, np.ndarray], list[int]]] = {
        **{"embedpipe" if h == "ridge" else f"embedpipe-{h}": embedpipe_method(h) for h in heads},
        "sklearn-logreg": sklearn_logreg, "datalab": datalab}
    methods = {m: fn for m, fn in methods.items() if only is None or m in only}
    rows = []
    for name, path, classes in cases:
        X, y = load(path, classes)
        for seed in seeds:
            noisy, flipped = flip(y, share, seed)
            truth, k = set(flipped.tolist()), len(flipped)
            for method, fn in methods.items():
                t0 = time.perf_counter()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # folds larger than a class, convergence: the numbers say it
                    ranked = fn(X, noisy)
                seconds = time.perf_counter() - t0
                hits = len(truth.intersection(ranked[:k]))
                row = {"data": name, "classes": int(y.max()) + 1, "rows": len(y), "dims": X.shape[1], "flipped": k,
                       "seed": seed, "method": method, "precision_at_k": round(hits / max(1, min(k, len(ranked))), 4),
                       "recall_at_k": round(hits / k, 4), "flagged": len(ranked),
                       "precision_flagged": round(len(truth.intersection(ranked)) / max(1, len(ranked)), 4),
                       "seconds": round(seconds, 2), "load_1m": round(os.getloadavg()[0], 2), "cpu_isa": cpu_isa(),
                       **{f: env[f] for f in ("date", "machine", "device", "versions", "pinned") if f in env}}
                rows.append(row)
                print({c: row[c] for c in ("data", "seed", "method", "precision_at_k", "recall_at_k", "flagged", "seconds",
                                            "load_1m")}, flush=True)
    return rows


def number(text: str) -> Any:
    """A CSV cell back as the int or float it was written from (other text as it is)."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def main() -> None:
    from _common import RESULTS, write_results

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--digits", type=Path, help="digits cache (default: cache/digits/effnet-lite0-*)")
    ap.add_argument("--glyphs", type=Path, help="glyphs cache (default: cache/glyphs/effnet-lite0-*)")
    ap.add_argument("--glyph-classes", type=int, default=100, help="keep the first N glyph classes (default 100; 0 = all)")
    ap.add_argument("--seeds", type=int, default=3, help="flips per data set (seeds first..first+N-1)")
    ap.add_argument("--first-seed", type=int, default=0, help="the first flip seed (default 0)")
    ap.add_argument("--flip", type=float, default=0.05, help="share of training labels flipped")
    ap.add_argument("--heads", default="ridge", help="embedpipe heads to try, comma-separated (default ridge)")
    ap.add_argument("--methods", help="run only these methods, comma-separated (e.g. embedpipe,datalab)")
    ap.add_argument("--data", default="digits,glyphs", help="data sets, comma-separated (default digits,glyphs)")
    ap.add_argument("--append", action="store_true",
                    help="keep the rows already in results/audit-labels.csv (a re-measured row replaces its old one)")
    ap.add_argument("--quick", action="store_true", help="digits only, one seed")
    args = ap.parse_args()
    cases = []
    for name, given, classes in (("digits", args.digits, None), ("glyphs", args.glyphs, args.glyph_classes or None)):
        if name not in args.data.split(","):
            continue
        path = given or find_cache(name)
        if path is None:
            print(f"no cache/{name}/effnet-lite0-*: run `embedpipe extract --data {name} --layers pooled`")
            continue
        if name == "glyphs" and args.quick:
            continue
        cases.append((name if classes is None else f"{name} ({classes} classes)", path, classes))
    rows = measure(cases, [args.first_seed] if args.quick else
                   list(range(args.first_seed, args.first_seed + args.seeds)), args.heads.split(","), args.flip,
                   args.methods.split(",") if args.methods else None)
    if args.append and (RESULTS / "audit-labels.csv").exists():
        with open(RESULTS / "audit-labels.csv", newline="") as f:
            new = {(r["data"], r["seed"], r["method"]) for r in rows}  # a re-measured row replaces the old one
            old = [{k: number(v) for k, v in r.items()} for r in csv.DictReader(f)]
            rows = [*(r for r in old if (r["data"], r["seed"], r["method"]) not in new), *rows]
        order = {d: i for i, d in enumerate(dict.fromkeys(r["data"] for r in rows))}
        rows.sort(key=lambda r: (order[r["data"]], int(r["seed"])))  # stable: methods keep their order
    csv_path, md_path = write_results("audit-labels", rows, [
        "data", "classes", "rows", "flipped", "seed", "method", "precision_at_k", "recall_at_k", "flagged",
        "seconds", "load_1m", "cpu_isa"])
    print(f"wrote {csv_path} and {md_path}")


if __name__ == "__main__":
    main()
