"""Backbone registry: ``create_backbone(spec)`` and ``list_backbones()``.

A spec names its source explicitly: ``open_clip:ViT-B-32/laion2b_s34b_b79k``,
``timm:resnet50.a1_in1k``, or the registered alias ``effnet-lite0`` (the offline default).
The families are lazy registry entries (``backbones/registry.py``): listing them imports no torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..core.lazy import lazy_exports
from .registry import BACKBONES, DESCRIPTIONS, register_backbone

if TYPE_CHECKING:  # what the lazy names below are, for type checkers and IDEs
    from .base import Backbone, BackboneConfig

DEFAULT_BACKBONE = "effnet-lite0"

# Backbone and BackboneConfig live beside torch (backbones/base.py): each loads on first use.
__getattr__, __dir__ = lazy_exports(__name__, {"Backbone": ".base", "BackboneConfig": ".base"})


def create_backbone(spec: str = DEFAULT_BACKBONE, **options: Any) -> Backbone:
    """Build (lazily) the backbone a spec names. Options are BackboneConfig fields."""
    family, _, arg = spec.partition(":")
    factory = BACKBONES.get(family)
    from .base import BackboneConfig  # torch: imported when a backbone is built, not when listed

    return factory(BackboneConfig(spec=spec, **options), arg)


def list_backbones(pattern: str = "*") -> list[str]:
    """Registered backbone families matching the fnmatch ``pattern``, sorted."""
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
