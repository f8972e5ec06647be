"""Zero-shot classification with an open_clip backbone: a classifier built from class names, no training.

Class names go through prompt templates and the text encoder; the normalised mean text embedding of
each class is its classifier weight, and ``predict_proba`` is ``softmax(logit_scale * cos(x, w))``,
as in CLIP. Nothing is fitted, so this is not a head (it is not in the head registry and has no
``fit``): ``ZeroShotClassifier.from_names(backbone, class_names)`` builds it. The text weights are
cached in ``text_cache`` (a folder; ``embedpipe train`` uses ``<cache>/text/``) under a key of the
backbone fingerprint, templates and class names, so a second build does not run the text encoder.

``embedpipe train --head zeroshot`` (``train_heads(cache, ["zeroshot"])``) builds one with
``backbone``, ``weights``, ``precision``, ``class_names`` and ``text_cache`` from the cache (see
``context_params``), scores it like a head and saves it in the same pickle-free head file format.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import NotFittedError
from sklearn.utils.validation import check_array

from ..backbones import create_backbone
from ..cache.key import digest
from ..core.atomic import atomic_file
from .base import ArraySpec, State, StateSpec, softmax_np
from .neighbors import l2_normalize

# The CLIP prompt-engineering notebook's short ImageNet set, plus the plain "a photo of a {}."
DEFAULT_TEMPLATES = (
    "a photo of a {}.",
    "itap of a {}.",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
)


class ZeroShotClassifier(ClassifierMixin, BaseEstimator):
    """Zero-shot classifier: open_clip text embeddings of class names are the class weights.

    Each class name is written into every prompt template, the backbone's text encoder embeds the
    prompts, and the normalised mean of a class's prompt embeddings (normalised again) is its weight
    ``w_c``. An image embedding ``x`` (the ``pooled`` layer of the same open_clip backbone) gets
    ``predict_proba(x) = softmax(logit_scale * cos(x, w_c))`` over the classes, as in CLIP. Nothing
    is learned from labelled images, so there is no ``fit``: build it with :meth:`from_names`.

    Parameters
    ----------
    backbone : str or None, default=None
        open_clip spec whose text tower names the classes, e.g. ``"open_clip:ViT-B-32/laion2b_s34b_b79k"``.
    weights : str or None, default=None
        Local weights file of that backbone, if any.
    precision : str, default="auto"
        Precision the backbone runs at, as the image features were made (part of its fingerprint).
    class_names : tuple of str or None, default=None
        Name of class ``i`` (the cache's label names); the class labels are ``0 .. len(class_names) - 1``.
    templates : tuple of str, default=DEFAULT_TEMPLATES
        Prompts with ``{}`` for the class name (the CLIP notebook's short ImageNet set).
    logit_scale : float, default=100.0
        Multiplier of the cosine similarities before the softmax (CLIP's learned temperature is about 100).
    text_cache : str or None, default=None
        Folder for cached text weights; None = no caching.
    device : str, default="auto"
        Device of the text encoder; ``"auto"`` = CUDA when present.

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
        The class labels, ``arange(len(class_names))``.
    text_weights_ : ndarray of shape (n_classes, n_features)
        The unit-norm text embedding of each class.
    n_features_in_ : int
        Width of the image features it takes (the text encoder's output width).

    Examples
    --------
    >>> from embedpipe.heads.zeroshot import ZeroShotClassifier
    >>> clf = ZeroShotClassifier.from_names("open_clip:ViT-B-32/laion2b_s34b_b79k",
    ...                                     ["cat", "dog"])  # doctest: +SKIP
    >>> clf.predict(image_embeddings)  # doctest: +SKIP
    array([0, 1, ...])
    """

    name: ClassVar[str] = "zeroshot"  # how `embedpipe train --head` and head files name it
    description: ClassVar[str] = "open_clip zero-shot: class names through prompts and the text encoder"

    def __init__(
        self,
        backbone: str | None = None,
        weights: str | None = None,
        precision: str = "auto",
        class_names: tuple[str, ...] | None = None,
        templates: tuple[str, ...] = DEFAULT_TEMPLATES,
        logit_scale: float = 100.0,
        text_cache: str | None = None,
        device: str = "auto",
    ) -> None:
        self.backbone = backbone
        self.weights = weights
        self.precision = precision
        self.class_names = class_names
        self.templates = templates
        self.logit_scale = logit_scale
        self.text_cache = text_cache
        self.device = device

    @classmethod
    def from_names(cls, backbone: str | None, class_names: Sequence[str], **options: Any) -> ZeroShotClassifier:
        """Build the classifier for ``class_names`` with the text encoder of ``backbone``.

        ``options`` are the other constructor parameters (``weights``, ``precision``, ``templates``,
        ``logit_scale``, ``text_cache``, ``device``). Raises ValueError when ``backbone`` is not an
        open_clip spec or there are fewer than 2 class names.
        """
        return cls(backbone=backbone, class_names=tuple(class_names), **options)._build()

    @classmethod
    def context_params(cls, cache: Any, layer: str) -> dict[str, Any]:
        """The parameters a cache supplies: its backbone, class names and a text-weight folder."""
        bb = cache.backbone
        return {"backbone": bb.get("spec"), "weights": bb.get("weights"), "precision": bb.get("precision", "auto"),
                "class_names": tuple(cache.label_names), "text_cache": str(Path(cache.path) / "text")}

    def _build(self) -> ZeroShotClassifier:
        names = [str(n) for n in self.class_names or ()]
        if len(names) < 2:
            raise ValueError(f"zeroshot needs at least 2 class_names; got {len(names)}")
        W = self._text_weights(names)
        self.text_weights_ = W.astype(np.float32)
        self.classes_ = np.arange(len(names))
        self.n_features_in_ = int(W.shape[1])
        return self

    def _text_weights(self, names: list[str]) -> np.ndarray:
        if not self.backbone or not self.backbone.startswith("open_clip:"):
            raise ValueError("zeroshot needs an open_clip backbone (backbone='open_clip:<arch>/<tag>'); "
                             "`embedpipe train` takes it from the cache")
        bb: Any = create_backbone(self.backbone, weights=self.weights, precision=self.precision, device=self.device)
        path = None
        if self.text_cache:
            key = digest({"backbone": bb.fingerprint, "templates": list(self.templates), "names": names})
            path = Path(self.text_cache) / f"{key[:24]}.npy"
            if path.is_file():
                return np.load(path, allow_pickle=False)
        W = bb.text_classifier(names, self.templates)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_file(path, suffix=".tmp.npy") as f:
                np.save(f, W)
        return W

    # -- scikit-learn's classifier API (score comes from ClassifierMixin) -------------------------
    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities ``softmax(logit_scale * cos(X, text_weights_))``, columns in ``classes_`` order."""
        if not hasattr(self, "text_weights_"):  # check_is_fitted wants a fit method; there is none
            raise NotFittedError("this ZeroShotClassifier has no text weights; build it with "
                                 "ZeroShotClassifier.from_names(backbone, class_names)")
        X = check_array(X, dtype=np.float32)
        if X.shape[1] != self.text_weights_.shape[1]:
            raise ValueError(f"zeroshot: the features have {X.shape[1]} dims, the text encoder gives "
                             f"{self.text_weights_.shape[1]}; use the pooled layer of the same open_clip backbone")
        return softmax_np(self.logit_scale * l2_normalize(X) @ self.text_weights_.T)

    def predict(self, X: Any) -> np.ndarray:
        """The most probable class of each row."""
        proba = self.predict_proba(X)  # NotFittedError before touching classes_
        return self.classes_[np.argmax(proba, axis=1)]

    @property
    def n_classes_(self) -> int:
        return len(self.classes_)

    # -- saving (heads/io.py) ------------------------------------------------------------------------
    def _get_state(self) -> State:
        return {}, {"text_weights_": self.text_weights_}

    def _state_spec(self) -> StateSpec:
        return {}, {"text_weights_": ArraySpec(("k", "d"))}

    def _set_state(self, state: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        self.text_weights_ = arrays["text_weights_"]

    @classmethod
    def _upgrade_state(cls, version: int, state: dict[str, Any], arrays: dict[str, np.ndarray]) -> bool:
        return False  # the state is the same in every head file format so far
