"""Head registry: ``create_head(name, **params)``, ``list_heads()``; every head is a scikit-learn
classifier that saves without pickle (``save_head``/``load_head``).

Each head module registers its class with ``@register_head(description=...)`` (``heads/registry.py``);
importing the modules here is what registers them.
"""

from __future__ import annotations

from typing import Any

from .base import Head
from .finetune import FinetuneHead  # importing a head module registers its head
from .io import load_head, save_head
from .lgbm import LGBMHead
from .logreg import LogRegHead
from .mlp import MLPHead
from .multilayer import MultiLayerHead
from .neighbors import KNNHead, NCMHead
from .registry import DESCRIPTIONS, HEADS, register_head
from .zeroshot import ZeroShotHead


def create_head(name: str, **params: Any) -> Head:
    """Build the head registered under ``name`` with hyperparameters ``params`` (unfitted)."""
    cls = HEADS.get(name)
    try:
        return cls(**params)
    except TypeError:
        known = sorted(cls().get_params())
        bad = sorted(set(params) - set(known))
        from ..errors import EmbedpipeError

        raise EmbedpipeError(f"head {name} has no parameter {', '.join(bad)}; it takes {', '.join(known)}") from None


def list_heads(pattern: str = "*") -> list[str]:
    """Registered head names matching the fnmatch ``pattern``, sorted."""
    return HEADS.names(pattern)


__all__ = [
    "DESCRIPTIONS",
    "HEADS",
    "FinetuneHead",
    "Head",
    "KNNHead",
    "LGBMHead",
    "LogRegHead",
    "MLPHead",
    "MultiLayerHead",
    "NCMHead",
    "ZeroShotHead",
    "create_head",
    "list_heads",
    "load_head",
    "register_head",
    "save_head",
]
