"""Outliers: rows far from their nearest neighbours, within their class and overall.

Distances are cosine distances (1 - cosine similarity) between feature vectors. For each row,
``knn_all`` is the mean distance to its ``k`` nearest other rows, and ``knn_class`` the mean distance to
its ``k`` nearest other rows of the same class (``k`` capped at the class's size - 1; None for a class of
one row). The search is exact and blockwise: a block of query rows against a block of rows at a time
(torch matmul, on the GPU when there is one), keeping a running top-k per query row, so memory is one
float32 copy of the (normalised) features plus a ``block x block`` tile, never ``n x n``.

The combined score is the geometric mean of the two distances, each divided by its median over all
rows: ``score = sqrt((knn_all / median(knn_all)) * (knn_class / median(knn_class)))``. A typical row
scores about 1; a row twice as far from its neighbours as usual, both overall and within its class,
scores 2. A row that is far from everything scores high on both; a row only far from its own class
(more likely a label error, see ``labels.py``) scores high on one. For a single-row class the score
is ``knn_all / median(knn_all)``.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import numpy as np
import torch

from ..core.device import resolve_device
from ..core.errors import EmbedpipeError

_logger = logging.getLogger(__name__)

DEFAULT_K = 10  # neighbours averaged: enough to be stable, few enough that a small cluster still stands out
DEFAULT_BLOCK = 4096  # rows per tile side: a 4096 x 4096 float32 tile is 64 MiB


def find_outliers(
    X: np.ndarray, y: np.ndarray, *, k: int = DEFAULT_K, top: int | None = None, block: int = DEFAULT_BLOCK,
    device: str = "auto",
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Rows far from their nearest neighbours, most outlying first.

    Parameters
    ----------
    X : ndarray of shape (n_samples, n_features)
        Feature vectors (any float dtype; float16 caches are read as they are and normalised in float32).
    y : ndarray of shape (n_samples,)
        Integer labels (the within-class neighbours).
    k : int, default=10
        Neighbours averaged per row (capped at the rows available).
    top : int or None, default=None
        Keep at most this many rows (None = every row, ranked).
    block : int, default=4096
        Rows per side of the similarity tile; memory beyond the features is about ``4 * block**2`` bytes.
    device : str, default="auto"
        Torch device for the matmuls; ``"auto"`` = CUDA when present.

    Returns
    -------
    rows : list of dict
        ``index`` (row of ``X``), ``score`` (combined, see the module docstring; higher = more
        outlying), ``knn_class`` and ``knn_all`` (mean cosine distances; ``knn_class`` is None for a
        single-row class), most outlying first.
    info : dict
        ``method``, ``k``, ``block``, ``device``, ``seconds``, ``median_knn_all``, ``median_knn_class``
        and ``score`` (the formula in words).

    Examples
    --------
    >>> import numpy as np
    >>> from embedpipe.audit.outliers import find_outliers
    >>> rng = np.random.default_rng(0)
    >>> y = np.repeat([0, 1], 50)
    >>> X = rng.normal(size=(100, 16)) * 0.3 + np.eye(2, 16)[y] * 3
    >>> X[7] = rng.normal(size=16) * 3  # far from everything
    >>> rows, info = find_outliers(X, y, k=5, top=3)
    >>> rows[0]["index"], info["k"]
    (7, 5)
    """
    t0 = time.perf_counter()
    X, y = np.asarray(X), np.asarray(y)
    if X.ndim != 2 or len(X) != len(y):
        raise EmbedpipeError(f"find_outliers needs X of shape (n, d) and y of shape (n,); got {X.shape} and {y.shape}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise EmbedpipeError(f"k must be an integer >= 1, got {k!r}")
    if len(X) <= k:
        raise EmbedpipeError(f"finding outliers with k={k} needs more than {k} rows; got {len(X)}: lower k")
    if isinstance(block, bool) or not isinstance(block, int) or block < 1:
        raise EmbedpipeError(f"block must be an integer >= 1, got {block!r}")
    dev = resolve_device(device)
    Z = _normalised(X, dev)
    knn_all = _mean_knn_distance(Z, k, block).cpu().numpy()
    knn_class = np.full(len(y), np.nan)
    for c in np.unique(y):
        where = np.flatnonzero(y == c)
        if len(where) >= 2:
            rows_c = torch.from_numpy(where).to(dev)
            knn_class[where] = _mean_knn_distance(Z[rows_c], min(k, len(where) - 1), block).cpu().numpy()
    med_all = float(np.median(knn_all))
    med_class = float(np.nanmedian(knn_class)) if np.isfinite(knn_class).any() else math.nan
    r_all = knn_all / max(med_all, 1e-12)
    r_class = knn_class / max(med_class, 1e-12) if math.isfinite(med_class) else np.full(len(y), np.nan)
    score = np.where(np.isfinite(r_class), np.sqrt(np.maximum(r_all, 0) * np.maximum(r_class, 0)), r_all)
    order = np.argsort(-score, kind="stable")[: None if top is None else max(int(top), 0)]
    rows = [{"index": int(i), "score": float(score[i]),
             "knn_class": None if not np.isfinite(knn_class[i]) else float(knn_class[i]),
             "knn_all": float(knn_all[i])} for i in order]
    info = {"method": "exact cosine kNN, blockwise matmul", "k": k, "block": block, "device": str(dev),
            "seconds": round(time.perf_counter() - t0, 3), "median_knn_all": med_all,
            "median_knn_class": None if not math.isfinite(med_class) else med_class,
            "score": "sqrt((knn_all / median knn_all) * (knn_class / median knn_class)); "
                     "knn_* = mean cosine distance to the k nearest other rows (overall, within the class)"}
    _logger.info("outliers: %d rows scored with k=%d in %.2fs", len(y), k, info["seconds"])
    return rows, info


def _normalised(X: np.ndarray, device: torch.device) -> torch.Tensor:
    """Rows scaled to unit length, float32 on ``device`` (an all-zero row stays zero)."""
    Z = torch.from_numpy(np.ascontiguousarray(X)).to(device, torch.float32)
    return Z / Z.norm(dim=1, keepdim=True).clamp_min(1e-12)


def _mean_knn_distance(Z: torch.Tensor, k: int, block: int) -> torch.Tensor:
    """Mean cosine distance of each row of ``Z`` (unit rows) to its ``k`` nearest other rows: a running
    top-k of similarities over ``block x block`` tiles (a row's own entry is masked out)."""
    n = len(Z)
    out = torch.empty(n, dtype=torch.float32, device=Z.device)
    for qs in range(0, n, block):
        q = Z[qs : qs + block]
        best = torch.full((len(q), k), -math.inf, device=Z.device)
        for ks in range(0, n, block):
            sim = q @ Z[ks : ks + block].T
            lo, hi = max(qs, ks), min(qs + len(q), ks + len(sim[0]))
            if lo < hi:  # this tile holds the query rows themselves: mask the diagonal
                i = torch.arange(lo, hi, device=Z.device)
                sim[i - qs, i - ks] = -math.inf
            best = torch.topk(torch.cat([best, sim], 1), k, dim=1, sorted=False).values
        out[qs : qs + len(q)] = 1.0 - best.mean(1)
    return out
