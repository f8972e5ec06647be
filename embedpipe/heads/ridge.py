"""Ridge classifier: least squares on one-hot targets with an L2 penalty, solved in closed form.

Objective (scikit-learn's ``Ridge`` with ``fit_intercept=True`` on the one-hot targets ``Y``):
``||Y - X W - 1 b^T||_F^2 + alpha ||W||_F^2``; the intercept is not penalised, which is the same as
centring X and Y. One symmetric eigendecomposition gives every alpha at once: with ``Xc^T Xc =
V diag(s) V^T`` for the centred rows Xc (from the d x d matrix, or from the n x n Gram ``Xc Xc^T`` when
there are fewer rows than features), ``W(alpha) = V diag(1 / (s + alpha)) V^T Xc^T Y``, so each alpha
of the path costs one matmul. The decomposition runs in float64; the path's matmuls in float32.

Selection of alpha (accuracy, ties broken by the squared error):
- on the validation rows when there are some (``eval_set``, or rows a ``HoldOut`` selection rule
  holds out of train), then a refit on train + validation at the chosen alpha, as logreg does;
- without validation rows, on train itself: exact leave-one-out by the hat-matrix identity
  (``cv=None``: the left-out prediction of row i is ``(yhat_i - h_i y_i) / (1 - h_i)``, the diagonal
  ``h_i`` of the hat matrix coming from the same eigenvectors), or stratified k-fold (``cv=k``).
  Leave-one-out is the default: on digits, glyphs and a synthetic 100-class set it chose alphas whose
  test accuracy was within 0.8 point of the best on the grid, as 5-fold did, at less cost (no extra
  decomposition); GCV (squared error, the cheapest) chose too strong a penalty on two of the three
  (benchmarks/solvers.py).

``predict_proba`` is a softmax of the scores divided by one temperature, fitted by minimising the log
loss of the held-out scores at the chosen alpha (validation, leave-one-out or out-of-fold scores).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from sklearn.utils.validation import check_is_fitted, validate_data

from ..core.device import resolve_device
from ..core.threads import one_thread
from .base import ArraySpec, Head, State, StateSpec, softmax_np, standardizer
from .logreg import binary_margin
from .registry import register_head
from .select import HoldOut, KFold, Rule

# The default alpha grid, relative to the mean eigenvalue of Xc^T Xc (the mean squared norm of a
# centred row divided by the number of features; with standardised features, the number of rows):
# 13 values, half a decade apart, over 6 decades (benchmarks/solvers.py: where the best alpha falls).
DEFAULT_RELATIVE_ALPHAS = tuple(float(a) for a in np.logspace(-4, 2, 13))
RANK_TOL = 1e-10  # eigenvalues below this fraction of the largest are the null space (exactly 0 in theory)
TEMPERATURE_RANGE = (1e-4, 1e4)  # the temperature's bounds: scores of one-hot least squares are O(1)
ROWS_PER_BLOCK = 4096  # rows scored together along the path (bounds the (rows x classes) buffers)


@dataclass
class _Fold:
    """One held-out block of rows with what scores it along the path: ``P diag(1/(s+alpha)) Q + ybar``;
    ``lev`` (squared rows of P) is set for leave-one-out blocks, whose scores take the hat-matrix step."""

    P: torch.Tensor  # (m, r) float32: held-out rows, centred with the fit's mean, in the eigenbasis
    Q: torch.Tensor  # (r, k) float32: V^T Xc^T Y of the fit
    s: torch.Tensor  # (r,) float64 eigenvalues of the fit
    ybar: torch.Tensor  # (k,) float32 class shares of the fit (the intercept of centred least squares)
    y: torch.Tensor  # (m,) int64 labels of the held-out rows
    lev: torch.Tensor | None = None  # (m, r) float64 P**2 (leave-one-out only)
    n_fit: int = 0  # rows of the fit (leave-one-out: the 1/n of the intercept's leverage)

    def scores(self, alpha: float) -> torch.Tensor:
        f = 1.0 / (self.s + alpha)
        S = (self.P * f.float()) @ self.Q + self.ybar
        if self.lev is not None:  # leave-one-out: (yhat_i - h_i y_i) / (1 - h_i)
            h = self.lev @ f + 1.0 / self.n_fit
            rows = torch.arange(len(self.y), device=S.device)
            S[rows, self.y] -= h.float()
            S /= (1.0 - h).float()[:, None]
        return S


def _gram(Xc: torch.Tensor) -> torch.Tensor:
    return Xc.T @ Xc if Xc.shape[1] <= Xc.shape[0] else Xc @ Xc.T


def spectrum(Xc: torch.Tensor, G: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (V, s): eigenvectors (d, r) and eigenvalues (r,) of ``Xc^T Xc`` (float64), null space dropped.

    With d <= n it decomposes the d x d matrix ``Xc^T Xc`` (``G`` when given); with n < d, the n x n
    Gram ``Xc Xc^T = U diag(s) U^T``, and ``V = Xc^T U diag(s)^-1/2``. Directions of eigenvalue 0 carry
    nothing of ``Xc^T Y`` (it lies in the row space of Xc), so dropping them is exact.
    """
    G = _gram(Xc) if G is None else G
    with one_thread(G.device):
        s, E = torch.linalg.eigh(G)
    keep = s > s.max().clamp(min=0) * RANK_TOL
    s, E = s[keep], E[:, keep]
    V = E if Xc.shape[1] <= Xc.shape[0] else (Xc.T @ E) / s.sqrt()
    return V, s


