"""The measurements behind the heads' design choices, in one run (about a minute on 2 cores).

    .venv/bin/python benchmarks/solvers.py
    .venv/bin/python benchmarks/solvers.py multilayer [CACHE ...]  # multilayer vs logreg, solvers-multilayer.*
    .venv/bin/python benchmarks/solvers.py logreg       # logreg's selection vs the ridge floor, solvers-logreg.*

The multilayer study also uses the 224 px glyphs cache with five layers when it exists, built by

    .venv/bin/embedpipe extract --data glyphs --cache-dir cache/layers224 \
        --layers pooled,block2,block3,block4,block3:grid2,block4:grid2

Writes benchmarks/results/solvers.csv and solvers.md with, on the synthetic 100-class data of
benchmarks/heads.py:
- logreg: milliseconds per loss+gradient evaluation (16k x 512 x 100) with autograd vs a
  hand-written gradient, and an fp32 vs bf16 matmul of the same shape;
- logreg: validation accuracy along the C path at gradient tolerance 1e-4 (the head's) vs 1e-3;
- lgbm: test accuracy and best round with and without L2 on leaf values (reg_lambda 1.0 vs 0),
  early stopping on validation, 100 classes.
- ridge, on digits and glyphs ``pooled`` (the demo's caches, when they exist: run ``make demo`` first)
  and the synthetic 100-class data: how alpha is selected without validation rows (exact
  leave-one-out accuracy, 5-fold accuracy, or GCV's squared error, each on train alone, against the
  best test accuracy on the same grid); whether to standardise the features (val-selected test
  accuracy); the eigensolver on one thread vs the default thread count.

"(used)" marks what the heads do now, found by running them, not written by hand: whether
embedpipe/heads/logreg.py's L-BFGS closure goes through autograd (it saves tensors for backward),
the dtype of the features it solves in, and the heads' default tolerance and reg_lambda.
"""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def ms_per_call(fn: Any, repeat: int = 20) -> float:
    fn()
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - t0) / repeat * 1000


def used(flag: bool) -> str:
    return " (used)" if flag else ""


def logreg_uses_autograd() -> bool:
    """Run the head's own solver (the preconditioned one of the sweep and the final fit) on a tiny
    problem and count the tensors autograd saves for backward: a hand-written gradient saves none."""
    from embedpipe.heads.logreg import Basis, lbfgs_logreg_pre

    saved = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal saved
        saved += 1
        return t

    X, y = torch.randn(8, 3), torch.arange(8) % 2
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        lbfgs_logreg_pre(X @ Basis(X).V, y, 1.0, torch.zeros(3, 2), torch.zeros(2), max_iter=2, tol=1e-4,
                         basis=Basis(X))
    return saved > 0


def logreg_dtype() -> torch.dtype:
    """The dtype the logreg head hands its solver (heads/torch_utils.as_tensor)."""
    import numpy as np

    from embedpipe.heads.torch_utils import as_tensor

    return as_tensor(np.zeros((1, 1), np.float64), torch.device("cpu")).dtype


