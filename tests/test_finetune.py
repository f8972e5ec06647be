"""The finetune head on a real tiny timm convnet: cached block maps, the pretrained blocks after them
rebuilt and retrained, saved without pickle, and predict on raw images through frozen + trained blocks."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_TIMM, make_image_folder

from embedpipe import extract
from embedpipe.backbones import create_backbone
from embedpipe.core.errors import EmbedpipeError
from embedpipe.heads import create_head, load_head
from embedpipe.heads.finetune import random_resized_crop
from embedpipe.predict import predict
from embedpipe.train import train

LAYER = "block2:map"


@pytest.fixture(scope="module")
def map_cache(tiny_timm_weights: str, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("ft")
    data = make_image_folder(root / "shapes", classes=4, per_class=9, splits=True)
    cache = extract(str(data), TINY_TIMM, weights=tiny_timm_weights, cache_dir=root / "c", num_workers=0,
                    layers=("pooled", LAYER), progress=False)
    cache.images = sorted(str(p) for p in data.rglob("*.png"))[:4]  # type: ignore[attr-defined]
    return cache


def test_tail_reproduces_the_backbone(tiny_timm_weights: str) -> None:
    """The rebuilt blocks after block k, run on block k's map, give the backbone's own pooled features."""
    bb = create_backbone(TINY_TIMM, weights=tiny_timm_weights, precision="fp32", device="cpu")
    x = torch.randn(3, 3, 64, 64)
    out = bb.embed(x, ["pooled", "block1:map", "block3:map"])
    for layer in ("block1:map", "block3:map"):
        with torch.inference_mode():
            pooled = bb.tail(layer)(torch.from_numpy(out[layer]))
        np.testing.assert_allclose(pooled.numpy(), out["pooled"], rtol=1e-4, atol=1e-4)


def test_finetune_trains_saves_and_predicts_raw_images(map_cache, tmp_path: Path, capsys, caplog, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    # no stderr handler (an earlier progress=True call in this process may have added embedpipe's):
    # whatever reaches stderr now was printed, not logged
    monkeypatch.setattr(logging.getLogger("embedpipe"), "handlers", [])
    with caplog.at_level(logging.INFO, logger="embedpipe.heads.finetune"):
        result = train(map_cache, "finetune", layer=LAYER, out=tmp_path / "ft.npz", epochs=6, unfreeze=2,
                       augment="crop,flip,mixup", random_state=0, verbose=True)
    head = result.model
    assert head.augmentations_ == ["crop", "flip", "mixup"]
    logged = [r.getMessage() for r in caplog.records if r.name == "embedpipe.heads.finetune"]
    assert "augmentations: crop, flip, mixup" in logged[0]
    assert all(r.levelno == logging.INFO for r in caplog.records if r.name == "embedpipe.heads.finetune")
    assert sum(line.startswith("  epoch ") for line in logged) == head.n_epochs_  # one line per epoch
    assert "finetune:" not in capsys.readouterr().err  # logged, not printed
    assert [h["unfrozen"] for h in head.history_][:3] == [0, 1, 2]  # classifier alone, then one block at a time
    assert result.val_acc is not None and result.val_acc > 0.5  # 4 classes: chance is 0.25
    # Saved without pickle; the loaded head gives the same probabilities on the cached maps.
    loaded, _info = load_head(result.path)
    X, _ = map_cache.load("test", LAYER)
    assert X.shape[1:] == tuple(map_cache.shapes[LAYER])
    np.testing.assert_allclose(loaded.predict_proba(X), head.predict_proba(X), rtol=1e-5, atol=1e-6)
    # Raw images run through the frozen blocks (the backbone up to block k), then the trained ones.
    preds = predict(result.path, map_cache.images, top_k=2)
    assert all("top" in p and len(p["top"]) == 2 for p in preds)


def test_unfreezing_changes_only_the_unfrozen_blocks(map_cache, capsys, caplog, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    # no stderr handler (an earlier progress=True call in this process may have added embedpipe's):
    # whatever reaches stderr now was printed, not logged
    monkeypatch.setattr(logging.getLogger("embedpipe"), "handlers", [])
    ctx = create_head("finetune").context_params(map_cache, LAYER)
    X, y = map_cache.load("train", LAYER)
    # head_epochs=0: the top block trains from the first epoch, so whichever epoch early stopping (on
    # rows held out of train) keeps, it has trained that block
    with caplog.at_level(logging.INFO, logger="embedpipe.heads.finetune"):  # INFO would be captured
        head = create_head("finetune", **ctx, epochs=3, min_steps=0, unfreeze=1, head_epochs=0, augment="").fit(X, y)
    assert [h["unfrozen"] for h in head.history_] == [1] * head.n_epochs_ and head.best_val_score_ is not None
    assert not [r for r in caplog.records if r.name == "embedpipe.heads.finetune"]  # verbose=False: silent
    assert capsys.readouterr().err == ""
    bb = create_backbone(ctx["backbone"], weights=ctx["weights"], precision=ctx["precision"], device="cpu")
    fresh = bb.tail(LAYER)
    changed = [not all(torch.equal(a, b) for a, b in zip(u.state_dict().values(), v.state_dict().values(), strict=True))
               for u, v in zip(head.tail_.units, fresh.units, strict=True)]
    assert changed[-1] and not any(changed[:-1])
    assert head.augmentations_ == []


def test_fingerprint_and_layer_are_checked(map_cache) -> None:  # type: ignore[no-untyped-def]
    ctx = create_head("finetune").context_params(map_cache, LAYER)
    X, y = map_cache.load("train", LAYER)
    with pytest.raises(ValueError, match="differs from the one the cache"):
        create_head("finetune", **{**ctx, "backbone_fingerprint": "0" * 64}, epochs=1).fit(X, y)
    with pytest.raises(EmbedpipeError, match="needs a cached map layer") as err:
        train(map_cache, "finetune", layer="pooled")
    assert "layer='block<k>:map'" in str(err.value) and "--" not in str(err.value)  # Python arguments, not flags
    with pytest.raises(ValueError, match="unknown augmentation"):
        create_head("finetune", **ctx, augment="cutout").fit(X, y)


def test_random_resized_crop_keeps_shape_and_identity_at_full_scale() -> None:
    x = torch.randn(5, 3, 6, 6)
    gen = torch.Generator().manual_seed(0)
    assert random_resized_crop(x, 0.5, True, gen).shape == x.shape
    torch.testing.assert_close(random_resized_crop(x, 1.0, False, gen), x, rtol=1e-5, atol=1e-5)