def class_sums(Xc: torch.Tensor, y: torch.Tensor, k: int) -> torch.Tensor:
    """``Xc^T Y`` for one-hot Y, shape (d, k), without forming Y."""
    return torch.zeros(k, Xc.shape[1], dtype=Xc.dtype, device=Xc.device).index_add_(0, y, Xc).T


def fit_temperature(S: torch.Tensor, y: torch.Tensor) -> float:
    """The temperature T minimising the mean log loss of ``softmax(S / T)`` on labels ``y``.

    The loss is convex in beta = 1/T, so a Newton step on beta, kept inside a shrinking bracket (a
    geometric bisection step where Newton would leave it), finds the minimum in a few passes. Scores
    that the argmax already separates perfectly push T to its lower bound (``TEMPERATURE_RANGE``).
    """
    S = S.float()
    S = S - S.max(dim=1, keepdim=True).values
    rows = torch.arange(len(y), device=S.device)
    true = S[rows, y]
    lo, hi = 1.0 / TEMPERATURE_RANGE[1], 1.0 / TEMPERATURE_RANGE[0]

    def slope(beta: float) -> tuple[float, float]:
        P = torch.softmax(beta * S, dim=1)
        PS = P * S
        mean = PS.sum(1, dtype=torch.float64)
        var = (PS * S).sum(1, dtype=torch.float64) - mean * mean
        return float((mean - true).mean()), float(var.mean())

    if slope(hi)[0] <= 0:  # the loss still falls at the largest beta
        return 1.0 / hi
    if slope(lo)[0] >= 0:
        return 1.0 / lo
    spread = float(S.std())
    beta = min(max(1.0 / spread if spread > 0 else 1.0, lo), hi)
    for _ in range(100):
        g, h = slope(beta)
        if g > 0:
            hi = beta
        else:
            lo = beta
        step = beta - g / h if h > 0 else math.nan
        beta = step if lo < step < hi else math.sqrt(lo * hi)
        if hi / lo < 1 + 1e-6 or abs(g) < 1e-9:
            break
    return 1.0 / beta


