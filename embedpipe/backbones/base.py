"""The Backbone interface: a frozen model that turns image tensors into named layer embeddings.

A backbone loads lazily (nothing heavy happens until a property or ``embed`` needs the model).
Layers: ``pooled`` (the embedding), ``block0``..``blockN`` (intermediate stages, average-pooled to
vectors), ``block<k>:grid<G>`` (the same stage average-pooled to a G x G grid and flattened, C*G*G
values in (c, row, column) order: it keeps where things are, which a global average loses;
``layers`` lists ``:grid2``, any G up to the map's side is accepted), ``block0:map``..``blockN:map``
(the same stages unpooled: a (C, H, W) feature map for convnets, a (L, C) token sequence for
transformers) and ``logits`` for classifier backbones.
``shapes`` gives every layer's per-image shape; ``dims`` its flat width (the product of the shape).
``embed`` runs one forward pass for all requested
layers. ``forward`` takes a uint8 batch (normalised on the device with the backbone's own mean/std)
or a float batch, and returns device tensors (no host copy: the extraction pipeline copies them
asynchronously); ``embed`` is ``forward`` + a copy to host numpy.

Identity: ``fingerprint`` hashes what the model *is* (spec, weights digest, preprocessing, precision);
for hub weights (no local file to digest) it also hashes the loaded state_dict, so a re-uploaded
checkpoint under the same tag gives a new key. ``compute_provenance`` is how the numbers are
*computed* (device type, channels_last, precision, library versions); cache/key.py's ``feature_key``
combines the two with the decode path, layers and dtype.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import cached_property
from typing import Any

import numpy as np
import torch

from ..core.device import resolve_device, resolve_precision
from ..core.errors import EmbedpipeError
from ..core.layers import grid_of
from ..core.provenance import open_clip_version
from .preprocess import Preprocess, normalize

# Weight ids that name hub weights (a tag) rather than digest a local file: the fingerprint adds
# a digest of the loaded state_dict for these.
HUB_WEIGHT_IDS = ("hub:", "tag:")


@dataclass(frozen=True)
class BackboneConfig:
    """Everything that rebuilds a backbone; stored with caches and head files."""

    spec: str = "effnet-lite0"  # "<family>:<name>" or a registered alias such as effnet-lite0
    weights: str | None = None  # local weights file; None = the family's own default weights
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "auto"  # auto | fp32 | bf16 | fp16 (autocast dtype for the forward pass)
    channels_last: bool = True  # NHWC memory layout; faster for convnets on CPU (benchmarks/extract.py)
    image_size: int | None = None  # model input side in px (timm convnets); None = the model's own

    def __post_init__(self) -> None:
        if self.weights and os.path.isfile(os.path.expanduser(self.weights)):  # recorded absolute, so that a
            # cache or head file rebuilds the backbone from any working folder (the key holds its digest)
            object.__setattr__(self, "weights", os.path.abspath(os.path.expanduser(self.weights)))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_DIGESTS: dict[tuple[str, int, int], str] = {}


def file_digest(path: str) -> str:
    """sha256 of a weights file, memoised per (path, size, mtime) within the process."""
    st = os.stat(path)
    memo_key = (os.path.abspath(path), st.st_size, st.st_mtime_ns)
    if memo_key not in _DIGESTS:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _DIGESTS[memo_key] = h.hexdigest()
    return _DIGESTS[memo_key]


def state_dict_digest(model: torch.nn.Module) -> str:
    """sha256 over a model's state_dict (names, dtypes, shapes and bytes, in key order)."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        t = t.detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def check_weights_file(weights: str | None) -> None:
    if weights is not None and not os.path.isfile(weights):
        raise EmbedpipeError(f"weights file not found: {weights}")


