"""Predict on raw images with a saved head: rebuild the backbone recorded in the head file, embed,
and return the top labels with probabilities."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from .backbones import BackboneConfig, create_backbone
from .data.loader import to_rgb
from .errors import EmbedpipeError
from .heads import load_head


def predict(
    head_file: str | Path, images: list[str], *, top_k: int = 5, device: str | None = None, batch_size: int = 32
) -> list[dict[str, Any]]:
    """One dict per image: ``{"image", "top": [(label, probability), ...]}`` or ``{"image", "error"}``."""
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
    names = list(info.get("label_names", []))
    results: list[dict[str, Any]] = []
    tensors: list[tuple[int, torch.Tensor]] = []
    for path in images:
        try:
            with Image.open(path) as img:
                img.load()
                tensors.append((len(results), backbone.transform(to_rgb(img))))
            results.append({"image": path})
        except Exception as e:
            results.append({"image": path, "error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"})
    layers = str(info["layer"]).split(",")  # a multi-layer head's columns are these layers side by side
    for start in range(0, len(tensors), batch_size):
        chunk = tensors[start : start + batch_size]
        feats = backbone.embed(torch.stack([t for _, t in chunk]), layers)
        X = np.concatenate([np.asarray(feats[name], dtype=np.float32) for name in layers], axis=1)
        proba = head.predict_proba(X)
        for (i, _), p in zip(chunk, proba, strict=True):
            order = np.argsort(-p)[:top_k]
            results[i]["top"] = [(names[int(head.classes_[j])] if names else str(head.classes_[j]), float(p[j]))
                                 for j in order]
    return results