@register_head(description="ridge classifier, closed form: one eigendecomposition, alpha on val or leave-one-out")
class RidgeHead(Head):
    """Ridge classifier on embeddings: least squares on one-hot targets, solved in closed form.

    Minimises ``||Y - X W - 1 b^T||^2 + alpha ||W||^2`` over ``W`` and the unpenalised intercept ``b``,
    where ``Y`` holds the one-hot targets: scikit-learn's ``Ridge(alpha, fit_intercept=True)`` on them
    (exactly, with ``standardize=False``; with ``standardize=True`` on features divided by their
    training standard deviation). One eigendecomposition of ``Xc^T Xc`` (or of the n x n Gram when
    there are fewer rows than features), in float64 and in torch on the CPU or a GPU, gives the
    solution for every alpha at the cost of a matmul each. With ``alpha=None`` it selects alpha by
    accuracy on the validation rows (the ``eval_set``, or rows a ``HoldOut`` ``selection`` rule holds
    out of train) and, with ``refit=True``, refits on train + validation; without validation rows it
    selects by exact leave-one-out (``cv=None``) or stratified k-fold (``cv=k``) on train. The scores
    ``X @ coef_.T + intercept_`` (``decision_function``) rank the classes; ``predict_proba`` is their
    softmax at one temperature, fitted to minimise the log loss of the held-out scores at the chosen
    alpha (validation, leave-one-out or out-of-fold). ``coef_`` and ``intercept_`` act on raw X.

    Parameters
    ----------
    alpha : float or None, default=None
        L2 penalty on ``W`` (scikit-learn's ``Ridge`` alpha, on the sum of squared errors). None =
        select it from ``alphas``.
    alphas : tuple of float or None, default=None
        The values tried when ``alpha`` is None. None = ``DEFAULT_RELATIVE_ALPHAS`` (13 values from 1e-4
        to 1e2, half a decade apart) times the mean eigenvalue of ``Xc^T Xc``, so the grid follows the
        data's scale; given values are used as they are.
    refit : bool, default=True
        After selecting on validation rows, refit on train + validation at the chosen alpha.
    standardize : bool, default=False
        Divide the features by their training standard deviation before solving (the penalty then
        weighs every feature alike; the result still acts on raw X). Off by default: on raw
        embeddings the penalty leaves the high-variance directions freer, which scored 2.6 and 3.2
        points higher on digits and glyphs (benchmarks/solvers.py).
    cv : int or None, default=None
        Selection without validation rows: None = exact leave-one-out (hat-matrix identity, no extra
        decomposition); an integer k >= 2 = stratified k-fold (k more decompositions).
    selection : HoldOut, KFold, Auto or None, default=None
        None, ``Auto`` = select on train itself (``cv``) when ``fit`` gets no ``eval_set``; ``KFold``
        = its folds (when ``cv`` is None); a ``HoldOut`` rule = hold its rows out of train instead
        and select on them, as logreg does (``heads.select``).
    device : str, default="auto"
        Torch device of the solver; ``"auto"`` = CUDA when present.

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
        The class labels.
    n_features_in_ : int
        Number of features seen in ``fit``.
    coef_ : ndarray of shape (n_classes, n_features)
        Weights on raw X (the standardisation folded in), as scikit-learn's.
    intercept_ : ndarray of shape (n_classes,)
        Intercepts on raw X; the scores are ``X @ coef_.T + intercept_``.
    alpha_ : float
        The alpha of ``coef_``: the selected one, or ``alpha``.
    temperature_ : float
        ``predict_proba`` is ``softmax(scores / temperature_)``.
    val_scores_ : dict of str to float
        Selection accuracy per alpha tried (keys are ``repr(alpha)``); empty with a fixed ``alpha``.
    best_val_score_ : float or None
        Selection accuracy at ``alpha_`` (on validation rows, leave-one-out or out-of-fold); None with
        a fixed ``alpha``.
    selection_ : dict
        Where the held-out scores came from: ``rule`` is ``"eval_set"``, ``"loo"`` (exact
        leave-one-out on train) or ``"kfold"`` (with ``folds``), with ``val_rows``, the number of
        rows scored, and ``n_classes`` (as every selecting head records it).

    Examples
    --------
    >>> import numpy as np
    >>> from embedpipe.heads import RidgeHead
    >>> rng = np.random.default_rng(0)
    >>> y = np.repeat([0, 1, 2], 20)
    >>> X = rng.normal(size=(60, 8)) + 3 * np.eye(3, 8)[y]
    >>> head = RidgeHead().fit(X, y)
    >>> head.coef_.shape, head.predict_proba(X[:2]).shape, head.selection_["rule"]
    ((3, 8), (2, 3), 'loo')
    >>> head.chosen_params()  # doctest: +ELLIPSIS
    {'alpha': ...}
    >>> bool(head.score(X, y) > 0.9)
    True
    >>> bool(np.allclose(head.decision_function(X), X @ head.coef_.T + head.intercept_, atol=1e-4))
    True
    """

    name = "ridge"

    def __init__(
        self,
        alpha: float | None = None,
        alphas: tuple[float, ...] | None = None,
        refit: bool = True,
        standardize: bool = False,
        cv: int | None = None,
        selection: Rule | None = None,
        device: str = "auto",
    ) -> None:
        self.alpha = alpha
        self.alphas = alphas
        self.refit = refit
        self.standardize = standardize
        self.cv = cv
        self.selection = selection
        self.device = device

    def _selects(self) -> bool:
        # Without an eval_set, rows are held out of train only under an explicit HoldOut rule; the
        # default selects on train itself (leave-one-out or k-fold), which needs no rows held out.
        return self.alpha is None and isinstance(self.selection, HoldOut)

    def _fit(self, X: np.ndarray, y: np.ndarray, X_val: np.ndarray | None, y_val: np.ndarray | None) -> None:
        if self.cv is not None and (isinstance(self.cv, bool) or not isinstance(self.cv, int) or self.cv < 2):
            raise ValueError(f"cv must be None (leave-one-out) or an integer >= 2, got {self.cv!r}")
        if self.alpha is not None and not self.alpha > 0:
            raise ValueError(f"alpha must be > 0, got {self.alpha!r}")
        dev = resolve_device(self.device)
        k = len(self.classes_)
        has_val = X_val is not None and y_val is not None and len(y_val) > 0
        cv = self.cv if self.cv is not None or not isinstance(self.selection, KFold) else self.selection.folds
        X_all = np.concatenate([X, X_val]) if has_val and self.refit and X_val is not None else X
        scale = standardizer(X_all)[1] if self.standardize else None
        Xc = _rows(X, scale, dev)  # centred below, in place
        yt = torch.from_numpy(y).to(dev)
        mu = Xc.mean(0)
        Xc -= mu
        G = _gram(Xc)
        V, s = spectrum(Xc, G)
        C = class_sums(Xc, yt, k)
        Q = V.T @ C
        ybar = torch.bincount(yt, minlength=k).double() / len(yt)
        if has_val:
            assert X_val is not None and y_val is not None
            Dv = _rows(X_val, scale, dev) - mu  # validation rows centred with the train mean
            folds = [_Fold((Dv @ V).float(), Q.float(), s, ybar.float(), torch.from_numpy(y_val).to(dev))]
            self.selection_ = {"rule": "eval_set", "val_rows": len(y_val), "n_classes": k}
        elif cv is None:
            folds = [_Fold(P.float(), Q.float(), s, ybar.float(), yt[rows], lev=P * P, n_fit=len(yt))
                     for rows, P in _row_blocks(Xc, V)]
            self.selection_ = {"rule": "loo", "val_rows": len(yt), "n_classes": k,
                               "describe": "exact leave-one-out on train"}
        else:
            folds = list(_kfolds(Xc, yt, k, cv))
            self.selection_ = {"rule": "kfold", "folds": int(cv), "val_rows": len(yt), "n_classes": k,
                               "describe": f"{cv} stratified folds of train"}
        mean_eig = float(s.sum()) / Xc.shape[1] or 1.0  # 1.0: every row is the same (nothing to scale by)
        grid = [float(self.alpha)] if self.alpha is not None else (
            [float(a) for a in self.alphas] if self.alphas is not None else
            [float(f"{a * mean_eig:.3g}") for a in DEFAULT_RELATIVE_ALPHAS])
        if any(not a > 0 for a in grid):
            raise ValueError(f"alphas must all be > 0, got {grid}")
        correct, sq = _path(folds, grid)
        best = min(range(len(grid)), key=lambda j: (-correct[j], sq[j], -grid[j]))
        self.alpha_ = grid[best]
        n_held = sum(len(f.y) for f in folds)
        self.val_scores_ = {} if self.alpha is not None else {repr(a): c / n_held for a, c in zip(grid, correct, strict=True)}
        self.best_val_score_ = None if self.alpha is not None else correct[best] / n_held
        held = torch.cat([f.scores(self.alpha_) for f in folds])
        self.temperature_ = fit_temperature(held, torch.cat([f.y for f in folds]))
        if has_val and self.refit:
            assert y_val is not None
            yt = torch.cat([yt, torch.from_numpy(y_val).to(dev)])
            ybar = torch.bincount(yt, minlength=k).double() / len(yt)
            W, mu = _refit(Xc, Dv, mu, G, C, yt, k, self.alpha_)
        else:
            W = V @ ((1.0 / (s + self.alpha_))[:, None] * Q)
        b = ybar - mu @ W
        if scale is not None:  # solved on X / scale: fold the scale into the weights on raw X
            W = W / torch.from_numpy(scale).to(W)[:, None]
        # scikit-learn layout, acting on raw X: coef_ (k, d), intercept_ (k,)
        self.coef_ = W.T.cpu().numpy().astype(np.float32)
        self.intercept_ = b.cpu().numpy().astype(np.float32)

    def chosen_params(self) -> dict[str, Any]:
        return {"alpha": float(self.alpha_)} if self.alpha is None else {}

    def how_chosen(self) -> str | None:
        if self.alpha is not None or self.best_val_score_ is None:
            return None
        rule = self.selection_.get("rule")
        where = {"eval_set": "val accuracy", "loo": "leave-one-out accuracy on train"}.get(
            rule, f"mean accuracy over {self.selection_.get('folds')} folds of train")
        alphas = [float(a) for a in self.val_scores_]
        refit = "; then refit on train + val" if rule == "eval_set" and self.refit else ""
        return (f"alpha: best {where} ({self.best_val_score_:.4f}) of {len(alphas)} values "
                f"{min(alphas):.3g}..{max(alphas):.3g}{refit}")

    def decision_function(self, X: Any) -> np.ndarray:
        """Class scores ``X @ coef_.T + intercept_`` on raw X, shape (n_samples, n_classes); with two
        classes, scikit-learn's binary convention: the score of ``classes_[1]`` minus that of
        ``classes_[0]``, shape (n_samples,), positive where ``classes_[1]`` is predicted."""
        check_is_fitted(self, "coef_")
        return binary_margin(self._scores(validate_data(self, X, reset=False, dtype=np.float32)))

    def _scores(self, X: np.ndarray) -> np.ndarray:
        return X @ self.coef_.T + self.intercept_

    def _predict_proba(self, X: np.ndarray) -> np.ndarray:
        return softmax_np(self._scores(X) / np.float32(self.temperature_))

    def _get_state(self) -> State:
        return ({"alpha_": self.alpha_, "temperature_": self.temperature_, "val_scores_": self.val_scores_,
                 "best_val_score_": self.best_val_score_, "selection_": self.selection_},
                {"coef_": self.coef_, "intercept_": self.intercept_})

    def _state_spec(self) -> StateSpec:
        return ({"alpha_": "number", "temperature_": "number", "val_scores_": "dict[str,number]",
                 "best_val_score_": "number?", "selection_": "dict"},
                {"coef_": ArraySpec(("k", "d")), "intercept_": ArraySpec(("k",))})

    def _set_state(self, state: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        if not state["temperature_"] > 0:
            raise ValueError(f"temperature_ must be > 0, got {state['temperature_']!r}")
        self.alpha_, self.temperature_ = float(state["alpha_"]), float(state["temperature_"])
        self.val_scores_, self.best_val_score_ = dict(state["val_scores_"]), state["best_val_score_"]
        self.selection_ = dict(state["selection_"])
        self.coef_, self.intercept_ = arrays["coef_"], arrays["intercept_"]


def _row_blocks(Xc: torch.Tensor, V: torch.Tensor) -> Iterator[tuple[slice, torch.Tensor]]:
    for start in range(0, len(Xc), ROWS_PER_BLOCK):
        rows = slice(start, start + ROWS_PER_BLOCK)
        yield rows, Xc[rows] @ V


def _path(folds: list[_Fold], grid: list[float]) -> tuple[list[int], list[float]]:
    """Held-out correct predictions and summed squared error (against one-hot) for every alpha."""
    correct, sq = [0] * len(grid), [0.0] * len(grid)
    for fold in folds:
        rows = torch.arange(len(fold.y), device=fold.y.device)
        for j, alpha in enumerate(grid):
            S = fold.scores(alpha)
            correct[j] += int((S.argmax(1) == fold.y).sum())
            flat = S.reshape(-1)
            sq[j] += float(torch.dot(flat, flat)) - 2 * float(S[rows, fold.y].sum(dtype=torch.float64)) + len(rows)
    return correct, sq


def _kfolds(Xs: torch.Tensor, y: torch.Tensor, k: int, n_folds: int) -> Iterator[_Fold]:
    """Stratified folds: within each class, row ``i`` of the class goes to fold ``i % n_folds``."""
    y_np = y.cpu().numpy()
    rank = np.zeros(len(y_np), np.int64)
    for c in np.unique(y_np):
        where = np.flatnonzero(y_np == c)
        rank[where] = np.arange(len(where))
    fold_of = torch.from_numpy(rank % n_folds).to(y.device)
    for f in range(n_folds):
        out = fold_of == f
        if not out.any() or out.all():
            continue
        Xf, yf = Xs[~out], y[~out]
        mu = Xf.mean(0)
        Xc = Xf - mu
        V, s = spectrum(Xc)
        Q = V.T @ class_sums(Xc, yf, k)
        ybar = torch.bincount(yf, minlength=k).double() / len(yf)
        yield _Fold(((Xs[out] - mu) @ V).float(), Q.float(), s, ybar.float(), y[out])


def _rows(X: np.ndarray, scale: np.ndarray | None, device: torch.device) -> torch.Tensor:
    """X (divided by ``scale`` when standardising) as float64 on the device: a copy of its own."""
    out = torch.from_numpy(X).to(device, torch.float64, copy=True)
    return out if scale is None else out.div_(torch.from_numpy(scale).to(out))


def _refit(Xc: torch.Tensor, Dv: torch.Tensor, mu: torch.Tensor, G: torch.Tensor, C: torch.Tensor, y: torch.Tensor,
           k: int, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (W, mean) of ridge at ``alpha`` on train + validation rows (y holds both, train first), from the
    train rows and validation rows centred with the train mean (``C``: the train rows' class sums). With d <= n the train Gram is updated,
    not redone: the sum over all rows of (x - mu_t)(x - mu_t)^T, less N delta delta^T, where delta is the
    shift of the mean; and Xc_all^T Y = (class sums of both) - delta (class counts)^T."""
    n_all = len(Xc) + len(Dv)
    delta = (Xc.sum(0) + Dv.sum(0)) / n_all  # Xc sums to 0 up to rounding
    if Xc.shape[1] <= Xc.shape[0]:
        G_all = G + Dv.T @ Dv - n_all * torch.outer(delta, delta)
        counts = torch.bincount(y, minlength=k).to(G.dtype)
        C = C + class_sums(Dv, y[len(Xc):], k) - torch.outer(delta, counts)
        return _solve(G_all, C, alpha), mu + delta
    Xa = torch.cat([Xc, Dv]) - delta
    K = Xa @ Xa.T
    return Xa.T @ _solve(K, torch.nn.functional.one_hot(y, k).to(K.dtype), alpha), mu + delta


def _solve(G: torch.Tensor, B: torch.Tensor, alpha: float) -> torch.Tensor:
    """``(G + alpha I)^-1 B`` by Cholesky (G symmetric positive semi-definite, alpha > 0)."""
    return torch.cholesky_solve(B, torch.linalg.cholesky(G + alpha * torch.eye(len(G), dtype=G.dtype, device=G.device)))
