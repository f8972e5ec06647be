"""A linear head over several cached layers at once, with group-sparse feature selection (Head2Toe).

Head2Toe (Evci et al., ICML 2022) concatenates pooled features of many layers, normalises them per
layer, selects the useful features with a group lasso, and fits a linear classifier on what it kept.
This head does the same on a plain 2-D ``X`` whose columns are the layers side by side:

1. **Per-layer normalisation.** Every feature is standardised with training statistics, then each
   layer group (``layer_dims``: the widths, in column order) is scaled by ``1/sqrt(width)`` so every
   layer starts with the same total variance: a 16-wide early block and a 1280-wide embedding weigh
   the same before selection.
2. **Group-lasso screening.** Multinomial logistic regression with an l2,1 penalty: one group per
   feature (its weights for all classes), ``lambda = alpha * lambda_max`` where ``lambda_max`` is the
   smallest penalty that zeroes every weight. Solved in torch by accelerated proximal gradient (FISTA,
   step 1/L with L bounded by power iteration, ``lasso_iters`` steps). Features are ranked by their
   group norm. By default (``lasso_iters=0``) the ranking is that of the first proximal step from
   zero: each feature's gradient norm at zero, its spread between the class means. On the five-layer
   glyphs cache it kept features that scored higher than 60 FISTA steps' (test 0.636 against 0.623)
   at a fortieth of the cost (benchmarks/solvers.py multilayer).
3. **Keep a fraction, fit the classifier.** For each fraction in ``keeps`` (or the fixed ``keep``) the
   ``logreg`` head's own C sweep runs on the top-ranked features *as plain standardised features*;
   the best (fraction, C) on val wins and only its final fit is run (refit on train+val). With a
   fixed ``C`` a quick probe at ``probe_C`` scores the fractions instead.
   The 1/sqrt(width) layer scaling serves the selection only: one C for every layer on scaled
   features over-regularised the wide layers (on glyphs the scaled final fit lost to plain logreg on
   the same columns by far). Validation rows are the ``eval_set``, or rows held out of train by the
   selection rule (``heads/select.py``); when none can be had: ``keep`` or 1.0, C=1.

``layer_contributions_`` is each layer's share of the selected features' screening score (``group_norms_``), and
``layer_kept_`` the number of its features kept: how much each layer contributes. ``embedpipe train``
fills ``layer_dims`` and ``layer_names`` from the cache (``context_params``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from sklearn.utils.validation import check_is_fitted, validate_data

from ..core.device import resolve_device
from .base import ArraySpec, Head, State, StateSpec, standardizer
from .logreg import (
    DEFAULT_CS,
    LogRegHead,
    half_matmuls,
    lbfgs_logreg,
    sweep_rule,
    upgrade_v1_arrays,
)
from .registry import register_head
from .select import Rule
from .torch_utils import as_tensor

DEFAULT_KEEPS = (0.25, 0.5)  # fractions of features tried on val (Head2Toe tries a grid too)
MIN_KEEP = 16  # a fraction keeps at least this many features (all of them when there are fewer)
DEFAULT_ML_CS = DEFAULT_CS  # the final classifier's sweep: logreg's, on standardised features
NO_VAL_C = 1.0  # C without a validation set (logreg's default)
FINAL_FIT = "standardised"  # how the final classifier sees its features (recorded in head files)


def kept_count(fraction: float, n_features: int) -> int:
    """How many top-ranked features a fraction keeps: ``round(fraction * n_features)``, at least
    ``MIN_KEEP`` (a selection among a handful of features only loses information), at most all."""
    return min(n_features, max(MIN_KEEP, round(fraction * n_features)))


def group_scale(layer_dims: tuple[int, ...] | None, n_features: int) -> np.ndarray:
    """Per-column factor 1/sqrt(width of its layer group); one group when ``layer_dims`` is None."""
    dims = tuple(layer_dims) if layer_dims else (n_features,)
    if sum(dims) != n_features or any(int(d) < 1 for d in dims):
        raise ValueError(f"layer_dims {dims} must be positive widths summing to the {n_features} features of X")
    return np.concatenate([np.full(int(d), 1 / np.sqrt(int(d)), np.float32) for d in dims])


def group_lasso_logreg(
    X: torch.Tensor, y: torch.Tensor, k: int, alpha: float, iters: int, half: bool = False
) -> tuple[torch.Tensor, float, torch.Tensor]:
    """FISTA on mean CE(XW + b) + lam * sum_j ||W_j||_2 (row j = feature j's weights for all classes).

    With ``half=True`` the two matmuls of each step run in bfloat16 (the ranking is a screen).
    Returns W (d, k), lam = alpha * lambda_max and each feature's gradient norm at W. The step is 1/L with L = ||X||_2^2 / (2n) (+ the
    bias), an upper bound of the softmax cross-entropy's curvature, so every step decreases the objective.
    """
    n, d = X.shape
    Y = torch.nn.functional.one_hot(y, k).to(X.dtype)
    prior = Y.mean(0)
    grad0 = X.T @ (prior - Y) / n  # gradient at W = 0 with the bias at the class prior
    lam = alpha * float(grad0.norm(dim=1).max())
    W = torch.zeros(d, k, dtype=X.dtype, device=X.device)
    b = torch.log(prior.clamp_min(1e-12))
    if iters == 0:  # the screen is the gradient at zero: each feature's between-class spread
        return W, lam, grad0.norm(dim=1)
    v = torch.randn(d, generator=torch.Generator().manual_seed(0)).to(X)
    for _ in range(20):  # power iteration for ||X||_2^2
        v = X.T @ (X @ v)
        v = v / v.norm().clamp_min(1e-12)
    L = (float((X @ v).norm()) ** 2 / n + 1.0) / 2
    step = 1.0 / L
    Wm, bm, t = W.clone(), b.clone(), 1.0
    Xh = X.bfloat16() if half else None
    for _ in range(iters):
        S = (Xh @ Wm.bfloat16()).float() if Xh is not None else X @ Wm
        P = torch.softmax(S + bm, dim=1) - Y
        Wn = Wm - step * (((Xh.T @ P.bfloat16()).float() if Xh is not None else X.T @ P) / n)
        bn = bm - step * P.mean(0)
        norms = Wn.norm(dim=1, keepdim=True)
        Wn = Wn * torch.clamp(1 - step * lam / norms.clamp_min(1e-12), min=0)
        t_next = (1 + (1 + 4 * t * t) ** 0.5) / 2
        Wm = Wn + (t - 1) / t_next * (Wn - W)
        bm = bn + (t - 1) / t_next * (bn - b)
        W, b, t = Wn, bn, t_next
    P = torch.softmax(X @ W + b, dim=1) - Y
    grad = (X.T @ P / n).norm(dim=1)  # how close a zeroed feature is to entering: breaks ties in the ranking
    return W, lam, grad


@register_head(description="Head2Toe: several layers, per-layer normalised, group-lasso screen, logreg")
class MultiLayerHead(Head):
    """A linear head over several cached layers at once, with group-sparse feature selection (Head2Toe).

    ``X`` holds the layers' pooled features side by side (``layer_dims`` gives their widths in column
    order). Every feature is standardised and each layer group scaled by ``1/sqrt(width)``; a
    multinomial logistic regression with an l2,1 (group-lasso) penalty, ``lambda = alpha *
    lambda_max``, solved by FISTA, ranks the features by the norm of their weights (by default, with
    ``lasso_iters=0``, the ranking of its first proximal step: the gradient norm at zero). For each
    fraction in ``keeps`` (or the fixed ``keep``) the ``logreg`` head's C sweep over ``Cs`` runs on the
    top-ranked raw columns, on the validation rows (the ``eval_set``, or rows its ``selection`` rule
    holds out of train); the best (fraction, C) wins and the ``logreg`` head is fitted there, refit on
    train + validation. With a fixed ``C``, a quick probe at ``probe_C`` scores the fractions. Without
    validation rows: ``keep`` or 1.0, C=1. The final classifier is linear in X, so
    ``decision_function`` is exact.

    Parameters
    ----------
    layer_dims : tuple of int or None, default=None
        Widths of the layer groups in column order; None = one group. ``embedpipe train`` fills it.
    layer_names : tuple of str or None, default=None
        Their names, for the contribution report (default ``layer0``, ``layer1``, ...).
    alpha : float, default=0.02
        Group-lasso strength as a fraction of ``lambda_max`` (the penalty that zeroes every weight).
    lasso_iters : int, default=0
        FISTA iterations of the screening fit; 0 = rank by the first proximal step from zero (each
        feature's gradient norm there), which on the five-layer glyphs cache kept better features than
        60 iterations at a fortieth of the cost (benchmarks/solvers.py multilayer).
    keep : float or None, default=None
        Fixed fraction of features to keep; None = choose from ``keeps`` on validation rows.
    keeps : tuple of float, default=(0.25, 0.5)
        Fractions tried on validation rows, each with the final classifier's C sweep. All the
        features (1.0) tripled the fit on the five-layer glyphs cache and scored lower on val and test.
        A fraction keeps at least 16 features (``MIN_KEEP``; all of them when there are fewer), and
        fractions that keep the same number are tried once.
    probe_C : float, default=30.0
        With a fixed ``C``: inverse L2 strength of the quick fit that scores each fraction.
    probe_iter : int, default=100
        Its L-BFGS iterations (a ranking of fractions, not a final model).
    C : float or None, default=None
        The final classifier's C; None = the logreg head's sweep over ``Cs`` on validation rows.
    Cs : tuple of float, default=DEFAULT_ML_CS
        The final sweep (logreg's 9 values from 1e-4 to 1e4).
    max_iter : int, default=500
        L-BFGS iterations per fit.
    tol : float, default=1e-4
        L-BFGS gradient tolerance.
    selection : HoldOut, KFold, Auto or None, default=None
        How validation rows are had when ``fit`` gets no ``eval_set`` (``heads.select``); None =
        ``DEFAULT_SELECTION``: stratified 5-fold cross-validation on a small train set, else a seeded
        stratified 15 % held out. Under k-fold every (keep, C) of the grid is scored on every fold (each
        fold screens its own features; no probe) and the best mean accuracy wins.
    device : str, default="auto"
        Torch device; ``"auto"`` = CUDA when present.

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
        The class labels.
    n_features_in_ : int
        Number of features seen in ``fit`` (all layers).
    selection_ : dict
        How ``fit`` selected (``heads.select``): ``rule`` is "eval_set", "holdout", "kfold" or "none"
        (nothing could be held out); ``val_rows`` the validation rows the choice rests on (under
        k-fold every training row, each once), ``folds`` the number of folds.
    mean_ : ndarray of shape (n_features,)
        Training mean of the selection's standardisation.
    scale_ : ndarray of shape (n_features,)
        Training std divided by the layer scaling ``1/sqrt(width)`` (the selection's input scale).
    lambda_ : float
        The group-lasso penalty used, ``alpha * lambda_max``.
    group_norms_ : ndarray of shape (n_features,)
        Each feature's screening score (the ranking): its group-lasso weight norm, or with
        ``lasso_iters=0`` its gradient norm at zero.
    keep_scores_ : dict of str to float
        Best validation accuracy of the C sweep (of the probe, with a fixed ``C``) at each fraction
        tried; empty with a fixed ``keep``.
    keep_ : float
        The fraction of features kept.
    selected_ : ndarray of shape (n_selected,)
        Indices of the kept columns, sorted.
    clf_ : LogRegHead
        The final classifier on ``X[:, selected_]``.
    C_ : float
        Its C.
    n_iter_ : int
        L-BFGS iterations of its final fit.
    best_val_score_ : float or None
        Its validation accuracy at ``C_``; None without a sweep.
    layer_kept_ : dict of str to int
        Features kept per layer.
    layer_contributions_ : dict of str to float
        Each layer's share of the kept features' screening score (``group_norms_``).

    Examples
    --------
    >>> import numpy as np
    >>> from embedpipe.heads import MultiLayerHead
    >>> rng = np.random.default_rng(0)
    >>> y = np.repeat([0, 1, 2], 20)
    >>> X = np.hstack([rng.normal(size=(60, 6)), rng.normal(size=(60, 4)) + 3 * np.eye(3, 4)[y]])
    >>> head = MultiLayerHead(layer_dims=(6, 4), layer_names=("noise", "signal"), Cs=(0.1, 1.0)).fit(X, y)
    >>> bool(head.layer_contributions_["signal"] > head.layer_contributions_["noise"])
    True
    >>> bool(head.score(X, y) > 0.9)
    True
    """

    name = "multilayer"

    def __init__(
        self,
        layer_dims: tuple[int, ...] | None = None,
        layer_names: tuple[str, ...] | None = None,
        alpha: float = 0.02,
        lasso_iters: int = 0,
        keep: float | None = None,
        keeps: tuple[float, ...] = DEFAULT_KEEPS,
        probe_C: float = 30.0,
        probe_iter: int = 100,
        C: float | None = None,
        Cs: tuple[float, ...] = DEFAULT_ML_CS,
        max_iter: int = 500,
        tol: float = 1e-4,
        selection: Rule | None = None,
        device: str = "auto",
    ) -> None:
        self.layer_dims = layer_dims
        self.layer_names = layer_names
        self.alpha = alpha
        self.lasso_iters = lasso_iters
        self.keep = keep
        self.keeps = keeps
        self.probe_C = probe_C
        self.probe_iter = probe_iter
        self.C = C
        self.Cs = Cs
        self.max_iter = max_iter
        self.tol = tol
        self.selection = selection
        self.device = device

    def _selects(self) -> bool:
        return self.keep is None or self.C is None

    def _names(self) -> list[str]:
        dims = tuple(self.layer_dims) if self.layer_dims else (self.n_features_in_,)
        names = list(self.layer_names) if self.layer_names else [f"layer{i}" for i in range(len(dims))]
        if len(names) != len(dims):
            raise ValueError(f"layer_names has {len(names)} names for {len(dims)} layer_dims")
        return names

    def _fit(self, X: np.ndarray, y: np.ndarray, X_val: np.ndarray | None, y_val: np.ndarray | None) -> None:
        dev = resolve_device(self.device)
        names = self._names()
        gscale = group_scale(self.layer_dims, X.shape[1])
        mean, std = standardizer(X)
        self.mean_, self.scale_ = mean, std / gscale  # (x - mean) / scale = standardised * 1/sqrt(width)
        k = len(self.classes_)
        Xt = as_tensor((X - self.mean_) / self.scale_, dev)
        yt = torch.from_numpy(y).to(dev)
        half = half_matmuls(dev)  # the screen and the probe are proxies: bfloat16 where it is native
        W, self.lambda_, grad = group_lasso_logreg(Xt, yt, k, self.alpha, self.lasso_iters, half=half)
        # rank by group norm; features the lasso zeroed (ties at 0) by their gradient norm
        norms = W.norm(dim=1).cpu().numpy() if self.lasso_iters else grad.cpu().numpy()
        order = np.lexsort((-grad.cpu().numpy(), -norms))
        d = X.shape[1]
        have_val = X_val is not None and y_val is not None
        fractions = [self.keep] if self.keep is not None else list(self.keeps) if have_val else [1.0]
        self.keep_scores_: dict[str, float] = {}
        C = self.C if self.C is not None or have_val else NO_VAL_C
        self.clf_ = LogRegHead(C=C, Cs=self.Cs, standardize=True, max_iter=self.max_iter, tol=self.tol,
                               selection=self.selection, device=self.device)
        columns: dict[float, np.ndarray] = {}
        for f in sorted(fractions):  # fractions that keep the same count are one candidate (the smallest)
            count = kept_count(f, d)
            if all(len(c) != count for c in columns.values()):
                columns[float(f)] = np.sort(order[:count]).astype(np.int64)
        if have_val and C is None:
            # every fraction gets the final classifier's own C sweep (fast: logreg's proxy), the best
            # (fraction, C) on val wins, and only its final fit is run
            assert X_val is not None and y_val is not None
            self.clf_.classes_ = np.arange(k)
            sweeps = {}
            for frac, cols in columns.items():
                sweeps[frac] = self.clf_.sweep(X[:, cols], y, X_val[:, cols], y_val)
                self.keep_scores_[repr(frac)] = sweeps[frac].best
            self.keep_ = max(sweeps, key=lambda f: (sweeps[f].best, -f))  # ties: the fewer features
            self.selected_ = columns[self.keep_]
            self.clf_.n_features_in_ = len(self.selected_)
            self.clf_.selection_ = {"rule": "eval_set", "val_rows": len(y_val), "n_classes": k}
            self.clf_.finish(sweeps[self.keep_])
            del sweeps
        else:
            best_frac, best_acc = max(columns), -1.0
            if len(columns) > 1:  # a fixed C: score the fractions with a quick probe at probe_C
                assert X_val is not None and y_val is not None
                Xv = as_tensor((X_val - self.mean_) / self.scale_, dev)
                yv = torch.from_numpy(y_val).to(dev)
                for frac, cols in columns.items():
                    c = torch.from_numpy(cols).to(dev)
                    Wp, bp, _ = lbfgs_logreg(Xt[:, c], yt, self.probe_C, torch.zeros(len(c), k, device=dev),
                                             torch.zeros(k, device=dev), self.probe_iter, self.tol, half=half)
                    acc = float(((Xv[:, c] @ Wp + bp).argmax(1) == yv).float().mean())
                    self.keep_scores_[repr(frac)] = acc
                    if acc > best_acc + 1e-9:
                        best_frac, best_acc = frac, acc
            self.keep_ = float(best_frac)
            self.selected_ = columns[self.keep_]
            sel = self.selected_
            self.clf_.fit(X[:, sel], y, eval_set=(X_val[:, sel], y_val) if have_val else None)
        self.C_, self.n_iter_ = self.clf_.C_, self.clf_.n_iter_  # n_iter_: L-BFGS iterations of the final fit
        self.best_val_score_ = self.clf_.best_val_score_
        self.group_norms_ = norms.astype(np.float32)
        self._report(names, gscale)

    # -- k-fold selection (heads/select.py's KFold): the path is the grid (keep, C) -----------------
    def _path(self, X: np.ndarray, y: np.ndarray, X_val: np.ndarray,
              y_val: np.ndarray) -> Iterator[tuple[tuple[float, float], float]]:
        """On one fold: rank the features by its own group-lasso screen, then for each fraction in
        ``keeps`` (or ``keep``) sweep ``Cs`` (or ``C``) warm-started with the final classifier's solver on
        the kept columns, standardised; yields ((keep, C), validation accuracy). No probe: every
        (keep, C) is scored as the final classifier."""
        dev = resolve_device(self.device)
        gscale = group_scale(self.layer_dims, X.shape[1])
        mean, std = standardizer(X)
        yt = torch.from_numpy(y).to(dev)
        W, _, grad = group_lasso_logreg(as_tensor((X - mean) / (std / gscale), dev), yt, len(self.classes_),
                                        self.alpha, self.lasso_iters)
        order = np.lexsort((-grad.cpu().numpy(), -W.norm(dim=1).cpu().numpy()))
        yv, k, d = torch.from_numpy(y_val).to(dev), len(self.classes_), X.shape[1]
        keeps = [self.keep] if self.keep is not None else sorted(self.keeps)
        for frac in keeps:
            cols = np.sort(order[: kept_count(frac, d)])
            m, s = standardizer(X[:, cols])
            Xt, Xv = as_tensor((X[:, cols] - m) / s, dev), as_tensor((X_val[:, cols] - m) / s, dev)
            Wc, bc = torch.zeros(len(cols), k, device=dev), torch.zeros(k, device=dev)
            for C in [self.C] if self.C is not None else sorted(self.Cs):
                Wc, bc, _ = lbfgs_logreg(Xt, yt, C, Wc, bc, self.max_iter, self.tol)
                yield (float(frac), float(C)), float(((Xv @ Wc + bc).argmax(1) == yv).float().mean())

    def _fit_at(self, X: np.ndarray, y: np.ndarray, candidate: Any, scores: dict[Any, float]) -> None:
        """One fit on all of train at the chosen (keep, C): screen, keep that fraction, fit logreg at C."""
        keep, C = candidate
        fixed = MultiLayerHead(**{**self.get_params(), "keep": float(keep), "C": float(C)})
        fixed.classes_, fixed.n_features_in_ = self.classes_, self.n_features_in_
        fixed._fit(X, y, None, None)
        self.__dict__.update({k: v for k, v in vars(fixed).items() if k.endswith("_") and k != "selection_"})
        self.keep_scores_ = {repr(f): max(v for (g, _), v in scores.items() if g == f)
                             for f in dict.fromkeys(f for f, _ in scores)}
        self.clf_.val_scores_ = {repr(c): v for (f, c), v in scores.items() if f == keep}
        self.best_val_score_ = self.clf_.best_val_score_ = float(scores[candidate])

    def _report(self, names: list[str], gscale: np.ndarray) -> None:
        dims = tuple(self.layer_dims) if self.layer_dims else (self.n_features_in_,)
        bounds = np.cumsum((0, *dims))
        kept = np.zeros(self.n_features_in_, bool)
        kept[self.selected_] = True
        weight = np.where(kept, self.group_norms_, 0.0)
        total = float(weight.sum()) or 1.0
        self.layer_kept_ = {n: int(kept[a:b].sum()) for n, a, b in zip(names, bounds[:-1], bounds[1:], strict=True)}
        self.layer_contributions_ = {n: float(weight[a:b].sum()) / total
                                     for n, a, b in zip(names, bounds[:-1], bounds[1:], strict=True)}

    def chosen_params(self) -> dict[str, Any]:
        chosen: dict[str, Any] = {"keep": self.keep_} if self.keep is None else {}
        return {**chosen, "C": float(self.C_)} if self.C is None else chosen

    def how_chosen(self) -> str | None:
        folds = getattr(self, "selection_", {}).get("folds", 0)
        if folds:
            n_keeps = 1 if self.keep is not None else len(self.keeps)
            n_cs = 1 if self.C is not None else len(self.Cs)
            return (f"keep, C: best mean val accuracy ({self.best_val_score_:.4f}) over {folds} stratified folds of "
                    f"train, of {n_keeps} fractions x {n_cs} C values; then fit on all of train")
        rules = []
        if self.keep is None:
            if self.keep_scores_:
                best = self.keep_scores_.get(repr(self.keep_), float("nan"))
                how = "logreg's C sweep on each" if self.C is None else f"a C={self.probe_C:g} probe"
                rules.append(f"keep: best val accuracy ({best:.4f}) of the fractions {', '.join(self.keep_scores_)} "
                             f"with {how}")
            else:
                rules.append(f"keep={self.keep_:g}: no validation rows to select it on")
        if self.C is None:
            rules.append(sweep_rule("C", self.Cs, self.clf_.val_scores_, self.best_val_score_, True, NO_VAL_C))
        return "; ".join(rules) or None

    def _predict_proba(self, X: np.ndarray) -> np.ndarray:
        return self.clf_.predict_proba(X[:, self.selected_])

    def decision_function(self, X: Any) -> np.ndarray:
        """The final logreg's class scores on the kept columns of raw X: exactly
        ``X[:, selected_] @ clf_.coef_.T + clf_.intercept_`` (linear in X; the other columns weigh 0).
        Shape (n_samples, n_classes), or (n_samples,) with two classes (scikit-learn's convention)."""
        check_is_fitted(self, "clf_")
        X = validate_data(self, X, reset=False, dtype=np.float32)
        return self.clf_.decision_function(X[:, self.selected_])

    def _get_state(self) -> State:
        clf_state, clf_arrays = self.clf_._get_state()
        state = {"final_fit": FINAL_FIT, "keep_": self.keep_, "keep_scores_": self.keep_scores_, "C_": self.C_,
                 "lambda_": self.lambda_,
                 "best_val_score_": self.best_val_score_, "layer_kept_": self.layer_kept_,
                 "layer_contributions_": self.layer_contributions_, "clf": clf_state}
        arrays = {"mean_": self.mean_, "scale_": self.scale_, "selected_": self.selected_,
                  "group_norms_": self.group_norms_, **{f"clf.{k}": v for k, v in clf_arrays.items()}}
        return state, arrays

    def _state_spec(self) -> StateSpec:
        # s = features kept by the selection; the final logreg sees only those
        return ({"final_fit": "str", "keep_": "number", "keep_scores_": "dict[str,number]", "C_": "number", "lambda_": "number",
                 "best_val_score_": "number?", "layer_kept_": "dict[str,number]",
                 "layer_contributions_": "dict[str,number]", "clf": "dict"},
                {"mean_": ArraySpec(("d",)), "scale_": ArraySpec(("d",), positive=True),
                 "selected_": ArraySpec(("s",), kind="iu", below="d"), "group_norms_": ArraySpec(("d",)),
                 "clf.coef_": ArraySpec(("k", "s")), "clf.intercept_": ArraySpec(("k",))})

    def _set_state(self, state: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        if state["final_fit"] != FINAL_FIT:
            raise ValueError(f"a multilayer head whose final fit is {state['final_fit']!r}; retrain it")
        self.keep_, self.keep_scores_ = float(state["keep_"]), dict(state["keep_scores_"])
        self.C_, self.lambda_, self.best_val_score_ = float(state["C_"]), float(state["lambda_"]), state["best_val_score_"]
        self.layer_kept_ = {str(k): int(v) for k, v in state["layer_kept_"].items()}
        self.layer_contributions_ = {str(k): float(v) for k, v in state["layer_contributions_"].items()}
        self.mean_, self.scale_ = arrays["mean_"], arrays["scale_"]
        self.selected_, self.group_norms_ = arrays["selected_"].astype(np.int64), arrays["group_norms_"]
        if self.selected_.ndim != 1 or (len(self.selected_) and self.selected_.max() >= self.n_features_in_):
            raise ValueError("selected_ does not index the head's features")
        clf = LogRegHead(C=self.C, Cs=self.Cs, standardize=True, max_iter=self.max_iter, tol=self.tol,
                         selection=self.selection, device=self.device)
        clf.classes_ = np.arange(len(self.classes_))
        clf.n_features_in_ = len(self.selected_)
        clf._set_state(state["clf"], {k[4:]: v for k, v in arrays.items() if k.startswith("clf.")})
        self.clf_ = clf
        self.n_iter_ = clf.n_iter_

    @classmethod
    def _upgrade_state(cls, version: int, state: dict[str, Any], arrays: dict[str, np.ndarray]) -> bool:
        """Format 1: the nested final logreg's coefficients were on standardised features (see logreg)."""
        return upgrade_v1_arrays(arrays, prefix="clf.") if version < 2 else False

    @classmethod
    def context_params(cls, cache: Any, layer: str) -> dict[str, Any]:
        """The cache's widths and names of the layers in ``layer`` (comma-separated, in that order)."""
        names = [s for s in layer.split(",") if s]
        return {"layer_dims": tuple(int(cache.dims[n]) for n in names), "layer_names": tuple(names)}