class Backbone:
    """Base class. Subclasses implement ``_load`` and ``_forward`` and may override ``_weights_id``."""

    family: str = ""

    def __init__(self, config: BackboneConfig) -> None:
        self.config = config
        self._model: torch.nn.Module | None = None
        self._transform: Callable[[Any], torch.Tensor] | None = None
        self._preprocess: dict[str, Any] = {}
        self._n_blocks = 0

    def __reduce__(self) -> tuple[Any, tuple[BackboneConfig]]:
        """A backbone pickles as its config (a few hundred bytes, never the model): unpickled, it is
        rebuilt by the registry and loads lazily where it is used (what a Ray worker receives)."""
        return _rebuild, (self.config,)

    # -- what subclasses provide -------------------------------------------------------------
    def _load(self) -> None:
        """Build self._model (eval, on CPU), self._transform, self._preprocess, self._n_blocks."""
        raise NotImplementedError

    def _forward(self, x: torch.Tensor, layers: Sequence[str]) -> dict[str, torch.Tensor]:
        """One forward pass returning a (batch, dim) tensor per requested vector layer and a
        (batch, *shape) tensor per ``:map`` layer."""
        raise NotImplementedError

    def tail(self, layer: str) -> torch.nn.Module:
        """The pretrained part of the model after ``layer`` (a ``block<k>:map``), as a fresh trainable
        copy: a ``Tail`` whose ``units`` can be unfrozen one at a time from the top."""
        raise EmbedpipeError(f"backbone {self.spec} cannot rebuild the blocks after {layer}; "
                             "finetune supports timm EfficientNet-style convnets")

    def _weights_id(self) -> str:
        """What identifies the weights: a file digest, or the hub tag that names them."""
        return file_digest(self.config.weights) if self.config.weights else "default"

    def weights_file(self) -> str | None:
        """The local file the weights load from (None for hub weights): what a key can identify
        without loading the model."""
        return self.config.weights

    # -- the public interface ----------------------------------------------------------------
    @property
    def spec(self) -> str:
        return self.config.spec

    def _ensure_loaded(self) -> None:
        if self._model is None:
            self._load()
            assert self._model is not None
            self._model.eval().requires_grad_(False)
            if self.config.channels_last:
                self._model = self._model.to(memory_format=torch.channels_last)
            self._model.to(self.device)

    @cached_property
    def device(self) -> torch.device:
        return resolve_device(self.config.device)

    @cached_property
    def precision(self) -> str:
        return resolve_precision(self.config.precision, self.device)

    @property
    def model(self) -> torch.nn.Module:
        self._ensure_loaded()
        assert self._model is not None
        return self._model

    @property
    def transform(self) -> Callable[[Any], torch.Tensor]:
        self._ensure_loaded()
        assert self._transform is not None
        return self._transform

    @property
    def preprocess(self) -> dict[str, Any]:
        self._ensure_loaded()
        return dict(self._preprocess)

    @property
    def has_logits(self) -> bool:
        return False

    @property
    def layers(self) -> list[str]:
        self._ensure_loaded()
        names = ["pooled"] + [f"block{i}" for i in range(self._n_blocks)]
        names += [f"block{i}:grid2" for i in range(self._n_blocks)]
        names += [f"block{i}:map" for i in range(self._n_blocks)]
        return names + (["logits"] if self.has_logits else [])

    @cached_property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Per-image shape of every layer ((dim,) for vectors), found by one forward pass on a blank image."""
        size = self._preprocess_size()
        probe = torch.zeros(1, 3, size, size)
        out = self.embed(probe, self.layers)
        return {name: tuple(int(d) for d in v.shape[1:]) for name, v in out.items()}

    @cached_property
    def dims(self) -> dict[str, int]:
        """Flat width of every layer (the product of its shape)."""
        return {name: int(np.prod(shape)) for name, shape in self.shapes.items()}

    def _preprocess_size(self) -> int:
        size = self.preprocess.get("input_size", 224)
        return int(size[-1] if isinstance(size, list | tuple) else size)

    @cached_property
    def pixel_preprocess(self) -> Preprocess | None:
        """The transform split into uint8 geometry + on-device normalisation; None if it has another shape."""
        return Preprocess.from_transform(self.transform)

    @cached_property
    def fingerprint(self) -> str:
        weights = self._weights_id()
        if weights.startswith(HUB_WEIGHT_IDS):  # a hub tag names the weights but does not pin them
            weights += ":" + state_dict_digest(self.model)
        parts = {
            "spec": self.config.spec,
            "weights": weights,
            "preprocess": self.preprocess,
            "precision": self.precision,
        }
        return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()

    def compute_provenance(self) -> dict[str, Any]:
        """How the forward pass computes (goes into the feature key with the decode path)."""
        import timm  # heavy: only to record its version (a timm backbone has imported it already)

        return {
            "device": self.device.type,
            "channels_last": self.config.channels_last,
            "precision": self.precision,
            "versions": {"torch": torch.__version__, "timm": timm.__version__, "open_clip": open_clip_version()},
        }

    def check_layers(self, layers: Sequence[str]) -> list[str]:
        if not layers:
            raise EmbedpipeError("no layers requested; use e.g. layers='pooled'")
        bad = [name for name in layers if name not in self.layers and not self._add_grid(name)]
        if bad:
            raise EmbedpipeError(
                f"backbone {self.spec} has no layer {', '.join(bad)}; it has {', '.join(self.layers)}"
                " (and block<k>:grid<G> for other grid sizes G)"
            )
        return list(dict.fromkeys(layers))

    def _add_grid(self, name: str) -> bool:
        """Accept ``block<k>:grid<G>`` for any G from 1 to the map's side: its shape joins ``shapes``."""
        grid = grid_of(name)
        if grid is None or f"block{grid[0]}:map" not in self.layers:
            return False
        shape = grid_shape(self.shapes[f"block{grid[0]}:map"], grid[1], name)
        self.shapes[name] = shape
        self.__dict__.pop("dims", None)  # recomputed with the new layer
        return True

    @torch.inference_mode()
    def forward(self, batch: torch.Tensor, layers: Sequence[str]) -> dict[str, torch.Tensor]:
        """(B, 3, H, W) uint8 pixels or float model input -> one (B, dim) tensor per vector layer and
        one (B, *shape) per ``:map`` layer, on the device.

        uint8 is normalised on the device (``x / 255``, then the backbone's mean/std), which equals
        the float transform's ToTensor + Normalize."""
        layers = self.check_layers(layers)
        model = self.model
        x = batch.to(self.device, non_blocking=True)
        if x.dtype == torch.uint8:
            pre = self.pixel_preprocess
            if pre is None:
                raise EmbedpipeError(f"backbone {self.spec} has a transform that cannot take uint8 pixels")
            x = normalize(x, pre)
        if self.config.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)
        amp = (
            torch.autocast(device_type=self.device.type, dtype=dtype)
            if dtype is not None
            else contextlib.nullcontext()
        )
        with amp:
            out = self._forward(x, layers)
        del model
        return {name: out[name] for name in layers}

    def embed(self, batch: torch.Tensor, layers: Sequence[str]) -> dict[str, np.ndarray]:
        """Embed a (B, 3, H, W) batch (uint8 pixels or float input); float32 arrays, one (B, dim) per layer."""
        out = self.forward(batch, layers)
        return {name: v.float().cpu().numpy() for name, v in out.items()}