def logreg_rows() -> list[dict[str, Any]]:
    from heads import synthetic

    from embedpipe import create_head
    from embedpipe.heads.base import standardizer
    from embedpipe.heads.logreg import DEFAULT_CS

    (Xtr, ytr), (Xv, yv), _ = synthetic(22858, 512, 100, seed=0)
    mean, scale = standardizer(Xtr)
    X, y = torch.from_numpy((Xtr - mean) / scale), torch.from_numpy(ytr)
    n, rows_idx, C = len(X), torch.arange(len(X)), 1.0
    W = (torch.randn(512, 100) * 0.01).requires_grad_(True)
    b = torch.zeros(100, requires_grad=True)

    def autograd() -> None:
        W.grad = b.grad = None
        (torch.nn.functional.cross_entropy(X @ W + b, y) + (W * W).sum() / (2 * C * n)).backward()

    @torch.no_grad()
    def by_hand() -> None:
        z = X @ W + b
        (torch.logsumexp(z, 1) - z[rows_idx, y]).mean()
        P = torch.softmax(z, 1)
        P[rows_idx, y] -= 1
        P /= n
        W.grad = X.T @ P + W / (C * n)
        b.grad = P.sum(0)

    Wd, Xb, Wb = W.detach(), X.bfloat16(), W.detach().bfloat16()
    auto, dtype = logreg_uses_autograd(), logreg_dtype()
    rows = [
        {"study": "logreg eval", "variant": "autograd loss+grad" + used(auto),
         "value": round(ms_per_call(autograd), 1), "unit": "ms"},
        {"study": "logreg eval", "variant": "hand-written loss+grad" + used(not auto),
         "value": round(ms_per_call(by_hand), 1), "unit": "ms"},
        {"study": "matmul 16k x 512 x 100", "variant": "fp32" + used(dtype == torch.float32),
         "value": round(ms_per_call(lambda: X @ Wd), 1), "unit": "ms"},
        {"study": "matmul 16k x 512 x 100", "variant": "bf16" + used(dtype == torch.bfloat16),
         "value": round(ms_per_call(lambda: Xb @ Wb), 1), "unit": "ms"},
    ]
    for tol in (1e-4, 1e-3):
        head = create_head("logreg", tol=tol, refit=False).fit(Xtr, ytr, eval_set=(Xv, yv))
        path = " ".join(f"{v:.3f}" for v in head.val_scores_.values())
        rows.append({"study": "logreg C path val acc", "variant": f"tol {tol:g}" + used(tol == create_head("logreg").tol),
                     "value": path, "unit": f"C={DEFAULT_CS[0]:g}..{DEFAULT_CS[-1]:g}"})
    return rows


