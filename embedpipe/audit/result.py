"""The audit's result: plain rows and numpy arrays, and the stable JSON contract.

``AuditResult.to_json()`` is the contract (``embedpipe audit --json`` prints it), with every list
capped at ``top`` entries, most important first, and ``summary[<list>]["more"]`` saying how many
were left out:

.. code-block:: text

    {"duplicates":   [{"a": id, "b": id, "similarity": float, "splits": [split_a, split_b], "leak": bool}],
     "label_issues": [{"id": id, "given": label, "suggested": label, "score": float}],
     "outliers":     [{"id": id, "score": float}],
     "summary":      {counts, class balance, failed rows, methods, thresholds, "more" per list}}

Ids are the cache's ids; labels are the cache's label names. In a duplicate pair ``a`` is the row
of the earlier split (train, val, test), so in a leak ``b`` is the val or test row with a near-copy
``a`` in train.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..core.atomic import atomic_write_bytes

DEFAULT_TOP = 1000  # entries per list in the JSON and the report; the summary counts the rest
LISTS = ("duplicates", "label_issues", "outliers")
SAVED = "audit/audit-{layer}.json"  # the full result (uncapped), beside meta.h5


@dataclass
class AuditResult:
    """What ``embedpipe.audit`` found in a cache.

    Attributes
    ----------
    cache : str
        The cache folder.
    layer : str
        The layer whose features were searched.
    duplicates : list of dict
        Every duplicate pair, ranked leaks first then by similarity: ``a``, ``b`` (ids),
        ``similarity`` (cosine), ``splits``, ``leak``, ``exact`` (same bytes), ``verified_by``,
        ``signal`` (the registered pixel correlation that verified it, or None).
    label_issues : list of dict
        Likely label errors, most likely first: ``id``, ``given``, ``suggested``, ``score``.
    outliers : list of dict
        Outliers, most outlying first: ``id``, ``score``.
    summary : dict
        Counts, class balance, failed rows, methods, thresholds and costs (see ``to_json``).
    pairs : ndarray of shape (m, 2)
        The duplicate pairs as row indices into the cache (``Cache.ids``), in ``duplicates``' order.
    similarity : ndarray of shape (m,)
        Their cosine similarities.
    top : int or None
        Entries per list in ``to_json`` (None: all).
    """

    cache: str
    layer: str
    duplicates: list[dict[str, Any]]
    label_issues: list[dict[str, Any]]
    outliers: list[dict[str, Any]]
    summary: dict[str, Any]
    pairs: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.int64))
    similarity: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    top: int | None = DEFAULT_TOP
    opener: Callable[[str], Image.Image | None] | None = field(default=None, repr=False)

    @property
    def leaks(self) -> list[str]:
        """Ids of the val and test rows that have a near-copy in train, in ranked order, each once."""
        return list(dict.fromkeys(d["b"] for d in self.duplicates if d["leak"]))

    def open_image(self, id: str) -> Image.Image | None:
        """The image of row ``id`` as RGB, through the cache's source; None when it cannot be opened
        (the file is gone, or the cache does not record where its images are)."""
        return self.opener(id) if self.opener is not None else None

    def to_json(self, top: int | None = -1) -> dict[str, Any]:
        """The JSON contract (module docstring): lists capped at ``top`` (default: the result's
        ``top``; None = everything), plain JSON values only."""
        cap = self.top if top == -1 else top
        lists = {
            "duplicates": [{"a": d["a"], "b": d["b"], "similarity": round(float(d["similarity"]), 4),
                            "splits": list(d["splits"]), "leak": bool(d["leak"])} for d in self.duplicates],
            "label_issues": [{"id": r["id"], "given": r["given"], "suggested": r["suggested"],
                              "score": round(float(r["score"]), 4)} for r in self.label_issues],
            "outliers": [{"id": r["id"], "score": round(float(r["score"]), 4)} for r in self.outliers],
        }
        summary = json.loads(json.dumps(self.summary, default=_plain))
        for name, rows in lists.items():
            shown = len(rows) if cap is None else min(cap, len(rows))
            summary.setdefault(name, {}).update({"count": len(rows), "shown": shown, "more": len(rows) - shown})
            lists[name] = rows[:shown]
        summary["top"] = cap
        return {**lists, "summary": summary}

    def save(self, path: str | Path | None = None) -> Path:
        """Write the full result (every entry) as JSON, atomically; default ``<cache>/audit/audit-<layer>.json``."""
        target = Path(path) if path is not None else Path(self.cache) / SAVED.format(layer=_safe(self.layer))
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(target, json.dumps(self.to_json(top=None), indent=1).encode())
        return target

    def __repr__(self) -> str:
        s = self.summary
        return (f"AuditResult({self.cache!r}, layer={self.layer!r}, duplicates={len(self.duplicates)}, "
                f"leaks={s.get('duplicates', {}).get('leaked_rows', 0)}, label_issues={len(self.label_issues)}, "
                f"outliers={len(self.outliers)})")


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def _safe(layer: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "-" for c in layer)
