"""Multinomial L2 logistic regression solved in torch with full-batch L-BFGS.

Objective (scikit-learn's, with ``C``): mean cross-entropy + ||W||^2 / (2 C n); the intercept is not
penalised. With ``C=None`` it sweeps ``Cs`` from strong to weak regularisation on validation rows (the
``eval_set``, or rows held out of train by the selection rule, ``heads/select.py``), warm-starting
each fit from the previous solution (the CLIP paper's probe protocol), keeps the C with the best
validation accuracy, then refits on train+val at that C. The sweep is a proxy for selection: each C
gets ``sweep_iter`` L-BFGS iterations in the eigenbasis of the training features, preconditioned so
that few iterations go far (``lbfgs_logreg_pre``), in bfloat16 where it is native (``precision``). The
chosen C is then solved in full by the plain solver (``final_fit``: bfloat16 matmuls where native until
L-BFGS stops, then float32 until the float32 gradient meets ``tol``), so the final fit minimises the
same objective to the same tolerance as a fixed C does. The sweep stops early once ``patience`` C
values in a row score below the best one on validation: the weakly regularised end of the path is the
slow one, and past the peak it only overfits more. The solver is ``heads.lbfgs``: L-BFGS with a
backtracking line search from the unit step, about one loss-and-gradient evaluation per iteration.

It solves on standardised features and then folds the standardisation into the result, so ``coef_``
and ``intercept_`` act on raw X, as scikit-learn's do (``unstandardize``), and prediction is
``softmax(X @ coef_.T + intercept_)``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from sklearn.utils.validation import check_is_fitted, validate_data

from ..core.device import cpu_has_bf16, resolve_device
from ..core.threads import one_thread
from .base import ArraySpec, Head, State, StateSpec, softmax_np, standardizer
from .lbfgs import minimize
from .registry import register_head
from .select import Rule
from .torch_utils import as_tensor

DEFAULT_CS = tuple(float(c) for c in np.logspace(-4, 4, 9))  # 9 values over 8 decades
PRECISIONS = ("auto", "fp32", "bf16")  # of the C sweep's matmuls (LogRegHead's precision)
# Under k-fold (small train sets: heads/select.py's Auto) each C of each fold gets at least this many
# sweep iterations: on benchmarks/tiny.py's glyphs-100 (5 per class, 3 seeds) 4 iterations scored 0.89
# points below scikit-learn's 5-fold LogisticRegression, 10 and 30 both 0.44 below.
KFOLD_SWEEP_ITER = 10
NO_VAL_C = 1.0  # C when it is to be selected but no validation rows can be had (scikit-learn's default)


def sweep_rule(name: str, values: tuple[float, ...], scores: dict[str, float], best: float | None,
               refit: bool, fallback: float, folds: int = 0) -> str:
    """One line saying how a swept value was chosen (``how_chosen`` of logreg and multilayer);
    ``folds`` > 0: by k-fold cross-validation on train (the best mean over the folds)."""
    if best is None:
        return f"{name}={fallback:g}: no validation rows to select it on"
    tried = len(scores)
    stop = f", stopped early after {tried} of {len(values)}" if tried < len(values) else ""
    if folds:
        return (f"{name}: best mean val accuracy ({best:.4f}) over {folds} stratified folds of train, of "
                f"{len(values)} values {min(values):g}..{max(values):g}{stop}; then fit on all of train")
    return (f"{name}: best val accuracy ({best:.4f}) of {len(values)} values {min(values):g}..{max(values):g}"
            f"{stop}" + ("; then refit on train + val" if refit else ""))


def lbfgs_logreg(
    X: torch.Tensor, y: torch.Tensor, C: float, W: torch.Tensor, b: torch.Tensor, max_iter: int, tol: float,
    half: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Minimise mean CE + ||W||^2/(2Cn) from (W, b) until the largest gradient entry is at most ``tol``
    (scikit-learn's rule for its L-BFGS), ``max_iter`` iterations are taken or no step decreases the
    objective (``heads.lbfgs``); returns the solution and the iterations used.

    Each evaluation is two (n, d) x (d, k) matmuls (``loss_and_grad``: the gradient by hand, a third
    faster than autograd's); ``half=True`` runs them in bfloat16, for proxies (multilayer's keep probe)
    and the first stretch of a final fit (``final_fit``).
    """
    Xh = X.bfloat16() if half else None
    one = torch.ones((), dtype=X.dtype, device=X.device)

    def objective(p: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        loss, gW, gb = loss_and_grad(X, Xh, p[0], p[1], y, one, C)
        return loss, (gW, gb)

    res = minimize(objective, (W.clone(), b.clone()), max_iter, lambda g: gradient_max(g) <= tol)
    return res.x[0], res.x[1], res.iters


def gradient_max(g: tuple[torch.Tensor, ...]) -> float:
    """The largest absolute entry of a gradient (the stopping rule)."""
    return max(float(gi.abs().max()) for gi in g)


FINAL_HALF = True  # whether a final fit in bfloat16 precision (precision) starts in bf16 (final_fit)


def final_fit(X: torch.Tensor, y: torch.Tensor, C: float, W: torch.Tensor, b: torch.Tensor, max_iter: int,
              tol: float, half: bool) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The solve that produces a head's coefficients: ``lbfgs_logreg`` to ``tol``. With ``half`` (and
    ``FINAL_HALF``) it first runs in bfloat16 matmuls until L-BFGS stops on its own, then goes on in
    float32 from there, so the stopping rule is met by the float32 gradient: the float32 objective's
    answer to the same tolerance. On glyphs (1,500 classes) at the chosen C=1000 that halved the final
    fit (benchmarks/solvers.py logreg); where bf16 stalls early, float32 carries on from there."""
    if not (half and FINAL_HALF):
        return lbfgs_logreg(X, y, C, W, b, max_iter, tol)
    W, b, first = lbfgs_logreg(X, y, C, W, b, max_iter, tol, half=True)
    W, b, rest = lbfgs_logreg(X, y, C, W, b, max(max_iter - first, 1), tol)
    return W, b, first + rest


class Basis:
    """The eigenbasis of ``X^T X / n`` for the standardised training rows, which preconditions the
    L-BFGS fits (``lbfgs_logreg_pre``): ``Z = X V`` once, then every C reuses it.

    The change of variables ``W = V diag(D) U`` with ``D = (s / k + 1 / (C n))^(-1/2)`` (``s`` the
    eigenvalues, ``k`` the classes: the softmax's curvature per class is about 1/k of the features'
    covariance) leaves the objective and its minimiser as they are, but makes its Hessian close to a
    multiple of the identity, so L-BFGS needs far fewer evaluations (benchmarks/solvers.py).

    With fewer rows than features only the ``n`` directions the rows span are kept (from the
    eigendecomposition of the n x n Gram matrix ``X X^T``): the L2-penalised solution lies in the
    rows' span (the representer theorem), so nothing is lost, and a 100-row fit on 1,280 features
    decomposes a 100 x 100 matrix instead of a 1,280 x 1,280 one.
    """

    def __init__(self, X: torch.Tensor) -> None:
        n, d = X.shape
        with torch.no_grad(), one_thread(X.device):  # the eigensolver on one thread (core.threads.one_thread)
            if n < d:
                Xd = X.double()
                s, Un = torch.linalg.eigh(Xd @ Xd.T / n)
                keep = s > s.max().clamp_min(1e-300) * 1e-10  # the rows' rank
                s, V = s[keep], (Xd.T @ Un[:, keep]) / (s[keep] * n).sqrt()
            else:
                # the Gram matrix in X's float32 (a preconditioner needs no more; float64 took 7x as
                # long on 9,000 x 1,280), the eigensolver in float64
                s, V = torch.linalg.eigh((X.T @ X).double() / n)
        self.s, self.V = s.clamp_min(0), V.to(X.dtype)
        self.n = n

    def project(self, X: torch.Tensor) -> torch.Tensor:
        return X @ self.V

    def scaling(self, C: float, k: int, n: int) -> torch.Tensor:
        return (self.s / k + 1.0 / (C * n)).rsqrt().to(self.V.dtype)


def loss_and_grad(Zc: torch.Tensor, Zh: torch.Tensor | None, U: torch.Tensor, b: torch.Tensor, y: torch.Tensor,
                  D2: torch.Tensor, C: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The objective in preconditioned variables and its gradient, by hand: mean cross-entropy of the
    scores ``Zc U + b`` + ``sum(D2 U^2) / (2 C n)``, with the softmax computed in place over one (n, k)
    buffer (a third faster than autograd's, which keeps several). With ``Zh`` (``Zc`` in bfloat16) both
    matmuls run in bfloat16 with float32 results: about 4x faster on CPUs with native bf16 and on
    GPUs, and a gradient within about 0.5 % of the float32 one (benchmarks/solvers.py)."""
    n = Zc.shape[0]
    rows = torch.arange(n, device=Zc.device)
    S = (Zh @ U.to(Zh.dtype)).float() if Zh is not None else Zc @ U
    S += b
    S -= S.amax(1, keepdim=True)
    margin = S[rows, y]  # each row's score of its class, shifted: cross-entropy = log(total) - margin
    S.exp_()
    total = S.sum(1, keepdim=True)
    reg = D2 * U
    loss = (total.log().squeeze(1) - margin).sum() / n + (reg * U).sum() / (2 * C * n)
    S *= (1.0 / n) / total  # the softmax, over n: d loss / d scores
    S[rows, y] -= 1.0 / n
    gU = (Zh.T @ S.to(Zh.dtype)).float() if Zh is not None else Zc.T @ S
    gU += reg / (C * n)
    return loss, gU, S.sum(0)


