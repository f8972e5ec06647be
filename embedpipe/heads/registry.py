"""The head registry: the built-in heads as lazy entries, and ``@register_head(description=...)``.

``embedpipe list heads`` reads names and descriptions from here without importing a head (no torch,
no scikit-learn); a head's module is imported when the head is first created (``create_head``,
``classifier_class``, ``HEADS.get``), and its ``@register_head`` then fulfils the lazy entry.
The head modules import this small module (not the package), so registering never imports the
package ``__init__`` and there is no import cycle.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from ..core.registry import Registry

if TYPE_CHECKING:
    from .base import Head
    from .zeroshot import ZeroShotClassifier

H = TypeVar("H", bound="type[Head]")

HEADS: Registry[Head] = Registry("head")
# One line per registered head, shown by `embedpipe list heads` (the registry's own table).
DESCRIPTIONS: dict[str, str] = HEADS.descriptions

# The built-in heads: name, "module:Class", and the description its @register_head gives too (an
# import of the module checks that they agree). Adding a head is its module plus one line here.
HEADS.add_lazy("finetune", "embedpipe.heads.finetune:FinetuneHead",
               "retrain the backbone's blocks after a cached block<k>:map, new classifier on top")
HEADS.add_lazy("knn", "embedpipe.heads.neighbors:KNNHead", "cosine k-nearest neighbours, temperature-weighted votes (DINO)")
HEADS.add_lazy("lgbm", "embedpipe.heads.lgbm:LGBMHead", "LightGBM on PCA-reduced embeddings, early stopping on val")
HEADS.add_lazy("logreg", "embedpipe.heads.logreg:LogRegHead",
               "multinomial L2 logistic regression, torch L-BFGS, C swept on val")
HEADS.add_lazy("mlp", "embedpipe.heads.mlp:MLPHead", "1-2 hidden layer MLP, AdamW + cosine, early stopping on val")
HEADS.add_lazy("multilayer", "embedpipe.heads.multilayer:MultiLayerHead",
               "Head2Toe: several layers, per-layer normalised, group-lasso screen, logreg")
HEADS.add_lazy("ncm", "embedpipe.heads.neighbors:NCMHead", "nearest class mean (cosine, centred), the few-shot baseline")
HEADS.add_lazy("ridge", "embedpipe.heads.ridge:RidgeHead",
               "ridge classifier, closed form: one eigendecomposition, alpha on val or leave-one-out")

# Classifiers that `embedpipe train --head NAME` builds and head files hold, but that are not heads
# (nothing is fitted), with their one-line descriptions (`embedpipe list heads` shows them too).
NOT_HEADS: Registry[ZeroShotClassifier] = Registry("classifier")
NOT_HEADS.add_lazy("zeroshot", "embedpipe.heads.zeroshot:ZeroShotClassifier",
                   "open_clip zero-shot: class names through prompts and the text encoder")


def register_head(description: str) -> Callable[[H], H]:
    """Class decorator: register a head class under its ``name`` with a one-line ``description``.

    Parameters
    ----------
    description : str
        What the head does, in one line (``embedpipe list heads`` shows it).

    Returns
    -------
    callable
        The decorator; it returns the class unchanged. A name registered twice raises ValueError.

    Examples
    --------
    >>> from embedpipe.heads.base import Head
    >>> from embedpipe.heads.registry import register_head
    >>> @register_head(description="a head that is never fitted")  # doctest: +SKIP
    ... class MyHead(Head):
    ...     name = "mine"
    """

    def decorator(cls: H) -> H:
        if not cls.name:
            raise ValueError(f"{cls.__name__} has no name to register under")
        HEADS.register(cls.name, description)(cls)  # raises on a duplicate name before touching DESCRIPTIONS
        return cls

    return decorator
