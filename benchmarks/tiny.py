"""Selection on tiny data: k-fold (the default on a small train split) vs one carved split vs scikit-learn.

Data sets with at most 20 training images per class and no val split, built from real cached
effnet-lite0 features (`make demo`'s caches, 128 px; run `make demo` first, or this script extracts
them into the repository's cache/):

- ``digits``: 10 classes; 5, 10 and 20 training images per class drawn from its train and val rows;
- ``glyphs-100``: 100 of glyphs' 1,500 classes (drawn with seed 0), 5 training images per class
  (glyphs has 6 to 8 per class in train and val together).

Each is drawn with 3 seeds and scored on every other image of the same classes (the test rows and
the train and val rows not drawn: glyphs has 1 or 2 test images per class, too few alone). Per draw:

- ``embedpipe k-fold``: ``LogRegHead()`` with its default rule (``heads.select.Auto``: stratified
  5-fold cross-validation on train for a set this small, every C scored on every fold, then one fit
  on all of train);
- ``embedpipe holdout``: ``LogRegHead(selection=HoldOut())``: one seeded stratified 15 % carve,
  refit on train + val (what a cache without val got before);
- ``sklearn 5-fold``: ``LogisticRegression`` with C from ``GridSearchCV`` (``StratifiedKFold(5)``,
  shuffled with the draw's seed; the same 9 Cs) on features standardised with the train rows.

Target: k-fold within 0.5 point of scikit-learn's, averaged over the 3 seeds. Writes
benchmarks/results/tiny.csv (one row per draw and method) and tiny.md (means over seeds), with the
CPU's vector features and library versions.

    python benchmarks/tiny.py            # or: python benchmarks/tiny.py digits
"""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, environment, write_results

SEEDS = (0, 1, 2)
SETS = (("digits", None, (5, 10, 20)), ("glyphs", 100, (5,)))  # (data set, classes kept, shots)
LAYER = "pooled"


def cached(dataset: str) -> Any:
    """The demo's cache of ``dataset`` (effnet-lite0, 128 px, pooled + block4), extracted when missing."""
    from embedpipe.extract import run_extract

    cache, _ = run_extract(dataset, "effnet-lite0", cache_dir=ROOT / "cache", layers=("pooled", "block4"),
                           progress=False, image_size=128)
    return cache


