"""``embedpipe.audit(cache)``: read a cache once and run the audit's steps over it.

The steps, in order:

1. **check** the input: the layer exists and is a vector layer, the cache has labels, at least two
   classes and more rows than the neighbours the steps look at;
2. **duplicates**: content hashes (exact), nearest neighbours (``search.py``) and verification
   (``duplicates.py``), over every usable row of every split;
3. the **optional steps** in ``STEPS`` (label issues, outliers): each is a function
   ``f(X, y, *, top=None) -> (rows, info)`` over the same rows, where ``rows`` hold an ``index``
   into them; a step whose module is not there is skipped and the summary says so;
4. the **report** (``REPORT``): ``write_report(result_json, open_image, out_dir) -> Path``, when its
   module is there.

The result is saved in the cache folder (``AuditResult.save``).
"""

from __future__ import annotations

import importlib
import importlib.util
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..cache import Cache, open_cache
from ..cache.reader import read_strings
from ..core.errors import EmbedpipeError
from ..core.log import get_logger, level, show_progress
from ..data.reopen import ImageOpener, SourceLocation
from . import duplicates as dup
from .hashes import content_hashes
from .result import DEFAULT_TOP, AuditResult
from .search import choose_method, nearest

_logger = get_logger(__name__)

# Optional steps: JSON key -> "module:function", called as f(X, y, top=None) -> (rows, info) with
# rows [{"index": row of X, ...}] ranked; label issues also carry "given" and "suggested" (class indices).
STEPS: dict[str, str] = {
    "label_issues": "embedpipe.audit.labels:find_label_issues",
    "outliers": "embedpipe.audit.outliers:find_outliers",
}
REPORT = "embedpipe.audit.sheets:write_report"  # (result JSON, open_image, out_dir) -> Markdown path
MIN_ROWS = 11  # rows needed: the outlier step compares each row with its 10 nearest neighbours


def _load(target: str) -> tuple[Callable[..., Any] | None, str]:
    """(the function ``module:name``, "") when it can be imported, else (None, why not)."""
    module, _, name = target.partition(":")
    if importlib.util.find_spec(module) is None:
        return None, "not run: step not installed"
    try:
        return getattr(importlib.import_module(module), name), ""
    except ImportError as e:  # an optional library of the step (cleanlab, imagehash) is missing
        return None, f'not run: {getattr(e, "name", None) or e} is not installed; pip install "embedpipe[quality]"'



def check_input(cache: Cache, layer: str) -> None:
    """One line naming the problem (and the fix) when the cache cannot be audited on ``layer``."""
    if layer not in cache.layers:
        raise EmbedpipeError(f"layer {layer!r} not in cache {cache.path}; it has {', '.join(cache.layers)}")
    if len(cache.shapes[layer]) != 1:
        vectors = [name for name in cache.layers if len(cache.shapes[name]) == 1]
        raise EmbedpipeError(f"layer {layer!r} is a feature map; audit needs a vector layer"
                             + (f" ({', '.join(vectors)})" if vectors else ": extract one, e.g. pooled"))
    if len(cache.label_names) == 0 or len(cache.labels) == 0:
        raise EmbedpipeError(f"cache {cache.path} has no labels; audit needs labelled data (class folders or a "
                             "label column)")
    usable = cache.rows(None)
    classes = np.unique(cache.labels[usable])
    if len(classes) < 2:
        raise EmbedpipeError(f"cache {cache.path} has a single class ({cache.label_names[int(classes[0])] if len(classes) else 'none'}); "
                             "audit compares classes and needs at least 2")
    if len(usable) < MIN_ROWS:
        raise EmbedpipeError(f"cache {cache.path} has {len(usable)} usable rows, fewer than the {MIN_ROWS} "
                             "the audit needs (each row is compared with its 10 nearest neighbours)")


def _class_balance(cache: Cache, rows: np.ndarray) -> dict[str, Any]:
    counts = Counter(cache.labels[rows].tolist())
    per = {cache.label_names[c]: counts.get(c, 0) for c in range(len(cache.label_names))}
    ordered = sorted(per.items(), key=lambda kv: (kv[1], kv[0]))
    smallest, largest = ordered[0], ordered[-1]
    return {"classes": len(per), "smallest": list(smallest), "largest": list(largest),
            "ratio": round(largest[1] / max(1, smallest[1]), 2), "counts": per}


