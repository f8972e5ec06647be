"""LightGBM on embeddings, with defaults fitted to dense features.

Trees on 1000+ dense dimensions are slow and gain little from every raw dimension, so the head first
projects onto the top ``pca_dims`` principal components (computed on the training rows), uses few
bins, and stops early on the validation split. The model is kept as LightGBM's own text format.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from ..core.errors import EmbedpipeError
from .base import ArraySpec, Head, State, StateSpec
from .registry import register_head
from .select import Rule


def _lightgbm() -> Any:
    try:
        import lightgbm  # heavy (its own OpenMP runtime): loaded when an lgbm head fits
    except ImportError as e:  # pragma: no cover - lightgbm is a core dependency
        raise EmbedpipeError("the lgbm head needs LightGBM: pip install lightgbm") from e
    return lightgbm


def pca_fit(X: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and the top-k principal directions (k, d) of X."""
    mean = X.mean(axis=0)
    _, _, vt = np.linalg.svd(X - mean, full_matrices=False)
    return mean.astype(np.float32), vt[:k].astype(np.float32)


@register_head(description="LightGBM on PCA-reduced embeddings, early stopping on val")
class LGBMHead(Head):
    """LightGBM gradient-boosted trees on embeddings, projected onto their top principal components.

    Minimises the multinomial (or binary) log loss with LightGBM's gradient boosting, after projecting
    the rows onto the top ``pca_dims`` principal components of the training rows (trees on 1000+
    dense dimensions are slow and gain little from every raw dimension), with few histogram bins. It
    stops early: boosting stops after ``early_stopping_rounds`` rounds without a gain on the
    validation rows (the ``eval_set``, or rows its ``selection`` rule holds out of train) and keeps
    the best round. The model is kept in LightGBM's own text format.

    Parameters
    ----------
    pca_dims : int, default=64
        Project onto this many principal components first; 0 = raw features.
    n_estimators : int, default=300
        Maximum boosting rounds (one tree per class per round).
    learning_rate : float, default=0.1
        Shrinkage.
    num_leaves : int, default=15
        Leaves per tree.
    max_bin : int, default=63
        Histogram bins per feature (LightGBM's default is 255).
    min_child_samples : int, default=10
        Minimum rows per leaf.
    colsample : float, default=0.8
        Fraction of features per tree.
    reg_lambda : float, default=1.0
        L2 penalty on leaf values. With many classes each one-vs-rest tree sees few positives and tiny
        hessians, and unregularised leaves grow large: on benchmarks/solvers.py's 100-class data, test
        accuracy 0.504 with 1.0 vs 0.390 without; LightGBM's own defaults reach 0.106 (benchmarks/heads.py).
    early_stopping_rounds : int, default=20
        Rounds without a validation gain before stopping; 0 = no early stopping (and no selection).
    n_jobs : int, default=0
        Threads; 0 = as many as the fit's size calls for (one per 1e9 multiply-adds of ``n * d * k``,
        at most torch's default; ``Head``'s Notes), or the user's own setting (``OMP_NUM_THREADS``,
        ``torch.set_num_threads``).
    random_state : int, default=0
        LightGBM's seed.
    warn_after_s : float, default=60.0
        Warn (with what would make it cheaper) when the fit time projected from the first rounds
        exceeds this many seconds.
    selection : HoldOut, KFold, Auto or None, default=None
        How validation rows are had when ``fit`` gets no ``eval_set`` (``heads.select``); None =
        ``DEFAULT_SELECTION``: stratified 5-fold cross-validation on a small train set, else a seeded
        stratified 15 % held out. Under k-fold the rounds are chosen on the folds' mean log loss.

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
    pca_mean_ : ndarray of shape (n_features,) or None
        Training mean of the projection; None without one.
    components_ : ndarray of shape (n_components, n_features) or None
        Principal directions the rows are projected onto; None without a projection.
    booster_ : lightgbm.Booster
        The trained model.
    best_iteration_ : int
        Boosting rounds used for prediction (the best validation round when stopping early).
    stopped_on_val_ : bool
        Whether ``best_iteration_`` was chosen on validation rows (set by ``fit``; not saved).
    cv_log_loss_ : float or None
        Under k-fold selection, the mean validation log loss over the folds at ``best_iteration_``;
        None otherwise (set by ``fit``; not saved).
    estimated_fit_s_ : float
        Fit time projected from the first rounds (set once three rounds have run).

    Examples
    --------
    >>> import numpy as np
    >>> from embedpipe.heads import LGBMHead
    >>> rng = np.random.default_rng(0)
    >>> y = np.repeat([0, 1, 2], 20)
    >>> X = rng.normal(size=(60, 8)) + 3 * np.eye(3, 8)[y]
    >>> head = LGBMHead(n_estimators=20, pca_dims=4, min_child_samples=5).fit(X, y)
    >>> head.components_.shape, head.predict_proba(X[:2]).shape
    ((4, 8), (2, 3))
    >>> bool(head.score(X, y) > 0.8)
    True
    """

    name = "lgbm"

    def __init__(
        self,
        pca_dims: int = 64,
        n_estimators: int = 300,
        learning_rate: float = 0.1,
        num_leaves: int = 15,
        max_bin: int = 63,
        min_child_samples: int = 10,
        colsample: float = 0.8,
        reg_lambda: float = 1.0,
        early_stopping_rounds: int = 20,
        n_jobs: int = 0,
        random_state: int = 0,
        warn_after_s: float = 60.0,
        selection: Rule | None = None,
    ) -> None:
        self.pca_dims = pca_dims
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.num_leaves = num_leaves
        self.max_bin = max_bin
        self.min_child_samples = min_child_samples
        self.colsample = colsample
        self.reg_lambda = reg_lambda
        self.early_stopping_rounds = early_stopping_rounds
        self.n_jobs = n_jobs
        self.random_state = random_state
        self.warn_after_s = warn_after_s
        self.selection = selection

    def _selects(self) -> bool:
        return bool(self.early_stopping_rounds)

    def _project(self, X: np.ndarray) -> np.ndarray:
        return X if self.components_ is None else (X - self.pca_mean_) @ self.components_.T

    def _params(self, n_classes: int) -> dict[str, Any]:
        return {
            "objective": "binary" if n_classes == 2 else "multiclass",
            "num_class": 1 if n_classes == 2 else n_classes,
            "learning_rate": self.learning_rate,
            "num_leaves": self.num_leaves,
            "max_bin": self.max_bin,
            "min_child_samples": self.min_child_samples,
            "feature_fraction": self.colsample,
            "lambda_l2": self.reg_lambda,
            "num_threads": self.n_jobs or torch.get_num_threads(),  # 0: the threads fit_threads chose
            "seed": self.random_state,
            "deterministic": True,
            "force_row_wise": True,
            "verbosity": -1,
        }

    def _fit_projection(self, X: np.ndarray) -> None:
        k = min(self.pca_dims, X.shape[1], X.shape[0])
        if self.pca_dims and k < X.shape[1]:
            self.pca_mean_, self.components_ = pca_fit(X, k)
        else:
            self.pca_mean_, self.components_ = None, None

    def _fit(self, X: np.ndarray, y: np.ndarray, X_val: np.ndarray | None, y_val: np.ndarray | None) -> None:
        lgb = _lightgbm()
        self._fit_projection(X)
        n_classes = len(self.classes_)
        params = self._params(n_classes)
        train = lgb.Dataset(self._project(X), y, params={"max_bin": self.max_bin, "verbosity": -1})
        valid, callbacks = [], [self._time_estimate(n_classes)]
        if X_val is not None and self.early_stopping_rounds:
            valid = [lgb.Dataset(self._project(X_val), y_val, reference=train)]
            callbacks.append(lgb.early_stopping(self.early_stopping_rounds, verbose=False))
        booster = lgb.train(params, train, num_boost_round=self.n_estimators, valid_sets=valid, callbacks=callbacks)
        self.best_iteration_ = int(booster.best_iteration or booster.current_iteration())
        self.stopped_on_val_ = bool(valid)  # the rounds were chosen on validation rows (not saved in head files)
        self.cv_log_loss_ = None
        self.booster_ = booster

    # -- k-fold selection (heads/select.py's KFold): the path is the boosting rounds ---------------
    def _path(self, X: np.ndarray, y: np.ndarray, X_val: np.ndarray,
              y_val: np.ndarray) -> Iterator[tuple[int, float]]:
        """Boost on one fold (its own projection); yield (round, minus the validation log loss)."""
        lgb = _lightgbm()
        self._fit_projection(X)  # this fold's projection: both sets are projected here, before any yield
        Xp, Xvp = self._project(X), self._project(X_val)
        n_classes = len(self.classes_)
        params = {**self._params(n_classes), "metric": "binary_logloss" if n_classes == 2 else "multi_logloss"}
        train = lgb.Dataset(Xp, y, params={"max_bin": self.max_bin, "verbosity": -1})._update_params(params)
        valid = lgb.Dataset(Xvp, y_val)._update_params(params).set_reference(train)  # as lgb.train sets them up
        booster = lgb.Booster(params, train)
        booster.add_valid(valid, "val")
        for round_ in range(1, self.n_estimators + 1):
            booster.update()
            (_, _, loss, _), *_ = booster.eval_valid()
            yield round_, -float(loss)

    def _path_patience(self) -> int | None:
        return self.early_stopping_rounds

    def _fit_at(self, X: np.ndarray, y: np.ndarray, candidate: Any, scores: dict[Any, float]) -> None:
        """Boost on all of train for the chosen number of rounds."""
        lgb = _lightgbm()
        self._fit_projection(X)
        n_classes = len(self.classes_)
        train = lgb.Dataset(self._project(X), y, params={"max_bin": self.max_bin, "verbosity": -1})
        self.booster_ = lgb.train(self._params(n_classes), train, num_boost_round=int(candidate),
                                  callbacks=[self._time_estimate(n_classes)])
        self.best_iteration_ = int(candidate)
        self.cv_log_loss_ = -float(scores[candidate])  # mean over the folds (not saved in head files)
        self.stopped_on_val_ = True

    def chosen_params(self) -> dict[str, Any]:
        return {"n_estimators": self.best_iteration_} if getattr(self, "stopped_on_val_", False) else {}

    def how_chosen(self) -> str | None:
        if not getattr(self, "stopped_on_val_", False):
            return None
        folds = getattr(self, "selection_", {}).get("folds", 0)
        if folds:
            return (f"n_estimators: the round with the best mean val log loss ({self.cv_log_loss_:.4f}) over {folds} "
                    f"stratified folds of train, of at most {self.n_estimators} (all folds stop after "
                    f"{self.early_stopping_rounds} rounds without a gain); then boosted on all of train")
        return (f"n_estimators: the round with the best val log loss, of at most {self.n_estimators} "
                f"(stops after {self.early_stopping_rounds} rounds without a gain)")

    def _time_estimate(self, n_classes: int) -> Any:
        """A callback that times the first rounds (one tree per class each) and, when the projected
        total is over ``warn_after_s``, warns with the estimate and what would make it cheaper."""
        start = time.perf_counter()
        probe_rounds = 3

        def callback(env: Any) -> None:
            if env.iteration + 1 != probe_rounds:
                return
            per_round = (time.perf_counter() - start) / probe_rounds
            projected = per_round * self.n_estimators
            self.estimated_fit_s_ = projected
            if projected > self.warn_after_s:
                warnings.warn(
                    f"lgbm: about {projected:.0f}s for up to {self.n_estimators} rounds x {n_classes} classes "
                    f"({per_round:.2f}s per round); early stopping may cut it. Faster: fewer pca_dims "
                    f"(now {self.pca_dims}), fewer n_estimators, a higher learning_rate, or the logreg head.",
                    UserWarning, stacklevel=2)

        return callback

    def _predict_proba(self, X: np.ndarray) -> np.ndarray:
        p = self.booster_.predict(self._project(X), num_iteration=self.best_iteration_)
        return np.column_stack([1 - p, p]) if p.ndim == 1 else p

    def _get_state(self) -> State:
        arrays = {} if self.components_ is None else {"pca_mean_": self.pca_mean_, "components_": self.components_}
        return ({"best_iteration_": self.best_iteration_,
                 "model": self.booster_.model_to_string(num_iteration=self.best_iteration_)}, arrays)

    def _state_spec(self) -> StateSpec:
        return ({"best_iteration_": "int", "model": "str"},
                {"pca_mean_": ArraySpec(("d",), optional=True), "components_": ArraySpec(("p", "d"), optional=True)})

    def _set_state(self, state: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        lgb = _lightgbm()
        self.best_iteration_ = int(state["best_iteration_"])
        self.pca_mean_, self.components_ = arrays.get("pca_mean_"), arrays.get("components_")
        if (self.pca_mean_ is None) != (self.components_ is None):
            raise ValueError("pca_mean_ and components_ come together")
        try:
            self.booster_ = lgb.Booster(model_str=state["model"])
        except lgb.basic.LightGBMError as e:
            raise ValueError(f"the LightGBM model text does not parse: {e}") from None
        width = self.n_features_in_ if self.components_ is None else len(self.components_)
        per_round = 1 if len(self.classes_) == 2 else len(self.classes_)
        if self.booster_.num_feature() != width or self.booster_.num_model_per_iteration() != per_round:
            raise ValueError(f"the LightGBM model takes {self.booster_.num_feature()} features and gives "
                             f"{self.booster_.num_model_per_iteration()} outputs; expected {width} and {per_round}")