def half_matmuls(device: torch.device) -> bool:
    """Whether bfloat16 matmuls pay off here: GPUs with bf16 and CPUs with native bf16 (AVX-512 BF16,
    AMX), where they run about 4x faster; on other CPUs bf16 is emulated and slower than float32."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    return device.type == "cpu" and cpu_has_bf16()


def lbfgs_logreg_pre(
    Z: torch.Tensor, y: torch.Tensor, C: float, W: torch.Tensor, b: torch.Tensor, max_iter: int, tol: float,
    basis: Basis, check_every: int = 4, half: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``lbfgs_logreg`` on ``Z = basis.project(X)`` in preconditioned variables: the same objective, the
    same stopping rule (the largest entry of the gradient with respect to ``W`` at most ``tol``, checked
    every ``check_every`` iterations; at most ``max_iter`` iterations); returns W (d, k) on X.

    ``half=True`` runs the matmuls in bfloat16 (``loss_and_grad``), and the stopping rule sees the
    bfloat16 gradient: a proxy, for the C sweep, whose chosen C the head then solves in full."""
    return _lbfgs_pre(Z, y, C, W, b, max_iter, tol, basis, check_every, half)


def _lbfgs_pre(
    Z: torch.Tensor, y: torch.Tensor, C: float, W: torch.Tensor, b: torch.Tensor, max_iter: int, tol: float,
    basis: Basis, check_every: int, bf16: bool,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    n, k = Z.shape[0], W.shape[1]
    D = basis.scaling(C, k, n)
    Zc = Z * D
    Zh = Zc.bfloat16() if bf16 else None
    D2 = (D * D)[:, None]
    with torch.no_grad():
        U = (basis.V.T @ W) / D[:, None]

    def objective(p: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        loss, gU, gb = loss_and_grad(Zc, Zh, p[0], p[1], y, D2, C)
        return loss, (gU, gb)

    def done(g: tuple[torch.Tensor, ...]) -> bool:  # the stopping rule on the gradient with respect to W and b
        return gradient_max((basis.V @ (g[0] / D[:, None]), g[1])) <= tol

    res = minimize(objective, (U, b.clone()), max_iter, done, check_every=check_every)
    with torch.no_grad():
        W = basis.V @ (D[:, None] * res.x[0])
    return W, res.x[1], res.iters


@dataclass
class Sweep:
    """What ``LogRegHead.sweep`` found: the best validation accuracy, its C, every C's score, the
    sweep's solution there (on standardised features), and the standardised tensors to finish on."""

    best: float
    C: float
    scores: dict[str, float]
    W: torch.Tensor
    b: torch.Tensor
    mean: np.ndarray
    scale: np.ndarray
    Xt: torch.Tensor
    yt: torch.Tensor
    Xv: torch.Tensor
    yv: torch.Tensor
    half: bool


@register_head(description="multinomial L2 logistic regression, torch L-BFGS, C swept on val")
class LogRegHead(Head):
    """Multinomial L2 logistic regression on embeddings, solved in torch with full-batch L-BFGS.

    Minimises scikit-learn's objective, mean cross-entropy + ``||W||^2 / (2 C n)`` over the
    multinomial weights ``W`` (the intercept is not penalised), on features standardised with the
    training statistics (``standardize=True``). With ``C=None`` it selects C: it sweeps ``Cs`` from
    strong to weak regularisation on the validation rows (the ``eval_set``, or rows its ``selection``
    rule holds out of train), warm-starting each fit from the previous one (the CLIP linear-probe
    protocol), keeps the C with the best validation accuracy and, with ``refit=True``, refits on
    train + validation at that C. The fitted ``coef_`` and ``intercept_`` act on raw X, as
    scikit-learn's do: the standardisation is folded into them.

    Parameters
    ----------
    C : float or None, default=None
        Inverse L2 regularisation strength. None = select it from ``Cs`` on validation rows (C=1.0
        when no validation rows can be had: see ``selection``).
    Cs : tuple of float, default=DEFAULT_CS
        The values swept when ``C`` is None: 9 values from 1e-4 to 1e4, as in the CLIP linear probe.
    refit : bool, default=True
        After the sweep, refit on train + validation rows at the chosen C.
    standardize : bool, default=True
        Z-score the features with training statistics before solving (the result still acts on raw X).
    max_iter : int, default=500
        L-BFGS iterations per C value.
    tol : float, default=1e-4
        L-BFGS gradient tolerance.
    patience : int or None, default=2
        Stop the sweep after this many C values in a row score below the best one; None = sweep all.
        The weakly regularised end is the slow one, and past the peak it only overfits more.
    selection : HoldOut, KFold, Auto or None, default=None
        How validation rows are had when ``fit`` gets no ``eval_set`` (``heads.select``); None =
        ``DEFAULT_SELECTION``: stratified 5-fold cross-validation on a small train set (< 2,000 rows or
        < 30 per class), else a seeded stratified 15 % held out. Under k-fold every C is scored on
        every fold, the best mean accuracy wins and one fit on all of train follows.
    device : str, default="auto"
        Torch device of the solver; ``"auto"`` = CUDA when present.
    sweep_iter : int, default=4
        L-BFGS iterations per C during the sweep (the selection proxy), in the preconditioned
        eigenbasis of the training features (``lbfgs_logreg_pre``), each warm-started from the previous
        C. The chosen C is then fitted in full (``max_iter``, ``tol``), warm-started from its sweep fit:
        the same objective and stopping rule as a fixed ``C``. On digits, glyphs (1,500 classes) and a
        synthetic 100-class set, 4 chose Cs whose test accuracy matched the fully converged sweep at a
        fraction of its time (benchmarks/solvers.py). Under k-fold selection (small train sets) each
        fold's fits get at least 10 (``KFOLD_SWEEP_ITER``; benchmarks/tiny.py).
    precision : {"auto", "fp32", "bf16"}, default="auto"
        The matmuls of the C sweep and of the first stretch of the final fit: ``"auto"`` = bfloat16
        where it is native (GPUs, CPUs with AVX-512 BF16 or AMX), where they run about 4x faster, else
        float32. The final fit always ends in float32, until the float32 gradient meets ``tol``, so the
        answer and the stopping rule are the float32 objective's; the sweep sees slightly different
        validation accuracies, which can change the pick among near-equal Cs. bf16 against float32 in
        the same run: benchmarks/results/solvers-logreg.md. ``"fp32"`` reproduces float32 fits exactly.

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
        The class labels.
    n_features_in_ : int
        Number of features seen in ``fit``.
    selection_ : dict
        How ``fit`` selected (``heads.select``): ``rule`` is "eval_set", "holdout", "kfold" or "none"
        (nothing could be held out); ``val_rows`` the validation rows the choice rests on (under
        k-fold every training row, each once), ``folds`` the number of folds.
    coef_ : ndarray of shape (n_classes, n_features)
        Weights on raw X: one row per class (also with two classes).
    intercept_ : ndarray of shape (n_classes,)
        Intercepts on raw X; ``decision_function(X) = X @ coef_.T + intercept_``.
    C_ : float
        The C of the final fit.
    val_scores_ : dict of str to float
        Validation accuracy of each swept C (``repr(C)`` keys); empty without a sweep.
    best_val_score_ : float or None
        Validation accuracy at ``C_``; None without a sweep.
    n_iter_ : int
        L-BFGS iterations of the solve that produced ``coef_``.

    Examples
    --------
    >>> import numpy as np
    >>> from embedpipe.heads import LogRegHead
    >>> rng = np.random.default_rng(0)
    >>> y = np.repeat([0, 1, 2], 20)
    >>> X = rng.normal(size=(60, 8)) + 3 * np.eye(3, 8)[y]
    >>> head = LogRegHead(C=1.0).fit(X, y)
    >>> head.coef_.shape, head.predict_proba(X[:2]).shape
    ((3, 8), (2, 3))
    >>> bool(head.score(X, y) > 0.9)
    True
    >>> bool(np.allclose(head.decision_function(X), X @ head.coef_.T + head.intercept_, atol=1e-4))
    True
    """

    name = "logreg"

    def __init__(
        self,
        C: float | None = None,
        Cs: tuple[float, ...] = DEFAULT_CS,
        refit: bool = True,
        standardize: bool = True,
        max_iter: int = 500,
        tol: float = 1e-4,
        patience: int | None = 2,
        selection: Rule | None = None,
        device: str = "auto",
        sweep_iter: int = 4,
        precision: str = "auto",
    ) -> None:
        self.sweep_iter = sweep_iter
        self.precision = precision
        self.C = C
        self.Cs = Cs
        self.refit = refit
        self.standardize = standardize
        self.max_iter = max_iter
        self.tol = tol
        self.patience = patience
        self.selection = selection
        self.device = device

    def _selects(self) -> bool:
        return self.C is None

    def _half(self, device: torch.device) -> bool:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision={self.precision!r}: use one of {', '.join(PRECISIONS)}")
        return self.precision == "bf16" or (self.precision == "auto" and half_matmuls(device))

    def _fit(self, X: np.ndarray, y: np.ndarray, X_val: np.ndarray | None, y_val: np.ndarray | None) -> None:
        if self.C is None and X_val is not None and y_val is not None:
            self.finish(self.sweep(X, y, X_val, y_val))
            return
        dev = resolve_device(self.device)
        mean, scale = self._standardizer(X)
        Xt, yt = as_tensor((X - mean) / scale, dev), torch.from_numpy(y).to(dev)
        k = len(self.classes_)
        W, b = torch.zeros(X.shape[1], k, device=dev), torch.zeros(k, device=dev)
        self.val_scores_: dict[str, float] = {}
        self.C_ = float(self.C if self.C is not None else NO_VAL_C)
        self.best_val_score_ = None
        W, b, self.n_iter_ = final_fit(Xt, yt, self.C_, W, b, self.max_iter, self.tol, self._half(dev))
        # n_iter_: L-BFGS iterations of the solve that produced coef_ (scikit-learn's convention).
        # scikit-learn layout, acting on raw X: coef_ (k, d), intercept_ (k,)
        self.coef_, self.intercept_ = unstandardize(W.T.cpu().numpy(), b.cpu().numpy(), mean, scale)

    def _standardizer(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return standardizer(X) if self.standardize else (
            np.zeros(X.shape[1], np.float32), np.ones(X.shape[1], np.float32))

    def sweep(self, X: np.ndarray, y: np.ndarray, X_val: np.ndarray, y_val: np.ndarray) -> Sweep:
        """The C sweep on validation rows (the proxy of the class docstring); ``finish`` then fits the
        chosen C. Split in two so that multilayer can sweep several column subsets and finish one.
        ``y`` and ``y_val`` are class indices; ``classes_`` must be set."""
        dev = resolve_device(self.device)
        mean, scale = self._standardizer(np.concatenate([X, X_val]) if self.refit else X)
        Xt, yt = as_tensor((X - mean) / scale, dev), torch.from_numpy(y).to(dev)
        Xv, yv = as_tensor((X_val - mean) / scale, dev), torch.from_numpy(y_val).to(dev)
        k = len(self.classes_)
        W, b = torch.zeros(X.shape[1], k, device=dev), torch.zeros(k, device=dev)
        scores: dict[str, float] = {}
        best = (-1.0, 0.0, W, b)
        worse = 0  # C values in a row that scored below the best
        basis = Basis(Xt)
        Zt, Zv = basis.project(Xt), basis.project(Xv)  # the sweep's solver works in the eigenbasis
        half = self._half(dev)
        for C in sorted(self.Cs):
            W, b, _ = lbfgs_logreg_pre(Zt, yt, C, W, b, self.sweep_iter, self.tol, basis, half=half)
            acc = float(((Zv @ (basis.V.T @ W) + b).argmax(1) == yv).float().mean())
            scores[repr(C)] = acc
            if acc > best[0]:
                best, worse = (acc, C, W, b), 0
            elif acc < best[0]:
                worse += 1
                if self.patience is not None and worse >= self.patience:
                    break
        return Sweep(best[0], float(best[1]), scores, best[2], best[3], mean, scale, Xt, yt, Xv, yv, half)

    def finish(self, sw: Sweep) -> None:
        """Fit the C a ``sweep`` chose, warm-started from its sweep fit (on train + validation rows with
        ``refit``): the full solve, to ``tol`` (``final_fit``)."""
        self.val_scores_, self.best_val_score_, self.C_ = sw.scores, sw.best, sw.C
        Xt, yt = (torch.cat([sw.Xt, sw.Xv]), torch.cat([sw.yt, sw.yv])) if self.refit else (sw.Xt, sw.yt)
        # the sweep's fits were capped at sweep_iter: finish the chosen one with the plain solver (in
        # the eigenbasis, the final fit at mid-range C took 64 iterations where this takes about 35)
        W, b, self.n_iter_ = final_fit(Xt, yt, self.C_, sw.W, sw.b, self.max_iter, self.tol, sw.half)
        self.coef_, self.intercept_ = unstandardize(W.T.cpu().numpy(), b.cpu().numpy(), sw.mean, sw.scale)

    # -- k-fold selection (heads/select.py's KFold; Head._select_kfold runs the folds in lockstep) --
    def _path(self, X: np.ndarray, y: np.ndarray, X_val: np.ndarray,
              y_val: np.ndarray) -> Iterator[tuple[float, float]]:
        """The C sweep on one fold: standardised on the fold's training rows, each C warm-started from
        the previous one, strong to weak; yields (C, validation accuracy). ``patience`` stops all folds
        together (``_path_patience``), so every fold scores the same Cs."""
        dev = resolve_device(self.device)
        mean, scale = self._standardizer(X)
        Xt, yt = as_tensor((X - mean) / scale, dev), torch.from_numpy(y).to(dev)
        Xv, yv = as_tensor((X_val - mean) / scale, dev), torch.from_numpy(y_val).to(dev)
        k = len(self.classes_)
        W, b = torch.zeros(X.shape[1], k, device=dev), torch.zeros(k, device=dev)
        basis = Basis(Xt)  # the same proxy as the held-out sweep (_fit)
        Zt = basis.project(Xt)
        half = self._half(dev)
        iters = max(self.sweep_iter, KFOLD_SWEEP_ITER)
        for C in sorted(self.Cs):
            W, b, _ = lbfgs_logreg_pre(Zt, yt, C, W, b, iters, self.tol, basis, half=half)
            yield float(C), float(((Xv @ W + b).argmax(1) == yv).float().mean())

    def _path_patience(self) -> int | None:
        return self.patience

    def _fit_at(self, X: np.ndarray, y: np.ndarray, candidate: Any, scores: dict[Any, float]) -> None:
        """One fit on all of train at the C chosen by cross-validation."""
        fixed = LogRegHead(**{**self.get_params(), "C": float(candidate)})
        fixed.classes_, fixed.n_features_in_ = self.classes_, self.n_features_in_
        fixed._fit(X, y, None, None)
        self.coef_, self.intercept_, self.n_iter_ = fixed.coef_, fixed.intercept_, fixed.n_iter_
        self.C_ = float(candidate)
        self.val_scores_ = {repr(float(c)): float(v) for c, v in scores.items()}
        self.best_val_score_ = float(scores[candidate])

    def chosen_params(self) -> dict[str, Any]:
        return {"C": float(self.C_)} if self.C is None else {}

    def how_chosen(self) -> str | None:
        folds = getattr(self, "selection_", {}).get("folds", 0)
        return None if self.C is not None else sweep_rule(
            "C", self.Cs, self.val_scores_, self.best_val_score_, self.refit, NO_VAL_C, folds)

    def decision_function(self, X: Any) -> np.ndarray:
        """Class scores ``X @ coef_.T + intercept_`` on raw X, shape (n_samples, n_classes); with two
        classes, scikit-learn's binary convention: the score of ``classes_[1]`` minus that of
        ``classes_[0]``, shape (n_samples,), positive where ``classes_[1]`` is predicted."""
        check_is_fitted(self, "coef_")
        return binary_margin(self._scores(validate_data(self, X, reset=False, dtype=np.float32)))

    def _scores(self, X: np.ndarray) -> np.ndarray:
        return X @ self.coef_.T + self.intercept_

    def _predict_proba(self, X: np.ndarray) -> np.ndarray:
        return softmax_np(self._scores(X))

    def _get_state(self) -> State:
        return ({"C_": self.C_, "val_scores_": self.val_scores_, "best_val_score_": self.best_val_score_,
                 "n_iter_": self.n_iter_},
                {"coef_": self.coef_, "intercept_": self.intercept_})

    def _state_spec(self) -> StateSpec:
        return ({"C_": "number", "val_scores_": "dict[str,number]", "best_val_score_": "number?", "n_iter_": "int"},
                {"coef_": ArraySpec(("k", "d")), "intercept_": ArraySpec(("k",))})

    def _set_state(self, state: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        self.C_, self.val_scores_ = float(state["C_"]), dict(state["val_scores_"])
        self.best_val_score_, self.n_iter_ = state.get("best_val_score_"), int(state.get("n_iter_", 0))
        self.coef_, self.intercept_ = arrays["coef_"], arrays["intercept_"]

    @classmethod
    def _upgrade_state(cls, version: int, state: dict[str, Any], arrays: dict[str, np.ndarray]) -> bool:
        """Format 1 kept ``coef_``/``intercept_`` on standardised features with ``mean_``/``scale_``;
        fold the standardisation in (exactly: ``unstandardize``)."""
        return upgrade_v1_arrays(arrays) if version < 2 else False


def unstandardize(coef_std: np.ndarray, intercept_std: np.ndarray, mean: np.ndarray,
                  scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The same linear scores on raw X from coefficients fitted on ``(X - mean) / scale``:
    ``coef[k, j] = coef_std[k, j] / scale[j]`` and ``intercept[k] = intercept_std[k] -
    sum_j coef_std[k, j] * mean[j] / scale[j]`` (computed in float64, stored as float32)."""
    coef_std, mean, scale = (np.asarray(a, np.float64) for a in (coef_std, mean, scale))
    if coef_std.ndim != 2 or mean.shape != (coef_std.shape[1],) or scale.shape != mean.shape:
        raise ValueError(f"coef_ {coef_std.shape}, mean_ {mean.shape} and scale_ {scale.shape} do not fit together")
    if not np.all(scale > 0):
        raise ValueError("scale_ holds values <= 0")
    coef = coef_std / scale
    intercept = np.asarray(intercept_std, np.float64) - coef_std @ (mean / scale)
    return coef.astype(np.float32), intercept.astype(np.float32)


def upgrade_v1_arrays(arrays: dict[str, np.ndarray], prefix: str = "") -> bool:
    """Convert a format-1 logreg state in ``arrays`` (keys under ``prefix``) in place; False when it
    holds no ``mean_``/``scale_`` to fold in."""
    coef, intercept, mean, scale = (prefix + k for k in ("coef_", "intercept_", "mean_", "scale_"))
    if not all(k in arrays for k in (coef, intercept, mean, scale)):
        return False
    arrays[coef], arrays[intercept] = unstandardize(arrays[coef], arrays[intercept], arrays[mean], arrays[scale])
    del arrays[mean], arrays[scale]
    return True


def binary_margin(scores: np.ndarray) -> np.ndarray:
    """scikit-learn's decision_function shape: (n,) for two classes (score 1 - score 0), else as is."""
    return scores[:, 1] - scores[:, 0] if scores.shape[1] == 2 else scores
