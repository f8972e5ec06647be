"""The zero-shot classifier with a real (tiny, random-weight) open_clip model loaded from a local file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_CLIP, make_image_folder
from sklearn.exceptions import NotFittedError

from embedpipe import create_backbone, extract
from embedpipe.heads import ZeroShotClassifier, load_head
from embedpipe.train import train_heads


def test_text_weights_are_open_clips_zero_shot_classifier(tiny_clip_weights: str, tmp_path: Path) -> None:
    import open_clip
    from open_clip.zero_shot_classifier import build_zero_shot_classifier

    names = ("cat", "dog", "eel")
    head = ZeroShotClassifier.from_names(TINY_CLIP, names, weights=tiny_clip_weights, precision="fp32",
                                         text_cache=str(tmp_path / "text"), device="cpu")
    X = np.random.default_rng(0).normal(size=(6, 32)).astype(np.float32)
    assert head.classes_.tolist() == [0, 1, 2] and head.n_features_in_ == 32
    bb = create_backbone(TINY_CLIP, weights=tiny_clip_weights, precision="fp32", device="cpu")  # as the head
    with torch.inference_mode():
        expected = build_zero_shot_classifier(bb.model, open_clip.get_tokenizer("embedpipe-tiny-vit"), list(names),
                                              list(head.templates)).T.numpy()
    np.testing.assert_allclose(head.text_weights_, expected, rtol=1e-5, atol=1e-6)
    Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
    logits = 100.0 * Xn @ expected.T
    proba = np.exp(logits - logits.max(1, keepdims=True))
    np.testing.assert_allclose(head.predict_proba(X), proba / proba.sum(1, keepdims=True), rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(head.predict(X), np.argmax(logits, axis=1))
    y = head.predict(X)
    y[0] = (y[0] + 1) % 3
    assert head.score(X, y) == pytest.approx(5 / 6)
    # the text weights are cached: a second build reads the file instead of writing it again
    (cached,) = (tmp_path / "text").glob("*.npy")
    stamp = cached.stat().st_mtime_ns
    again = ZeroShotClassifier.from_names(**head.get_params())
    assert cached.stat().st_mtime_ns == stamp and np.array_equal(again.text_weights_, head.text_weights_)


def test_zeroshot_trains_from_a_cache_without_parameters(tiny_clip_weights: str, tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "shapes", classes=3, per_class=6)
    cache = extract(str(data), TINY_CLIP, weights=tiny_clip_weights, cache_dir=tmp_path / "c", num_workers=0,
                    precision="fp32", progress=False)
    (result,) = train_heads(cache, ["zeroshot"])
    assert result.n_classes == 3 and result.test_acc is not None
    assert isinstance(result.model, ZeroShotClassifier)
    head, info = load_head(result.path)
    assert isinstance(head, ZeroShotClassifier)
    assert head.class_names == ("class0", "class1", "class2") and info["layer"] == "pooled"
    assert list((cache.path / "text").glob("*.npy"))
    X, _ = cache.load("test")
    np.testing.assert_allclose(head.predict_proba(X), result.model.predict_proba(X), rtol=1e-6)


def test_zeroshot_refuses_other_backbones_and_widths(tiny_clip_weights: str) -> None:
    X = np.zeros((4, 8), np.float32)
    with pytest.raises(NotFittedError, match="from_names"):
        ZeroShotClassifier(class_names=("a", "b")).predict(X)
    with pytest.raises(ValueError, match="needs an open_clip backbone"):
        ZeroShotClassifier.from_names(None, ("a", "b"))
    with pytest.raises(ValueError, match="needs an open_clip backbone"):
        ZeroShotClassifier.from_names("timm:test_efficientnet", ("a", "b"))
    with pytest.raises(ValueError, match="at least 2 class_names"):
        ZeroShotClassifier.from_names(TINY_CLIP, ("a",), weights=tiny_clip_weights)
    clf = ZeroShotClassifier.from_names(TINY_CLIP, ("a", "b"), weights=tiny_clip_weights)
    with pytest.raises(ValueError, match="features have 8 dims, the text encoder gives 32"):
        clf.predict_proba(X)
