"""timm backbones: ``timm:<model-name>`` with hub weights, or a local weights file.

A local file goes through timm's own mechanism (``pretrained_cfg_overlay=dict(file=...)``), the
same path used for the tiny test models. Without a file, ``pretrained=True`` downloads from the hub
(needs internet). Layers: ``pooled`` (pre-logits), ``block<i>`` (the model's feature stages, via
``forward_intermediates``; ``block<i>:map`` keeps them unpooled), ``logits`` when the model has a
classifier. ``tail(layer)`` rebuilds, with their pretrained weights, the blocks after a cached map.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch

from ..core.errors import EmbedpipeError, first_line
from ..core.layers import block_index
from .base import (
    Backbone,
    BackboneConfig,
    Tail,
    add_grids,
    check_weights_file,
    pool_map,
)
from .registry import register_backbone


@register_backbone("timm", "timm:<model-name>, hub weights or --weights FILE")
class TimmBackbone(Backbone):
    family = "timm"

    def __init__(self, config: BackboneConfig, model_name: str) -> None:
        super().__init__(config)
        if not model_name:
            raise EmbedpipeError("timm backbone needs a model name, e.g. timm:resnet50.a1_in1k")
        self.model_name = model_name
        check_weights_file(config.weights)

    def _create(self, **overlay: Any) -> torch.nn.Module:
        import timm  # heavy: loaded with the model, not at import

        if not timm.is_model(self.model_name):
            close = timm.list_models(f"*{self.model_name.split('.')[0]}*")[:5]
            hint = f"close: {', '.join(close)}" if close else "see timm.list_models()"
            raise EmbedpipeError(f"unknown timm model {self.model_name!r}; {hint}")
        if self.config.weights:
            overlay = {"file": self.config.weights, **overlay}
        try:
            return timm.create_model(
                self.model_name, pretrained=True, pretrained_cfg_overlay=overlay or None
            )
        except (OSError, RuntimeError, ValueError) as e:
            where = self.config.weights or "the model hub (needs internet; or pass weights=FILE)"
            raise EmbedpipeError(
                f"could not load weights for timm:{self.model_name} from {where}: "
                f"{first_line(e, 200)}"
            ) from e

    def _load(self) -> None:
        import timm.data  # heavy: loaded with the model, not at import

        model = self._create()
        self._setup(model, timm.data.resolve_data_config(model=model))

    def _setup(self, model: torch.nn.Module, data_cfg: dict[str, Any]) -> None:
        import timm.data  # heavy: loaded with the model, not at import

        if self.config.image_size is not None:  # same crop fraction, another input size
            if self.config.image_size < 32:
                raise EmbedpipeError(f"image size {self.config.image_size} is too small: use 32 px or more")
            if hasattr(model, "pos_embed"):
                raise EmbedpipeError(f"timm:{self.model_name} has a fixed input size (position embeddings); "
                                     "drop image_size")
            data_cfg = {**data_cfg, "input_size": (3, self.config.image_size, self.config.image_size)}
        self._model = model
        self._transform = timm.data.create_transform(**data_cfg, is_training=False)
        self._preprocess = {k: list(v) if isinstance(v, tuple) else v for k, v in data_cfg.items()}
        self._n_blocks = len(getattr(model, "feature_info", []) or [])
        if not hasattr(model, "forward_intermediates"):
            self._n_blocks = 0

    @property
    def has_logits(self) -> bool:
        return getattr(self.model, "num_classes", 0) > 0

    def _weights_id(self) -> str:
        return super()._weights_id() if self.config.weights else f"hub:{self.model_name}"

    def _forward(self, x: torch.Tensor, layers: Sequence[str]) -> dict[str, torch.Tensor]:
        model: Any = self.model
        blocks = sorted({block_index(name) for name in layers if name.startswith("block")})  # libraries return them in depth order
        need_final = "pooled" in layers or "logits" in layers
        out: dict[str, torch.Tensor] = {}
        final = None
        if blocks:
            res = model.forward_intermediates(
                x, indices=blocks, intermediates_only=not need_final, stop_early=not need_final
            )
            final, inters = res if need_final else (None, res)
            for i, t in zip(blocks, inters, strict=True):
                out[f"block{i}"], out[f"block{i}:map"] = pool_map(t), t
                add_grids(out, i, t, layers)
        elif need_final:
            final = model.forward_features(x)
        if "pooled" in layers:
            out["pooled"] = model.forward_head(final, pre_logits=True)
        if "logits" in layers:
            out["logits"] = model.forward_head(final)
        return out

    def tail(self, layer: str) -> torch.nn.Module:
        """EfficientNet-style timm models (``blocks``, ``stage_ends``, ``conv_head``, ``bn2``): the
        single blocks after stage k, then conv_head + bn2 as one unit, then global average pooling.
        forward_intermediates' index k is the output of ``blocks[stage_ends[k] - 1]`` (index 0 of its
        feature count is the stem), so the tail starts at ``blocks[stage_ends[k]]``."""
        model: Any = self.model
        needed = ("blocks", "stage_ends", "conv_head", "bn2")
        if not all(hasattr(model, a) for a in needed):
            return super().tail(layer)

        k = block_index(layer)
        if not 0 <= k < len(model.stage_ends):
            raise EmbedpipeError(f"backbone {self.spec} has no {layer}")
        units: list[torch.nn.Module] = [blk for stage in model.blocks[model.stage_ends[k]:] for blk in stage]
        units.append(torch.nn.Sequential(model.conv_head, model.bn2))
        pool = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(1))
        tail = Tail([copy.deepcopy(u) for u in units], pool).float()
        return tail.to(memory_format=torch.channels_last).requires_grad_(False).eval()
