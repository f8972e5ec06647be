"""Head registry: ``create_head(name, **params)``, ``list_heads()``; every head is a scikit-learn
classifier that saves without pickle (``save_head``/``load_head``).

Each head module registers its class with ``@register_head(description=...)`` (``heads/registry.py``);
importing the modules here is what registers them. Zero-shot classification is not a head (nothing is
fitted): ``ZeroShotClassifier`` is built from class names, and ``embedpipe train --head zeroshot``
reaches it through ``CLASSIFIERS`` (``classifier_class``/``create_classifier``), as do head files.
"""

from __future__ import annotations

from typing import Any

from ..core.errors import EmbedpipeError
from .base import Head
from .finetune import FinetuneHead  # importing a head module registers its head
from .io import load_head, save_head
from .lgbm import LGBMHead
from .logreg import LogRegHead
from .mlp import MLPHead
from .multilayer import MultiLayerHead
from .neighbors import KNNHead, NCMHead
from .registry import DESCRIPTIONS, HEADS, register_head
from .ridge import RidgeHead
from .zeroshot import ZeroShotClassifier

# Classifiers that `embedpipe train --head NAME` builds and head files hold, but that are not heads,
# and their one-line descriptions (`embedpipe list heads` shows them with the heads').
CLASSIFIERS: dict[str, type[ZeroShotClassifier]] = {ZeroShotClassifier.name: ZeroShotClassifier}
CLASSIFIER_DESCRIPTIONS: dict[str, str] = {name: cls.description for name, cls in CLASSIFIERS.items()}


def create_head(name: str, **params: Any) -> Head:
    """Build the head registered under ``name`` with hyperparameters ``params`` (unfitted)."""
    return _create(HEADS.get(name), name, params)


def classifier_class(name: str) -> type[Head] | type[ZeroShotClassifier]:
    """The class ``embedpipe train --head NAME`` means: a registered head, or a classifier that is not
    a head (``CLASSIFIERS``: ``zeroshot``). An unknown name's error lists the close head names."""
    return CLASSIFIERS[name] if name in CLASSIFIERS else HEADS.get(name)


def create_classifier(name: str, **params: Any) -> Head | ZeroShotClassifier:
    """``create_head``, or the unbuilt classifier of ``CLASSIFIERS`` with these parameters."""
    return _create(classifier_class(name), name, params)


def _create(cls: Any, name: str, params: dict[str, Any]) -> Any:
    try:
        return cls(**params)
    except TypeError:
        known = sorted(cls().get_params())
        bad = sorted(set(params) - set(known))
        raise EmbedpipeError(f"head {name} has no parameter {', '.join(bad)}; it takes {', '.join(known)}") from None


def list_heads(pattern: str = "*") -> list[str]:
    """Registered head names matching the fnmatch ``pattern``, sorted."""
    return HEADS.names(pattern)


__all__ = [
    "CLASSIFIERS",
    "CLASSIFIER_DESCRIPTIONS",
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
    "RidgeHead",
    "ZeroShotClassifier",
    "classifier_class",
    "create_classifier",
    "create_head",
    "list_heads",
    "load_head",
    "register_head",
    "save_head",
]