def lgbm_rows() -> list[dict[str, Any]]:
    from heads import synthetic

    from embedpipe import create_head

    train, val, test = synthetic(14286 // 4, 1280, 100, seed=1)
    rows = []
    for reg in (1.0, 0.0):
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            head = create_head("lgbm", reg_lambda=reg).fit(*train, eval_set=val)
        rows.append({"study": "lgbm 100 classes, 2.5k train", "variant": f"reg_lambda {reg:g}" + used(reg == create_head("lgbm").reg_lambda),
                     "value": f"test {head.score(*test):.3f}, best round {head.best_iteration_}, "
                              f"{time.perf_counter() - t0:.1f} s", "unit": ""})
    return rows


def ridge_tasks() -> dict[str, Any]:
    from heads import cached, synthetic

    tasks = {"synthetic 100 classes": synthetic(22858, 512, 100, seed=0)}
    for name in ("digits", "glyphs"):
        data = cached(name)
        if data is not None:
            tasks[f"{name} pooled"] = data
    return tasks


def gcv_alpha(X: Any, y: Any, grid: list[float]) -> float:
    """GCV's choice: the alpha minimising n ||(I - H) Y||^2 / (n - tr H)^2 (one-hot Y, the intercept in H),
    from the head's own eigendecomposition; O(rank) per alpha."""
    from embedpipe.heads.ridge import class_sums, spectrum

    Xc = torch.from_numpy(X).double()
    Xc -= Xc.mean(0)
    yt = torch.from_numpy(y)
    k = int(yt.max()) + 1
    V, s = spectrum(Xc)
    w = ((V.T @ class_sums(Xc, yt, k)) ** 2).sum(1) / s  # ||U_j^T Y||^2 for the left singular vectors U
    n = len(y)
    share = torch.bincount(yt, minlength=k).double() / n
    total = n - n * float((share**2).sum())  # ||Y - 1 ybar^T||^2
    scores = []
    for a in grid:
        resid = total - float((w * (1 - (a / (s + a)) ** 2)).sum())
        scores.append(n * resid / (n - 1 - float((s / (s + a)).sum())) ** 2)
    return grid[min(range(len(grid)), key=scores.__getitem__)]


def ridge_rows() -> list[dict[str, Any]]:
    import os

    import numpy as np

    from embedpipe import create_head

    rows = []
    default = create_head("ridge")
    for task, ((Xtr, ytr), val, test) in ridge_tasks().items():
        study = f"ridge alpha without val: {task}"
        load = os.getloadavg()[0]
        chosen = {}
        for label, cv in (("leave-one-out accuracy", None), ("5-fold accuracy", 5)):
            t0 = time.perf_counter()
            head = create_head("ridge", cv=cv).fit(Xtr, ytr)
            chosen[label] = (head.alpha_, time.perf_counter() - t0)
        grid = [float(a) for a in head.val_scores_]  # the default grid (relative to this data's scale)
        t0 = time.perf_counter()
        chosen["GCV squared error"] = (gcv_alpha(Xtr, ytr, grid), time.perf_counter() - t0)
        # test accuracy of the train-only fit at every alpha of the grid: the test rows as "validation"
        path = create_head("ridge", alphas=tuple(grid), refit=False).fit(Xtr, ytr, eval_set=test).val_scores_
        best = max(grid, key=lambda a: path[repr(a)])
        rows.append({"study": study, "variant": "best test accuracy on the grid (oracle)",
                     "value": f"test {path[repr(best)]:.4f}, alpha {best:g}", "unit": f"load {load:.1f}"})
        for label, (alpha, secs) in chosen.items():
            rows.append({"study": study, "variant": label + used(label.startswith("leave") and default.cv is None),
                         "value": f"test {path[repr(alpha)]:.4f}, alpha {alpha:g}, {secs:.1f} s"
                                  + (" (without the fit)" if label.startswith("GCV") else ""), "unit": f"load {load:.1f}"})
        for std in (True, False):
            head = create_head("ridge", standardize=std).fit(Xtr, ytr, eval_set=val)
            rows.append({"study": f"ridge standardize: {task}", "variant": f"standardize={std}" + used(std == default.standardize),
                         "value": f"test {head.score(*test):.4f}, alpha {head.alpha_:g}", "unit": "val-selected, refit"})
        print(*rows[-6:], sep="\n", flush=True)
    X = np.random.default_rng(0).normal(size=(9000, 1280))
    G = torch.from_numpy(X.T @ X)
    before = torch.get_num_threads()
    for threads in sorted({1, before}):
        torch.set_num_threads(threads)
        rows.append({"study": "eigh 1280 x 1280 float64", "variant": f"{threads} thread(s)" + used(threads == 1),
                     "value": round(ms_per_call(lambda: torch.linalg.eigh(G), repeat=3)),
                     "unit": f"ms, load {os.getloadavg()[0]:.1f}"})
    torch.set_num_threads(before)
    return rows


def torch_optim_minimize(objective: Any, x: Any, max_iter: int, done: Any, history: int = 10,
                         check_every: int = 1, start: Any = None) -> Any:
    """``embedpipe.heads.lbfgs.minimize`` done with ``torch.optim.LBFGS`` and its strong-Wolfe line
    search (the heads' solver before): the baseline of the solver study."""
    from embedpipe.heads.lbfgs import Result

    params = [t.clone().requires_grad_(True) for t in x]
    opt = torch.optim.LBFGS(params, lr=1, max_iter=check_every, history_size=history, tolerance_grad=0.0,
                            tolerance_change=1e-12, line_search_fn="strong_wolfe")
    last: dict[str, Any] = {}

    @torch.no_grad()
    def closure() -> torch.Tensor:
        loss, grads = objective(tuple(p.detach() for p in params))
        for p, g in zip(params, grads, strict=True):
            p.grad = g.clone()
        last.update(loss=loss, grad=grads)
        return loss

    closure()
    iters = 0
    while not done(last["grad"]) and iters < max_iter:
        chunk = min(check_every, max_iter - iters)
        opt.param_groups[0].update(max_iter=chunk, max_eval=chunk * 25)
        opt.step(closure)
        taken = opt.state[opt._params[0]].get("n_iter", 0)
        stalled, iters = taken - iters < chunk, taken
        if stalled:
            break
    return Result(tuple(p.detach() for p in params), last["loss"], last["grad"], iters, 0, False)


def logreg_sweep_rows() -> list[dict[str, Any]]:
    """logreg's C selection on digits, glyphs (the demo's caches) and the synthetic 100 classes, each
    variant timed beside the closed-form ridge floor in the same run (fit seconds and the ratio to
    ridge's), with test accuracy, the chosen C and the 1-minute load average: the head as it is; with
    ``torch.optim.LBFGS`` (strong-Wolfe line search) in place of ``heads.lbfgs``; with the final fit
    in float32 from its start (``FINAL_HALF=False``); float32 throughout; and without ``patience``."""
    import os

    from embedpipe import create_head
    from embedpipe.bench import cpu_isa
    from embedpipe.heads import logreg

    default = create_head("logreg")
    variants: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
        ("precision=auto", {"precision": "auto"}, {}),
        ("precision=auto, torch.optim.LBFGS", {"precision": "auto"}, {"minimize": torch_optim_minimize}),
        ("precision=auto, final fit float32 throughout", {"precision": "auto"}, {"FINAL_HALF": False}),
        ("precision=fp32", {"precision": "fp32"}, {}),
        ("precision=auto, patience=None", {"precision": "auto", "patience": None}, {}),
    ]
    create_head("logreg", C=1.0, max_iter=2).fit(*synthetic_tiny())  # imports and kernels, once, outside the timings
    rows = []
    for task, (train, val, test) in ridge_tasks().items():
        t0 = time.perf_counter()
        ridge = create_head("ridge").fit(*train, eval_set=val)
        floor = time.perf_counter() - t0
        rows.append({"study": f"logreg selection: {task}", "variant": "ridge (the floor)",
                     "value": f"test {ridge.score(*test):.4f}, {floor:.1f} s",
                     "unit": f"load {os.getloadavg()[0]:.1f}, {cpu_isa()}"})
        for label, kw, patch in variants:
            saved = {name: getattr(logreg, name) for name in patch}
            for name, value in patch.items():
                setattr(logreg, name, value)
            try:
                t0 = time.perf_counter()
                head = create_head("logreg", **kw).fit(*train, eval_set=val)
                secs = time.perf_counter() - t0
            finally:
                for name, value in saved.items():
                    setattr(logreg, name, value)
            is_default = not patch and all(getattr(default, k) == v for k, v in kw.items())
            rows.append({"study": f"logreg selection: {task}", "variant": label + used(is_default),
                         "value": f"test {head.score(*test):.4f}, C {head.C_:g}, {secs:.1f} s = "
                                  f"{secs / floor:.1f}x ridge, {len(head.val_scores_)} Cs, "
                                  f"final fit {head.n_iter_} iterations",
                         "unit": f"load {os.getloadavg()[0]:.1f}"})
        print(*rows[-len(variants) - 1:], sep="\n", flush=True)
    return rows


