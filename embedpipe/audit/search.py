"""Nearest neighbours by cosine over a cache's features, in flat memory.

``nearest(X, k)`` returns every row's ``k`` nearest other rows (cosine similarity, largest first).
The method is chosen by the number of rows (``EXACT_MAX_ROWS``, ``choose_method``):

* ``exact``: all pairs, in square blocks of ``BLOCK_ROWS`` rows (a block's similarities are
  ``BLOCK_ROWS**2`` float32 values: 64 MB), only the blocks on and above the diagonal (each
  similarity is used for both of its rows), with torch matmuls on the GPU when there is one, else on
  the CPU. Memory is the features plus one block, never n x n; time grows as n^2.
* ``ivf-pca``: an inverted file, as FAISS's IVF: PCA to ``PCA_DIMS`` dimensions (fitted on a
  sample), k-means cells (about ``CELL_ROWS`` rows each, trained on a sample), every row probes its
  ``PROBES`` nearest cells and is compared with the rows of those cells in PCA space; its
  ``RESCORE`` best are re-scored with the exact cosine on the full features. Time grows as
  n x PROBES x CELL_ROWS; memory is the features plus the (n, PCA_DIMS) projection.
* ``faiss-ivf``: the same PCA, cells and probes, with FAISS's ``IndexIVFFlat`` doing the k-means and
  the scan in C++ (at 50,000 x 1,280 on 2 cores: 5.5 s against torch's 36 s for the same scan). The
  default above ``EXACT_MAX_ROWS`` when FAISS (the ``quality`` extra) is installed, else ivf-pca.

The features are normalised once into a float16 copy (half the bytes of float32); every matmul reads
blocks of it converted to float32.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from ..core.errors import EmbedpipeError
from ..core.log import get_logger

_logger = get_logger(__name__)

# Defaults, each with its reason (measured in benchmarks/audit.py; docs/audit.md has the numbers).
EXACT_MAX_ROWS = 50_000  # exact all-pairs search up to this many rows (50k x 1,280: about a minute on 2 cores)
BLOCK_ROWS = 4096  # rows per block of the exact search: a 4096 x 4096 float32 block is 64 MB
PCA_DIMS = 128  # ivf-pca's search space: copies stay each other's neighbours, the scan is 10x cheaper than 1,280
PCA_SAMPLE = 20_000  # rows the PCA is fitted on (its covariance is d x d whatever n is)
PCA_OVERSAMPLE = 16  # extra directions of the subspace iteration: the leading ones converge faster
PCA_ITERS = 4  # subspace iterations: the leading 128 directions of pooled features settle by then
CELL_ROWS = 256  # rows per k-means cell on average: n / CELL_ROWS cells
PROBES = 8  # cells each row searches: planted copies found >= 0.99 at 200k rows
KMEANS_SAMPLE = 64  # training rows per cell for k-means (FAISS warns below 39)
KMEANS_ITERS = 10  # Lloyd iterations: cells change little after that
RESCORE = 8  # PCA-space candidates per row re-scored with the exact cosine: half the time of 16, and the
# top-1 neighbour agrees with exact search for 99.9 % of 30,000 synthetic rows (top-3: 98.8 %)
QUERY_BLOCK = 8192  # rows per block where a step works on a block of rows at a time
RESCORE_BLOCK = 1024  # rows per re-scoring block: 1024 x RESCORE x 1,280 gathered float32 values = 42 MB
SEED = 0  # PCA and k-means samples: the same cache gives the same neighbours


@dataclass(frozen=True)
class Neighbours:
    """Every row's ``k`` nearest other rows: ``index`` (n, k) int64 (-1 where fewer exist) and
    ``similarity`` (n, k) float32 cosine, largest first; ``method`` names how they were found."""

    index: np.ndarray
    similarity: np.ndarray
    method: str
    seconds: float


def normalised(X: np.ndarray, inplace: bool = False) -> np.ndarray:
    """Rows scaled to unit length, as float16 (a zero row stays zero), computed block by block;
    ``inplace`` overwrites a float16 ``X`` instead of copying it."""
    out = X if inplace and X.dtype == np.float16 else np.empty(X.shape, dtype=np.float16)
    for start in range(0, len(X), QUERY_BLOCK):
        block = np.asarray(X[start : start + QUERY_BLOCK], dtype=np.float32)
        norms = np.linalg.norm(block, axis=1, keepdims=True)
        out[start : start + QUERY_BLOCK] = block / np.maximum(norms, 1e-12)
    return out


def _blocks(n: int, size: int) -> Iterator[tuple[int, int]]:
    for start in range(0, n, size):
        yield start, min(n, start + size)


def _merge(vals: torch.Tensor, idx: torch.Tensor, new_vals: torch.Tensor, new_idx: torch.Tensor,
           k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` largest of two candidate lists per row."""
    all_vals = torch.cat([vals, new_vals], dim=1)
    all_idx = torch.cat([idx, new_idx], dim=1)
    top = torch.topk(all_vals, k, dim=1)
    return top.values, torch.gather(all_idx, 1, top.indices)


