"""Likely label errors: out-of-fold predicted probabilities from a fast head, ranked by cleanlab.

The method, top to bottom:

1. The head's hyperparameters are chosen once, by its own selection on all rows (the closed-form
   ``ridge`` head: exact leave-one-out over its alpha grid), and then kept fixed; for ridge the
   selected alpha is multiplied by 10 (``STRONGER``: a stronger penalty memorises flipped labels less).
2. Every row gets predicted probabilities from a fit that did not see it: stratified k-fold, where
   within each class (shuffled with ``seed``) row ``i`` goes to fold ``i % folds``. A class with fewer
   rows than folds still has each row held out once, trained on its other rows; a class with a single
   row cannot be judged (no fit without it knows the class), so its row is left out of the ranking.
   Both are listed in ``info["small_classes"]``.
3. cleanlab's confident learning (``cleanlab.filter.find_label_issues``) decides which rows are
   likely mislabelled (``prune_by_noise_rate``, its default) and ranks them by its label quality score
   ``confidence_weighted_entropy`` (the out-of-fold probability of the given label, weighed against
   the entropy of the prediction: a confident prediction of another class ranks first). embedpipe does
   not re-implement confident learning.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from ..core.errors import EmbedpipeError

_logger = logging.getLogger(__name__)

DEFAULT_HEAD = "ridge"  # closed form, every alpha from one decomposition, calibrated predict_proba
# cleanlab's label quality score that ranks the flagged rows: the entropy-weighted self-confidence ranked
# planted flips better than self_confidence on glyphs (precision@k 0.67 vs 0.53-0.60 on 100 classes,
# 0.53-0.61 vs 0.34-0.38 on all 1,500) and the same on digits (benchmarks/audit_labels.py)
RANKED_BY = "confidence_weighted_entropy"
FILTER_BY = "prune_by_noise_rate"  # cleanlab's default rule for which rows are issues
# After selection, the penalty is made this much stronger for the out-of-fold fits. Selection picks the
# penalty best for accuracy on the labels as given, flipped ones included; a stronger one memorises the
# flipped rows less, so their given label keeps a low out-of-fold probability. Alpha x 10 raised
# precision@k on glyphs (100 classes, 3 flips of 5 %) from 0.63 to 0.71 and left digits as it was (0.89
# to 0.88); x 50 was better still on glyphs (0.78) but worse on digits (0.81) (benchmarks/audit_labels.py).
STRONGER = {"ridge": ("alpha", 10.0)}  # head -> (hyperparameter, factor)


def find_label_issues(
    X: np.ndarray, y: np.ndarray, *, folds: int = 5, seed: int = 0, top: int | None = None,
    head: str = DEFAULT_HEAD,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Rows whose label is likely wrong, ranked most likely wrong first.

    Parameters
    ----------
    X : ndarray of shape (n_samples, n_features)
        Feature vectors (e.g. a cache's ``pooled`` layer).
    y : ndarray of shape (n_samples,)
        Integer labels as given.
    folds : int, default=5
        Stratified folds for the out-of-fold probabilities (at least 2).
    seed : int, default=0
        Seeds the assignment of rows to folds.
    top : int or None, default=None
        Keep at most this many rows (None = all flagged rows); ``info["n_flagged"]`` counts them all.
    head : str, default="ridge"
        The registered head that gives the probabilities; its hyperparameters are selected once on
        all rows and then fixed across the folds.

    Returns
    -------
    rows : list of dict
        One per flagged row, most likely wrong first: ``index`` (row of ``X``), ``given`` (the label
        in ``y``), ``suggested`` (the label with the highest out-of-fold probability) and ``score``
        (1 - cleanlab's label quality score ``confidence_weighted_entropy`` on the out-of-fold
        probabilities: between 0 and 1, **higher = more likely wrong**; the rows come in this order).
    info : dict
        ``method``, ``folds``, ``head``, ``params`` (the fixed hyperparameters of the out-of-fold fits),
        ``selected_params`` (what the head's selection chose, before ``STRONGER``), ``seconds``,
        ``small_classes`` (``{"label", "rows", "judged"}`` for each class with fewer rows than
        folds), ``n_flagged`` (flagged rows before the ``top`` cap) and ``n_judged`` (rows ranked).

    Examples
    --------
    >>> import numpy as np
    >>> from embedpipe.audit.labels import find_label_issues
    >>> rng = np.random.default_rng(0)
    >>> y = np.repeat([0, 1, 2], 40)
    >>> X = rng.normal(size=(120, 8)) + 4 * np.eye(3, 8)[y]
    >>> y_noisy = y.copy(); y_noisy[[0, 50]] = [2, 0]
    >>> rows, info = find_label_issues(X, y_noisy)
    >>> sorted(r["index"] for r in rows[:2]), rows[0]["given"] != rows[0]["suggested"]
    ([0, 50], True)
    """
    try:
        import cleanlab.filter  # reason: optional extra (quality), imported only when labels are audited
        import cleanlab.rank
    except ImportError:
        raise EmbedpipeError('finding label issues needs cleanlab: pip install "embedpipe[quality]"') from None
    from ..heads import create_head  # reason: heads import torch; the audit package imports light

    t0 = time.perf_counter()
    X, y = np.asarray(X), np.asarray(y)
    if X.ndim != 2 or len(X) != len(y):
        raise EmbedpipeError(f"find_label_issues needs X of shape (n, d) and y of shape (n,); got {X.shape} and {y.shape}")
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
        raise EmbedpipeError(f"folds must be an integer >= 2, got {folds!r}")
    classes, yi = np.unique(y, return_inverse=True)
    if len(classes) < 2:
        raise EmbedpipeError(f"finding label issues needs at least 2 classes; the labels hold {len(classes)}")
    counts = np.bincount(yi, minlength=len(classes))
    judged = counts[yi] >= 2  # a single-row class: no fit without its row knows the class
    small = [{"label": int(classes[c]), "rows": int(counts[c]), "judged": bool(counts[c] >= 2)}
             for c in np.flatnonzero(counts < folds)]
    if len(np.unique(yi[judged])) < 2:
        raise EmbedpipeError("finding label issues needs at least 2 classes with 2 or more rows each")

    selector = create_head(head).fit(X, yi)
    selected = selector.chosen_params()
    params = dict(selected)
    if head in STRONGER and STRONGER[head][0] in params:
        name, factor = STRONGER[head]
        params[name] = float(params[name]) * factor
    fold_of = _stratified_folds(yi, folds, seed)
    probs = np.zeros((len(yi), len(classes)), np.float32)
    for f in range(folds):
        out = fold_of == f
        if not out.any():
            continue
        fit = create_head(head, **params).fit(X[~out], yi[~out])
        probs[np.ix_(out, fit.classes_)] = fit.predict_proba(X[out])  # classes absent from the fit: 0

    rows_judged = np.flatnonzero(judged)
    labels_j, probs_j = yi[judged], probs[judged]
    # Classes whose rows were all left out are absent here; cleanlab wants the columns 0..K-1 that occur.
    present, labels_c = np.unique(labels_j, return_inverse=True)
    probs_c = probs_j[:, present]
    probs_c /= np.maximum(probs_c.sum(1, keepdims=True), 1e-12)
    ranked = cleanlab.filter.find_label_issues(
        labels_c, probs_c, return_indices_ranked_by=RANKED_BY, filter_by=FILTER_BY, n_jobs=1)
    quality = cleanlab.rank.get_label_quality_scores(labels_c, probs_c, method=RANKED_BY)  # 0..1, low = worse
    rows = [{"index": int(rows_judged[i]), "given": int(classes[yi[rows_judged[i]]]),
             "suggested": int(classes[present[int(np.argmax(probs_c[i]))]]), "score": float(1.0 - quality[i])}
            for i in ranked[: None if top is None else max(int(top), 0)]]
    info = {"method": f"cleanlab find_label_issues ({FILTER_BY}, ranked by {RANKED_BY}) on out-of-fold probabilities",
            "folds": folds, "head": head, "params": params, "selected_params": selected, "seconds": round(time.perf_counter() - t0, 3),
            "small_classes": small, "n_flagged": len(ranked), "n_judged": int(judged.sum())}
    _logger.info("label issues: %d flagged of %d rows judged (%s, %d folds, %s)", len(ranked), int(judged.sum()),
                 head, folds, params)
    return rows, info


def _stratified_folds(y: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Fold of each row: within each class, shuffled by ``seed``, the i-th row goes to fold ``i % folds``
    (so a class with m < folds rows has each row in its own fold, trained on its other m - 1 rows). The
    class offsets rotate so that small classes do not all land in the first folds."""
    rng = np.random.default_rng(seed)
    fold_of = np.empty(len(y), np.int64)
    start = 0
    for c in np.unique(y):
        where = rng.permutation(np.flatnonzero(y == c))
        fold_of[where] = (start + np.arange(len(where))) % folds
        start += len(where)
    return fold_of
