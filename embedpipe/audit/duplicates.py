"""Exact and near duplicates, within each split and across splits.

* **Exact**: rows whose files have the same bytes (``hashes.py``; rendered sets: the same pixels).
* **Near**: candidate pairs come from the embedding (every row's ``NEIGHBOURS`` nearest rows with a
  cosine of at least ``CANDIDATE_COSINE``, ``search.py``); each candidate is then verified with
  second signals, because a cosine threshold alone does not separate copies from look-alikes (a copy
  re-saved at another size and JPEG quality and cropped a little can fall to 0.76, while unrelated
  nearest neighbours reach 0.93). A pair is a near duplicate when both hold:

  - a cheap gate first: the plain pixel correlation of the two images as ``GATE_THUMB`` x
    ``GATE_THUMB`` grey thumbnails reaches ``GATE_CORRELATION`` (far below any copy's, so it only
    spares the registration most unrelated pairs);
  - the **registered pixel correlation** reaches ``PIXEL_CORRELATION``. Each image is reduced to a
    ``WORK`` x ``WORK`` grey working copy (area averaged, so resizing and JPEG noise vanish). A copy
    cropped a little and resized shows its source's content shifted and magnified by a few per
    cent, which at the pixel level decorrelates thin strokes and sharp edges; so the crop is
    undone first: for each axis, the crop of one image (up to ``MAX_CROP`` of each side, in
    ``CROP_STEPS`` steps) whose row or column mean profile best matches the other's is found,
    that crop is resized to ``THUMB`` x ``THUMB``, and its Pearson correlation with the other image
    at ``THUMB`` x ``THUMB`` (brightness and contrast normalised away) is taken, both ways round,
    keeping the better;
  - optionally (``phash_bits``, off by default), their perceptual hashes (imagehash's ``phash``, 64
    bits) differ in at most that many bits.

  Unregistered correlation at 16 x 16 misses about one copy in five of small grayscale glyphs; a
  correlation that tries shifts only (no scale) lets different renderings of one glyph pass as
  copies; the perceptual hash alone lets through grayscale look-alikes, and as a second condition
  it drops copies of glyphs (a crop moves a glyph's hash by up to 20 bits) without adding
  precision to the registered correlation (benchmarks/audit.py).
* A pair whose image cannot be opened (the file is gone, or the cache does not know where its images
  are) cannot be verified: it is reported when its cosine alone reaches ``COSINE_ALONE``, and counted
  as unverified in the summary.

Pairs are ranked leaks first (one row in train, the other in val or test), then by similarity.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from ..core.log import get_logger
from .search import Neighbours

_logger = get_logger(__name__)

# Defaults, each with its reason (benchmarks/audit.py measures them; docs/audit.md has the numbers).
NEIGHBOURS = 5  # nearest rows kept per row: at 3, a glyph copy 4th nearest to its source was missed
CANDIDATE_COSINE = 0.70  # below the lowest cosine of a planted copy to its source (0.76 in the data)
WORK = 128  # side of the grey working copy registration crops from: at 64, small glyphs' copies fell to 0.94
THUMB = 32  # side compared after registration: fine enough for strokes, coarse enough to average JPEG noise
MAX_CROP = 0.06  # fraction of each side a registration may crop away: a leak's crop is up to 5 % in all
CROP_STEPS = 13  # crops tried per side: 0 to MAX_CROP in steps of 0.5 % (0.6 px at WORK; finer gained nothing)
GATE_THUMB = 16  # side of the thumbnails of the cheap gate (1 KB each, held for every candidate image)
GATE_CORRELATION = 0.6  # the gate: planted copies 0.79 or more; a quarter of glyph candidates, 1/25 of colour ones pass
SHIFT = 0  # pixels of shift tried each way by the unregistered ``thumbnail_correlation`` (benchmark only)
PIXEL_CORRELATION = 0.965  # planted copies: minimum 0.974 (glyphs), 0.995 (colour); other colour candidates: below 0.93
PHASH_BITS = None  # off: planted glyph copies differ in up to 20 of 64 bits, where look-alikes differ in 4
COSINE_ALONE = 0.95  # an unverifiable pair is still reported at or above this (the issue: 17 of 17 true)
SPLIT_ORDER = {"train": 0, "val": 1, "test": 2}
_GONE = object()  # an image that could not be opened


@dataclass(frozen=True)
class DuplicateConfig:
    """The near-duplicate thresholds (module docstring); ``audit(..., duplicates=DuplicateConfig(...))``.

    Attributes
    ----------
    candidate_cosine : float
        A neighbour is a candidate at or above this cosine.
    pixel_correlation : float
        A candidate is verified at or above this registered correlation (``registered_correlation``)...
    phash_bits : int or None
        ...and, when not None, at most this many differing bits of the 64-bit perceptual hash
        (imagehash's ``phash``; ignored, with a warning, when imagehash is not installed).
    cosine_alone : float
        A candidate whose image cannot be opened is reported at or above this cosine.
    """

    candidate_cosine: float = CANDIDATE_COSINE
    pixel_correlation: float = PIXEL_CORRELATION
    phash_bits: int | None = PHASH_BITS
    cosine_alone: float = COSINE_ALONE

    def to_dict(self) -> dict[str, float | None]:
        return {"candidate_cosine": self.candidate_cosine, "pixel_correlation": self.pixel_correlation,
                "phash_bits": self.phash_bits, "cosine_alone": self.cosine_alone}

Opener = Callable[[str], "Image.Image | None"]


@dataclass
class DuplicateInfo:
    """How the duplicate search went: methods, thresholds, counts and seconds."""

    search: str = ""
    search_seconds: float = 0.0
    candidates: int = 0
    verified: int = 0
    unverified: int = 0
    exact: int = 0
    verify_seconds: float = 0.0
    phash: bool = False  # whether the perceptual hash took part (asked for, and imagehash installed)
    unopened: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"search": self.search, "search_seconds": round(self.search_seconds, 3),
                "candidates": self.candidates, "verified": self.verified, "unverified": self.unverified,
                "exact": self.exact, "verify_seconds": round(self.verify_seconds, 3), "phash": self.phash,
                "images_not_opened": len(self.unopened)}


def thumbnail(img: Image.Image, size: int = WORK) -> np.ndarray:
    """The image as a (size, size) float32 grey array (area-averaged, so resizing and JPEG noise vanish)."""
    return np.asarray(img.convert("L").resize((size, size), Image.Resampling.BOX), dtype=np.float32)


def _pearson(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Pearson correlation along the last axis (0 where either side is constant)."""
    u = u - u.mean(axis=-1, keepdims=True)
    v = v - v.mean(axis=-1, keepdims=True)
    denom = np.linalg.norm(u, axis=-1) * np.linalg.norm(v, axis=-1)
    return np.where(denom > 1e-6, (u * v).sum(axis=-1) / np.maximum(denom, 1e-6), 0.0)


def _crop_offsets(max_crop: float, steps: int) -> tuple[np.ndarray, np.ndarray]:
    grid = np.linspace(0.0, max_crop, steps)
    lo, hi = np.meshgrid(grid, grid, indexing="ij")
    return lo.ravel(), hi.ravel()


def _axis_crop(pa: np.ndarray, pb: np.ndarray, max_crop: float, steps: int) -> tuple[float, float]:
    """The fractions (low side, high side) to crop from profile ``pa`` so that it best matches ``pb``."""
    n = len(pb)
    lo, hi = _crop_offsets(max_crop, steps)
    pos = lo[:, None] + (1 - lo - hi)[:, None] * (np.arange(n) + 0.5)[None, :] / n  # where b's samples fall in a
    sampled = np.interp(pos, (np.arange(len(pa)) + 0.5) / len(pa), pa)
    k = int(np.argmax(_pearson(sampled, pb[None, :])))
    return float(lo[k]), float(hi[k])


def _register_into(a: np.ndarray, b: np.ndarray, size: int, max_crop: float, steps: int) -> float:
    """Correlation of ``b`` with the crop of ``a`` that best matches it (the crop found per axis)."""
    left, right = _axis_crop(a.mean(axis=0), b.mean(axis=0), max_crop, steps)
    top, bottom = _axis_crop(a.mean(axis=1), b.mean(axis=1), max_crop, steps)
    h, w = a.shape
    box = (left * w, top * h, w * (1 - right), h * (1 - bottom))
    crop = Image.fromarray(a, "F").resize((size, size), Image.Resampling.BOX, box=box)
    whole = Image.fromarray(b, "F").resize((size, size), Image.Resampling.BOX)
    return float(_pearson(np.asarray(crop).ravel(), np.asarray(whole).ravel()))


def registered_correlation(a: np.ndarray, b: np.ndarray, size: int = THUMB, max_crop: float = MAX_CROP,
                           steps: int = CROP_STEPS) -> float:
    """Pixel correlation of two grey working copies after undoing a small crop of either.

    Parameters
    ----------
    a, b : ndarray of shape (n, n)
        Grey working copies (``thumbnail``; uint8 or float).
    size : int, default=THUMB
        Side at which the registered images are compared.
    max_crop : float, default=MAX_CROP
        Largest fraction of each side that the registration may crop away.
    steps : int, default=CROP_STEPS
        Crops tried per side, from 0 to ``max_crop``.

    Returns
    -------
    float
        The better of "a cropped to match b" and "b cropped to match a": a Pearson correlation in
        [-1, 1], so brightness and contrast do not count.
    """
    a, b = np.asarray(a, dtype=np.float32), np.asarray(b, dtype=np.float32)
    return max(_register_into(a, b, size, max_crop, steps), _register_into(b, a, size, max_crop, steps))


def thumbnail_correlation(a: np.ndarray, b: np.ndarray, shift: int = SHIFT) -> float:
    """Best Pearson correlation of two thumbnails' centres over shifts of up to ``shift`` pixels."""
    s = shift
    n = a.shape[0]
    core = a[s : n - s, s : n - s].ravel()
    core = core - core.mean()
    core_norm = float(np.linalg.norm(core))
    best = -1.0
    for dy in range(-s, s + 1):
        for dx in range(-s, s + 1):
            other = b[s + dy : n - s + dy, s + dx : n - s + dx].ravel()
            other = other - other.mean()
            denom = core_norm * float(np.linalg.norm(other))
            c = float(core @ other / denom) if denom > 1e-6 else (1.0 if core_norm == 0 and denom == 0 else 0.0)
            best = max(best, c)
    return best


def perceptual_hash(img: Image.Image) -> Any:
    """imagehash's ``phash`` of the image, or None when imagehash is not installed."""
    try:
        import imagehash  # optional: the quality extra
    except ImportError:
        return None
    return imagehash.phash(img)


def candidate_pairs(nb: Neighbours, threshold: float = CANDIDATE_COSINE) -> dict[tuple[int, int], float]:
    """(i, j) with i < j -> cosine, for every neighbour at or above ``threshold``."""
    rows, cols = np.nonzero((nb.similarity >= threshold) & (nb.index >= 0))
    pairs: dict[tuple[int, int], float] = {}
    for r, c in zip(rows.tolist(), cols.tolist(), strict=True):
        j = int(nb.index[r, c])
        pairs[(min(r, j), max(r, j))] = float(nb.similarity[r, c])
    return pairs


def exact_pairs(hashes: Sequence[str | None]) -> list[tuple[int, int]]:
    """Pairs of rows with the same hash: each later row with the first of its group."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, h in enumerate(hashes):
        if h is not None:
            groups[h].append(i)
    return [(g[0], j) for g in groups.values() for j in g[1:]]


def cosine(Xn: np.ndarray, i: int, j: int) -> float:
    return float(np.dot(Xn[i].astype(np.float32), Xn[j].astype(np.float32)))


def find_duplicates(
    Xn: np.ndarray, nb: Neighbours, ids: Sequence[str], splits: Sequence[str], open_image: Opener,
    hashes: Sequence[str | None] | None = None, *, candidate_cosine: float = CANDIDATE_COSINE,
    pixel_correlation: float = PIXEL_CORRELATION, phash_bits: int | None = PHASH_BITS,
    cosine_alone: float = COSINE_ALONE,
) -> tuple[list[dict[str, Any]], DuplicateInfo]:
    """Exact and verified near-duplicate pairs among the rows of ``Xn``.

    Parameters
    ----------
    Xn : ndarray of shape (n, d)
        Unit-length features (``search.normalised``).
    nb : Neighbours
        Every row's nearest rows (``search.nearest`` on ``Xn``).
    ids, splits : sequence of str
        Each row's id (passed to ``open_image``) and split.
    open_image : callable
        ``open_image(id) -> PIL.Image.Image | None`` (None: the image cannot be opened).
    hashes : sequence of str or None, optional
        Content hashes (``hashes.content_hashes``); None = no exact-duplicate check.
    candidate_cosine, pixel_correlation, phash_bits, cosine_alone : float or int
        The thresholds of the module docstring.

    Returns
    -------
    rows : list of dict
        ``{"a": row, "b": row, "similarity": cosine, "exact": bool, "verified_by": str,
        "signal": float or None, "leak": bool}``, ranked leaks first, then by similarity.
    info : DuplicateInfo
    """
    info = DuplicateInfo(search=nb.method, search_seconds=nb.seconds)
    found: dict[tuple[int, int], dict[str, Any]] = {}
    for i, j in exact_pairs(hashes) if hashes is not None else []:
        found[(i, j)] = {"a": i, "b": j, "similarity": cosine(Xn, i, j), "exact": True,
                         "verified_by": "content hash", "signal": 1.0}
    info.exact = len(found)
    same = {p for p in found}
    candidates = {p: s for p, s in candidate_pairs(nb, candidate_cosine).items() if p not in same}
    info.candidates = len(candidates)
    t0 = time.perf_counter()
    # Two passes, so that memory holds a 1 KB gate thumbnail per image, not a 16 KB working copy:
    # the cheap gate (and the hash, when asked for) first, then the registration of the pairs left,
    # whose images are opened again.
    first: dict[int, Any] = {}
    work: dict[int, np.ndarray | None] = {}

    def gate(i: int) -> Any:
        if i not in first:
            img = open_image(ids[i])
            if img is None:
                info.unopened.append(ids[i])
                first[i] = _GONE
            else:
                first[i] = (thumbnail(img, GATE_THUMB), perceptual_hash(img) if phash_bits is not None else None)
        return first[i]

    def working(i: int) -> np.ndarray | None:
        if i not in work:
            img = open_image(ids[i])
            work[i] = thumbnail(img).astype(np.uint8) if img is not None else None  # uint8: 16 KB at 128 px
        return work[i]

    left = []
    for (i, j), sim in sorted(candidates.items(), key=lambda kv: -kv[1]):
        ga, gb = gate(i), gate(j)
        if ga is _GONE or gb is _GONE:
            if sim >= cosine_alone:
                found[(i, j)] = {"a": i, "b": j, "similarity": sim, "exact": False,
                                 "verified_by": "cosine only (image not found)", "signal": None}
                info.unverified += 1
            continue
        bits = int(ga[1] - gb[1]) if ga[1] is not None and gb[1] is not None else None
        info.phash = info.phash or bits is not None
        if thumbnail_correlation(ga[0], gb[0]) >= GATE_CORRELATION and (bits is None or bits <= phash_bits):
            left.append((i, j, sim, bits))
    first.clear()
    for i, j, sim, bits in left:
        wa, wb = working(i), working(j)
        if wa is None or wb is None:  # gone since the first pass
            continue
        signal = registered_correlation(wa, wb)
        if signal >= pixel_correlation:
            found[(i, j)] = {"a": i, "b": j, "similarity": sim, "exact": False,
                             "verified_by": "pixel correlation (registered)" + (" + phash" if bits is not None else ""),
                             "signal": signal, "phash_bits": bits}
            info.verified += 1
    info.verify_seconds = time.perf_counter() - t0
    rows = []
    for r in found.values():
        a, b = sorted((r["a"], r["b"]), key=lambda k: (SPLIT_ORDER.get(splits[k], 3), k))
        leak = splits[a] == "train" and splits[b] in ("val", "test")
        rows.append({**r, "a": a, "b": b, "leak": leak})
    rows.sort(key=lambda r: (not r["leak"], -r["similarity"], r["a"], r["b"]))
    return rows, info