def synthetic_tiny() -> tuple[Any, Any]:
    import numpy as np

    rng = np.random.default_rng(0)
    y = np.arange(60) % 3
    return (rng.normal(size=(60, 8)) + np.eye(3, 8)[y]).astype(np.float32), y


LAYERS_CACHE = "cache/layers224/glyphs"  # benchmarks/solvers.py's docstring says how to build it
LAYERS_224 = "pooled,block3,block4,block3:grid2,block4:grid2"


def multilayer_rows(extra: list[str]) -> list[dict[str, Any]]:
    """multilayer against logreg in one run, on the demo's glyphs cache (layers ``pooled,block4``
    concatenated, as ``embedpipe train --head multilayer`` passes them) and, when it exists, the
    224 px glyphs cache with five layers (``LAYERS_CACHE``): fit seconds, the ratio to logreg's on
    ``pooled`` of the same cache and to logreg's on the same concatenated layers, test accuracy and the
    chosen keep and C, for the head's defaults, the 60-step FISTA screen and the 1.0 fraction, with the
    1-minute load average and the CPU's vector features. ``extra``: more cache folders holding the five
    layers (``.../glyphs/effnet-lite0-<key>``), e.g. one extracted with ``--precision fp32``."""
    import os
    from pathlib import Path

    from heads import ROOT

    from embedpipe import create_head, open_cache
    from embedpipe.bench import cpu_isa
    from embedpipe.heads.multilayer import MultiLayerHead

    def find(root: Any, layer: str) -> Any:
        metas = [m for m in sorted(root.glob("effnet-lite0-*/meta.h5"))
                 if all(n in open_cache(m.parent).layers for n in layer.split(","))]
        return open_cache(metas[0].parent) if metas else None

    create_head("logreg", C=1.0, max_iter=2).fit(*synthetic_tiny())  # imports, once, outside the timings
    default = create_head("multilayer")
    rows: list[dict[str, Any]] = []
    caches = [(find(ROOT / "cache" / "glyphs", "pooled,block4"), "pooled,block4"),
              (find(ROOT / LAYERS_CACHE, LAYERS_224), LAYERS_224)]
    caches += [(open_cache(Path(p)), LAYERS_224) for p in extra]
    for cache, layer in caches:
        if cache is None:
            continue
        extracted = f"{cache.meta['preprocess']['input_size'][-1]} px, extracted in {cache.meta['compute']['precision']}"
        study = f"multilayer vs logreg: glyphs {extracted}, {layer}"
        bases = {}
        for cols in ("pooled", layer):
            train, val, test = (cache.load(s, cols) for s in ("train", "val", "test"))
            t0 = time.perf_counter()
            logreg = create_head("logreg").fit(*train, eval_set=val)
            bases[cols] = time.perf_counter() - t0
            rows.append({"study": study, "variant": f"logreg on {cols}" + (" (the reference)" if cols == "pooled" else ""),
                         "value": f"test {logreg.score(*test):.4f}, C {logreg.C_:g}, {bases[cols]:.1f} s",
                         "unit": f"load {os.getloadavg()[0]:.1f}, {cpu_isa()}"})
            print(rows[-1], flush=True)
        variants = [{"lasso_iters": 0, "keeps": (0.25, 0.5)}, {"lasso_iters": 60, "keeps": (0.25, 0.5)},
                    {"lasso_iters": 0, "keeps": (0.25, 0.5, 1.0)}]
        for kw in variants:
            t0 = time.perf_counter()
            head = create_head("multilayer", **MultiLayerHead.context_params(cache, layer), **kw).fit(*train, eval_set=val)
            secs = time.perf_counter() - t0
            is_default = all(getattr(default, k) == v for k, v in kw.items())
            rows.append({"study": study, "variant": ", ".join(f"{k}={v}" for k, v in kw.items()) + used(is_default),
                         "value": f"test {head.score(*test):.4f}, keep {head.keep_:g}, C {head.C_:g}, {secs:.1f} s = "
                                  f"{secs / bases['pooled']:.2f}x logreg on pooled, "
                                  f"{secs / bases[layer]:.2f}x logreg on the same layers",
                         "unit": f"load {os.getloadavg()[0]:.1f}"})
            print(rows[-1], flush=True)
    return rows


def main() -> None:
    from _common import environment, write_results

    env = environment()
    if sys.argv[1:2] == ["multilayer"]:  # the multilayer study alone (several minutes on 2 cores)
        name, rows = "solvers-multilayer", multilayer_rows(sys.argv[2:])
    elif sys.argv[1:] == ["logreg"]:  # logreg's C selection against the ridge floor alone
        name, rows = "solvers-logreg", logreg_sweep_rows()
    else:
        name, rows = "solvers", ridge_rows() + logreg_sweep_rows() + logreg_rows() + lgbm_rows()
    _, md = write_results(name, [{**r, **env} for r in rows], ["study", "variant", "value", "unit"])
    print(md.read_text())


if __name__ == "__main__":
    main()
