"""Backbones: the real offline default, tiny timm / open_clip models through local weight files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import TINY_CLIP, TINY_TIMM
from PIL import Image

from embedpipe import EmbedpipeError, create_backbone, list_backbones

CHURCHY = {497, 442, 832, 663, 698}  # church, bell cote, stupa, monastery, palace


def test_effnet_lite0_has_real_imagenet_weights() -> None:
    from sklearn.datasets import load_sample_image

    bb = create_backbone("effnet-lite0", precision="fp32")
    x = bb.transform(Image.fromarray(load_sample_image("china.jpg")))[None]
    out = bb.embed(x, ["logits", "pooled"])
    top5 = set(np.argsort(-out["logits"][0])[:5].tolist())
    assert top5 & CHURCHY, f"top-5 {top5} has no church-like class: weights are not the real ones"
    assert out["pooled"].shape == (1, 1280)
    assert bb.preprocess["mean"] == [0.5, 0.5, 0.5] and bb.preprocess["std"] == [0.5, 0.5, 0.5]


def test_registry_lists_families_and_suggests() -> None:
    assert list_backbones() == ["effnet-lite0", "open_clip", "timm"]
    with pytest.raises(EmbedpipeError, match="did you mean timm"):
        create_backbone("timn:resnet18")


@pytest.mark.parametrize("spec", [TINY_TIMM, TINY_CLIP])
def test_tiny_backbone_layers_and_one_pass(spec: str, tiny_timm_weights: str, tiny_clip_weights: str) -> None:
    weights = tiny_timm_weights if spec.startswith("timm") else tiny_clip_weights
    bb = create_backbone(spec, weights=weights, precision="fp32")
    layers = bb.layers
    assert layers[0] == "pooled" and any(name.startswith("block") for name in layers)
    size = bb.preprocess["input_size"][-1]
    batch = torch.rand(3, 3, size, size)
    everything = bb.embed(batch, layers)
    assert {k: v.shape for k, v in everything.items()} == {k: (3, *bb.shapes[k]) for k in layers}
    assert all(int(np.prod(bb.shapes[k])) == bb.dims[k] for k in layers)  # dims: the flat width
    assert all(len(bb.shapes[k]) == 1 for k in layers if not k.endswith(":map"))  # vectors stay vectors
    # one layer alone gives the same numbers as within the all-layer pass, in any order of request
    for name in (layers[1], "pooled"):
        np.testing.assert_allclose(bb.embed(batch, [name])[name], everything[name], rtol=1e-4, atol=1e-5)
    blocks = [name for name in layers if name.startswith("block")]
    shuffled = bb.embed(batch, [blocks[-1], "pooled", blocks[0]])
    for name in (blocks[-1], blocks[0]):
        np.testing.assert_allclose(shuffled[name], everything[name], rtol=1e-4, atol=1e-5)


def test_timm_pooled_is_pre_logits(tiny_timm_weights: str) -> None:
    bb = create_backbone(TINY_TIMM, weights=tiny_timm_weights, precision="fp32")
    x = torch.rand(2, 3, 160, 160)
    out = bb.embed(x, ["pooled", "logits"])
    head = bb.model.get_classifier()  # on the backbone's device (CUDA when present)
    with torch.inference_mode():
        expected = head(torch.from_numpy(out["pooled"]).to(bb.device)).cpu().numpy()
    np.testing.assert_allclose(out["logits"], expected, rtol=1e-4, atol=1e-4)


def test_open_clip_pooled_is_encode_image(tiny_clip_weights: str) -> None:
    bb = create_backbone(TINY_CLIP, weights=tiny_clip_weights, precision="fp32")
    x = torch.rand(2, 3, 32, 32)
    with torch.inference_mode():
        x_dev = x.to(bb.device).contiguous(memory_format=torch.channels_last)  # CUDA when present
        expected = bb.model.encode_image(x_dev).cpu().numpy()
    np.testing.assert_allclose(bb.embed(x, ["pooled"])["pooled"], expected, rtol=1e-4, atol=1e-5)


def test_fingerprint_tracks_weights_and_precision(tiny_timm_weights: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import timm

    a = create_backbone(TINY_TIMM, weights=tiny_timm_weights, precision="fp32")
    torch.manual_seed(1)
    other = tmp_path / "other.pth"
    torch.save(timm.create_model("test_efficientnet").state_dict(), other)
    b = create_backbone(TINY_TIMM, weights=str(other), precision="fp32")
    c = create_backbone(TINY_TIMM, weights=tiny_timm_weights, precision="bf16")
    assert len({a.fingerprint, b.fingerprint, c.fingerprint}) == 3
    assert a.fingerprint == create_backbone(TINY_TIMM, weights=tiny_timm_weights, precision="fp32").fingerprint


def test_bad_specs_fail_clearly(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(EmbedpipeError, match="weights file not found"):
        create_backbone(TINY_TIMM, weights=str(tmp_path / "nope.pth"))
    with pytest.raises(EmbedpipeError, match="unknown timm model"):
        create_backbone("timm:not_a_model_xyz").layers  # noqa: B018
    with pytest.raises(EmbedpipeError, match="unknown open_clip architecture"):
        create_backbone("open_clip:ViT-Q-99").layers  # noqa: B018
    with pytest.raises(EmbedpipeError, match="has no layer"):
        create_backbone("effnet-lite0").check_layers(["block99"])


def test_image_size_changes_geometry_and_identity(tiny_timm_weights: str, tiny_clip_weights: str) -> None:
    default = create_backbone(TINY_TIMM, weights=tiny_timm_weights)
    small = create_backbone(TINY_TIMM, weights=tiny_timm_weights, image_size=64)
    pre = small.pixel_preprocess
    assert pre is not None and pre.out_size == (64, 64)
    assert pre.resize == round(64 / small.preprocess["crop_pct"]) or pre.resize == int(64 / small.preprocess["crop_pct"])
    assert small.preprocess["input_size"] == [3, 64, 64]
    assert small.fingerprint != default.fingerprint  # another input size is another cache
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (90, 120, 3), dtype=np.uint8))
    x = small.transform(img)
    assert tuple(x.shape) == (3, 64, 64)
    out = small.embed(x[None], ["pooled"])
    assert out["pooled"].shape == (1, small.dims["pooled"])
    with pytest.raises(EmbedpipeError, match="fixed input size"):
        create_backbone(TINY_CLIP, weights=tiny_clip_weights, image_size=64).transform  # noqa: B018
