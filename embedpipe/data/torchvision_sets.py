"""torchvision datasets as sources: ``torchvision:CIFAR10``, ``torchvision:CIFAR100`` (downloaded by
torchvision into ``$EMBEDPIPE_DATA``, else ``torchvision/`` under the cache root
(``core.paths.cache_root``: ``~/.cache/embedpipe/torchvision`` by default); needs internet the first time).

The official test set is the test split; the official training set is split into train and val by
the seeded, stratified rule (10 % val per class), as the CLIP paper's linear-probe protocol holds out
a validation set from training data to choose the regularisation strength.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..core.errors import EmbedpipeError, describe
from ..core.paths import cache_root
from .sources import Record, Source
from .splits import SplitRule, assign_splits

SUPPORTED = ("CIFAR10", "CIFAR100")


def default_root() -> Path:
    return Path(os.environ.get("EMBEDPIPE_DATA") or cache_root() / "torchvision")


class TorchvisionSource(Source):
    def __init__(self, name: str, root: str | Path | None = None, download: bool = True) -> None:
        if name not in SUPPORTED:
            raise EmbedpipeError(f"torchvision dataset {name!r} is not supported; use one of {', '.join(SUPPORTED)}")
        import torchvision.datasets as tvd  # heavy: only when a torchvision: source is used

        root = Path(root or default_root())
        try:
            parts = {split: getattr(tvd, name)(str(root), train=split == "train", download=download)
                     for split in ("train", "test")}
        except Exception as e:  # no internet, a proxy, a half-downloaded archive
            raise EmbedpipeError(
                f"could not get torchvision {name} into {root} (needs internet the first time): "
                f"{describe(e)}"[:300]
            ) from None
        self.name = name.lower()
        self.kind, self.root = "torchvision", name
        self.description = f"torchvision {name} ({root})"
        self.arrays: dict[str, Any] = {s: d.data for s, d in parts.items()}
        classes = parts["train"].classes
        records = []
        for split, d in parts.items():
            for i, target in enumerate(d.targets):
                records.append(Record(f"{split}/{i:05d}", classes[int(target)], "test" if split == "test" else None,
                                      None, f"{name}:{split}:{i}"))
        train = assign_splits([r for r in records if r.split is None], SplitRule(seed=0, val=0.1, test=0.0))
        self.records = sorted([*train, *(r for r in records if r.split == "test")], key=lambda r: r.id)
        self.records = [replace(r, split=r.split or "train") for r in self.records]

    def open(self, record: Record) -> Image.Image:
        split, _, index = record.id.partition("/")
        return Image.fromarray(np.asarray(self.arrays[split][int(index)]))