def pools(dataset: str, n_classes: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(X_pool, y_pool, X_test, y_test): train + val rows to draw from, test rows; ``n_classes`` of
    the classes (drawn with seed 0) or all."""
    cache = cached(dataset)
    (Xtr, ytr), (Xv, yv), (Xte, yte) = (cache.load(s, LAYER) for s in ("train", "val", "test"))
    X, y = np.concatenate([Xtr, Xv]).astype(np.float32), np.concatenate([ytr, yv])
    if n_classes is not None:
        keep = np.sort(np.random.default_rng(0).choice(np.unique(y), n_classes, replace=False))
        X, y = X[np.isin(y, keep)], y[np.isin(y, keep)]
        Xte, yte = Xte[np.isin(yte, keep)], yte[np.isin(yte, keep)]
    return X, y, Xte.astype(np.float32), yte


def embedpipe_logreg(X: np.ndarray, y: np.ndarray, holdout: bool) -> tuple[Any, dict[str, Any]]:
    from embedpipe.heads import create_head
    from embedpipe.heads.select import HoldOut

    head = create_head("logreg", **({"selection": HoldOut()} if holdout else {})).fit(X, y)
    return head, {"C": head.C_, "val_acc": head.best_val_score_, "rule": head.selection_["rule"],
                  "val_rows": head.selection_.get("val_rows")}


def sklearn_logreg(X: np.ndarray, y: np.ndarray, seed: int) -> tuple[Any, dict[str, Any]]:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from embedpipe.heads.logreg import DEFAULT_CS

    scaler = StandardScaler().fit(X)
    search = GridSearchCV(LogisticRegression(max_iter=1000), {"C": list(DEFAULT_CS)},
                          cv=StratifiedKFold(5, shuffle=True, random_state=seed))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        search.fit(scaler.transform(X), y)
    model = make_pipeline(scaler, search.best_estimator_)
    return model, {"C": float(search.best_params_["C"]), "val_acc": float(search.best_score_), "rule": "kfold",
                   "val_rows": len(y)}


def run(only: list[str] | None = None) -> list[dict[str, Any]]:
    import torch

    from embedpipe.train import sample_shots

    env = environment()
    rows = []
    for dataset, n_classes, shots_list in SETS:
        if only and dataset not in only:
            continue
        X, y, Xte, yte = pools(dataset, n_classes)
        name = dataset if n_classes is None else f"{dataset}-{n_classes}"
        for shots in shots_list:
            for seed in SEEDS:
                idx = sample_shots(y, shots, seed)
                Xs, ys = X[idx], y[idx]
                rest = np.ones(len(y), bool)
                rest[idx] = False  # every image not drawn is scored too
                Xt, yt = np.concatenate([Xte, X[rest]]), np.concatenate([yte, y[rest]])
                for method in ("embedpipe k-fold", "embedpipe holdout", "sklearn 5-fold"):
                    t0 = time.perf_counter()
                    if method == "sklearn 5-fold":
                        model, info = sklearn_logreg(Xs, ys, seed)
                    else:
                        model, info = embedpipe_logreg(Xs, ys, holdout=method.endswith("holdout"))
                    fit_s = time.perf_counter() - t0
                    test = float(np.mean(model.predict(Xt) == yt))
                    rows.append({"dataset": name, "layer": LAYER, "classes": len(np.unique(ys)), "shots": shots,
                                 "n_train": len(ys), "seed": seed, "method": method, **info, "test_acc": round(test, 4),
                                 "fit_s": round(fit_s, 2), "n_test": len(yt), "torch_threads": torch.get_num_threads(),
                                 **env})
                    print(f"{name} {shots}-shot seed {seed} {method}: C={info['C']:g} test {test:.4f} "
                          f"({fit_s:.1f}s)", flush=True)
    return rows


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean over seeds per (data set, shots, method), and each embedpipe method's gap to scikit-learn."""
    out = []
    keys = list(dict.fromkeys((r["dataset"], r["shots"]) for r in rows))
    for dataset, shots in keys:
        mine = [r for r in rows if (r["dataset"], r["shots"]) == (dataset, shots)]
        mean = {m: float(np.mean([r["test_acc"] for r in mine if r["method"] == m])) for m in
                dict.fromkeys(r["method"] for r in mine)}
        for method, acc in mean.items():
            of = [r for r in mine if r["method"] == method]
            out.append({"dataset": dataset, "classes": of[0]["classes"], "shots": shots, "method": method,
                        "test_acc": f"{acc:.4f}", "vs_sklearn_points": f"{100 * (acc - mean['sklearn 5-fold']):+.2f}",
                        "Cs_chosen": " ".join(f"{r['C']:g}" for r in of),
                        "fit_s": f"{np.mean([r['fit_s'] for r in of]):.2f}"})
    return out


def main() -> None:
    rows = run(sys.argv[1:] or None)  # data set names to run (default: all)
    summary = summarize(rows)
    columns = ["dataset", "classes", "shots", "method", "test_acc", "vs_sklearn_points", "Cs_chosen", "fit_s"]
    csv_path, md_path = write_results("tiny", rows, columns)
    from embedpipe.table import format_table

    gaps = [float(s["vs_sklearn_points"]) for s in summary if s["method"] == "embedpipe k-fold"]
    env = rows[0]
    md_path.write_text(
        "# Selection on tiny data (no val split, at most 20 training images per class)\n\n"
        "Test accuracy on every image of the classes not drawn for training, mean over seeds 0, 1, 2 (the C "
        "chosen per seed beside it). `vs_sklearn_points`: "
        "points above scikit-learn's LogisticRegression with C by GridSearchCV (StratifiedKFold 5, the same "
        "9 Cs, standardised features). Target: embedpipe k-fold within 0.5 point of it.\n\n"
        + format_table(summary, columns) + "\n\n"
        f"embedpipe k-fold minus scikit-learn, mean over the data sets: {np.mean(gaps):+.2f} points "
        f"(worst {min(gaps):+.2f}).\n\n"
        f"Machine: {env['machine']}; device {env['device']}; torch threads {env['torch_threads']}; {env['date']}.\n"
        f"Versions: {env['versions']}\n")
    print(f"wrote {csv_path} and {md_path}")


if __name__ == "__main__":
    main()
