"""Where model selection's validation rows come from: one rule, one function, for every head that selects.

Heads select on validation rows: logreg's C sweep, mlp's, lgbm's and finetune's early stopping, and
multilayer's keep fraction and C. ``Head.fit`` calls ``selection_rows`` once, before the head's own
``_fit``:

- given an ``eval_set``, its rows are the validation rows;
- without one, the head's selection rule holds rows out of train. Today's rule is ``HoldOut``: a
  seeded, stratified fraction of each class (``data.splits.carve_val``, the rule ``embedpipe train``
  also applies to a cache that has no val rows, ``train.py``), so both carves are one definition;
- when the rule cannot hold rows out (a class with fewer than 2 rows, nothing held out, or a class
  the carve would leave absent from train), the head fits on all of train without selection, and one
  warning line says so.

Heads that refit on train + validation after selecting (logreg with ``refit=True``) still do; with held
out rows that refit sees all of train again. The rule is a hyperparameter of each selecting head
(``selection``; None = ``DEFAULT_SELECTION``), so another rule (k-fold, a later addition) can be
passed the same way. A rule is a small frozen dataclass saved in head files as JSON (``to_json`` /
``rule_from_json``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..data.splits import VAL_CARVE, SplitRule, carve_val

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

    def to_json(self) -> dict[str, Any]:
        return {"rule": "holdout", "fraction": float(self.fraction), "seed": int(self.seed)}


DEFAULT_SELECTION = HoldOut()  # = data.splits.VAL_CARVE: 15 % of each class, seed 0
RULES = {"holdout": HoldOut}  # rule name in head files -> class


def rule_from_json(value: Any) -> HoldOut:
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
    are the validation rows and train is unchanged; without one, ``rule`` (None = ``DEFAULT_SELECTION``)
    holds rows of train out. When it cannot, X_val and y_val are None and one warning is logged.
    """
    if eval_set is not None:
        return X, y, eval_set[0], eval_set[1]
    rule = DEFAULT_SELECTION if rule is None else rule
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
