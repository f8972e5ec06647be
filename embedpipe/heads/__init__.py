"""Head registry: ``create_head(name, **params)``, ``list_heads()``; every head is a scikit-learn
classifier that saves without pickle (``save_head``/``load_head``)."""

from __future__ import annotations

from typing import Any

from ..core.registry import Registry
from .base import Head
from .finetune import FinetuneHead
from .io import load_head, save_head
from .lgbm import LGBMHead
from .logreg import LogRegHead
from .mlp import MLPHead
from .multilayer import MultiLayerHead
from .neighbors import KNNHead, NCMHead
from .zeroshot import ZeroShotHead

HEADS: Registry[Head] = Registry("head")
DESCRIPTIONS: dict[str, str] = {}


def register_head(cls: type[Head], description: str) -> type[Head]:
    HEADS.register(cls.name)(cls)  # raises on a duplicate name before touching DESCRIPTIONS
    DESCRIPTIONS[cls.name] = description
    return cls


register_head(LogRegHead, "multinomial L2 logistic regression, torch L-BFGS, C swept on val")
register_head(LGBMHead, "LightGBM on PCA-reduced embeddings, early stopping on val")
register_head(MLPHead, "1-2 hidden layer MLP, AdamW + cosine, early stopping on val")
register_head(KNNHead, "cosine k-nearest neighbours, temperature-weighted votes (DINO)")
register_head(NCMHead, "nearest class mean (cosine, centred), the few-shot baseline")
register_head(MultiLayerHead, "Head2Toe: several layers, per-layer normalised, group-lasso selection, logreg")
register_head(FinetuneHead, "retrain the backbone's blocks after a cached block<k>:map, new classifier on top")
register_head(ZeroShotHead, "open_clip zero-shot: class names through prompts and the text encoder")


def create_head(name: str, **params: Any) -> Head:
    cls = HEADS.get(name)
    try:
        return cls(**params)
    except TypeError:
        known = sorted(cls().get_params())
        bad = sorted(set(params) - set(known))
        from ..core.errors import EmbedpipeError

        raise EmbedpipeError(f"head {name} has no parameter {', '.join(bad)}; it takes {', '.join(known)}") from None


def list_heads(pattern: str = "*") -> list[str]:
    return HEADS.names(pattern)


__all__ = ["DESCRIPTIONS", "HEADS", "Head", "create_head", "list_heads", "load_head", "register_head", "save_head"]