def _rebuild(config: BackboneConfig) -> Backbone:
    # the package's create_backbone builds from the registry; this module is its dependency, not the reverse
    from . import create_backbone

    options = {k: v for k, v in config.to_dict().items() if k != "spec"}
    return create_backbone(config.spec, **options)


def pool_map(t: torch.Tensor) -> torch.Tensor:
    """Average a feature map (B, C, H, W) or token sequence (B, L, C) to a (B, C) vector."""
    if t.ndim == 4:
        return t.mean(dim=(2, 3))
    if t.ndim == 3:
        return t.mean(dim=1)
    return t


def grid_pool(t: torch.Tensor, g: int) -> torch.Tensor:
    """Average a feature map (B, C, H, W) over a g x g grid of cells: (B, C*g*g), in (c, row, column) order."""
    if t.ndim != 4:
        raise EmbedpipeError(f"a grid needs a spatial feature map (B, C, H, W); this layer gives shape {tuple(t.shape)}")
    return torch.nn.functional.adaptive_avg_pool2d(t, g).flatten(1)


def grid_shape(map_shape: Sequence[int], g: int, name: str) -> tuple[int]:
    """Shape of ``block<k>:grid<g>`` from its map's: (C*g*g,). A (C, H, W) map, or a transformer's
    (L, C) tokens when they form a square grid (a class token aside)."""
    if len(map_shape) == 3:
        c, side = map_shape[0], min(map_shape[1], map_shape[2])
    else:
        c, side = map_shape[-1], int((map_shape[0]) ** 0.5)
    if not 1 <= g <= side:
        raise EmbedpipeError(f"{name}: the grid must be 1 to {side} cells a side (the map is "
                             f"{'x'.join(map(str, map_shape))}); use e.g. {name.rsplit(':', 1)[0]}:grid2")
    return (int(c) * g * g,)


def add_grids(out: dict[str, torch.Tensor], i: int, t: torch.Tensor, layers: Sequence[str]) -> None:
    """Put every requested ``block<i>:grid<G>`` of stage i's map ``t`` (B, C, H, W) into ``out``."""
    for name in layers:
        grid = grid_of(name)
        if grid is not None and grid[0] == i:
            out[name] = grid_pool(t, grid[1])


class Tail(torch.nn.Module):
    """The pretrained blocks after a cached map: ``units`` applied in order (the last ones are the
    model's own closing layers up to its pre-logits features; finetune unfreezes from the last),
    then ``pool`` (parameter-free) to a (batch, dim) vector."""

    def __init__(self, units: Sequence[torch.nn.Module], pool: torch.nn.Module) -> None:
        super().__init__()
        self.units = torch.nn.ModuleList(units)
        self.pool = pool

    def forward(self, x: torch.Tensor, start: int = 0, stop: int | None = None, pool: bool = True) -> torch.Tensor:
        for unit in self.units[start:stop]:
            x = unit(x)
        return self.pool(x) if pool else x
