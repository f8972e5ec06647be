"""open_clip backbones: ``open_clip:<arch>[/<pretrained-tag>]`` or a local checkpoint file.

The tag is resolved (and downloaded, where there is internet) by open_clip itself; ``--weights FILE``
is passed as open_clip's file-path ``pretrained``. ``open_clip:local-dir:/path`` uses open_clip's own
local-directory schema (config + weights in one folder). Layers: ``pooled`` (``encode_image``, not
normalised), ``block<i>`` (transformer blocks / ResNet stages, via ``forward_intermediates``).
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.errors import EmbedpipeError, first_line
from ..core.layers import block_index
from .base import (
    Backbone,
    BackboneConfig,
    add_grids,
    check_weights_file,
    file_digest,
    pool_map,
)
from .registry import register_backbone

# Small architecture configs shipped with embedpipe (e.g. the tiny random-weight test model).
CONFIG_DIR = Path(__file__).with_name("open_clip_configs")


@register_backbone("open_clip", "open_clip:<arch>[/<tag>], tag weights or --weights FILE")
class OpenClipBackbone(Backbone):
    family = "open_clip"

    def __init__(self, config: BackboneConfig, name: str) -> None:
        super().__init__(config)
        if name.startswith(("local-dir:", "hf-hub:")):
            self.arch, self.tag = name, None
        else:
            self.arch, _, tag = name.partition("/")
            self.tag = tag or None
        if not self.arch:
            raise EmbedpipeError("open_clip backbone needs an architecture, e.g. open_clip:ViT-B-32")
        if self.tag and config.weights:
            raise EmbedpipeError("give either a pretrained tag or weights=FILE, not both")
        check_weights_file(config.weights)
        if config.image_size is not None:
            raise EmbedpipeError("open_clip models have a fixed input size; image_size is for timm convnets")

    def _load(self) -> None:
        import open_clip  # heavy (pulls in its tokenizers): loaded with the model

        open_clip.add_model_config(CONFIG_DIR)
        pretrained = self.config.weights or self.tag
        if not self.arch.startswith(("local-dir:", "hf-hub:")) and self.arch not in open_clip.list_models():

            close = difflib.get_close_matches(self.arch, open_clip.list_models(), n=3)
            raise EmbedpipeError(f"unknown open_clip architecture {self.arch!r}; close: {close}")
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(
                self.arch, pretrained=pretrained
            )
        except (OSError, RuntimeError, ValueError) as e:
            raise EmbedpipeError(
                f"could not build open_clip:{self.arch} with weights {pretrained or 'none'}: "
                f"{first_line(e, 200)}"
            ) from e
        if pretrained is None and not self.arch.startswith(("local-dir:", "hf-hub:")):
            raise EmbedpipeError(
                f"open_clip:{self.arch} has no weights; give a tag (open_clip:{self.arch}/<tag>, "
                f"see open_clip.list_pretrained()) or weights=FILE"
            )
        self._model = model
        self._transform = preprocess
        visual: Any = model.visual
        cfg = getattr(visual, "preprocess_cfg", {}) or {}
        size = visual.image_size
        self._preprocess = {
            "input_size": [3, *(size if isinstance(size, list | tuple) else (size, size))],
            **{k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()},
            "transform": repr(preprocess),
        }
        self._n_blocks = self._count_blocks(visual)

    @staticmethod
    def _count_blocks(visual: Any) -> int:
        if not hasattr(visual, "forward_intermediates"):
            return 0
        transformer = getattr(visual, "transformer", None)
        if transformer is not None and hasattr(transformer, "resblocks"):
            return len(transformer.resblocks)
        size = visual.image_size
        size = size[-1] if isinstance(size, list | tuple) else size
        with torch.inference_mode():
            out = visual.forward_intermediates(torch.zeros(1, 3, size, size), intermediates_only=True)
        return len(out["image_intermediates"])

    def _weights_id(self) -> str:
        if self.config.weights:
            return super()._weights_id()
        if self.arch.startswith("local-dir:"):  # the folder's own files: config and checkpoint(s)
            folder = Path(self.arch.partition(":")[2])
            files = sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []
            return "local-dir:" + ",".join(f"{p.name}={file_digest(str(p))}" for p in files)
        return f"tag:{self.arch}/{self.tag}"

    @torch.inference_mode()
    def text_classifier(self, class_names: Sequence[str], templates: Sequence[str]) -> np.ndarray:
        """Zero-shot weights (k, d): per class, the normalised mean of the normalised text embeddings
        of every template filled with the class name (open_clip's build_zero_shot_classifier)."""
        import open_clip  # heavy (pulls in its tokenizers): loaded with the model
        from open_clip.zero_shot_classifier import build_zero_shot_classifier

        model: Any = self.model
        tokenizer = open_clip.get_tokenizer(self.arch)
        with torch.autocast(device_type=self.device.type, enabled=False):
            weights = build_zero_shot_classifier(model, tokenizer, list(class_names), list(templates),
                                                 num_classes_per_batch=64, device=self.device)
        return weights.T.float().cpu().numpy()

    def _forward(self, x: torch.Tensor, layers: Sequence[str]) -> dict[str, torch.Tensor]:
        model: Any = self.model
        blocks = sorted({block_index(name) for name in layers if name.startswith("block")})  # libraries return them in depth order
        if not blocks:
            return {"pooled": model.encode_image(x)}
        res = model.visual.forward_intermediates(
            x, indices=blocks, intermediates_only="pooled" not in layers
        )
        out: dict[str, torch.Tensor] = {}
        for i, t in zip(blocks, res["image_intermediates"], strict=True):  # ViT tokens come as (B, C, h, w)
            out[f"block{i}"] = pool_map(t)
            if t.ndim == 4:
                add_grids(out, i, t, layers)
            out[f"block{i}:map"] = t.flatten(2).transpose(1, 2) if t.ndim == 4 else t  # (B, L, C)
        if "pooled" in layers:
            out["pooled"] = res["image_features"]
        return out