def audit(
    cache: str | Path | Cache, layer: str = "pooled", *, top: int | None = DEFAULT_TOP,
    out: str | Path | None = None, data: str | Path | None = None, search: str = "auto",
    device: str = "auto", hash_files: bool = True, report: bool = True, save: bool = True,
    duplicates: dup.DuplicateConfig | None = None, progress: bool = False,
) -> AuditResult:
    """Audit a cache: exact and near duplicates (leaks across splits), likely label errors, outliers.

    Parameters
    ----------
    cache : str, Path or Cache
        A cache folder (as ``embedpipe extract`` prints it) or an open Cache.
    layer : str, default="pooled"
        The vector layer whose features are compared.
    top : int or None, default=1000
        Entries per list in ``to_json()`` and the report; the summary counts the rest. None = all.
    out : str, Path or None, default=None
        Folder of the Markdown report and its contact sheets; None = ``<cache>/audit``.
    data : str, Path or None, default=None
        Where the images are, for a cache that does not record it (written before cache schema 2):
        the image folder, ``.csv`` manifest or built-in name it was extracted from.
    search : {"auto", "exact", "faiss-ivf", "ivf-pca"}, default="auto"
        Nearest-neighbour search: ``auto`` is exact up to 50,000 rows (or on a GPU), above that
        faiss-ivf (FAISS, the quality extra), or ivf-pca when FAISS is not installed.
    device : str, default="auto"
        Where the search's matmuls run: ``auto`` (CUDA when present), ``cpu`` or ``cuda[:N]``.
    hash_files : bool, default=True
        Hash every image's bytes for exact duplicates (the cost is in ``summary["hashing"]``; the
        hashes are kept in the cache folder, so the next run re-reads only changed files).
    report : bool, default=True
        Write the Markdown report with contact sheets (when its module is installed).
    save : bool, default=True
        Save the full result as ``<cache>/audit/audit-<layer>.json``.
    duplicates : DuplicateConfig or None, default=None
        The near-duplicate thresholds (``embedpipe.audit.duplicates.DuplicateConfig``); None = the
        defaults (candidates at cosine 0.70; verified at registered pixel correlation 0.965;
        unverifiable pairs at cosine 0.95).
    progress : bool, default=False
        Progress messages and bars on stderr.

    Returns
    -------
    AuditResult
        Lists of rows, numpy arrays, the summary, ``to_json()`` (the stable contract) and
        ``open_image(id)``.

    Raises
    ------
    EmbedpipeError
        A missing or map layer, a cache without labels or with a single class, fewer than 11 rows.

    Examples
    --------
    >>> import embedpipe
    >>> cache = embedpipe.extract("photos", progress=False)
    >>> result = embedpipe.audit(cache, top=5)
    >>> sorted(result.to_json())
    ['duplicates', 'label_issues', 'outliers', 'summary']
    >>> result.summary["rows"]["audited"], type(result.leaks)
    (30, <class 'list'>)
    """
    t0 = time.perf_counter()
    if progress:
        show_progress()
    cache = cache if isinstance(cache, Cache) else open_cache(cache)
    check_input(cache, layer)
    if top is not None and top < 0:
        raise EmbedpipeError(f"top must be 0 or more (or None for all), got {top}")
    location = SourceLocation.of(data) if data is not None else SourceLocation.from_meta(cache.meta)
    opener = ImageOpener(location)
    if location.kind == "unknown":
        _logger.warning("cache %s does not record where its images are (written by an older embedpipe): no exact-"
                        "duplicate check, and near duplicates are judged by cosine alone; give the data with "
                        "data= (--data) to verify them with the images", cache.path)
    rows = cache.rows(None)
    ids = [str(i) for i in cache.ids[rows]]
    splits = [str(s) for s in cache.splits[rows]]
    y = cache.labels[rows]
    seconds: dict[str, float] = {}

    X, _ = cache.load(None, layer, dtype=np.float16)
    steps_out: dict[str, tuple[list[dict[str, Any]], dict[str, Any]]] = {}
    for name, target in STEPS.items():  # before the search normalises X in place
        fn, why = _load(target)
        if fn is None:
            steps_out[name] = ([], {"status": why})
            if "pip install" in why:
                _logger.warning("%s %s", name.replace("_", " "), why)
            continue
        t = time.perf_counter()
        found, info = fn(X.astype(np.float32), y, top=None)
        seconds[name] = time.perf_counter() - t
        steps_out[name] = (found, {"status": "ok", **info})

    hashes, hash_stats = None, None
    if hash_files and location.kind != "unknown":
        t = time.perf_counter()
        signatures = _signatures(cache)[rows]
        hashes, hash_stats = content_hashes(ids, list(signatures), opener, cache.path, progress)
        seconds["hashing"] = time.perf_counter() - t
    method = choose_method(len(ids), device) if search == "auto" else search
    _logger.log(level(progress), "searching near duplicates among %d rows (%s)", len(ids), method)
    nb = nearest(X, dup.NEIGHBOURS, method=method, device=device, progress=progress, inplace=True)
    Xn = X  # normalised in place by the search: the features are held once
    seconds["search"] = nb.seconds
    config = duplicates or dup.DuplicateConfig()
    found_dups, dinfo = dup.find_duplicates(Xn, nb, ids, splits, opener, hashes, **config.to_dict())
    seconds["verify"] = dinfo.verify_seconds
    del X, Xn

    pairs = [{**d, "a": ids[d["a"]], "b": ids[d["b"]], "splits": [splits[d["a"]], splits[d["b"]]],
                   "a_index": int(rows[d["a"]]), "b_index": int(rows[d["b"]])} for d in found_dups]
    names = cache.label_names
    label_issues = [{"id": ids[r["index"]], "given": names[int(r["given"])], "suggested": names[int(r["suggested"])],
                     "score": float(r["score"])} for r in steps_out["label_issues"][0]]
    outliers = [{"id": ids[r["index"]], "score": float(r["score"])} for r in steps_out["outliers"][0]]
    leaked = {d["b"] for d in pairs if d["leak"]}
    failed = cache.failed
    summary: dict[str, Any] = {
        "cache": str(cache.path),
        "layer": layer,
        "rows": {**cache.counts(), "audited": len(ids), "failed": len(failed)},
        "class_balance": _class_balance(cache, rows),
        "failed": [{"id": i, "reason": r} for i, r in failed[: top if top is not None else len(failed)]],
        "failed_more": max(0, len(failed) - top) if top is not None else 0,
        "source": {"kind": location.kind, "root": location.root},
        "duplicates": {
            "exact": dinfo.exact, "near": dinfo.verified + dinfo.unverified, "unverified": dinfo.unverified,
            "within_split": sum(d["splits"][0] == d["splits"][1] for d in pairs),
            "across_splits": sum(d["splits"][0] != d["splits"][1] for d in pairs),
            "leaks": sum(d["leak"] for d in pairs), "leaked_rows": len(leaked),
            "candidates": dinfo.candidates,
        },
        "label_issues": dict(steps_out["label_issues"][1]),
        "outliers": dict(steps_out["outliers"][1]),
        "method": {
            "exact": ("sha256 of each file's bytes" if location.has_files else "sha256 of the rendered pixels")
            if hashes is not None else "not checked (" + ("hash_files=False" if not hash_files
                                                          else "the cache does not record where its images are") + ")",
            "search": f"{nb.method} cosine nearest neighbours (k={dup.NEIGHBOURS})",
            "verify": f"pixel correlation of {dup.THUMB}x{dup.THUMB} grey thumbnails after undoing a crop of up to "
                      f"{dup.MAX_CROP:.0%} per side"
                      + (" and perceptual hash (imagehash phash)" if dinfo.phash else
                         " (phash_bits ignored: imagehash is not installed; pip install \"embedpipe[quality]\" adds it)"
                         if config.phash_bits is not None else ""),
        },
        "thresholds": config.to_dict(),
        "hashing": hash_stats.to_dict() if hash_stats is not None else None,
        "images_not_opened": {"count": len(dinfo.unopened), "ids": dinfo.unopened[:top]},
        "seconds": {k: round(v, 3) for k, v in seconds.items()},
    }
    order = np.array([[d["a_index"], d["b_index"]] for d in pairs], dtype=np.int64).reshape(-1, 2)
    result = AuditResult(str(cache.path), layer, pairs, label_issues, outliers, summary, order,
                         np.array([d["similarity"] for d in pairs], dtype=np.float32), top, opener)
    write, why = _load(REPORT) if report else (None, "")
    if write is None and "pip install" in why:
        _logger.warning("report %s", why)
    if write is not None:
        target = Path(out) if out is not None else cache.path / "audit"
        target.mkdir(parents=True, exist_ok=True)
        summary["report"] = str(write(result.to_json(), result.open_image, target))
    summary["seconds"]["total"] = round(time.perf_counter() - t0, 3)
    if save:
        summary["saved"] = str(result.save())
    return result


def _signatures(cache: Cache) -> np.ndarray:
    """The rows' file signatures (the one meta.h5 dataset the reader does not load)."""
    with h5py.File(cache.path / "meta.h5", "r") as f:
        return read_strings(f, "signatures")
