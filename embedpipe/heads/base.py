"""The Head base class: a scikit-learn classifier with a pickle-free state for saving.

``__init__`` only stores keyword hyperparameters; ``fit(X, y, eval_set=None)`` validates, encodes the
labels and calls the subclass's ``_fit`` on integer targets 0..k-1; ``predict_proba`` columns follow
``classes_``. ``eval_set=(X_val, y_val)`` is optional: heads that select (regularisation sweep, early
stopping; ``_selects``) select on it, and without it by their ``selection`` rule (``heads/select.py``:
one hook for every head): on rows held out of train (``HoldOut``), or by k-fold cross-validation on
train (``KFold``, run here by ``_select_kfold`` over the head's selection path: ``_path`` and
``_fit_at``); scikit-learn's own checks call ``fit(X, y)`` alone. Subclasses describe their learned state as JSON plus named arrays (``_get_state``/``_set_state``)
so that it saves without pickle, and declare that state's shape (``_state_spec``: the JSON values' types
and each array's dtype and shape) so that a head file edited by hand is refused with one line when it
is loaded (``heads/io.py``); ``_upgrade_state`` converts a state saved by an older head file format.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, check_X_y, validate_data

from ..core.threads import fit_threads
from .select import HoldOut, KFold, resolve, selection_rows

_logger = logging.getLogger(__name__)
State = tuple[dict[str, Any], dict[str, np.ndarray]]


@dataclass(frozen=True)
class ArraySpec:
    """What one saved array must be. ``shape`` entries are exact ints or dimension names: ``d`` is
    ``n_features_in_``, ``k`` the number of classes; any other name is bound by its first use and must
    agree everywhere else in the file."""

    shape: tuple[int | str, ...]
    kind: str = "f"  # numpy dtype kinds allowed: f float, i/u integer
    finite: bool = True  # no NaN or infinity
    positive: bool = False  # every value > 0 (scales that are divided by)
    below: str | None = None  # integer values in [0, this dimension) (indices into classes)
    optional: bool = False  # may be absent


# JSON values of ``_get_state``'s dict, by name: "int", "number", "str", "number?" (or null),
# "dict[str,number]", "dict" (a nested head's state), "list[str]", "list[dict[str,number?]]" (a history).
StateSpec = tuple[dict[str, str], dict[str, ArraySpec]]


class Head(ClassifierMixin, BaseEstimator):
    """Base class of every head: a scikit-learn classifier on embeddings, saved without pickle.

    Subclasses implement ``_fit`` (on integer targets 0..k-1, with validation rows when they select),
    ``_predict_proba`` and the state hooks (``_get_state``, ``_set_state``, ``_state_spec``), and
    register with ``@register_head(description=...)`` under their ``name`` (a built-in head also has
    its one-line lazy entry in ``heads/registry.py``, so listing it imports nothing). ``fit(X, y,
    eval_set=None)`` validates the input, encodes the labels into ``classes_`` and, for a head that
    selects (``_selects``), gets its validation rows from ``heads.select.selection_rows``.

    Notes
    -----
    ``fit`` and ``predict_proba`` choose their CPU threads from the size of the problem
    (``core.threads.fit_threads``): one thread per 1e9 multiply-adds of one pass over the data
    (``_thread_work``; ``n * d * k`` for a linear head), at least one and at most torch's default, so
    that a small fit on a machine that other processes keep busy takes about as long as on an idle
    one. torch's thread count is restored after each call. A thread count the user set wins and is
    left as it is: ``OMP_NUM_THREADS`` or ``MKL_NUM_THREADS`` in the environment, a
    ``torch.set_num_threads`` call, or an active ``threadpoolctl.threadpool_limits``.
    """

    name: ClassVar[str] = ""  # registry name (`embedpipe train --head NAME`, head files)

    # -- subclass hooks ------------------------------------------------------------------------
    def _fit(self, X: np.ndarray, y: np.ndarray, X_val: np.ndarray | None, y_val: np.ndarray | None) -> None:
        raise NotImplementedError

    def _predict_proba(self, X: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _get_state(self) -> State:
        raise NotImplementedError

    def _set_state(self, state: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        raise NotImplementedError

    def _selects(self) -> bool:
        """Whether this head, with these hyperparameters, selects on validation rows (then ``fit``
        hands ``_fit`` an ``eval_set`` or rows held out of train by ``selection_rows``)."""
        return False

    def _thread_work(self, n: int) -> float:
        """Multiply-adds of one pass of the model over ``n`` rows (the largest step it runs at once):
        ``core.threads.fit_threads`` sizes the threads of ``fit`` and ``predict_proba`` by it. A linear
        head's ``n * d * k`` by default; ``float("inf")`` = torch's default threads."""
        return float(n) * self.n_features_in_ * len(self.classes_)

    def _state_spec(self) -> StateSpec | None:
        """The state ``_set_state`` accepts, given the hyperparameters, ``classes_`` and
        ``n_features_in_`` already set. None = not declared (tests/test_security.py fails for it)."""
        return None

    # -- k-fold selection hooks (heads/select.py's KFold): a head that implements ``_path`` and
    # ``_fit_at`` selects by cross-validation; one that does not selects on a HoldOut instead.
    def _path(self, X: np.ndarray, y: np.ndarray, X_val: np.ndarray,
              y_val: np.ndarray) -> Iterator[tuple[Hashable, float]]:
        """Fit on (X, y) along the head's selection path, yielding ``(candidate, validation score)``
        in path order (higher is better; logreg: each C of its sweep, warm-started; mlp: each epoch).
        Every fold's path yields the same candidates in the same order."""
        raise NotImplementedError

    def _fit_at(self, X: np.ndarray, y: np.ndarray, candidate: Hashable, scores: dict[Hashable, float]) -> None:
        """Fit once on all of (X, y) with the chosen ``candidate``; ``scores`` are the mean validation
        scores over the folds of every candidate evaluated (path order)."""
        raise NotImplementedError

    def _path_patience(self) -> int | None:
        """Stop the path once this many candidates in a row score below the best mean (None = the
        whole path). All folds stop together, so every candidate is scored on every fold."""
        return None

    def _kfold_unsupported(self) -> str | None:
        """Why this head selects on a HoldOut when its rule asks for k-fold; None when it can do k-fold."""
        if type(self)._path is Head._path:
            return "it has no selection path to cross-validate"
        return None

    def _select_kfold(self, X: np.ndarray, y: np.ndarray, masks: list[np.ndarray]) -> None:
        """Run the head's path on every fold in lockstep, pick the candidate with the best mean
        validation score (the first one on a tie, as scikit-learn's GridSearchCV), fit on all of train."""
        paths = [self._path(X[~m], y[~m], X[m], y[m]) for m in masks]
        patience = self._path_patience()
        scores: dict[Hashable, float] = {}
        best: Hashable = None
        worse = 0
        try:
            while True:
                steps = [next(p, None) for p in paths]
                if any(s is None for s in steps):
                    break
                candidate = steps[0][0]  # type: ignore[index]
                mean = float(np.mean([s[1] for s in steps]))  # type: ignore[index]
                scores[candidate] = mean
                if best is None or mean > scores[best]:
                    best, worse = candidate, 0
                elif mean < scores[best]:
                    worse += 1
                    if patience is not None and worse >= patience:
                        break
        finally:
            for p in paths:
                p.close()
        if best is None:
            raise ValueError(f"{type(self).__name__}: its selection path yielded no candidate")
        self._fit_at(X, y, best, scores)

    @classmethod
    def _upgrade_state(cls, version: int, state: dict[str, Any], arrays: dict[str, np.ndarray]) -> bool:
        """Convert, in place, a state saved in head file format ``version`` (older than today's) to
        today's; True when something changed. Heads whose state did not change keep this default."""
        return False

    def chosen_params(self) -> dict[str, Any]:
        """The hyperparameter values ``fit`` chose on validation rows, by name (logreg: ``{"C": C_}``);
        empty for a head that chooses nothing or was given every value. ``embedpipe train`` reports
        them with ``how_chosen`` (results, tables and ``--json``)."""
        return {}

    def how_chosen(self) -> str | None:
        """How ``chosen_params`` were chosen, in one line (the rule, the candidates, the score that
        decided); None when nothing was chosen."""
        return None

    @classmethod
    def context_params(cls, cache: Any, layer: str) -> dict[str, Any]:
        """Hyperparameters a head takes from the cache it is trained on (user parameters win)."""
        return {}

    # -- scikit-learn API ----------------------------------------------------------------------
    def fit(self, X: Any, y: Any, eval_set: tuple[Any, Any] | None = None) -> Head:
        X, y = validate_data(self, X, y, dtype=np.float32)
        check_classification_targets(y)
        self.classes_, y_index = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            raise ValueError(f"{type(self).__name__} needs at least 2 classes; got 1 class")
        X_val = y_val = None
        if eval_set is not None and len(eval_set[0]):
            X_val, yv = check_X_y(eval_set[0], eval_set[1], dtype=np.float32)
            if X_val.shape[1] != self.n_features_in_:
                raise ValueError(f"eval_set X has {X_val.shape[1]} features, but {type(self).__name__} "
                                 f"is expecting {self.n_features_in_} features as input")
            known = np.isin(yv, self.classes_)  # validation rows of unseen classes cannot count
            X_val, y_val = X_val[known], np.searchsorted(self.classes_, yv[known])
            if not len(y_val):
                X_val = y_val = None
        y_index = y_index.astype(np.int64)
        with fit_threads(self._thread_work(len(X) + (0 if X_val is None else len(X_val)))):
            self._select_and_fit(X, y_index, X_val, y_val)
        return self

    def _select_and_fit(self, X: np.ndarray, y_index: np.ndarray, X_val: np.ndarray | None,
                        y_val: np.ndarray | None) -> None:
        """Fit on integer targets, selecting as ``selection`` says when this head selects: on the
        given validation rows, by k-fold (``_select_kfold``), or on rows held out of train."""
        if not self._selects():
            self._fit(X, y_index, X_val, y_val)
            return
        self.selection_: dict[str, Any] = {"rule": "none"}  # how this fit selected (train reports it)
        who = type(self).__name__
        if X_val is not None and y_val is not None:
            self.selection_ = {"rule": "eval_set", "val_rows": len(y_val), "n_classes": len(self.classes_)}
            self._fit(X, y_index, X_val, y_val)
            return
        rule = resolve(getattr(self, "selection", None), y_index)
        if isinstance(rule, KFold):
            why_not = self._kfold_unsupported()
            if why_not is None:
                masks = rule.val_masks(y_index, who)
                if masks:
                    self.selection_ = {"rule": "kfold", "folds": len(masks), "seed": rule.seed,
                                       "val_rows": int(sum(m.sum() for m in masks)), "n_classes": len(self.classes_),
                                       "describe": rule.describe()}
                    self._select_kfold(X, y_index, masks)
                    return
                _logger.warning("%s: no class has 2 rows to hold out for selection; fitting on all %d training "
                                "rows without selection", who, len(y_index))
                self._fit(X, y_index, None, None)
                return
            holdout = HoldOut(seed=rule.seed)
            # a warning when k-fold was asked for by name; under the default rule it is the head's documented way
            level = logging.WARNING if isinstance(getattr(self, "selection", None), KFold) else logging.INFO
            _logger.log(level, "%s selects on a held-out %.0f%% of train instead of %d-fold cross-validation: %s",
                        who, holdout.fraction * 100, rule.folds, why_not)
            rule = holdout
        X, y_index, X_val, y_val = selection_rows(X, y_index, None, rule, who)
        if X_val is not None and y_val is not None:
            self.selection_ = {"rule": "holdout", "val_rows": len(y_val), "n_classes": len(self.classes_),
                               "describe": rule.describe()}
        self._fit(X, y_index, X_val, y_val)

    def predict_proba(self, X: Any) -> np.ndarray:
        check_is_fitted(self, "classes_")
        X = validate_data(self, X, reset=False, dtype=np.float32)
        with fit_threads(self._thread_work(len(X))):
            return self._predict_proba(X)

    def predict(self, X: Any) -> np.ndarray:
        check_is_fitted(self, "classes_")  # NotFittedError before touching classes_
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]

    @property
    def n_classes_(self) -> int:
        return len(self.classes_)


def softmax_np(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def standardizer(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and scale (std, with 1 where a feature is constant)."""
    mean = X.mean(axis=0, dtype=np.float64)
    std = X.std(axis=0, dtype=np.float64)
    std[std < 1e-8] = 1.0
    return mean.astype(np.float32), std.astype(np.float32)
