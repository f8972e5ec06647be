"""Shared fixtures: tiny random-weight models saved to local files (loaded through the same
local-checkpoint path users use) and small image folders made on the fly. Nothing touches the network."""

from __future__ import annotations

import os

# Under pytest-xdist (`pytest -n 8`) every worker process would start one OpenMP thread per core for
# LightGBM (num_threads=0) and for torch's intra-op pool: 8 workers x 16 threads on 16 cores. OpenMP
# threads spin while they wait, so oversubscribed they mostly burn each other's time, and the LightGBM
# estimator checks ran past 60 s each. Each worker gets its share of the cores instead. OpenMP reads
# OMP_NUM_THREADS when its runtime starts, so this runs before torch or lightgbm is imported; a value
# the user set wins.
_XDIST_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
if _XDIST_WORKERS > 1:
    _cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, _cores // _XDIST_WORKERS)))

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
if _XDIST_WORKERS > 1:  # in case a plugin imported torch before this file: tell it directly too
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

TINY_TIMM = "timm:test_efficientnet"
TINY_CLIP = "open_clip:embedpipe-tiny-vit"
# Every test has a timeout (pytest-timeout: 300 s by default, pyproject.toml); those marked slow get
# this unless they set their own with @pytest.mark.timeout(N).
SLOW_TIMEOUT_S = 900


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("slow") is not None and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(SLOW_TIMEOUT_S))


@pytest.fixture(scope="session", autouse=True)
def default_cache_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default cache root ($EMBEDPIPE_CACHE) of every test and every subprocess it starts: a
    temporary folder, so that nothing a test extracts without a cache_dir lands in the user's
    ~/.cache/embedpipe. A test that needs its own root sets the variable itself."""
    root = tmp_path_factory.mktemp("embedpipe-cache")
    os.environ["EMBEDPIPE_CACHE"] = str(root)
    return root


@pytest.fixture(scope="session")
def tiny_timm_weights(tmp_path_factory: pytest.TempPathFactory) -> str:
    import timm

    torch.manual_seed(0)
    model = timm.create_model("test_efficientnet")
    path = tmp_path_factory.mktemp("weights") / "test_efficientnet.pth"
    torch.save(model.state_dict(), path)
    return str(path)


@pytest.fixture(scope="session")
def tiny_clip_weights(tmp_path_factory: pytest.TempPathFactory) -> str:
    import open_clip

    from embedpipe.backbones.open_clip_backbone import CONFIG_DIR

    open_clip.add_model_config(CONFIG_DIR)
    torch.manual_seed(0)
    model = open_clip.create_model("embedpipe-tiny-vit")
    path = tmp_path_factory.mktemp("weights") / "tiny_clip.pt"
    torch.save(model.state_dict(), path)
    return str(path)


def make_image(label: int, index: int, size: int = 40) -> Image.Image:
    """A class-dependent pattern (colour and stripe direction) with per-image noise."""
    rng = np.random.default_rng(1000 * label + index)
    base = np.array([(label * 97) % 256, (label * 53 + 80) % 256, (label * 29 + 160) % 256], np.float32)
    img = np.tile(base, (size, size, 1))
    stripes = (np.arange(size) // 4) % 2 == 0
    if label % 2:
        img[:, stripes] *= 0.3
    else:
        img[stripes, :] *= 0.3
    img += rng.normal(0, 12, img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def make_image_folder(root: Path, classes: int = 3, per_class: int = 8, splits: bool = False) -> Path:
    for c in range(classes):
        for i in range(per_class):
            split = ("train", "val", "test")[i % 3] if splits else None
            folder = root / split / f"class{c}" if split else root / f"class{c}"
            folder.mkdir(parents=True, exist_ok=True)
            make_image(c, i).save(folder / f"img{i:03d}.png")
    return root


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    return make_image_folder(tmp_path / "shapes")
