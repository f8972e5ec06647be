"""Predict on raw images with a saved head: rebuild the backbone recorded in the head file, embed,
and return the top labels with probabilities.

Images are untrusted: each is opened through ``data/safety.open_image``, which refuses a header that
claims more than ``max_pixels`` before decoding (decompression bombs, absurd sizes), and images are
decoded one batch at a time, so memory stays bounded by ``batch_size`` images of at most
``max_pixels`` each. A refused or broken image gets ``error`` in its row; the others are predicted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from .backbones import BackboneConfig, create_backbone
from .core.errors import EmbedpipeError, describe
from .data.loader import to_rgb
from .data.safety import MAX_PIXELS, open_image
from .heads import load_head
from .heads.io import class_names


def predict(
    head_file: str | Path, images: list[str], *, top_k: int = 5, device: str | None = None, batch_size: int = 32,
    max_pixels: int = MAX_PIXELS,
) -> list[dict[str, Any]]:
    """Classify image files with a saved head: rebuild its backbone, embed the images, rank the labels.

    The backbone recorded in the head file is rebuilt (and checked against the one the head was
    trained on), the images are embedded at the head's layer, and each gets its ``top_k`` most likely
    labels. Images are untrusted: one that cannot be read, or whose header claims more than
    ``max_pixels`` pixels, gets an ``error`` in its row without being decoded, and the others are
    still predicted. Memory stays bounded by ``batch_size`` images.

    Parameters
    ----------
    head_file : str or Path
        A head file written by ``train`` (``embedpipe train``).
    images : list of str
        Paths of the image files, in any format Pillow reads.
    top_k : int, default=5
        Labels per image, most likely first.
    device : str or None, default=None
        Torch device for the backbone (``"cpu"``, ``"cuda"``, ``"cuda:1"``); None = as the head file
        records (``"auto"``: CUDA when present).
    batch_size : int, default=32
        Images decoded and embedded together.
    max_pixels : int, default=MAX_PIXELS
        Images whose header claims more pixels than this (64 megapixels by default) are refused
        before decoding (decompression bombs).

    Returns
    -------
    list of dict
        One per image, in the order given: ``{"image": path, "top": [(label, probability), ...]}``,
        or ``{"image": path, "error": reason}`` for an image that could not be used.

    Raises
    ------
    EmbedpipeError
        A head file that cannot be read or records no backbone, or a rebuilt backbone that differs
        from the one the head was trained on (its weights file or preprocessing changed).

    Examples
    --------
    >>> import embedpipe
    >>> result = embedpipe.train(embedpipe.extract("photos", progress=False), "logreg")
    >>> rows = embedpipe.predict(result.path, ["new/a.png", "new/b.png", "missing.png"], top_k=2)
    >>> [row["image"] for row in rows], len(rows[0]["top"])
    (['new/a.png', 'new/b.png', 'missing.png'], 2)
    >>> label, probability = rows[0]["top"][0]
    >>> label in ("cat", "dog", "fox") and 0.0 < probability <= 1.0
    True
    >>> rows[2]["error"].startswith("FileNotFoundError")   # reported in its row; the others predicted
    True
    """
    head, info = load_head(head_file)
    if "backbone" not in info or "layer" not in info:
        raise EmbedpipeError(f"{head_file} does not record its backbone; retrain it with `embedpipe train`")
    config = dict(info["backbone"])
    if device is not None:
        config["device"] = device
    backbone = create_backbone(**{k: v for k, v in config.items() if k in BackboneConfig.__dataclass_fields__})
    if backbone.fingerprint != info.get("backbone_fingerprint"):
        raise EmbedpipeError(
            f"the backbone rebuilt for {head_file} ({backbone.spec}) differs from the one it was trained on "
            "(weights file or preprocessing changed)"
        )
    names = class_names(head.classes_, info.get("label_names"))
    assert names is not None  # load_head refuses label names that do not name the classes
    layers = str(info["layer"]).split(",")  # a multi-layer head's columns are these layers side by side
    results: list[dict[str, Any]] = []
    for start in range(0, len(images), batch_size):  # decode one batch at a time: memory stays bounded
        tensors: list[tuple[int, torch.Tensor]] = []
        for path in images[start : start + batch_size]:
            results.append({"image": path})
            try:
                with open_image(path, max_pixels) as img:
                    tensors.append((len(results) - 1, backbone.transform(to_rgb(img))))
            except Exception as e:  # a bad image is reported in its row; the others are still predicted
                results[-1]["error"] = describe(e)
        if not tensors:
            continue
        feats = backbone.embed(torch.stack([t for _, t in tensors]), layers)
        X = np.concatenate([np.asarray(feats[name], dtype=np.float32).reshape(len(tensors), -1) for name in layers],
                           axis=1)  # a :map layer's rows flattened, as the heads take them
        for (i, _), p in zip(tensors, head.predict_proba(X), strict=True):
            order = np.argsort(-p)[:top_k]
            results[i]["top"] = [(names[j], float(p[j])) for j in order]
    return results
