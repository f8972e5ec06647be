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
    """One dict per image: ``{"image", "top": [(label, probability), ...]}`` or ``{"image", "error"}``.
    ``max_pixels``: images whose header claims more pixels are refused without being decoded."""
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
