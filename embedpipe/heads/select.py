"""Where model selection's validation rows come from: one rule, one function, for every head that selects.

Heads select on validation rows: logreg's C sweep, mlp's, lgbm's and finetune's early stopping, and
multilayer's keep fraction and C. ``Head.fit`` resolves the head's ``selection`` rule (None =
``DEFAULT_SELECTION``) once, before the head's own fit:

- given an ``eval_set``, its rows are the validation rows, whatever the rule;
- ``HoldOut``: a seeded, stratified fraction of each class of train (``data.splits.carve_val``, the
  rule ``embedpipe train`` also applies to a large cache that has no val rows, ``train.py``), so both
  carves are one definition (``selection_rows``);
- ``KFold``: stratified, seeded k-fold cross-validation on train (``KFold.val_masks``). The head
  evaluates every candidate of its selection path (logreg: its Cs; mlp: epochs; lgbm: boosting
  rounds; multilayer: (keep, C)) on each fold, keeps the best mean validation score, and fits once on
  all of train with it (``Head._select_kfold``). A head whose path is too costly to repeat k times
  (finetune) selects on a ``HoldOut`` instead and says so in one line;
- ``Auto`` (the default): ``KFold`` when train is small (fewer than ``max_rows`` rows, or fewer than
  ``min_per_class`` per class on average: either is enough), else ``HoldOut``. One carved split of a
  small train set holds out a handful of images per class, too few to choose on;
- when a rule cannot hold rows out (a class with fewer than 2 rows, nothing held out, or a class the
  carve would leave absent from train), the head fits on all of train without selection, and one
  warning line says so.

Heads that refit on train + validation after selecting (logreg with ``refit=True``) still do; with held
out rows that refit sees all of train again. A rule is a small frozen dataclass saved in head files as
JSON (``to_json`` / ``rule_from_json``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..data.splits import VAL_CARVE, SplitRule, carve_val, kfold_assign

_logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class HoldOut:
    """Hold out a seeded, stratified share of the training rows as the validation set.

    Within each class, rows are ordered by a hash of (seed, id) and the first ``fraction`` of them (at
    least one row of a class with 3 or more) are held out: the rule ``embedpipe train`` applies to a
    cache without val rows (``data.splits.VAL_CARVE``), where the ids are the images' ids; inside
    ``Head.fit`` the ids are the row positions, so a fit is deterministic for a given input.

    Parameters
    ----------
    fraction : float, default=0.15
        Share of each class held out, in (0, 1).
    seed : int, default=0
        Seed of the per-id hash that orders the rows within a class.

    Examples
    --------
    >>> from embedpipe.heads.select import HoldOut
    >>> HoldOut().mask(["a", "b", "c", "d", "e", "f"], [0, 0, 0, 1, 1, 1]).tolist()
    [True, False, False, False, False, True]
    """

    fraction: float = VAL_CARVE.val
    seed: int = VAL_CARVE.seed

    def __post_init__(self) -> None:
        if not (isinstance(self.fraction, int | float) and 0 < self.fraction < 1):
            raise ValueError(f"HoldOut fraction must be in (0, 1), got {self.fraction!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ValueError(f"HoldOut seed must be an integer, got {self.seed!r}")

    @property
    def split_rule(self) -> SplitRule:
        """The same rule as the data layer writes it (recorded in ``val_split`` by ``embedpipe train``)."""
        return SplitRule(seed=self.seed, val=float(self.fraction), test=0.0)

    def mask(self, ids: Sequence[str], labels: Sequence[Any] | np.ndarray) -> np.ndarray:
        """Boolean mask of the rows to hold out."""
        return carve_val(ids, labels, self.split_rule)

    def describe(self) -> str:
        return f"{self.fraction:.0%} of each class of train held out (seed {self.seed})"

    def to_json(self) -> dict[str, Any]:
        return {"rule": "holdout", "fraction": float(self.fraction), "seed": int(self.seed)}


@dataclass(frozen=True)
class KFold:
    """Stratified, seeded k-fold cross-validation on the training rows.

    Within each class rows are ordered by a hash of (seed, id), as ``HoldOut`` orders them, and dealt
    round-robin into ``folds`` folds (``data.splits.kfold_assign``): every row is held out exactly once,
    each fold holds about 1/folds of every class. A head that selects evaluates each candidate of its
    path on every fold, keeps the best mean validation score (scikit-learn's ``GridSearchCV`` rule) and
    fits once on all of train with it. A class with fewer rows than folds is held out in only as many
    folds as it has rows; a class with a single row is never held out (a fold without it could not
    learn it); one log line says so.

    Parameters
    ----------
    folds : int, default=5
        Number of folds, at least 2.
    seed : int, default=0
        Seed of the per-id hash that orders the rows within a class.

    Examples
    --------
    >>> from embedpipe.heads.select import KFold
    >>> KFold(folds=3).fold_of(["a", "b", "c", "d", "e", "f"], [0, 0, 0, 1, 1, 1]).tolist()
    [0, 2, 1, 1, 2, 0]
    """

    folds: int = 5
    seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.folds, int) or isinstance(self.folds, bool) or self.folds < 2:
            raise ValueError(f"KFold folds must be an integer of at least 2, got {self.folds!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ValueError(f"KFold seed must be an integer, got {self.seed!r}")

    def fold_of(self, ids: Sequence[str], labels: Sequence[Any] | np.ndarray) -> np.ndarray:
        """Each row's fold, 0..folds-1; -1 for a row that is never held out (its class has one row)."""
        return kfold_assign(ids, labels, self.folds, self.seed)

    def val_masks(self, y: np.ndarray, who: str) -> list[np.ndarray]:
        """Boolean masks of the validation rows of each non-empty fold of ``y`` (class indices; the ids
        are the row positions). Logs one line when a class has fewer rows than folds; empty when no
        row can be held out."""
        fold = self.fold_of([str(i) for i in range(len(y))], y)
        counts = np.bincount(y)
        few = counts[(counts > 0) & (counts < self.folds)]
        if len(few):
            single = int((few == 1).sum())
            _logger.warning(
                "%s: %d of %d classes have fewer than %d rows (smallest %d): their rows are held out in only that "
                "many folds%s", who, len(few), int((counts > 0).sum()), self.folds, int(few.min()),
                f"; {single} class{'es' if single > 1 else ''} with a single row stay{'' if single > 1 else 's'} "
                "in training in every fold" if single else "")
        return [fold == f for f in range(self.folds) if np.any(fold == f)]

    def describe(self) -> str:
        return f"stratified {self.folds}-fold cross-validation on train (seed {self.seed})"

    def to_json(self) -> dict[str, Any]:
        return {"rule": "kfold", "folds": int(self.folds), "seed": int(self.seed)}


SMALL_ROWS = 2000  # fewer training rows than this: one carve holds out too few images to choose on
SMALL_PER_CLASS = 30  # or fewer training rows per class on average than this (15 % of 30 is ~4 per class)


@dataclass(frozen=True)
class Auto:
    """``KFold`` when train is small, else ``HoldOut``: the default rule.

    Train is small when it has fewer than ``max_rows`` rows, or fewer than ``min_per_class`` rows per
    class on average (either is enough): one carved split of it holds out a handful of images per
    class, and the choice made on them is mostly noise. Cross-validation uses every row once for
    validation. A large train set keeps the cheaper single carve.

    Parameters
    ----------
    max_rows : int, default=2000
        Train with fewer rows than this is small.
    min_per_class : float, default=30
        Train with fewer rows per class (mean) than this is small.
    folds : int, default=5
        Folds of the ``KFold`` rule.
    fraction : float, default=0.15
        Share of each class held out by the ``HoldOut`` rule.
    seed : int, default=0
        Seed of both rules.

    Examples
    --------
    >>> from embedpipe.heads.select import Auto
    >>> Auto().resolve(n_rows=110, n_classes=7)
    KFold(folds=5, seed=0)
    >>> Auto().resolve(n_rows=9000, n_classes=100)
    HoldOut(fraction=0.15, seed=0)
    """

    max_rows: int = SMALL_ROWS
    min_per_class: float = SMALL_PER_CLASS
    folds: int = 5
    seed: int = 0
    fraction: float = VAL_CARVE.val

    def __post_init__(self) -> None:
        KFold(self.folds, self.seed)  # the same checks
        HoldOut(self.fraction, self.seed)
        for name in ("max_rows", "min_per_class"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
                raise ValueError(f"Auto {name} must be a number >= 0, got {value!r}")

    def small(self, n_rows: int, n_classes: int) -> bool:
        """Whether a train set of ``n_rows`` rows in ``n_classes`` classes is small."""
        return n_rows < self.max_rows or n_rows < self.min_per_class * max(1, n_classes)

    def resolve(self, n_rows: int, n_classes: int) -> HoldOut | KFold:
        """The rule for a train set of this size."""
        if self.small(n_rows, n_classes):
            return KFold(self.folds, self.seed)
        return HoldOut(self.fraction, self.seed)

    def to_json(self) -> dict[str, Any]:
        return {"rule": "auto", "max_rows": self.max_rows, "min_per_class": self.min_per_class,
                "folds": int(self.folds), "seed": int(self.seed), "fraction": float(self.fraction)}


Rule = HoldOut | KFold | Auto
DEFAULT_SELECTION = Auto()  # KFold(5) on small train (< 2,000 rows or < 30 per class), else HoldOut(15 %, seed 0)
RULES: dict[str, type[HoldOut] | type[KFold] | type[Auto]] = {"holdout": HoldOut, "kfold": KFold, "auto": Auto}
RULE_TYPES = (HoldOut, KFold, Auto)


def resolve(rule: Rule | None, y: np.ndarray) -> HoldOut | KFold:
    """The concrete rule for training labels ``y``: ``rule`` (None = ``DEFAULT_SELECTION``), with
    ``Auto`` resolved from the number of rows and classes."""
    rule = DEFAULT_SELECTION if rule is None else rule
    if isinstance(rule, Auto):
        return rule.resolve(len(y), len(np.unique(y)))
    return rule


def rule_from_json(value: Any) -> Rule:
    """The rule a head file records (``to_json``); ValueError for anything else."""
    if not isinstance(value, dict) or value.get("rule") not in RULES:
        raise ValueError(f"a selection rule is an object with 'rule' one of {sorted(RULES)}; got {value!r}")
    fields = {k: v for k, v in value.items() if k != "rule"}
    try:
        return RULES[value["rule"]](**fields)
    except TypeError as e:
        raise ValueError(f"selection rule {value!r}: {e}") from None


def selection_rows(
    X: np.ndarray,
    y: np.ndarray,
    eval_set: tuple[np.ndarray, np.ndarray] | None,
    rule: HoldOut | None,
    who: str,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    """-> (X_fit, y_fit, X_val, y_val): the rows a head fits on and the rows it selects on.

    ``y`` holds integer class indices 0..k-1 (``Head.fit`` encodes them). With ``eval_set`` its rows
    are the validation rows and train is unchanged; without one, the ``HoldOut`` ``rule`` (None = the
    default carve, 15 % per class, seed 0) holds rows of train out. When it cannot, X_val and y_val are
    None and one warning is logged. (``KFold`` selection does not come through here: ``Head.fit``.)
    """
    if eval_set is not None:
        return X, y, eval_set[0], eval_set[1]
    rule = HoldOut() if rule is None else rule
    counts = np.bincount(y)
    present = counts[counts > 0]
    reason = None
    if present.min() < 2:
        reason = f"the smallest class has {int(present.min())} row, too few to hold rows out for selection"
    else:
        held = rule.mask([str(i) for i in range(len(y))], y)
        left = np.bincount(y[~held], minlength=len(counts))
        if not held.any():
            reason = "no class is large enough to hold rows out for selection"
        elif np.any((counts > 0) & (left == 0)):
            reason = f"holding out {rule.fraction:.0%} would leave a class without training rows"
        else:
            return X[~held], y[~held], X[held], y[held]
    _logger.warning("%s: %s; fitting on all %d training rows without selection", who, reason, len(y))
    return X, y, None, None