def _device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def exact(Xn: np.ndarray, k: int, device: str = "auto", progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """All-pairs top-``k`` by blocks on and above the diagonal (see the module docstring)."""
    dev = _device(device)
    n = len(Xn)
    vals = torch.full((n, k), -math.inf, device=dev)
    idx = torch.full((n, k), -1, dtype=torch.int64, device=dev)
    spans = list(_blocks(n, BLOCK_ROWS))
    bar = _bar(progress, len(spans) * (len(spans) + 1) // 2, "near-duplicate search (exact)")
    for bi, (a0, a1) in enumerate(spans):
        A = torch.from_numpy(Xn[a0:a1]).to(dev).float()
        for b0, b1 in spans[bi:]:
            B = A if b0 == a0 else torch.from_numpy(Xn[b0:b1]).to(dev).float()
            S = A @ B.T
            if b0 == a0:
                S.fill_diagonal_(-math.inf)
            kk = min(k, S.shape[1])
            top = torch.topk(S, kk, dim=1)
            vals[a0:a1], idx[a0:a1] = _merge(vals[a0:a1], idx[a0:a1], top.values, top.indices + b0, k)
            if b0 != a0:
                kk = min(k, S.shape[0])
                top = torch.topk(S.T, kk, dim=1)
                vals[b0:b1], idx[b0:b1] = _merge(vals[b0:b1], idx[b0:b1], top.values, top.indices + a0, k)
            bar.update(1)
    bar.close()
    return idx.cpu().numpy(), vals.cpu().numpy()


def _pca(Xn: np.ndarray, dims: int, rng: np.random.Generator, dev: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, components (d, dims)) of a sample of rows, by subspace iteration on the covariance
    (a few matmuls: a full eigendecomposition of a 1,280 x 1,280 matrix takes 10-40 s on 2 busy cores)."""
    sample = np.sort(rng.choice(len(Xn), min(len(Xn), PCA_SAMPLE), replace=False))
    S = torch.from_numpy(Xn[sample]).to(dev).float()
    mean = S.mean(0)
    S -= mean
    cov = S.T @ S / max(1, len(S) - 1)
    gen = torch.Generator(device="cpu").manual_seed(SEED)
    Q = torch.randn(cov.shape[0], min(cov.shape[0], dims + PCA_OVERSAMPLE), generator=gen).to(dev)
    for _ in range(PCA_ITERS):
        Q, _ = torch.linalg.qr(cov @ Q)
    small = (Q.T @ cov @ Q).double().cpu().numpy()
    _, vecs = np.linalg.eigh((small + small.T) / 2)  # Rayleigh-Ritz on the small subspace; ascending
    top = torch.from_numpy(np.ascontiguousarray(vecs[:, ::-1][:, :dims])).float().to(dev)
    return mean, (Q @ top).contiguous()


def _project(Xn: np.ndarray, mean: torch.Tensor, comps: torch.Tensor, dev: torch.device) -> torch.Tensor:
    out = torch.empty((len(Xn), comps.shape[1]), device=dev)
    for a0, a1 in _blocks(len(Xn), QUERY_BLOCK):
        out[a0:a1] = (torch.from_numpy(Xn[a0:a1]).to(dev).float() - mean) @ comps
    return out


def _kmeans(P: torch.Tensor, cells: int, rng: np.random.Generator) -> torch.Tensor:
    """Centroids (cells, dims) by Lloyd's algorithm on a sample of the projected rows."""
    sample = torch.from_numpy(rng.choice(len(P), min(len(P), cells * KMEANS_SAMPLE), replace=False)).to(P.device)
    T = P[sample]
    C = T[torch.from_numpy(rng.choice(len(T), cells, replace=False)).to(P.device)].clone()
    for _ in range(KMEANS_ITERS):
        assign = _closest(T, C, 1)[:, 0]
        sums = torch.zeros_like(C).index_add_(0, assign, T)
        counts = torch.bincount(assign, minlength=cells).float()
        empty = counts == 0
        C = torch.where(empty[:, None], C, sums / counts.clamp(min=1)[:, None])
    return C


def _closest(P: torch.Tensor, C: torch.Tensor, p: int) -> torch.Tensor:
    """The ``p`` nearest centroids (Euclidean) of every row, block by block."""
    out = torch.empty((len(P), p), dtype=torch.int64, device=P.device)
    c2 = (C * C).sum(1)
    for a0, a1 in _blocks(len(P), QUERY_BLOCK):
        d = c2[None, :] - 2 * P[a0:a1] @ C.T  # |x|^2 is the same for every centroid of a row
        out[a0:a1] = torch.topk(d, p, dim=1, largest=False).indices
    return out


def ivf_pca(Xn: np.ndarray, k: int, device: str = "auto", progress: bool = False, *,
            probes: int = PROBES, cell_rows: int = CELL_ROWS, dims: int = PCA_DIMS,
            rescore: int = RESCORE) -> tuple[np.ndarray, np.ndarray]:
    """Approximate top-``k`` through PCA + k-means cells + exact re-scoring (module docstring)."""
    dev = _device(device)
    n, d = Xn.shape
    rng = np.random.default_rng(SEED)
    dims = min(dims, d)
    mean, comps = _pca(Xn, dims, rng, dev)
    P = _project(Xn, mean, comps, dev)
    cells = max(1, min(n // cell_rows, n // 2))
    C = _kmeans(P, cells, rng)
    probes = min(probes, cells)
    probed = _closest(P, C, probes)
    primary = probed[:, 0]
    order = torch.argsort(primary)
    starts = torch.searchsorted(primary[order], torch.arange(cells + 1, device=dev))
    # queries by cell: (cell, row) for every probe, sorted by cell
    q_cell = probed.reshape(-1)
    q_row = torch.arange(n, device=dev).repeat_interleave(probes)
    q_order = torch.argsort(q_cell)
    q_cell, q_row = q_cell[q_order], q_row[q_order]
    q_starts = torch.searchsorted(q_cell, torch.arange(cells + 1, device=dev))
    r = min(rescore, n - 1)
    cand_vals = torch.full((n, r), -math.inf, device=dev)
    cand_idx = torch.full((n, r), -1, dtype=torch.int64, device=dev)
    bar = _bar(progress, cells, "near-duplicate search (ivf-pca)")
    for c in range(cells):
        members = order[starts[c] : starts[c + 1]]
        queries = q_row[q_starts[c] : q_starts[c + 1]]
        bar.update(1)
        if len(members) == 0 or len(queries) == 0:
            continue
        M = P[members]
        for a0, a1 in _blocks(len(queries), QUERY_BLOCK):
            q = queries[a0:a1]
            S = P[q] @ M.T - 0.5 * (M * M).sum(1)[None, :]  # = -|q - m|^2 / 2 up to a per-row constant
            S[q[:, None] == members[None, :]] = -math.inf
            kk = min(r, S.shape[1])
            top = torch.topk(S, kk, dim=1)
            # a row's running list is only touched by this block once: its probes are distinct cells
            cand_vals[q], cand_idx[q] = _merge(cand_vals[q], cand_idx[q], top.values, members[top.indices], r)
    bar.close()
    del P
    return _rescore(Xn, cand_idx, k, dev)


def _rescore(Xn: np.ndarray, cand_idx: torch.Tensor, k: int, dev: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best of each row's candidates (-1 = none) by the exact cosine on the full features."""
    n = len(Xn)
    idx = np.full((n, k), -1, dtype=np.int64)
    vals = np.full((n, k), -np.inf, dtype=np.float32)
    for a0, a1 in _blocks(n, RESCORE_BLOCK):
        ci = cand_idx[a0:a1].to(dev)
        A = torch.from_numpy(Xn[a0:a1]).to(dev).float()
        B = torch.from_numpy(Xn[ci.clamp(min=0).cpu().numpy()]).to(dev).float()  # (rows, r, d)
        s = torch.einsum("nd,nrd->nr", A, B)
        s[(ci < 0) | (ci == torch.arange(a0, a1, device=dev)[:, None])] = -math.inf
        top = torch.topk(s, min(k, s.shape[1]), dim=1)
        kk = top.values.shape[1]
        vals[a0:a1, :kk] = top.values.cpu().numpy()
        idx[a0:a1, :kk] = torch.gather(ci, 1, top.indices).cpu().numpy()
    idx[~np.isfinite(vals)] = -1
    return idx, vals


def faiss_ivf(Xn: np.ndarray, k: int, device: str = "auto", progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Approximate top-``k``: the PCA of ``ivf_pca``, then FAISS's IVFFlat (the same cells and probes,
    scanned in C++: 6x faster than torch's per-cell matmuls at 50,000 rows), then exact re-scoring."""
    import faiss  # optional: the quality extra

    dev = torch.device("cpu")
    n, d = Xn.shape
    rng = np.random.default_rng(SEED)
    mean, comps = _pca(Xn, min(PCA_DIMS, d), rng, dev)
    P = _project(Xn, mean, comps, dev).numpy()
    cells = max(1, min(n // CELL_ROWS, n // 2))
    quantizer = faiss.IndexFlatL2(P.shape[1])
    index = faiss.IndexIVFFlat(quantizer, P.shape[1], cells)
    index.cp.seed = SEED
    index.train(P[np.sort(rng.choice(n, min(n, cells * KMEANS_SAMPLE), replace=False))])
    index.add(P)
    index.nprobe = min(PROBES, cells)
    _, cand = index.search(P, min(RESCORE + 1, n))  # +1: a row finds itself first
    del P, index
    return _rescore(Xn, torch.from_numpy(cand), k, dev)


def nearest(X: np.ndarray, k: int = 3, *, method: str = "auto", device: str = "auto",
            progress: bool = False, inplace: bool = False) -> Neighbours:
    """Every row's ``k`` nearest other rows by cosine similarity.

    Parameters
    ----------
    X : ndarray of shape (n, d)
        Features (float16 or float32); normalised here.
    k : int, default=3
        Neighbours per row.
    method : {"auto", "exact", "faiss-ivf", "ivf-pca"}, default="auto"
        ``auto``: exact up to ``EXACT_MAX_ROWS`` rows (or on a GPU), above that faiss-ivf when FAISS
        is installed, else ivf-pca (the same method in torch, slower).
    device : str, default="auto"
        Where the matmuls run: ``auto`` (CUDA when present), ``cpu`` or ``cuda[:N]``.
    progress : bool, default=False
        A progress bar over the blocks.
    inplace : bool, default=False
        Normalise a float16 ``X`` in place (no copy of the features).

    Returns
    -------
    Neighbours
        ``index`` and ``similarity`` of shape (n, k), the method used and the seconds taken.
    """
    n = len(X)
    if n < 2:
        raise EmbedpipeError(f"near-duplicate search needs at least 2 rows, the cache has {n}")
    if method == "auto":
        method = choose_method(n, device)
    if method not in METHODS:
        raise EmbedpipeError(f"unknown search method {method!r}: use auto, {', '.join(METHODS)}")
    if method == "faiss-ivf" and not has_faiss():
        raise EmbedpipeError('search method faiss-ivf needs FAISS: pip install "embedpipe[quality]"')
    k = min(k, n - 1)
    t0 = time.perf_counter()
    Xn = normalised(X, inplace)
    with torch.inference_mode():
        idx, vals = {"exact": exact, "faiss-ivf": faiss_ivf, "ivf-pca": ivf_pca}[method](Xn, k, device, progress)
    return Neighbours(idx, vals, method, time.perf_counter() - t0)


METHODS = ("exact", "faiss-ivf", "ivf-pca")


def has_faiss() -> bool:
    import importlib.util  # only to ask whether the optional FAISS is installed

    return importlib.util.find_spec("faiss") is not None


def choose_method(n: int, device: str = "auto") -> str:
    """``exact`` up to ``EXACT_MAX_ROWS`` rows or on a GPU; else ``faiss-ivf``, or ``ivf-pca`` (with a
    warning naming the extra) when FAISS is not installed."""
    if n <= EXACT_MAX_ROWS or _device(device).type == "cuda":
        return "exact"
    if has_faiss():
        return "faiss-ivf"
    _logger.warning('FAISS is not installed: searching %d rows with ivf-pca in torch, several times slower; '
                    'pip install "embedpipe[quality]" adds it', n)
    return "ivf-pca"


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _bar(progress: bool, total: int, desc: str) -> _NoBar:
    if not progress:
        return _NoBar()
    from tqdm.auto import tqdm  # only when a bar is shown

    return tqdm(total=total, desc=desc, unit="block", leave=False)  # type: ignore[return-value]
