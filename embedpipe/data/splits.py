"""The seeded, stratified split rule for data that brings no split of its own.

Within each class, images are ordered by a hash of (seed, id) and the first ``test`` fraction goes to
test, the next ``val`` fraction to val, the rest to train. Because the order depends only on each
image's own id, adding images to a dataset leaves the existing images' splits mostly unchanged.
The rule's parameters are recorded in the cache.

``carve_val`` applies the same rule to the train rows of a cache that has no val rows (data laid out
as train/ and test/ only), so heads still have a validation set to select on; ``kfold_assign`` deals
the same per-class order into k stratified folds (cross-validation when train is too small to carve).
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace

import numpy as np

from ..core.errors import EmbedpipeError
from .sources import Record


@dataclass(frozen=True)
class SplitRule:
    seed: int = 0  # seed of the per-id hash that orders images within a class
    val: float = 0.15  # fraction of each class for validation (head selection)
    test: float = 0.15  # fraction of each class held out for the reported score

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def _rank(seed: int, record_id: str) -> str:
    return hashlib.sha256(f"{seed}:{record_id}".encode()).hexdigest()


def _count(n: int, fraction: float) -> int:
    """round(n * fraction), but at least one image when the class has three or more and fraction > 0."""
    k = round(n * fraction)
    return max(k, 1) if fraction > 0 and n >= 3 else k


def assign_splits(records: list[Record], rule: SplitRule) -> list[Record]:
    given = sum(r.split is not None for r in records)
    if given == len(records):
        return records  # the source brings its own split
    if given:
        raise EmbedpipeError(f"{given} of {len(records)} images have a split and the rest do not; give all or none")
    if not (0 <= rule.val < 1 and 0 <= rule.test < 1 and rule.val + rule.test < 1):
        raise EmbedpipeError(f"bad split fractions val={rule.val} test={rule.test}: each in [0, 1), sum < 1")
    by_class: dict[str, list[Record]] = defaultdict(list)
    for r in records:
        by_class[r.label].append(r)
    split_of: dict[str, str] = {}
    for members in by_class.values():
        ordered = sorted(members, key=lambda r: _rank(rule.seed, r.id))
        n_test, n_val = _count(len(ordered), rule.test), _count(len(ordered), rule.val)
        for i, r in enumerate(ordered):
            split_of[r.id] = "test" if i < n_test else "val" if i < n_test + n_val else "train"
    return [replace(r, split=split_of[r.id]) for r in records]


VAL_CARVE = SplitRule(seed=0, val=0.15, test=0.0)  # held out of train when a cache has no val rows


def carve_val(ids: Sequence[str], labels: Sequence[int], rule: SplitRule = VAL_CARVE) -> np.ndarray:
    """Mask of the training rows to hold out for validation when the data brought train/ and test/ only.

    The same rule as ``assign_splits``, restricted to val: within each class, rows ordered by a hash of
    (seed, id); the first ``rule.val`` fraction (at least one when a class has 3 or more rows) is held
    out. It depends only on the ids, labels and rule, so it is recomputed identically at train time.
    """
    if not 0 < rule.val < 1:
        raise EmbedpipeError(f"bad val fraction {rule.val} for the held-out split: use a value in (0, 1)")
    labels = np.asarray(labels)
    mask = np.zeros(len(labels), bool)
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        ordered = sorted(members, key=lambda i: _rank(rule.seed, str(ids[i])))
        mask[ordered[: _count(len(ordered), rule.val)]] = True
    return mask


def kfold_assign(ids: Sequence[str], labels: Sequence[int], folds: int, seed: int = 0) -> np.ndarray:
    """Stratified fold of each row, 0..folds-1; -1 for the rows of a class with a single row.

    Within each class rows are ordered by a hash of (seed, id), as in ``carve_val``; the classes'
    orders are laid end to end (classes in sorted order) and dealt round-robin into the folds, so each
    fold gets about 1/folds of every class and folds differ in size by at most one row. A class with
    fewer rows than folds is held out in as many folds as it has rows; a class with one row is never
    held out (-1), since a fold without it could not learn it.
    """
    if not (isinstance(folds, int) and folds >= 2):
        raise EmbedpipeError(f"bad number of folds {folds!r}: use an integer of at least 2")
    labels = np.asarray(labels)
    fold = np.full(len(labels), -1, np.int64)
    at = 0
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        if len(members) < 2:
            continue
        ordered = sorted(members, key=lambda i: _rank(seed, str(ids[i])))
        fold[ordered] = (at + np.arange(len(ordered))) % folds
        at += len(ordered)
    return fold
