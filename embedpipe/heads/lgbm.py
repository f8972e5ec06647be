"""LightGBM on embeddings, with defaults fitted to dense features.

Trees on 1000+ dense dimensions are slow and gain little from every raw dimension, so the head first
projects onto the top ``pca_dims`` principal components (computed on the training rows), uses few
bins, and stops early on the validation split. The model is kept as LightGBM's own text format.
"""

from __future__ import annotations

import time
import warnings
from typing import Any

import numpy as np

from ..errors import EmbedpipeError
from .base import ArraySpec, Head, State, StateSpec
from .registry import register_head
from .select import HoldOut


def _lightgbm() -> Any:
    try:
        import lightgbm
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
        selection: HoldOut | None = None,
    ) -> None:
        self.pca_dims = pca_dims  # project onto this many principal components first; 0 = raw features
        self.n_estimators = n_estimators  # maximum boosting rounds (one tree per class per round)
        self.learning_rate = learning_rate  # shrinkage
        self.num_leaves = num_leaves  # leaves per tree
        self.max_bin = max_bin  # histogram bins per feature (LightGBM default 255)
        self.min_child_samples = min_child_samples  # minimum rows per leaf
        self.colsample = colsample  # fraction of features per tree
        # L2 on leaf values. With many classes each one-vs-rest tree sees few positives and tiny hessians,
        # and unregularised leaves grow large: on benchmarks/solvers.py's 100-class data, test accuracy
        # 0.504 with 1.0 vs 0.390 without; LightGBM's own defaults reach 0.106 (benchmarks/heads.py).
        self.reg_lambda = reg_lambda
        self.early_stopping_rounds = early_stopping_rounds  # rounds without validation gain before stopping
        self.n_jobs = n_jobs  # threads; 0 = all cores
        self.random_state = random_state  # seed
        self.warn_after_s = warn_after_s  # warn when the projected fit time exceeds this
        self.selection = selection  # rule that holds validation rows out of train without eval_set

    def _selects(self) -> bool:
        return bool(self.early_stopping_rounds)

    def _project(self, X: np.ndarray) -> np.ndarray:
        return X if self.components_ is None else (X - self.pca_mean_) @ self.components_.T

    def _fit(self, X: np.ndarray, y: np.ndarray, X_val: np.ndarray | None, y_val: np.ndarray | None) -> None:
        lgb = _lightgbm()
        k = min(self.pca_dims, X.shape[1], X.shape[0])
        if self.pca_dims and k < X.shape[1]:
            self.pca_mean_, self.components_ = pca_fit(X, k)
        else:
            self.pca_mean_, self.components_ = None, None
        n_classes = len(self.classes_)
        params = {
            "objective": "binary" if n_classes == 2 else "multiclass",
            "num_class": 1 if n_classes == 2 else n_classes,
            "learning_rate": self.learning_rate,
            "num_leaves": self.num_leaves,
            "max_bin": self.max_bin,
            "min_child_samples": self.min_child_samples,
            "feature_fraction": self.colsample,
            "lambda_l2": self.reg_lambda,
            "num_threads": self.n_jobs,
            "seed": self.random_state,
            "deterministic": True,
            "force_row_wise": True,
            "verbosity": -1,
        }
        train = lgb.Dataset(self._project(X), y, params={"max_bin": self.max_bin, "verbosity": -1})
        valid, callbacks = [], [self._time_estimate(n_classes)]
        if X_val is not None and self.early_stopping_rounds:
            valid = [lgb.Dataset(self._project(X_val), y_val, reference=train)]
            callbacks.append(lgb.early_stopping(self.early_stopping_rounds, verbose=False))
        booster = lgb.train(params, train, num_boost_round=self.n_estimators, valid_sets=valid, callbacks=callbacks)
        self.best_iteration_ = int(booster.best_iteration or booster.current_iteration())
        self.booster_ = booster

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
