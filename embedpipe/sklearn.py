"""The scikit-learn transformer over image paths: ``ImageEmbedder`` in any Pipeline or GridSearchCV.

``transform(paths)`` reads each file once, hashes its bytes (sha256), and looks the hash up in the
per-image store (``cache/images.py``) of this backbone, layer, preprocessing and device type. The
misses are embedded in batches through the stages ``extract`` runs (``extraction/decode``: the same
PIL decode at model size, nvJPEG on CUDA; ``extraction/embed``: the same device normalisation and
forward), recorded in the store under its writer lock, and every row comes back from the store, in
the order given. So an image is embedded once per store, whatever the folds, candidates, clones or
joblib worker processes that ask for it.

The object holds only its parameters (it pickles in a few hundred bytes); the backbone is built once
per process, on first use, and shared by every clone in that process. Its model is loaded only when
something is missing from the store: the store's key is remembered per backbone configuration and
weights file, so a process that finds every image stored (a joblib worker, a second search) never
loads it.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin

from .backbones import DEFAULT_BACKBONE, Backbone, create_backbone
from .cache.images import ImageStore, StoreStats, recall_key, remember_key
from .cache.key import digest, feature_key
from .core.errors import EmbedpipeError
from .core.paths import cache_root
from .core.version import __version__
from .data.sources import display_name
from .extraction.decode import (
    Batch,
    DecodeOptions,
    Sample,
    collate,
    decode_bytes_cpu,
    failure_reason,
)
from .extraction.defaults import default_batch_size
from .extraction.embed import BatchDecoder, Embedder, gpu_decoder

CHUNK = 256  # paths read and hashed at a time: memory holds at most this many files' bytes
READ_THREADS = min(8, (os.cpu_count() or 1) + 1)  # file reads and PIL decodes release the GIL
ON_ERROR = ("raise", "nan")

_BACKBONES: dict[tuple[Any, ...], Backbone] = {}  # one backbone per process and configuration


@dataclass
class _Run:
    """What one process needs: the backbone (its model loaded only when something is embedded), its
    store, and the decode and embed stages (built on first use)."""

    backbone: Backbone
    layer: str
    store: ImageStore
    root: Path
    identity: str | None
    verified: bool  # the store's key was computed from the loaded model, not recalled
    stages: tuple[DecodeOptions, BatchDecoder | None, Embedder] | None = None

    def verify(self) -> None:
        """Before embedding, compute the key from the loaded model; if a recalled key was stale (the
        backbone's code changed under the same versions), switch to the right store."""
        if not self.verified:
            self.store = _true_store(self.backbone, self.layer, self.root, self.identity)
            self.layer, self.verified = str(self.store.meta["layer"]), True

    def ready(self) -> tuple[DecodeOptions, BatchDecoder | None, Embedder]:
        if self.stages is None:
            opts, decoder, _ = _decode_path(self.backbone)
            self.stages = (opts, decoder, Embedder(self.backbone, [self.layer], opts,
                                                   decoder.decode_bytes if decoder else None))
        return self.stages


def _decode_path(bb: Backbone) -> tuple[DecodeOptions, BatchDecoder | None, str]:
    """The CPU decode options, the batch decoder (nvJPEG on CUDA) and the decode path's name, as
    ``extract`` chooses them."""
    opts = DecodeOptions(bb.pixel_preprocess, bb.transform, draft=True)
    decoder = gpu_decoder() if opts.pre is not None and bb.device.type == "cuda" else None
    return opts, decoder, opts.path if decoder is None else f"{decoder.path}+{opts.path}"


def _identity(bb: Backbone, layer: str) -> str | None:
    """What decides the store's key, known without loading the model (see cache/images.recall_key);
    None for hub weights, whose identity is a digest of the loaded state_dict."""
    weights = bb.weights_file()
    if weights is None:
        return None
    st = os.stat(weights)
    return digest({"config": bb.config.to_dict(), "weights": [os.path.abspath(weights), st.st_size, st.st_mtime_ns],
                   "device": bb.device.type, "precision": bb.precision, "layer": layer,
                   "versions": {name: metadata.version(name) for name in ("torch", "timm", "open_clip_torch", "h5py")}
                   | {"embedpipe": __version__}})  # installed versions, read without importing timm (2 s)


def _true_store(bb: Backbone, layer: str, root: Path, identity: str | None) -> ImageStore:
    """The store of the key computed from the loaded model (created when new), remembered for
    ``identity``."""
    layer = bb.check_layers([layer])[0]
    if len(bb.shapes[layer]) != 1:
        raise EmbedpipeError(f"layer {layer} is an unpooled map; ImageEmbedder returns vectors: use "
                             f"{layer.removesuffix(':map')} or {layer.removesuffix(':map')}:grid2")
    _, _, decode_path = _decode_path(bb)
    fkey = feature_key(bb.fingerprint, [layer], "float32", compute=bb.compute_provenance(), decode=decode_path)
    store = ImageStore.open(root, bb.spec, fkey, {
        "backbone": bb.config.to_dict(), "backbone_fingerprint": bb.fingerprint, "layer": layer,
        "dim": bb.dims[layer], "dtype": "float32", "decode": decode_path, "preprocess": bb.preprocess,
        "compute": bb.compute_provenance()})
    assert store is not None
    if identity:
        remember_key(root, identity, fkey)
    return store


_RUNS: dict[tuple[Any, ...], _Run] = {}


def _backbone(spec: str, weights: str | None, device: str) -> Backbone:
    key = (spec, weights, device)
    if key not in _BACKBONES:
        _BACKBONES[key] = create_backbone(spec, weights=weights, device=device)
    return _BACKBONES[key]


class ImageEmbedder(TransformerMixin, BaseEstimator):
    """Image paths in, frozen-backbone features out: a cached scikit-learn transformer.

    Each image is looked up by the sha256 of its file's bytes in a persistent per-image store under
    the cache root, keyed by the backbone's fingerprint (spec, weights, preprocessing, precision),
    the layer, the decode path and the device type. Misses are embedded in batches through the same
    decode and embed stages as ``extract`` (GPU when there is one) and stored; the rest are read
    back. ``fit`` learns nothing, so inside ``GridSearchCV`` every image is embedded once across all
    folds and candidates, and a second search embeds nothing.

    Parameters
    ----------
    backbone : str, default="effnet-lite0"
        A backbone spec (``list_backbones()``): ``"effnet-lite0"``, ``"timm:<name>"``,
        ``"open_clip:<arch>[/<tag>]"``.
    layer : str, default="pooled"
        The vector layer to return (``pooled``, ``block<k>``, ``block<k>:grid<G>``, ``logits``).
    cache_dir : str, Path or None, default=None
        The cache root; the store is ``<root>/images/<backbone>-<key>/``. None =
        ``$EMBEDPIPE_CACHE``, else ``$XDG_CACHE_HOME/embedpipe`` (``~/.cache/embedpipe``).
    batch_size : int or None, default=None
        Images per forward pass; None = 256 on a GPU, 64 on a CPU.
    device : str, default="auto"
        ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
    weights : str or None, default=None
        A local weights file for the backbone; None = the backbone's own weights.
    on_error : {"raise", "nan"}, default="raise"
        An image that cannot be read or decoded raises one ``EmbedpipeError`` naming it (after the
        others are stored), or, with ``"nan"``, gives a row of NaN.

    Attributes
    ----------
    n_features_in_ : int
        1: one column of paths.
    feature_names_in_ : ndarray of str
        The column's name, when ``fit`` was given a DataFrame.

    See Also
    --------
    extract : Embed a whole dataset into a cache (for training heads on disk-backed features).

    Examples
    --------
    With a folder ``photos/`` holding one sub-folder of images per class:

    >>> from pathlib import Path
    >>> from sklearn.model_selection import GridSearchCV
    >>> from sklearn.pipeline import make_pipeline
    >>> from embedpipe import create_head
    >>> from embedpipe.sklearn import ImageEmbedder
    >>> paths = sorted(str(p) for p in Path("photos").glob("*/*.png"))
    >>> labels = [Path(p).parent.name for p in paths]
    >>> pipe = make_pipeline(ImageEmbedder(), create_head("logreg"))
    >>> search = GridSearchCV(pipe, {"logreghead__C": [0.1, 1.0]}, cv=3).fit(paths, labels)
    >>> ImageEmbedder().transform(paths[:2]).shape        # read back from the store, nothing embedded
    (2, 1280)
    """

    def __init__(self, backbone: str = DEFAULT_BACKBONE, layer: str = "pooled", cache_dir: str | Path | None = None,
                 batch_size: int | None = None, device: str = "auto", weights: str | None = None,
                 on_error: str = "raise") -> None:
        self.backbone = backbone
        self.layer = layer
        self.cache_dir = cache_dir
        self.batch_size = batch_size
        self.device = device
        self.weights = weights
        self.on_error = on_error

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.requires_fit = False  # stateless: transform works on a fresh instance
        tags.input_tags.one_d_array = True  # a list or Series of paths
        tags.input_tags.two_d_array = True  # a one-column DataFrame or (n, 1) array
        tags.input_tags.string = True
        tags.transformer_tags.preserves_dtype = []  # paths in, float32 out
        return tags

    # -- scikit-learn API --------------------------------------------------------------------
    def fit(self, X: Any, y: Any = None) -> ImageEmbedder:
        """Check the parameters and the paths; learns nothing (the backbone is frozen).

        Parameters
        ----------
        X : list, ndarray, pandas Series or one-column DataFrame of str
            Image file paths.
        y : ignored

        Returns
        -------
        self : ImageEmbedder
        """
        self._check_params()
        _paths(X)
        columns = getattr(X, "columns", None)
        if columns is not None and all(isinstance(c, str) for c in columns):
            self.feature_names_in_ = np.asarray(list(columns), dtype=object)  # as scikit-learn records it
        elif hasattr(self, "feature_names_in_"):
            del self.feature_names_in_
        self.n_features_in_ = 1
        return self

    def transform(self, X: Any) -> np.ndarray:
        """Features of the images at the paths ``X``: one float32 row per path, in order.

        Parameters
        ----------
        X : list, ndarray, pandas Series or one-column DataFrame of str
            Image file paths.

        Returns
        -------
        ndarray of shape (n_paths, dim), float32
            The layer's features; a row of NaN for an unusable image when ``on_error="nan"``.

        Raises
        ------
        EmbedpipeError
            Paths that are not strings, or (``on_error="raise"``) an image that cannot be read or
            decoded, named with its reason.
        """
        self._check_params()
        paths = _paths(X)
        run = self._run()
        parts = [self._transform_chunk(run, paths[start : start + CHUNK]) for start in range(0, len(paths), CHUNK)]
        return np.concatenate(parts) if parts else np.empty((0, run.store.dim), np.float32)

    def fit_transform(self, X: Any, y: Any = None, **fit_params: Any) -> np.ndarray:
        """``fit`` then ``transform``: through the store, like ``transform``."""
        return self.fit(X, y).transform(X)

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        """``<layer>_0`` ... ``<layer>_<dim-1>`` (a ``:`` in the layer name becomes ``_``).

        Parameters
        ----------
        input_features : ignored

        Returns
        -------
        ndarray of str
        """
        dim = self._run().store.dim
        name = self.layer.replace(":", "_")
        return np.asarray([f"{name}_{i}" for i in range(dim)], dtype=object)

    def store_stats(self) -> StoreStats:
        """What this embedder's store holds, counted from its files (``rows`` = images embedded once
        each, ``failed``, ``files``, ``duplicates``: always 0); unaffected by clones and processes."""
        return self._run().store.stats()

    # -- internals ---------------------------------------------------------------------------
    def _check_params(self) -> None:
        if self.on_error not in ON_ERROR:
            raise EmbedpipeError(f"on_error={self.on_error!r} is not one of raise, nan")
        if self.batch_size is not None and (not isinstance(self.batch_size, int) or self.batch_size < 1):
            raise EmbedpipeError(f"batch_size must be a positive integer or None, got {self.batch_size!r}")

    def _run(self) -> _Run:
        """The backbone, store and stages for these parameters, built once per process. When every
        image is already stored, the model is never loaded (the store's key is recalled)."""
        root = cache_root(self.cache_dir)
        key = (self.backbone, self.weights, self.device, self.layer, root)
        if key in _RUNS:
            return _RUNS[key]
        bb = _backbone(self.backbone, self.weights, self.device)
        identity = _identity(bb, self.layer)
        fkey = recall_key(root, identity) if identity else None
        store = ImageStore.open(root, bb.spec, fkey, None) if fkey else None
        verified = store is None
        if store is None:
            store = _true_store(bb, self.layer, root, identity)
        layer = str(store.meta["layer"]) if verified else self.layer  # as asked, until the key is verified
        _RUNS[key] = run = _Run(bb, layer, store, root, identity, verified)
        return run

    def _transform_chunk(self, run: _Run, paths: list[str]) -> np.ndarray:
        with ThreadPoolExecutor(READ_THREADS) as pool:
            read = list(pool.map(_read, paths))
        digests = [d for d, _, _ in read if d]
        if run.store.missing(digests):
            run.verify()
        if run.store.missing(digests):
            with run.store.writing():
                todo = {d: data for d, data, _ in read if d}
                missing = set(run.store.missing(list(todo)))  # re-read under the lock: another writer may have them
                if missing:
                    self._embed(run, [(d, todo[d], paths[i]) for i, (d, _, _) in enumerate(read) if d in missing])
        X = np.full((len(paths), run.store.dim), np.nan, np.float32)
        have = [i for i, (d, _, _) in enumerate(read) if d]
        problems: list[tuple[str, str]] = [(paths[i], reason) for i, (d, _, reason) in enumerate(read) if not d]
        if have:
            feats, ok, errors = run.store.get([read[i][0] for i in have])
            for j, i in enumerate(have):
                if ok[j]:
                    X[i] = feats[j]
                else:
                    problems.append((paths[i], errors[j]))
        if problems and self.on_error == "raise":
            path, reason = problems[0]
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise EmbedpipeError(f"cannot embed image {display_name(path)}: {reason}{more}; fix or remove it, "
                                 "or pass on_error='nan' for rows of NaN")
        return X

    def _embed(self, run: _Run, items: list[tuple[str, bytes, str]]) -> None:
        """Decode + embed the misses (each digest once) in batches; one row file per batch."""
        seen: dict[str, tuple[bytes, str]] = {}
        for d, data, path in items:
            seen.setdefault(d, (data, path))
        digests = list(seen)
        size = self.batch_size or default_batch_size(run.backbone.device)
        opts, decoder, embedder = run.ready()
        with ThreadPoolExecutor(READ_THREADS) as pool:
            for batch_digests, batch in _batches(pool, opts, decoder, digests, seen, size):
                rows: dict[int, np.ndarray] = {}

                def sink(r: list[int], out: dict[str, np.ndarray], rows: dict[int, np.ndarray] = rows) -> None:
                    rows.update(zip(r, out[run.layer], strict=True))

                failed = dict(batch.failed) | dict(embedder.submit(batch, sink))
                embedder.flush()
                feats = np.zeros((len(batch_digests), run.store.dim), np.float32)
                for r, v in rows.items():
                    feats[r] = v
                ok = np.array([r in rows for r in range(len(batch_digests))])
                run.store.append(batch_digests, feats, ok, [failed.get(r, "") for r in range(len(batch_digests))])


def _batches(pool: ThreadPoolExecutor, opts: DecodeOptions, decoder: BatchDecoder | None, digests: list[str],
             seen: dict[str, tuple[bytes, str]], size: int) -> Iterator[tuple[list[str], Batch]]:
    """Decoded batches, the next one decoding in the pool while the caller embeds this one."""
    def decode(part: list[str]) -> Batch:
        return collate(list(pool.map(lambda r: _decode(opts, decoder, r, *seen[part[r]]), range(len(part)))))

    parts = [digests[i : i + size] for i in range(0, len(digests), size)]
    with ThreadPoolExecutor(1) as ahead:
        future = ahead.submit(decode, parts[0]) if parts else None
        for k, part in enumerate(parts):
            assert future is not None
            batch = future.result()
            if k + 1 < len(parts):
                future = ahead.submit(decode, parts[k + 1])
            yield part, batch


def _decode(opts: DecodeOptions, decoder: BatchDecoder | None, row: int, data: bytes, path: str) -> Sample:
    """The decode stage on bytes already read: the batch decoder takes what it can (CUDA JPEGs)."""
    if decoder is not None and decoder.route(data):
        return Sample(row, data=data, name=path)
    return decode_bytes_cpu(row, data, opts, path)


def _read(path: str) -> tuple[str, bytes, str]:
    """(sha256 hex, bytes, "") of a file, or ("", b"", reason) when it cannot be read."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except Exception as e:  # a missing or unreadable file is the caller's error to word, not a crash
        return "", b"", failure_reason(e)
    if not data:
        return "", b"", "empty file"
    return hashlib.sha256(data).hexdigest(), data, ""


def _paths(X: Any) -> list[str]:
    """Image paths from a list, ndarray, pandas Series or one-column DataFrame, as a list of str."""
    if hasattr(X, "columns"):  # a DataFrame (pandas, or anything with columns and to_numpy)
        if len(X.columns) != 1:
            raise EmbedpipeError(f"ImageEmbedder takes one column of image paths, got {len(X.columns)} columns")
        X = X.iloc[:, 0] if hasattr(X, "iloc") else X[X.columns[0]]
    if hasattr(X, "to_numpy") and not isinstance(X, np.ndarray):
        X = X.to_numpy()
    if isinstance(X, (str, os.PathLike)):
        raise EmbedpipeError("ImageEmbedder takes a list of image paths, not one path: wrap it in a list")
    arr = np.asarray(X, dtype=object)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise EmbedpipeError(f"ImageEmbedder takes a 1-D list of image paths, got an array of shape {arr.shape}")
    bad = [v for v in arr if not isinstance(v, (str, os.PathLike))]
    if bad:
        raise EmbedpipeError(f"ImageEmbedder takes image paths (str or Path), got {type(bad[0]).__name__} "
                             f"{str(bad[0])[:40]!r}")
    return [os.fspath(v) for v in arr]

