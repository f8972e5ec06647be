"""Zero-shot classification with an open_clip backbone: no training.

Class names go through prompt templates and the text encoder; the normalised mean text embedding of
each class is its classifier weight, and ``predict_proba`` is ``softmax(logit_scale * cos(x, w))``,
as in CLIP. ``fit`` only records the classes and builds (or loads) the text weights. They are cached in
``text_cache`` (a folder; ``embedpipe train`` uses ``<cache>/text/``) under a key of the backbone
fingerprint, templates and class names, so a second fit does not run the text encoder.

``embedpipe train`` fills ``backbone``, ``weights``, ``precision``, ``class_names`` and ``text_cache`` from
the cache (see ``context_params``), so ``--head zeroshot`` needs no parameters.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from .base import ArraySpec, Head, State, StateSpec, softmax_np
from .neighbors import l2_normalize
from .registry import register_head

# The CLIP prompt-engineering notebook's short ImageNet set, plus the plain "a photo of a {}."
DEFAULT_TEMPLATES = (
    "a photo of a {}.",
    "itap of a {}.",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
)


@register_head(description="open_clip zero-shot: class names through prompts and the text encoder")
class ZeroShotHead(Head):
    name = "zeroshot"

    def __init__(
        self,
        backbone: str | None = None,
        weights: str | None = None,
        precision: str = "auto",
        class_names: tuple[str, ...] | None = None,
        templates: tuple[str, ...] = DEFAULT_TEMPLATES,
        logit_scale: float = 100.0,
        text_cache: str | None = None,
        device: str = "auto",
    ) -> None:
        self.backbone = backbone  # open_clip spec whose text tower names the classes
        self.weights = weights  # its local weights file, if any
        self.precision = precision  # as the image features were made
        self.class_names = class_names  # name of label i; None = str(label)
        self.templates = templates  # prompts with {} for the class name
        self.logit_scale = logit_scale  # CLIP's learned temperature is about 100
        self.text_cache = text_cache  # folder for cached text weights; None = no caching
        self.device = device  # auto = CUDA when present

    @classmethod
    def context_params(cls, cache: Any, layer: str) -> dict[str, Any]:
        bb = cache.backbone
        return {"backbone": bb.get("spec"), "weights": bb.get("weights"), "precision": bb.get("precision", "auto"),
                "class_names": tuple(cache.label_names), "text_cache": str(Path(cache.path) / "text")}

    def _names(self) -> list[str]:
        if self.class_names is None:
            return [str(c) for c in self.classes_]
        if self.classes_.dtype.kind not in "iu" or self.classes_.min() < 0 or self.classes_.max() >= len(self.class_names):
            raise ValueError(f"zeroshot: labels must be indices into the {len(self.class_names)} class_names")
        return [self.class_names[int(c)] for c in self.classes_]

    def _text_weights(self, names: list[str]) -> np.ndarray:
        from ..backbones import create_backbone
        from ..cache.key import digest

        if not self.backbone or not self.backbone.startswith("open_clip:"):
            raise ValueError("zeroshot needs an open_clip backbone (backbone='open_clip:<arch>/<tag>'); "
                             "`embedpipe train` takes it from the cache")
        bb: Any = create_backbone(self.backbone, weights=self.weights, precision=self.precision, device=self.device)
        path = None
        if self.text_cache:
            key = digest({"backbone": bb.fingerprint, "templates": list(self.templates), "names": names})
            path = Path(self.text_cache) / f"{key[:24]}.npy"
            if path.is_file():
                return np.load(path, allow_pickle=False)
        W = bb.text_classifier(names, self.templates)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".tmp.npy")
            np.save(tmp, W)
            os.replace(tmp, path)
        return W

    def _fit(self, X: np.ndarray, y: np.ndarray, X_val: np.ndarray | None, y_val: np.ndarray | None) -> None:
        W = self._text_weights(self._names())
        if W.shape[1] != X.shape[1]:
            raise ValueError(f"zeroshot: the features have {X.shape[1]} dims, the text encoder gives {W.shape[1]}; "
                             "use the pooled layer of the same open_clip backbone")
        self.text_weights_ = W.astype(np.float32)

    def _predict_proba(self, X: np.ndarray) -> np.ndarray:
        return softmax_np(self.logit_scale * l2_normalize(X) @ self.text_weights_.T)

    def _get_state(self) -> State:
        return {}, {"text_weights_": self.text_weights_}

    def _state_spec(self) -> StateSpec:
        return {}, {"text_weights_": ArraySpec(("k", "d"))}

    def _set_state(self, state: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        self.text_weights_ = arrays["text_weights_"]
