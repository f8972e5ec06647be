"""Head registry: ``create_head(name, **params)``, ``list_heads()``; every head is a scikit-learn
classifier that saves without pickle (``save_head``/``load_head``).

The built-in heads are lazy entries of the registry (``heads/registry.py``): listing them imports no
head, and a head's module is imported when it is first created, where its
``@register_head(description=...)`` registers the class. Zero-shot classification is not a head (nothing is
fitted): ``ZeroShotClassifier`` is built from class names, and ``embedpipe train --head zeroshot``
reaches it through ``CLASSIFIERS`` (``classifier_class``/``create_classifier``), as do head files.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from ..core.errors import EmbedpipeError
from ..core.lazy import lazy_exports
from .registry import DESCRIPTIONS, HEADS, NOT_HEADS, register_head

if TYPE_CHECKING:  # what the lazy names below are, for type checkers and IDEs
    from .base import Head
    from .finetune import FinetuneHead
    from .io import load_head, save_head
    from .lgbm import LGBMHead
    from .logreg import LogRegHead
    from .mlp import MLPHead
    from .multilayer import MultiLayerHead
    from .neighbors import KNNHead, NCMHead
    from .ridge import RidgeHead
    from .zeroshot import ZeroShotClassifier

# The head classes and the head-file functions import torch and scikit-learn: each loads on first use
# (`embedpipe list heads` reads only the registry).
__getattr__, __dir__ = lazy_exports(__name__, {
    "FinetuneHead": ".finetune",
    "Head": ".base",
    "KNNHead": ".neighbors",
    "LGBMHead": ".lgbm",
    "LogRegHead": ".logreg",
    "MLPHead": ".mlp",
    "MultiLayerHead": ".multilayer",
    "NCMHead": ".neighbors",
    "RidgeHead": ".ridge",
    "ZeroShotClassifier": ".zeroshot",
    "load_head": ".io",
    "save_head": ".io",
})

# Classifiers that `embedpipe train --head NAME` builds and head files hold, but that are not heads,
# and their one-line descriptions (`embedpipe list heads` shows them with the heads').
# CLASSIFIERS is a read-only mapping name -> class that imports a class when it is read.
CLASSIFIERS: Mapping[str, Callable[..., ZeroShotClassifier]] = NOT_HEADS.mapping()
CLASSIFIER_DESCRIPTIONS: dict[str, str] = NOT_HEADS.descriptions


def create_head(name: str, **params: Any) -> Head:
    """Build the head registered under ``name`` with hyperparameters ``params`` (unfitted)."""
    return _create(HEADS.get(name), name, params)


def classifier_class(name: str) -> type[Head] | type[ZeroShotClassifier]:
    """The class ``embedpipe train --head NAME`` means: a registered head, or a classifier that is not
    a head (``CLASSIFIERS``: ``zeroshot``). An unknown name's error lists the close head names."""
    return NOT_HEADS.get(name) if name in NOT_HEADS else HEADS.get(name)


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
