"""A backbone's preprocessing split in two: geometry on uint8 pixels, then normalisation on device.

timm and open_clip both hand out a torchvision ``Compose`` for evaluation:
``Resize -> CenterCrop -> [to RGB] -> ToTensor -> Normalize``. ``Preprocess.from_transform`` reads
that Compose into a small frozen dataclass. Decoding stages then produce uint8 (3, H, W) tensors at
model size (a quarter of the bytes of float32 across process boundaries) and ``normalize`` turns a
uint8 batch into the model's input on the device: ``(x / 255 - mean) / std``, which is exactly what
``ToTensor`` + ``Normalize`` compute. A transform that does not have this shape is ``None`` and
the caller keeps the backbone's own transform (float tensors, today's path).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

# Ops that change nothing for an RGB PIL image headed for ToTensor + Normalize.
_NEUTRAL = {"ToTensor", "MaybeToTensor", "PILToTensor", "MaybeConvertMode", "ConvertImageDtype"}


@dataclass(frozen=True)
class Preprocess:
    resize: int | tuple[int, int]  # torchvision Resize size: int = shorter side, (h, w) = exact
    interpolation: str  # torchvision InterpolationMode value: "bicubic", "bilinear", "nearest", ...
    max_size: int | None  # torchvision Resize max_size
    crop: tuple[int, int] | None  # center crop (h, w); None = no crop
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @classmethod
    def from_transform(cls, transform: Any) -> Preprocess | None:
        """Parse a torchvision eval Compose; None when it is not Resize/CenterCrop/ToTensor/Normalize."""
        from torchvision import transforms as T  # torchvision: only when a transform is parsed

        ops = list(getattr(transform, "transforms", []))
        resize = crop = norm = None
        for op in ops:
            name = type(op).__name__
            if isinstance(op, T.Resize) and resize is None and crop is None:
                resize = op
            elif isinstance(op, T.CenterCrop) and crop is None:
                crop = op
            elif isinstance(op, T.Normalize):
                norm = op
            elif name in _NEUTRAL or getattr(op, "__name__", "") == "_convert_to_rgb":
                continue  # tensor conversion, or to-RGB (decoding already gives RGB)
            else:
                return None  # an op we do not model: keep the backbone's own transform
        if resize is None or norm is None:
            return None
        size = resize.size
        size = size[0] if isinstance(size, list | tuple) and len(size) == 1 else size
        crop_size = None
        if crop is not None:
            cs = crop.size
            crop_size = (int(cs[0]), int(cs[1])) if isinstance(cs, list | tuple) else (int(cs), int(cs))
        return cls(
            resize=int(size) if isinstance(size, int) else (int(size[0]), int(size[1])),
            interpolation=str(resize.interpolation.value),
            max_size=resize.max_size,
            crop=crop_size,
            mean=tuple(float(v) for v in norm.mean),  # type: ignore[arg-type]
            std=tuple(float(v) for v in norm.std),  # type: ignore[arg-type]
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """(w, h) after the Resize step, with torchvision's rounding (shorter side -> resize)."""
        if isinstance(self.resize, tuple):
            return self.resize[1], self.resize[0]
        short, long = (width, height) if width <= height else (height, width)
        new_short, new_long = self.resize, int(self.resize * long / short)
        if self.max_size is not None and new_long > self.max_size:
            new_short, new_long = int(self.max_size * new_short / new_long), self.max_size
        return (new_short, new_long) if width <= height else (new_long, new_short)

    @property
    def out_size(self) -> tuple[int, int]:
        """(h, w) of the model input."""
        if self.crop is not None:
            return self.crop
        if isinstance(self.resize, tuple):
            return self.resize
        raise ValueError("output size depends on the image: Resize(int) without a crop")


_PIL_FILTERS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}


def pil_geometry(img: Image.Image, pre: Preprocess) -> Image.Image:
    """Resize + center crop on an RGB PIL image, as torchvision's PIL ops do them."""
    from torchvision.transforms import functional as F  # torchvision: only on the PIL geometry path

    w, h = pre.resized_size(*img.size)
    img = img.resize((w, h), _PIL_FILTERS[pre.interpolation])
    if pre.crop is not None:
        img = F.center_crop(img, list(pre.crop))
    return img


def pil_to_uint8(img: Image.Image) -> torch.Tensor:
    """RGB PIL image -> (3, H, W) uint8 tensor."""
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()


def normalize(batch: torch.Tensor, pre: Preprocess, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(B, 3, H, W) uint8 on any device -> float input: (x / 255 - mean) / std, as ToTensor + Normalize."""
    mean = torch.tensor(pre.mean, device=batch.device, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(pre.std, device=batch.device, dtype=torch.float32).view(1, 3, 1, 1)
    x = batch.to(torch.float32).div_(255.0)
    return x.sub_(mean).div_(std).to(dtype)
