"""The Head base class: a scikit-learn classifier with a pickle-free state for saving.

``__init__`` only stores keyword hyperparameters; ``fit(X, y, eval_set=None)`` validates, encodes the
labels and calls the subclass's ``_fit`` on integer targets 0..k-1; ``predict_proba`` columns follow
``classes_``. ``eval_set=(X_val, y_val)`` is optional: heads that select (regularisation sweep, early
stopping; ``_selects``) select on it, and without it on rows their ``selection`` rule holds out of
train (``heads/select.py``: one function for every head); scikit-learn's own checks call ``fit(X, y)``
alone. Subclasses describe their learned state as JSON plus named arrays (``_get_state``/``_set_state``)
so that it saves without pickle, and declare that state's shape (``_state_spec``: the JSON values' types
and each array's dtype and shape) so that a head file edited by hand is refused with one line when it
is loaded (``heads/io.py``); ``_upgrade_state`` converts a state saved by an older head file format.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, check_X_y, validate_data

from ..core.threads import fit_threads
from .select import selection_rows

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
        if self._selects():
            X, y_index, X_val, y_val = selection_rows(
                X, y_index, None if X_val is None or y_val is None else (X_val, y_val),
                getattr(self, "selection", None), type(self).__name__)
        with fit_threads(self._thread_work(len(X) + (0 if X_val is None else len(X_val)))):
            self._fit(X, y_index, X_val, y_val)
        return self

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
