"""Head training speed and accuracy against the plain library baselines, in one run.

    .venv/bin/python benchmarks/heads.py                       # everything (about 15-25 min on 2 cores)
    .venv/bin/python benchmarks/heads.py --only logreg --quick # one section, smaller sizes

Sections (each row: the task, the method, fit seconds, test accuracy, and the ratio to the baseline):
- logreg: embedpipe's torch L-BFGS sweep (9 C values, warm-started, refit on train+val) vs the same
  sweep with scikit-learn LogisticRegression(lbfgs), on the same standardised features. Goal: >= 5x
  faster, test accuracy within 0.5 points of scikit-learn's at its best C.
- lgbm: embedpipe's lgbm head (PCA 64, 63 bins, early stopping) vs LGBMClassifier() defaults on
  100 classes x 10k samples x 1280 dims. Goal: <= 60 s, accuracy within 2 points of the defaults.
- ridge: embedpipe's closed-form ridge (13 alphas selected on val, refit on train+val) beside
  scikit-learn's RidgeClassifierCV on the same alphas and the logreg head, in the same run, on the
  synthetic 100 classes and the demo's digits and glyphs ``pooled`` caches. Goal: <= 5 s on glyphs
  (9,000 x 1,280, 1,500 classes) on 2 cores, selection included.
- mlp: 50k x 1280 x 100 classes, 10 epochs. Goal: <= 30 s.
Data: synthetic Gaussian class clusters on a low-rank subspace (embedding-like), and the cached
effnet-lite0 features of `digits` (and, for ridge, `glyphs`) when the demo's caches exist (run
`make demo` first).
Writes benchmarks/results/heads.csv and heads.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
ROOT = Path(__file__).resolve().parents[1]


def synthetic(n: int, d: int, k: int, seed: int = 0, rank: int = 64, noise: float = 3.0):  # type: ignore[no-untyped-def]
    """Class means on a rank-``rank`` subspace plus isotropic noise; split 70/15/15 stratified."""
    rng = np.random.default_rng(seed)
    basis = rng.normal(size=(rank, d)) / np.sqrt(rank)
    means = rng.normal(size=(k, rank)) * 1.6
    y = np.arange(n) % k
    X = (means[y] + rng.normal(size=(n, rank)) * noise) @ basis + rng.normal(size=(n, d)) * 0.3
    order = rng.permutation(n)
    X, y = X[order].astype(np.float32), y[order]
    a, b = int(0.7 * n), int(0.85 * n)
    return (X[:a], y[:a]), (X[a:b], y[a:b]), (X[b:], y[b:])


def cached(dataset: str, layer: str = "pooled", image_size: int = 128):  # type: ignore[no-untyped-def]
    """(train, val, test) of the demo's effnet-lite0 cache of ``dataset`` (``make demo`` builds it: 128 px),
    or None when there is none."""
    from embedpipe import open_cache

    for meta in sorted((ROOT / "cache" / dataset).glob("effnet-lite0-*/meta.h5")):
        cache = open_cache(meta.parent)
        if layer in cache.layers and cache.backbone.get("image_size") == image_size:
            return cache.load("train", layer), cache.load("val", layer), cache.load("test", layer)
    return None


def cached_digits():  # type: ignore[no-untyped-def]
    return cached("digits")


def sklearn_sweep(train, val, test, Cs):  # type: ignore[no-untyped-def]
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    (Xtr, ytr), (Xv, yv), (Xte, yte) = train, val, test
    t0 = time.perf_counter()
    both = np.concatenate([Xtr, Xv])
    scaler = StandardScaler().fit(both)
    Ztr, Zv, Zte = scaler.transform(Xtr), scaler.transform(Xv), scaler.transform(Xte)
    best = (-1.0, None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for C in Cs:
            acc = LogisticRegression(C=C, max_iter=500).fit(Ztr, ytr).score(Zv, yv)
            if acc > best[0]:
                best = (acc, C)
        final = LogisticRegression(C=best[1], max_iter=500).fit(np.concatenate([Ztr, Zv]), np.concatenate([ytr, yv]))
    return time.perf_counter() - t0, final.score(Zte, yte), best[1]


def bench_logreg(tasks: dict[str, Any]) -> list[dict[str, Any]]:
    from embedpipe import create_head
    from embedpipe.heads.logreg import DEFAULT_CS

    rows = []
    # Warm both libraries up first (BLAS thread pools, torch's first-call set-up, about 1.5 s), so that
    # the timings are of the fits themselves, as in a process that fits more than one head.
    small = synthetic(700, 16, 5, seed=9)
    sklearn_sweep(*small, (1.0,))
    create_head("logreg", Cs=(1.0,)).fit(*small[0], eval_set=small[1])
    for task, (train, val, test) in tasks.items():
        sk_s, sk_acc, sk_C = sklearn_sweep(train, val, test, DEFAULT_CS)
        t0 = time.perf_counter()
        head = create_head("logreg").fit(*train, eval_set=val)
        ours_s = time.perf_counter() - t0
        ours_acc = head.score(*test)
        n, d = train[0].shape
        k = len(np.unique(train[1]))
        common = {"section": "logreg", "task": task, "n_train": n, "dims": d, "classes": k}
        rows.append({**common, "method": "sklearn LogisticRegression(lbfgs) 9-C sweep", "fit_s": round(sk_s, 2),
                     "test_acc": round(sk_acc, 4), "chosen": f"C={sk_C:g}", "speedup": 1.0})
        rows.append({**common, "method": "embedpipe logreg 9-C sweep (torch L-BFGS)", "fit_s": round(ours_s, 2),
                     "test_acc": round(ours_acc, 4), "chosen": f"C={head.C_:g}", "speedup": round(sk_s / ours_s, 1)})
        print(rows[-2], rows[-1], sep="\n", flush=True)
    return rows


def bench_ridge(tasks: dict[str, Any]) -> list[dict[str, Any]]:
    """embedpipe ridge (alpha on val, refit on train+val) beside scikit-learn's RidgeClassifierCV (the
    same alphas, leave-one-out squared error on train) and the logreg head, on the same data."""
    from sklearn.linear_model import RidgeClassifierCV

    from embedpipe import create_head

    small = synthetic(700, 16, 5, seed=9)  # warm-up: thread pools and first-call set-up, as in bench_logreg
    create_head("ridge").fit(*small[0], eval_set=small[1])
    rows = []
    for task, (train, val, test) in tasks.items():
        n, d = train[0].shape
        common = {"section": "ridge", "task": task, "n_train": n, "dims": d, "classes": len(np.unique(train[1])),
                  "load_1min": round(os.getloadavg()[0], 1)}  # other work on the machine inflates fit_s
        t0 = time.perf_counter()
        head = create_head("ridge").fit(*train, eval_set=val)
        ridge_s = time.perf_counter() - t0
        grid = [float(a) for a in head.val_scores_]
        t0 = time.perf_counter()
        sk = RidgeClassifierCV(alphas=grid).fit(*train)
        sk_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        logreg = create_head("logreg").fit(*train, eval_set=val)
        logreg_s = time.perf_counter() - t0
        rows += [
            {**common, "method": f"sklearn RidgeClassifierCV, {len(grid)} alphas, leave-one-out", "fit_s": round(sk_s, 2),
             "test_acc": round(sk.score(*test), 4), "chosen": f"alpha={sk.alpha_:g}", "speedup": 1.0},
            {**common, "method": f"embedpipe ridge, {len(grid)} alphas on val, refit", "fit_s": round(ridge_s, 2),
             "test_acc": round(head.score(*test), 4), "chosen": f"alpha={head.alpha_:g}", "speedup": round(sk_s / ridge_s, 1)},
            {**common, "method": "embedpipe logreg 9-C sweep (torch L-BFGS), same run", "fit_s": round(logreg_s, 2),
             "test_acc": round(logreg.score(*test), 4), "chosen": f"C={logreg.C_:g}", "speedup": round(sk_s / logreg_s, 1)},
        ]
        print(*rows[-3:], sep="\n", flush=True)
    return rows


def bench_lgbm(n: int, d: int, k: int) -> list[dict[str, Any]]:
    import lightgbm as lgb

    from embedpipe import create_head

    train, val, test = synthetic(n, d, k, seed=1)
    common = {"section": "lgbm", "task": f"synthetic {k} classes", "n_train": len(train[0]), "dims": d, "classes": k}
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        head = create_head("lgbm").fit(*train, eval_set=val)
    ours_s = time.perf_counter() - t0
    ours = {**common, "method": "embedpipe lgbm (PCA 64, 63 bins, early stop)", "fit_s": round(ours_s, 2),
            "test_acc": round(head.score(*test), 4), "chosen": f"{head.best_iteration_} rounds"}
    print(ours, flush=True)
    t0 = time.perf_counter()
    base = lgb.LGBMClassifier(verbosity=-1).fit(*train)
    base_s = time.perf_counter() - t0
    baseline = {**common, "method": "LGBMClassifier() defaults", "fit_s": round(base_s, 2),
                "test_acc": round(base.score(*test), 4), "chosen": "100 rounds", "speedup": 1.0}
    ours["speedup"] = round(base_s / ours_s, 1)
    print(baseline, flush=True)
    return [baseline, ours]


def bench_mlp(n: int, d: int, k: int) -> list[dict[str, Any]]:
    from embedpipe import create_head

    train, val, test = synthetic(n, d, k, seed=2)
    t0 = time.perf_counter()
    head = create_head("mlp", epochs=10, patience=10).fit(*train, eval_set=val)
    secs = time.perf_counter() - t0
    row = {"section": "mlp", "task": f"synthetic {k} classes", "n_train": len(train[0]), "dims": d, "classes": k,
           "method": "embedpipe mlp, 10 epochs, 1x512 hidden", "fit_s": round(secs, 2),
           "test_acc": round(head.score(*test), 4), "chosen": f"{head.n_epochs_} epochs", "speedup": None}
    print(row, flush=True)
    return [row]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=["logreg", "ridge", "lgbm", "mlp"])
    parser.add_argument("--quick", action="store_true", help="smaller sizes for a fast look")
    args = parser.parse_args()
    from _common import environment, write_results

    q = 4 if args.quick else 1
    rows: list[dict[str, Any]] = []
    if args.only in (None, "logreg"):
        tasks: dict[str, Any] = {f"synthetic {100} classes": synthetic(22858 // q, 512, 100, seed=0)}
        digits = cached_digits()
        if digits is not None:
            tasks["digits effnet-lite0 pooled"] = digits
        rows += bench_logreg(tasks)
    if args.only in (None, "ridge"):
        tasks = {"synthetic 100 classes": synthetic(22858 // q, 512, 100, seed=0)}
        for name in ("digits", "glyphs"):
            found = cached(name)
            if found is not None:
                tasks[f"{name} effnet-lite0 pooled"] = found
        rows += bench_ridge(tasks)
    if args.only in (None, "lgbm"):
        rows += bench_lgbm(14286 // q, 1280, 100)
    if args.only in (None, "mlp"):
        rows += bench_mlp(71429 // q, 1280, 100)
    env = environment()
    rows = [{**r, **env} for r in rows]
    name = "heads" if not args.quick and args.only is None else f"heads-{args.only or 'all'}{'-quick' if args.quick else ''}"
    _, md = write_results(name, rows, ["section", "task", "n_train", "dims", "classes", "method", "fit_s",
                                       "test_acc", "chosen", "speedup"])
    print(md.read_text())


if __name__ == "__main__":
    main()
